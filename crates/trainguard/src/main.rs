//! The `trainguard` binary: parses arguments, calls the libraries, renders, picks the exit code.
//!
//! Reads top-down: [`main`] → [`run`] → one module per verb under [`cmd`]. Exit codes are the
//! same for every verb: `0` clean or valid, `1` something dangerous or invalid was found, `2` the
//! verb could not reach a verdict (an error, an inconclusive result). stdout is data; stderr is
//! diagnostics and `hint:` lines.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod output;
mod record;

/// trainguard keeps shared ML training infrastructure safe from poisoned files and insiders.
///
/// Exit codes: 0 clean or valid; 1 something suspicious, malicious or invalid was found;
/// 2 inconclusive or an error.
#[derive(Debug, Parser)]
#[command(
    name = "trainguard",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Record what this command did in an append-only ledger (SQLite file).
    #[arg(long, global = true, env = "TRAINGUARD_LEDGER", value_name = "PATH")]
    ledger: Option<PathBuf>,
}

/// Each verb's arguments are built only when that verb is run (`defer`): building every verb's
/// parser on every start cost more than a small scan.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
enum Command {
    /// Statically scan model files for code that runs on load (never executes them).
    Scan(cmd::scan::Args),
    /// Sign a manifest of every file in a model or checkpoint directory (OpenSSF Model Signing).
    Seal(cmd::seal::SealArgs),
    /// Verify a directory against its signed manifest; names every missing, extra, changed file.
    Verify(cmd::seal::VerifyArgs),
    /// Create an ECDSA key pair for `seal` and `verify`.
    Keygen(cmd::seal::KeygenArgs),
    /// Verify, show and prove the append-only ledger of what trainguard did.
    Ledger(cmd::ledger::Args),
    /// Check a Python environment's integrity (RECORD hashes, unrecorded files, start-up hooks)
    /// or snapshot it as a baseline.
    Env(cmd::env::Args),
    /// Convert a PyTorch checkpoint (file or sharded directory) to safetensors without
    /// unpickling it; refuses anything the scanner does not find clean.
    Convert(cmd::convert::Args),
    /// Compare two checkpoints tensor by tensor (added, removed, reshaped, how much changed).
    Diff(cmd::diff::Args),
    /// Collect training telemetry and detect sabotage: `watch serve` runs the collector,
    /// `watch incidents` lists what it found.
    Watch(cmd::watch::Args),
    /// Run a training command and record its start, heartbeats and every exit (code, signal,
    /// sender when the kernel tells) with the collector.
    #[cfg(unix)]
    Run(cmd::run::Args),
}

/// What every verb gets besides its own arguments.
#[derive(Debug)]
pub(crate) struct Context {
    /// `--ledger PATH` or `TRAINGUARD_LEDGER`, when set.
    pub(crate) ledger: Option<PathBuf>,
}

fn main() -> ExitCode {
    // A scan's first helper thread starts now, while clap parses (see `cmd::scan::Helper`).
    let early = (std::env::args_os().nth(1).as_deref() == Some("scan".as_ref()))
        .then(cmd::scan::Helper::start)
        .flatten();
    let cli = Cli::parse();
    match run(cli, early) {
        Ok(code) => code,
        Err(err) => {
            if output::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            output::error(&format!("{err:#}"));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, early: Option<cmd::scan::Helper>) -> anyhow::Result<ExitCode> {
    let ctx = Context { ledger: cli.ledger };
    match cli.command {
        Command::Scan(args) => cmd::scan::run(args, &ctx, early),
        Command::Seal(args) => cmd::seal::run_seal(args, &ctx),
        Command::Verify(args) => cmd::seal::run_verify(args, &ctx),
        Command::Keygen(args) => cmd::seal::run_keygen(args, &ctx),
        Command::Ledger(args) => cmd::ledger::run(args, &ctx),
        Command::Env(args) => cmd::env::run(args, &ctx),
        Command::Convert(args) => cmd::convert::run(args, &ctx),
        Command::Diff(args) => cmd::diff::run(args, &ctx),
        Command::Watch(args) => cmd::watch::run(args, &ctx),
        #[cfg(unix)]
        Command::Run(args) => cmd::run::run(args, &ctx),
    }
}
