//! `trainguard convert INPUT OUTPUT`: a PyTorch checkpoint to safetensors, never unpickling it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use tg_report::{FileReport, Verdict};
use tg_scan::{Base, Policy, Scanner};
use tg_tensor::convert::Converted;

use crate::cmd::scan::PolicyName;
use crate::{Context, output};

/// Output formats of `convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One readable line per file written.
    Human,
    /// One JSON object per file written (tensors, bytes, what was not carried).
    Json,
}

/// Convert a PyTorch checkpoint to safetensors without ever unpickling it.
///
/// The checkpoint is first scanned (as `trainguard scan` would, under --policy); anything but a
/// clean verdict is refused and nothing is written. Then only the rebuild functions that
/// torch.load(weights_only=True) allows are evaluated on the pickle's symbolic value tree, and
/// each tensor's bytes are copied straight from the archive into the output, chunk by chunk
/// (bounded memory, whatever the checkpoint size). Views are materialised, tensors that shared
/// a storage are copied apart, nested dicts are flattened to `a.b.c` names. Non-tensor values
/// (step counters, hyper-parameters) go into the safetensors metadata as JSON text; what
/// cannot be carried (complex tensors, arbitrary objects) is listed on stderr and under the
/// `trainguard.dropped` metadata key.
///
/// INPUT is a PyTorch file (zip, or legacy from _use_new_zipfile_serialization=False), or a
/// directory with pytorch_model.bin.index.json and its shards (then OUTPUT is a directory that
/// receives model-0000k-of-0000n.safetensors and model.safetensors.index.json), or with a
/// single pytorch_model.bin (OUTPUT/model.safetensors).
///
/// Exit codes: 0 converted; 1 refused: the scan found something suspicious or malicious;
/// 2 an error, or the scan was inconclusive.
///
/// Examples:
///   trainguard convert model.pt model.safetensors
///   trainguard convert ./llama-pt ./llama-safetensors
///   trainguard convert --policy weights-only ckpt.pt ckpt.safetensors
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The checkpoint file, or a directory of shards.
    #[arg(value_name = "INPUT")]
    input: PathBuf,

    /// The safetensors file to write (a directory when INPUT is a directory).
    #[arg(value_name = "OUTPUT")]
    output: PathBuf,

    /// Built-in policy the checkpoint must be clean under before it is converted.
    #[arg(long, value_enum, default_value_t = PolicyName::Default)]
    policy: PolicyName,

    /// Also allow this global in the scan (module.name[:class|function|constant]). Repeatable.
    #[arg(long = "allow", value_name = "MODULE.NAME")]
    allow: Vec<String>,

    /// Replace OUTPUT if it exists.
    #[arg(long)]
    force: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

pub(crate) fn run(args: Args, _ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut policy = Policy::new(match args.policy {
        PolicyName::WeightsOnly => Base::WeightsOnly,
        PolicyName::Default => Base::Default,
    });
    for entry in &args.allow {
        policy.allow(entry)?;
    }
    let scanner = Scanner::new(policy, tg_scan::Limits::default());

    let plan = if args.input.is_dir() {
        Some(tg_tensor::shards::plan(&args.input)?)
    } else {
        None
    };
    let sources: Vec<&Path> = match &plan {
        Some(p) => p.shards.iter().map(|s| s.source.as_path()).collect(),
        None => vec![args.input.as_path()],
    };
    let reports: Vec<FileReport> = sources.iter().map(|p| scanner.scan_path(p)).collect();
    let worst = reports
        .iter()
        .map(|r| r.verdict)
        .max()
        .unwrap_or(Verdict::Clean);
    if worst != Verdict::Clean {
        for r in reports.iter().filter(|r| r.verdict != Verdict::Clean) {
            output::data(&render_findings(r))?;
        }
        output::error(&format!(
            "refusing to convert {}: the scan verdict is {worst}",
            args.input.display()
        ));
        output::hint("nothing was written; inspect the findings with `trainguard scan`");
        return Ok(ExitCode::from(worst.exit_code()));
    }

    let targets: Vec<PathBuf> = match &plan {
        Some(p) => p
            .shards
            .iter()
            .map(|s| args.output.join(&s.output_name))
            .chain([args.output.join(tg_tensor::shards::SAFETENSORS_INDEX)])
            .collect(),
        None => vec![args.output.clone()],
    };
    if !args.force
        && let Some(existing) = targets.iter().find(|t| t.exists())
    {
        anyhow::bail!("{} exists; pass --force to replace it", existing.display());
    }
    let converted: Vec<Converted> = match &plan {
        Some(p) => {
            let done = p
                .convert(&args.output)
                .with_context(|| format!("converting {}", args.input.display()))?;
            if let Some(index) = &done.index
                && args.format == Format::Human
            {
                output::data(&format!(
                    "wrote {} ({} shards, {} bytes of tensors)",
                    index.display(),
                    done.shards.len(),
                    done.total_size
                ))?;
            }
            done.shards
        }
        None => vec![
            tg_tensor::convert::convert_file(&args.input, &args.output)
                .with_context(|| format!("converting {}", args.input.display()))?,
        ],
    };
    let mut stderr = std::io::stderr().lock();
    for c in &converted {
        match args.format {
            Format::Json => output::data(&serde_json::to_string(c)?)?,
            Format::Human => output::data(&format!(
                "{} -> {}: {} tensors, {} bytes, {} values in metadata, {} not carried",
                c.input.display(),
                c.output.display(),
                c.tensors.len(),
                c.bytes,
                c.values,
                c.dropped.len()
            ))?,
        }
        for d in &c.dropped {
            let _ = writeln!(stderr, "warning: not carried: {}: {}", d.name, d.why);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn render_findings(r: &FileReport) -> String {
    let mut s = format!("{}: {} ({})", r.path, r.verdict, r.format);
    for f in &r.findings {
        let loc = f.location.to_string();
        s.push_str(&format!("\n  {} {:<12} ", f.rule, f.verdict.as_str()));
        if !loc.is_empty() {
            s.push_str(&format!("[{loc}] "));
        }
        s.push_str(&f.message);
        if let Some(e) = &f.evidence {
            s.push_str(&format!("\n      evidence: {e}"));
        }
    }
    s
}
