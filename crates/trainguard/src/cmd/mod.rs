//! One module per verb. Each has an `Args` (clap) and a `run(args, ctx) -> Result<ExitCode>`.

pub(crate) mod convert;
pub(crate) mod diff;
pub(crate) mod env;
pub(crate) mod ledger;
#[cfg(unix)]
pub(crate) mod run;
pub(crate) mod scan;
pub(crate) mod seal;
pub(crate) mod watch;
