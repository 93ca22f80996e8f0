//! `trainguard scan PATH...`

use std::path::PathBuf;
use std::process::ExitCode;

use crate::Context;

/// Arguments of `trainguard scan`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Files or directories to scan (directories are walked recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub(crate) fn run(args: Args, _ctx: &Context) -> anyhow::Result<ExitCode> {
    anyhow::bail!("scan of {} paths: not wired yet", args.paths.len())
}
