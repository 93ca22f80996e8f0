//! `trainguard diff A B`: what changed between two checkpoints, tensor by tensor.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tg_tensor::diff::{DiffReport, Stats, TensorChange};

use crate::{Context, output};

/// Output formats of `diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One line per difference, then a summary naming the most-changed tensors.
    Human,
    /// One JSON object with every difference and statistic.
    Json,
}

/// Compare two checkpoints tensor by tensor, without executing either.
///
/// A and B are each a PyTorch checkpoint (zip or legacy), a safetensors file, or a model
/// directory (sharded by model.safetensors.index.json or pytorch_model.bin.index.json, or a
/// single model.safetensors / pytorch_model.bin). Reports tensors added, removed, changed in
/// shape or dtype, and for every tensor whose values changed: the largest absolute difference,
/// the relative L2 change |b-a|/|a|, the cosine similarity, the fraction of elements whose
/// sign flipped, and NaN/Inf counts. Non-tensor values (step counters, hyper-parameters) are
/// compared too. Everything is computed in f64, streaming, in bounded memory.
///
/// Forensics: a sign-flipped update shows cosine near -1 and a flip fraction near 1; a scaled
/// tensor shows cosine 1 with a relative change of |scale - 1|.
///
/// Exit codes: 0 identical (bit for bit); 1 different; 2 an error.
///
/// Examples:
///   trainguard diff step-1000.pt step-1000-restored.pt
///   trainguard diff --format json ./run-a/ ./run-b/ > diff.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The reference checkpoint.
    #[arg(value_name = "A")]
    a: PathBuf,

    /// The checkpoint compared with it.
    #[arg(value_name = "B")]
    b: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,

    /// How many of the most-changed tensors the summary names.
    #[arg(long, value_name = "N", default_value_t = 5)]
    top: usize,
}

pub(crate) fn run(args: Args, _ctx: &Context) -> anyhow::Result<ExitCode> {
    let a =
        tg_tensor::diff::open(&args.a).with_context(|| format!("reading {}", args.a.display()))?;
    let b =
        tg_tensor::diff::open(&args.b).with_context(|| format!("reading {}", args.b.display()))?;
    let report = tg_tensor::diff::diff(&a, &b)?;
    match args.format {
        Format::Json => {
            let mut v = serde_json::to_value(&report)?;
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("a".into(), args.a.display().to_string().into());
                m.insert("b".into(), args.b.display().to_string().into());
                m.insert("identical_checkpoints".into(), report.is_identical().into());
                let top: Vec<&str> = report
                    .most_changed(args.top)
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                m.insert("most_changed".into(), top.into());
            }
            output::data(&serde_json::to_string_pretty(&v)?)?;
        }
        Format::Human => output::data(&render_human(&args, &report))?,
    }
    Ok(ExitCode::from(if report.is_identical() { 0 } else { 1 }))
}

fn shape(s: &[u64]) -> String {
    format!(
        "[{}]",
        s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    )
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.6}")
    }
}

fn stats_line(s: &Stats) -> String {
    let mut line = format!(
        "max_abs_diff={:.6e} rel_l2={} cosine={} sign_flips={:.4}% differing={}/{}",
        s.max_abs_diff,
        num(s.rel_l2),
        num(s.cosine),
        s.sign_flip_fraction * 100.0,
        s.differing,
        s.numel
    );
    if s.nan_a + s.nan_b + s.inf_a + s.inf_b > 0 {
        line.push_str(&format!(
            " nan={}->{} inf={}->{}",
            s.nan_a, s.nan_b, s.inf_a, s.inf_b
        ));
    }
    line
}

fn change_line(c: &TensorChange) -> String {
    if c.layout_changed() {
        let mut line = format!(
            "layout   {}: {} {} -> {} {}",
            c.name,
            c.dtype_a,
            shape(&c.shape_a),
            c.dtype_b,
            shape(&c.shape_b)
        );
        if let Some(s) = &c.stats {
            line.push_str(&format!("  {}", stats_line(s)));
        }
        line
    } else {
        match &c.stats {
            Some(s) => format!("changed  {}: {}", c.name, stats_line(s)),
            None => format!("changed  {}", c.name),
        }
    }
}

fn render_human(args: &Args, r: &DiffReport) -> String {
    let mut out = vec![format!(
        "a: {} ({} tensors)\nb: {} ({} tensors)",
        args.a.display(),
        r.tensors_a,
        args.b.display(),
        r.tensors_b
    )];
    for t in &r.removed {
        out.push(format!(
            "removed  {}: {} {}",
            t.name,
            t.dtype,
            shape(&t.shape)
        ));
    }
    for t in &r.added {
        out.push(format!(
            "added    {}: {} {}",
            t.name,
            t.dtype,
            shape(&t.shape)
        ));
    }
    for c in &r.changed {
        out.push(change_line(c));
    }
    for v in &r.values {
        out.push(format!(
            "value    {}: {} -> {}",
            v.name,
            v.a.as_deref().unwrap_or("(absent)"),
            v.b.as_deref().unwrap_or("(absent)")
        ));
    }
    let mut summary = format!(
        "\n{} identical, {} changed, {} added, {} removed tensors; {} values differ",
        r.identical,
        r.changed.len(),
        r.added.len(),
        r.removed.len(),
        r.values.len()
    );
    let top = r.most_changed(args.top);
    if !top.is_empty() {
        let names: Vec<String> = top
            .iter()
            .map(|c| match &c.stats {
                Some(s) => format!("{} (rel_l2 {})", c.name, num(s.rel_l2)),
                None => format!("{} (shape)", c.name),
            })
            .collect();
        summary.push_str(&format!("\nmost changed: {}", names.join(", ")));
    }
    if r.is_identical() {
        summary.push_str("\nidentical");
    }
    out.push(summary);
    out.join("\n")
}
