//! `trainguard env verify` and `trainguard env snapshot`: integrity of a Python environment
//! (tg-env does the work; this module parses arguments, renders and picks the exit code).

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use tg_env::{Baseline, Options, Report};

use crate::Context;
use crate::output;

/// Output format of `env verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One finding a line (with indented evidence) on stdout; a summary on stderr.
    Human,
    /// The whole report as one JSON object on stdout.
    Json,
}

/// Check a Python environment's integrity (RECORD hashes, unrecorded files, start-up hooks)
/// or snapshot it as a baseline.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EnvCommand {
    /// Check every installed file against its distribution's RECORD, look for unrecorded modules,
    /// stale or sourceless .pyc files and start-up hooks (.pth code, sitecustomize, PEP 829 .start
    /// files, PYTHONPATH/LD_PRELOAD and friends), and compare with a baseline if given.
    ///
    /// The interpreter is run once as `PYTHON -I -S` to learn its paths (no .pth file runs);
    /// nothing else in the environment is executed. Exit codes: 0 nothing found, 1 findings,
    /// 2 error.
    Verify(VerifyArgs),
    /// Record a baseline: SHA-256 and size of every file under the site-packages directories
    /// (and console scripts), the start-up hooks, `authorized_keys` of the user and root, and
    /// the crontabs. Keep it where the training job cannot write it.
    Snapshot(SnapshotArgs),
}

/// Where the environment is.
#[derive(Debug, clap::Args)]
struct Target {
    /// The Python interpreter whose environment is checked (a venv's `bin/python` checks that
    /// venv).
    #[arg(long, value_name = "PYTHON", default_value = "python3")]
    python: PathBuf,

    /// Home directory whose `.ssh/authorized_keys` and user site-packages are checked
    /// [default: $HOME].
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,

    /// Read /etc and /var/spool under DIR instead of / (e.g. a mounted image).
    #[arg(long, value_name = "DIR", default_value = "/")]
    system_root: PathBuf,
}

impl Target {
    fn options(&self) -> Options {
        let mut opts = Options::new(&self.python);
        if let Some(home) = &self.home {
            opts.home = Some(home.clone());
        }
        opts.system_root = self.system_root.clone();
        opts
    }
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    target: Target,

    /// Also report every file changed, added or removed since this baseline (from
    /// `env snapshot`), including .pyc files and authorized_keys/cron changes.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Debug, clap::Args)]
struct SnapshotArgs {
    #[command(flatten)]
    target: Target,

    /// Where to write the baseline (JSON).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub(crate) fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    match args.command {
        EnvCommand::Verify(args) => verify(args, ctx),
        EnvCommand::Snapshot(args) => snapshot(args),
    }
}

/// A diagnostic line on stderr.
fn diag(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

fn verify(args: VerifyArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut opts = args.target.options();
    if let Some(path) = &args.baseline {
        opts.baseline = Some(Baseline::load(path)?);
    }
    let start = Instant::now();
    let report = tg_env::verify(&opts).with_context(|| {
        format!(
            "checking the environment of {}",
            args.target.python.display()
        )
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    match args.format {
        Format::Json => {
            let json = serde_json::to_string_pretty(&report).context("rendering the report")?;
            output::data(&json)?;
        }
        Format::Human => {
            render_findings(&report)?;
            if !report.notes.is_empty() {
                diag(&format!(
                    "note: {} belong to another installed distribution than the one whose record \
                     lists them (two distributions install the same path; see --format json)",
                    count(report.notes.len(), "file")
                ));
            }
            diag(&summary(&report, elapsed));
        }
    }
    let verdict = match report.exit_code() {
        0 => "clean".to_owned(),
        _ => format!("{} findings", report.findings.len()),
    };
    crate::record::record(ctx, "env-verify", &args.target.python, &[], &verdict)?;
    Ok(ExitCode::from(report.exit_code()))
}

fn snapshot(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let opts = args.target.options();
    let start = Instant::now();
    let (baseline, report) = tg_env::snapshot(&opts).with_context(|| {
        format!(
            "snapshotting the environment of {}",
            args.target.python.display()
        )
    })?;
    baseline.write(&args.out)?;
    let elapsed = start.elapsed().as_secs_f64();
    diag(&format!(
        "wrote {}: {} files, {} persistence files, {} start-up hooks",
        args.out.display(),
        baseline.files.len(),
        baseline.persistence.len(),
        baseline.hooks.len()
    ));
    if !report.findings.is_empty() {
        render_findings(&report)?;
        diag(&format!(
            "warning: the environment already has {} findings (listed on stdout); the baseline records them as they are",
            report.findings.len()
        ));
    }
    diag(&summary(&report, elapsed));
    Ok(ExitCode::SUCCESS)
}

fn render_findings(report: &Report) -> io::Result<()> {
    for f in &report.findings {
        let dist = f
            .distribution
            .as_deref()
            .map(|d| format!(" [{d}]"))
            .unwrap_or_default();
        output::data(&format!(
            "{}: {} {}{dist}: {}",
            f.path, f.rule, f.kind, f.message
        ))?;
        if let Some(ev) = &f.evidence {
            for line in ev.lines() {
                output::data(&format!("    {line}"))?;
            }
        }
    }
    Ok(())
}

/// `1 finding`, `2 findings`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn summary(report: &Report, elapsed: f64) -> String {
    let findings = match report.findings.len() {
        0 => "no findings".to_owned(),
        n => count(n, "finding"),
    };
    let accepted = match report.accepted.len() {
        0 => String::new(),
        n => format!(
            ", {} accepted (see --format json)",
            count(n, "known start-up hook")
        ),
    };
    format!(
        "{findings}: {}, {} hashed ({:.1} MiB) in {elapsed:.2} s{}{accepted}",
        count(report.distributions, "distribution"),
        count(report.files_hashed, "file"),
        report.bytes_hashed as f64 / (1024.0 * 1024.0),
        if report.baseline_compared {
            ", baseline compared"
        } else {
            ""
        },
    )
}
