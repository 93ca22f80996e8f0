//! `trainguard run -- COMMAND...`: a launcher that records every exit of the training process.
//!
//! It starts the command as a child, reports a `process_start` and a heartbeat every few seconds
//! to the collector, forwards SIGTERM, SIGINT and SIGHUP to the child, and reports the
//! `process_exit` as the kernel describes it.
//!
//! What Linux tells, exactly:
//! - The child's end comes from `waitid(P_PID, pid, WEXITED)`: `si_code` is `CLD_EXITED` (then
//!   `si_status` is the exit status), `CLD_KILLED` or `CLD_DUMPED` (then `si_status` is the
//!   signal number). `si_pid` and `si_uid` there name the *child* (its pid and real uid), never
//!   whoever sent the signal: the kernel does not tell a parent who killed its child.
//! - For a signal sent to the *launcher*, its `SA_SIGINFO` handler receives `si_code` and, for
//!   `SI_USER`/`SI_QUEUE`/`SI_TKILL` (kill(2), sigqueue(3), tgkill(2)), the sender's `si_pid`
//!   and real `si_uid`. Those are recorded as `sender_pid`/`sender_uid` with the signal the
//!   launcher forwarded. Signals from the kernel (`SI_KERNEL`, e.g. Ctrl-C on a terminal, which
//!   already reached the child through the process group) are recorded but not forwarded again.
//! - A SIGKILL sent straight to the child (or to the launcher) carries no sender anywhere the
//!   launcher can see; naming that sender needs kernel-side evidence (the audit subsystem on
//!   `kill`, or the `signal:signal_generate` tracepoint). If the launcher itself is killed, its
//!   heartbeats stop and the collector reports the rank missing.
//!
//! Exit code: the child's exit status, or 128 + the signal number when a signal ended it (as
//! shells do); 2 when the child could not be started or `--env-verify` failed to run.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::Cause;
use tg_server::Client;
use tg_watch::{Body, Event, Heartbeat, ProcessExit, ProcessStart, signal_name};

use crate::Context;

/// Run a training command, record its start, liveness and every exit with a collector.
///
/// Examples:
///   trainguard run -- python train.py
///   trainguard run --run llm-7b --token "$TG_TOKEN" -- torchrun --nproc-per-node 8 train.py
///   trainguard run --env-verify --run llm-7b -- python train.py
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// Base URL of the collector (`trainguard watch serve`).
    #[arg(
        long,
        value_name = "URL",
        env = "TRAINGUARD_COLLECTOR",
        default_value = "http://127.0.0.1:7411"
    )]
    collector: String,

    /// Report to the collector under this run (without it nothing is reported).
    #[arg(long, value_name = "RUN", env = "TRAINGUARD_RUN")]
    run: Option<String>,

    /// The run's token; without one the run is registered and its token printed on stderr.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TRAINGUARD_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// Global rank of the process this launcher starts.
    #[arg(long, value_name = "N", env = "RANK", default_value_t = 0)]
    rank: u32,

    /// Number of ranks in the job.
    #[arg(long, value_name = "N", env = "WORLD_SIZE", default_value_t = 1)]
    world_size: u32,

    /// Seconds between heartbeats.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    heartbeat: f64,

    /// Run `trainguard env verify` first and refuse to start the command if it finds anything.
    #[arg(long)]
    env_verify: bool,

    /// The interpreter `--env-verify` checks.
    #[arg(long, value_name = "PYTHON", requires = "env_verify")]
    env_python: Option<PathBuf>,

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn note(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "trainguard run: {line}");
}

/// Who reports, and where.
#[derive(Clone)]
struct Telemetry {
    client: Client,
    run: String,
    rank: u32,
    world_size: u32,
    host: String,
    user: Option<String>,
    pid: u32,
}

impl Telemetry {
    fn send(&self, body: Body, attempts: u32) -> Result<(), tg_server::ClientError> {
        let event = Event {
            run: self.run.clone(),
            rank: self.rank,
            world_size: self.world_size,
            host: self.host.clone(),
            pid: self.pid,
            user: self.user.clone(),
            time_unix_s: tg_server::now_unix_s(),
            body,
        };
        let mut last = None;
        for n in 0..attempts {
            if n > 0 {
                thread::sleep(Duration::from_millis(250 << n.min(4)));
            }
            match self.client.send(&self.run, vec![event.clone()]) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        last.map_or(Ok(()), Err)
    }
}

/// A signal the launcher received.
#[derive(Debug, Clone, Copy)]
struct Received {
    signal: i32,
    sender_pid: Option<i32>,
    sender_uid: Option<u32>,
}

fn verify_env(args: &Args) -> anyhow::Result<Option<ExitCode>> {
    let exe = std::env::current_exe().context("cannot find the trainguard executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["env", "verify"]);
    if let Some(python) = &args.env_python {
        cmd.arg("--python").arg(python);
    }
    // The child's stdout is the command's; verification output goes to stderr.
    cmd.stdout(std::io::stderr());
    let status = cmd.status().context("cannot run trainguard env verify")?;
    if status.success() {
        return Ok(None);
    }
    crate::output::error(&format!(
        "environment verification failed ({status}); refusing to start the command"
    ));
    Ok(Some(ExitCode::from(if status.code() == Some(1) {
        1
    } else {
        2
    })))
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn user() -> Option<String> {
    std::env::var("USER")
        .ok()
        .or_else(|| Some(format!("uid:{}", rustix::process::getuid().as_raw())))
}

pub(crate) fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    if args.env_verify
        && let Some(code) = verify_env(&args)?
    {
        return Ok(code);
    }
    anyhow::ensure!(
        args.heartbeat.is_finite() && args.heartbeat >= 0.1,
        "--heartbeat must be at least 0.1 seconds"
    );
    let client = match &args.run {
        Some(run) => {
            let mut client = Client::new(&args.collector)?;
            let token = match &args.token {
                Some(token) => token.clone(),
                None => {
                    let token = client.register(run).with_context(|| {
                        format!("cannot register run {run}; pass its --token if it exists")
                    })?;
                    note(&format!("registered run {run}; token {token}"));
                    token
                }
            };
            client = client.with_token(token);
            Some((client, run.clone()))
        }
        None => None,
    };

    // Handlers go in before the child starts, so no signal is missed; the iterator queues them.
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let handle = signals.handle();
    let (program, rest) = args.command.split_first().context("no command to run")?;
    let child = Command::new(program)
        .args(rest)
        .spawn()
        .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
    let pid = child.id();
    let child_pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .context("child has an invalid pid")?;

    // Forwarding starts at once, before anything talks to the collector.
    let received: Arc<Mutex<Option<Received>>> = Arc::new(Mutex::new(None));
    let forwarder = {
        let received = Arc::clone(&received);
        thread::spawn(move || {
            for origin in signals.forever() {
                let from_kernel = matches!(origin.cause, Cause::Kernel);
                let info = Received {
                    signal: origin.signal,
                    sender_pid: origin.process.map(|p| p.pid),
                    sender_uid: origin.process.map(|p| p.uid),
                };
                if let Ok(mut slot) = received.lock() {
                    *slot = Some(info);
                }
                if !from_kernel && let Some(sig) = Signal::from_named_raw(origin.signal) {
                    let _ = rustix::process::kill_process(child_pid, sig);
                }
            }
        })
    };

    let telemetry = client.map(|(client, run)| Telemetry {
        client,
        run,
        rank: args.rank,
        world_size: args.world_size,
        host: hostname(),
        user: user(),
        pid,
    });
    if let Some(t) = &telemetry {
        let start = ProcessStart {
            argv: args
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            ..ProcessStart::default()
        };
        if let Err(e) = t.send(Body::ProcessStart(start), 1) {
            crate::output::error(&format!(
                "cannot report the start: {e}; the command runs anyway"
            ));
        }
    }

    let (stop, stopped) = mpsc::channel::<()>();
    let heartbeats = telemetry.clone().map(|t| {
        let every = Duration::from_secs_f64(args.heartbeat);
        thread::spawn(move || {
            let mut failing = false;
            loop {
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                match t.send(Body::Heartbeat(Heartbeat::default()), 1) {
                    Ok(()) if failing => {
                        failing = false;
                        note("collector reachable again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        note(&format!("heartbeat failed: {e}"));
                    }
                    Err(_) => {}
                }
            }
        })
    });

    // Wait without reaping (WNOWAIT) so the pid cannot be reused while signals may still be
    // forwarded; stop forwarding; then reap.
    let status = wait(child_pid, WaitIdOptions::EXITED | WaitIdOptions::NOWAIT)?;
    handle.close();
    let _ = forwarder.join();
    let _ = wait(child_pid, WaitIdOptions::EXITED)?;
    drop(stop);
    if let Some(h) = heartbeats {
        let _ = h.join();
    }
    drop(child);

    let received = received.lock().ok().and_then(|r| *r);
    let exit = ProcessExit {
        exit_code: status.exit_status(),
        signal: status.terminating_signal(),
        core_dumped: status.dumped(),
        forwarded_signal: received.map(|r| r.signal),
        sender_pid: received.and_then(|r| r.sender_pid),
        sender_uid: received.and_then(|r| r.sender_uid),
    };
    let code = describe(pid, &exit);
    // The ledger (with --ledger) keeps the exit where the collector's database is not needed.
    if let Err(e) = crate::record::record(
        ctx,
        "run",
        std::path::Path::new(program),
        &[],
        &verdict(&exit),
    ) {
        crate::output::error(&format!("cannot record the exit in the ledger: {e:#}"));
    }
    if let Some(t) = &telemetry
        && let Err(e) = t.send(Body::ProcessExit(exit), 4)
    {
        crate::output::error(&format!("cannot report the exit: {e}"));
    }
    Ok(ExitCode::from(code))
}

fn wait(pid: Pid, options: WaitIdOptions) -> anyhow::Result<rustix::process::WaitIdStatus> {
    loop {
        match rustix::process::waitid(WaitId::Pid(pid), options) {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("waitid on the child failed"),
        }
    }
}

/// The ledger verdict of an exit: `exited N`, or `killed by SIGNAME` with the sender if known.
fn verdict(exit: &ProcessExit) -> String {
    match exit.signal {
        Some(sig) => {
            let mut v = format!("killed by {}", signal_name(sig).unwrap_or("unknown signal"));
            if exit.forwarded_signal == Some(sig)
                && let Some(pid) = exit.sender_pid
            {
                v.push_str(&format!(" from pid {pid}"));
                if let Some(uid) = exit.sender_uid {
                    v.push_str(&format!(" uid {uid}"));
                }
            }
            v
        }
        None => format!("exited {}", exit.exit_code.unwrap_or(0)),
    }
}

/// Say how the child ended; return the launcher's exit code.
fn describe(pid: u32, exit: &ProcessExit) -> u8 {
    let by = |r: Option<i32>| r.map_or_else(|| "?".into(), |v| v.to_string());
    let forwarded = match exit.forwarded_signal {
        Some(sig) => format!(
            "; the launcher received {} from pid {} (uid {}) and forwarded it",
            signal_name(sig).unwrap_or("a signal"),
            by(exit.sender_pid),
            exit.sender_uid
                .map_or_else(|| "?".into(), |u| u.to_string())
        ),
        None => String::new(),
    };
    if let Some(sig) = exit.signal {
        note(&format!(
            "pid {pid} was killed by {} ({sig}){}{forwarded}",
            signal_name(sig).unwrap_or("an unknown signal"),
            if exit.core_dumped {
                ", core dumped"
            } else {
                ""
            }
        ));
        u8::try_from(128 + sig.clamp(0, 127)).unwrap_or(255)
    } else {
        let code = exit.exit_code.unwrap_or(0);
        if code != 0 || !forwarded.is_empty() {
            note(&format!("pid {pid} exited with status {code}{forwarded}"));
        }
        (code & 0xff) as u8
    }
}
