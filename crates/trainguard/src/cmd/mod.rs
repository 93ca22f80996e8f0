//! One module per verb. Each has an `Args` (clap) and a `run(args, ctx) -> Result<ExitCode>`.

pub(crate) mod scan;
