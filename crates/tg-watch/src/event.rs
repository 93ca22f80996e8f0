//! The telemetry wire format: what a training process (or `trainguard run`) sends the collector.
//!
//! See the crate documentation for the JSON shape; this module holds the types and their checks.

use serde::{Deserialize, Serialize};

use crate::error::EventError;

/// Longest run id, host name, user name or `api` string accepted.
pub const MAX_NAME_LEN: usize = 256;
/// Longest fingerprint or RNG-state hash accepted, in hex digits.
pub const MAX_HASH_HEX: usize = 128;
/// Largest world size accepted.
pub const MAX_WORLD_SIZE: u32 = 1 << 20;
/// Most seeding calls accepted in one event.
pub const MAX_SEED_CALLS: usize = 64;
/// Longest Python stack accepted with a seeding call, in bytes.
pub const MAX_STACK_LEN: usize = 16 * 1024;

/// A batch, the body of `POST /v1/runs/{run}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The events, in the order the sender produced them.
    pub events: Vec<Event>,
}

/// One telemetry event from one process (one rank).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The run (job) id; must equal the run in the URL it is posted to.
    pub run: String,
    /// Global rank of the process, `0..world_size`.
    pub rank: u32,
    /// Number of ranks in the job, logged with every record so scale-gated behaviour shows.
    pub world_size: u32,
    /// Host name the process runs on.
    pub host: String,
    /// Process id of the training process.
    pub pid: u32,
    /// User the training process runs as, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Sender's wall clock, seconds since the Unix epoch (informational: the collector times
    /// heartbeats with its own clock).
    pub time_unix_s: f64,
    /// What happened.
    #[serde(flatten)]
    pub body: Body,
}

/// The kinds of events, tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// One training step on one rank.
    Step(Step),
    /// The process (or its launcher) is alive.
    Heartbeat(Heartbeat),
    /// A training process started (also sent again on every restart).
    ProcessStart(ProcessStart),
    /// A training process ended, as its parent saw it.
    ProcessExit(ProcessExit),
}

/// One training step on one rank.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Step {
    /// Step number (the optimizer step count).
    pub step: u64,
    /// Wall-clock seconds of the timed section on this rank (the optimizer step and the
    /// compute around it, not the wait inside collectives, which every rank shares).
    pub wall_s: f64,
    /// Device (CUDA event) seconds of the same section, when measured. A host-side sleep
    /// raises `wall_s` but not `device_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_s: Option<f64>,
    /// Training loss on this rank; non-finite values are sent as the strings `"nan"`, `"inf"`,
    /// `"-inf"` (JSON has no NaN).
    #[serde(
        default,
        with = "crate::float",
        skip_serializing_if = "Option::is_none"
    )]
    pub loss: Option<f64>,
    /// The applied update compared with the direction the optimizer state predicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateCheck>,
    /// Fingerprint of the parameters after the step, in hex; data-parallel replicas must share it
    /// bit for bit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_fingerprint: Option<String>,
    /// Fingerprint of the applied update (θ after − θ before), in hex; replicas must share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_fingerprint: Option<String>,
    /// Ranks with the same replica group hold replicas of the same parameters and RNG streams
    /// (e.g. `"pp0-tp1"`); absent means every rank of the run is a replica of every other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_group: Option<String>,
    /// Hashes of the generator states after the step (only those that must agree in the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngHashes>,
    /// Seeding calls made during this step (after initialisation every one is suspect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed_calls: Vec<SeedCall>,
}

/// The applied update Δθ against the optimizer-predicted update u (both over the same sample of
/// parameter elements). A healthy step has `cosine` ≈ +1 and `update_norm / expected_norm` ≈ 1.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct UpdateCheck {
    /// ⟨Δθ, u⟩.
    #[serde(with = "crate::float::required")]
    pub dot: f64,
    /// ⟨Δθ, u⟩ / (‖Δθ‖ ‖u‖); a sign flip gives ≈ −1.
    #[serde(with = "crate::float::required")]
    pub cosine: f64,
    /// ‖Δθ‖, when sent.
    #[serde(
        default,
        with = "crate::float",
        skip_serializing_if = "Option::is_none"
    )]
    pub update_norm: Option<f64>,
    /// ‖u‖, when sent.
    #[serde(
        default,
        with = "crate::float",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected_norm: Option<f64>,
}

/// Hashes (hex) of random-generator states.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RngHashes {
    /// Python `random.getstate()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// `numpy.random.get_state()` (legacy global generator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numpy: Option<String>,
    /// `torch.get_rng_state()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_cpu: Option<String>,
    /// Every CUDA generator of the process (`torch.cuda.get_rng_state_all()`), hashed together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_cuda: Option<String>,
}

impl RngHashes {
    /// The generators as (name, hash) pairs, absent ones skipped.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("python", &self.python),
            ("numpy", &self.numpy),
            ("torch_cpu", &self.torch_cpu),
            ("torch_cuda", &self.torch_cuda),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.as_deref().map(|v| (name, v)))
    }
}

/// A call that seeded a generator (`torch.manual_seed`, `np.random.seed`, `random.seed`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeedCall {
    /// The function called, e.g. `"torch.manual_seed"`.
    pub api: String,
    /// The seed, when it was an integer that fits in 64 bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The Python stack of the caller, when captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

/// Liveness; sent every few seconds by the process or its launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Last completed step, when the sender knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
}

/// A training process started.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessStart {
    /// The run's base seed as configured (the same on every rank and every restart; per-rank
    /// offsets are applied after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Command line of the process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Generator states right after initial seeding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngHashes>,
    /// Seeding calls made during initialisation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed_calls: Vec<SeedCall>,
}

/// A training process ended, as its parent (`trainguard run`) saw it through `waitid`.
///
/// For a child killed by a signal Linux reports only the signal (`CLD_KILLED`/`CLD_DUMPED`,
/// `si_status`); `si_pid`/`si_uid` then name the child itself, never the sender. The sender is
/// known only for signals the launcher received and forwarded (`sender_*`, from the launcher's
/// own `SA_SIGINFO` handler); for anything else it needs kernel-side evidence (audit, eBPF).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessExit {
    /// Exit status, when the process exited (`CLD_EXITED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number that terminated the process (`CLD_KILLED` or `CLD_DUMPED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether the process dumped core (`CLD_DUMPED`).
    #[serde(default)]
    pub core_dumped: bool,
    /// A signal the launcher received and forwarded to the process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_signal: Option<i32>,
    /// Process id that sent `forwarded_signal` to the launcher (`si_pid`), when the kernel said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_pid: Option<i32>,
    /// Real user id that sent `forwarded_signal` to the launcher (`si_uid`), when the kernel said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_uid: Option<u32>,
}

/// Whether `run` is an acceptable run id: 1 to 128 characters of `[A-Za-z0-9._-]`, not starting
/// with a dot.
pub fn valid_run_id(run: &str) -> bool {
    !run.is_empty()
        && run.len() <= 128
        && !run.starts_with('.')
        && run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(field: &'static str, value: &str) -> Result<(), EventError> {
    if value.len() > MAX_NAME_LEN || value.chars().any(char::is_control) {
        return Err(EventError::BadField {
            field,
            reason: "too long or has control characters",
        });
    }
    Ok(())
}

fn check_hash(field: &'static str, value: &str) -> Result<(), EventError> {
    // Every byte, without a branch per byte: hex digits are random, so branching between the
    // digit and letter ranges mispredicts about every other byte, and this runs on every hash
    // of every event the collector receives.
    if value.is_empty()
        || value.len() > MAX_HASH_HEX
        || !value.bytes().fold(true, |ok, b| ok & b.is_ascii_hexdigit())
    {
        return Err(EventError::BadField {
            field,
            reason: "not 1 to 128 hex digits",
        });
    }
    Ok(())
}

fn check_seconds(field: &'static str, value: f64) -> Result<(), EventError> {
    if !value.is_finite() || value < 0.0 {
        return Err(EventError::BadField {
            field,
            reason: "not a finite, non-negative number of seconds",
        });
    }
    Ok(())
}

fn check_seed_calls(calls: &[SeedCall]) -> Result<(), EventError> {
    if calls.len() > MAX_SEED_CALLS {
        return Err(EventError::BadField {
            field: "seed_calls",
            reason: "more than 64 calls",
        });
    }
    for call in calls {
        check_name("seed_calls.api", &call.api)?;
        if call.stack.as_ref().is_some_and(|s| s.len() > MAX_STACK_LEN) {
            return Err(EventError::BadField {
                field: "seed_calls.stack",
                reason: "longer than 16 KiB",
            });
        }
    }
    Ok(())
}

fn check_rng(rng: &RngHashes) -> Result<(), EventError> {
    for (_, hash) in rng.fields() {
        check_hash("rng", hash)?;
    }
    Ok(())
}

impl Event {
    /// Check the event as hostile input: ids, bounds, lengths, hex, finite timings.
    pub fn validate(&self) -> Result<(), EventError> {
        if !valid_run_id(&self.run) {
            return Err(EventError::BadRunId(self.run.clone()));
        }
        if self.world_size == 0 || self.world_size > MAX_WORLD_SIZE {
            return Err(EventError::BadField {
                field: "world_size",
                reason: "not in 1..=1048576",
            });
        }
        if self.rank >= self.world_size {
            return Err(EventError::BadField {
                field: "rank",
                reason: "not below world_size",
            });
        }
        check_name("host", &self.host)?;
        if let Some(user) = &self.user {
            check_name("user", user)?;
        }
        if !self.time_unix_s.is_finite() {
            return Err(EventError::BadField {
                field: "time_unix_s",
                reason: "not finite",
            });
        }
        match &self.body {
            Body::Step(step) => {
                check_seconds("wall_s", step.wall_s)?;
                if let Some(d) = step.device_s {
                    check_seconds("device_s", d)?;
                }
                for (field, fp) in [
                    ("param_fingerprint", &step.param_fingerprint),
                    ("update_fingerprint", &step.update_fingerprint),
                ] {
                    if let Some(fp) = fp {
                        check_hash(field, fp)?;
                    }
                }
                if let Some(group) = &step.replica_group {
                    check_name("replica_group", group)?;
                }
                if let Some(rng) = &step.rng {
                    check_rng(rng)?;
                }
                check_seed_calls(&step.seed_calls)?;
            }
            Body::ProcessStart(start) => {
                if start.argv.len() > 4096 || start.argv.iter().any(|a| a.len() > 64 * 1024) {
                    return Err(EventError::BadField {
                        field: "argv",
                        reason: "too many or too long arguments",
                    });
                }
                if let Some(rng) = &start.rng {
                    check_rng(rng)?;
                }
                check_seed_calls(&start.seed_calls)?;
            }
            Body::Heartbeat(_) | Body::ProcessExit(_) => {}
        }
        Ok(())
    }
}

/// The Linux name of a signal number (`9` → `"SIGKILL"`), for the signals every architecture
/// numbers the same way and the common x86/arm ones above them.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i).copied())
}
