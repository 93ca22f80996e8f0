//! `trainguard watch serve|register|incidents`: the collector and its clients (tg-server and
//! tg-watch do the work; this module parses arguments, renders and picks the exit code).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tg_server::{Client, Collector, Config};
use tg_watch::Thresholds;

use crate::{Context, output};

/// Output formats of `watch incidents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One incident a line on stdout; a count on stderr.
    Human,
    /// JSON Lines: one incident object a line.
    Json,
}

/// Collect training telemetry and detect sabotage: `watch serve` runs the collector,
/// `watch incidents` lists what it found.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: WatchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum WatchCommand {
    /// Run the collector: ingests telemetry over HTTP, stores it durably in SQLite, runs the
    /// detectors, serves /metrics (Prometheus), a dashboard at / and the incidents API.
    ///
    /// Binds loopback by default. Prints `listening on http://ADDR` on stderr once bound.
    Serve(ServeArgs),
    /// Register a run with a collector and print its token (shown once; the collector keeps
    /// only its hash).
    Register(RegisterArgs),
    /// Print the incidents of a run. Exit codes: 0 none, 1 at least one, 2 error.
    Incidents(IncidentsArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port). Anything but loopback exposes
    /// unauthenticated reads of runs, incidents and metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7411")]
    listen: String,

    /// SQLite database (created if missing).
    #[arg(long, value_name = "PATH", default_value = "trainguard-watch.db")]
    db: PathBuf,

    /// POST every incident's JSON to this http:// URL (4 attempts with backoff).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,

    /// File of pre-configured run tokens, one `RUN TOKEN` (or `RUN=TOKEN`) a line, # comments.
    #[arg(long, value_name = "FILE")]
    tokens_file: Option<PathBuf>,

    /// File holding the read token (first line): runs, incidents, metrics and the dashboard
    /// then need it (`Authorization: Bearer TOKEN`, or any user name and the token as the
    /// password in a browser).
    #[arg(long, value_name = "FILE")]
    read_token_file: Option<PathBuf>,

    /// Refuse `POST /v1/runs`: only runs from --tokens-file (or already stored) can send.
    #[arg(long)]
    no_register: bool,

    /// Detector thresholds as JSON (any subset of the fields of tg_watch::Thresholds, e.g.
    /// {"heartbeat_timeout_s": 30, "outlier_min_count": 8}); the rest keep their defaults.
    #[arg(long, value_name = "FILE")]
    thresholds: Option<PathBuf>,

    /// Seconds without any event from a live rank before it is reported missing [default: 15].
    #[arg(long, value_name = "SECONDS")]
    heartbeat_timeout: Option<f64>,
}

#[derive(Debug, clap::Args)]
struct Remote {
    /// Base URL of the collector.
    #[arg(
        long,
        value_name = "URL",
        env = "TRAINGUARD_COLLECTOR",
        default_value = "http://127.0.0.1:7411"
    )]
    collector: String,

    /// The run.
    #[arg(long, value_name = "RUN", env = "TRAINGUARD_RUN")]
    run: String,
}

#[derive(Debug, clap::Args)]
struct RegisterArgs {
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct IncidentsArgs {
    #[command(flatten)]
    remote: Remote,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,

    /// The collector's read token, when it has one.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TRAINGUARD_READ_TOKEN",
        hide_env_values = true
    )]
    read_token: Option<String>,
}

pub(crate) fn run(args: Args, _ctx: &Context) -> anyhow::Result<ExitCode> {
    match args.command {
        WatchCommand::Serve(a) => serve(a),
        WatchCommand::Register(a) => register(a),
        WatchCommand::Incidents(a) => incidents(a),
    }
}

/// A diagnostic line on stderr, prefixed with the verb.
pub(crate) fn note(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "trainguard watch: {line}");
}

fn parse_tokens(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (run, token) = line
            .split_once('=')
            .or_else(|| line.split_once(char::is_whitespace))
            .with_context(|| format!("line {}: expected `RUN TOKEN`", n + 1))?;
        let (run, token) = (run.trim(), token.trim());
        anyhow::ensure!(
            tg_watch::valid_run_id(run) && !token.is_empty(),
            "line {}: invalid run id or empty token",
            n + 1
        );
        out.push((run.to_string(), token.to_string()));
    }
    Ok(out)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::new(&args.db);
    config.allow_registration = !args.no_register;
    config.webhook = args.webhook;
    if let Some(file) = &args.read_token_file {
        let text = fs_err::read_to_string(file)?;
        let token = text.lines().next().unwrap_or_default().trim();
        anyhow::ensure!(
            !token.is_empty(),
            "read token file {} is empty",
            file.display()
        );
        config.read_token = Some(token.to_string());
    }
    if let Some(file) = &args.thresholds {
        let text = fs_err::read_to_string(file)?;
        config.thresholds = serde_json::from_str::<Thresholds>(&text)
            .with_context(|| format!("in thresholds file {}", file.display()))?;
    }
    if let Some(timeout) = args.heartbeat_timeout {
        config.thresholds.heartbeat_timeout_s = timeout;
    }
    if let Some(file) = &args.tokens_file {
        let text = fs_err::read_to_string(file)?;
        config.tokens =
            parse_tokens(&text).with_context(|| format!("in tokens file {}", file.display()))?;
    }
    let collector = Collector::open(config)
        .with_context(|| format!("cannot start the collector on {}", args.db.display()))?;
    tg_server::serve_blocking(&args.listen, collector, |addr| {
        note(&format!("listening on http://{addr}"));
        if !addr.ip().is_loopback() {
            output::hint(
                "the collector is reachable from other hosts; runs, incidents and metrics \
                 can be read without a token",
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn register(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.remote.collector)?;
    let token = client.register(&args.remote.run)?;
    output::data(&token)?;
    Ok(ExitCode::SUCCESS)
}

fn incidents(args: IncidentsArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::new(&args.remote.collector)?;
    if let Some(token) = &args.read_token {
        client = client.with_token(token.clone());
    }
    let incidents = client.incidents(&args.remote.run)?;
    for i in &incidents {
        match args.format {
            Format::Json => output::data(&serde_json::to_string(i)?)?,
            Format::Human => {
                let rank = i.rank.map_or_else(|| "-".into(), |r| r.to_string());
                let step = i.step.map_or_else(|| "-".into(), |s| s.to_string());
                let host = i.host.as_deref().unwrap_or("-");
                output::data(&format!(
                    "{:<18} rank {rank:<5} host {host:<16} step {step:<8} {}",
                    i.detector.as_str(),
                    i.summary
                ))?;
            }
        }
    }
    if args.format == Format::Human {
        note(&format!(
            "{} incident(s) in run {}",
            incidents.len(),
            args.remote.run
        ));
    }
    Ok(if incidents.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_tokens;

    #[test]
    fn tokens_file_lines() {
        let t = parse_tokens("# c\nrun-a s3cret\nrun-b=tok\n\n").unwrap();
        assert_eq!(
            t,
            vec![
                ("run-a".into(), "s3cret".into()),
                ("run-b".into(), "tok".into())
            ]
        );
        assert!(parse_tokens("../x tok").is_err());
        assert!(parse_tokens("lonely").is_err());
    }
}
