//! Detectors over training telemetry: stragglers and rare sleeps, flipped or scaled updates,
//! replica divergence, RNG and seed changes, killed and hung processes, loss spikes and NaN.
//!
//! Pure logic: no I/O, no clock, no async. The collector (`tg-server`) feeds each run's events to
//! a [`RunWatch`] and stores what comes back as [`Incident`]s. The main design decision is to
//! judge *invariants* and *tails*, not averages: replicas must agree bit for bit, an update must
//! point the way the optimizer says, a seed must not change, and a rank is judged on how many of
//! its steps are slow compared with its peers, because an attacker's rare short sleep leaves every
//! median untouched (see `shared/reference/runtime.md` §3).
//!
//! # Wire format
//!
//! A client posts batches to `POST /v1/runs/{run}/events` with `Authorization: Bearer TOKEN`:
//!
//! ```json
//! {"events": [
//!   {"type": "process_start", "run": "llm-7b", "rank": 3, "world_size": 512, "host": "gpu-017",
//!    "pid": 4242, "user": "alice", "time_unix_s": 1764633600.0,
//!    "seed": 1234, "argv": ["python", "train.py"],
//!    "rng": {"python": "9f2c...", "numpy": "51aa...", "torch_cpu": "0c1d...", "torch_cuda": "77e0..."},
//!    "seed_calls": [{"api": "torch.manual_seed", "seed": 1234}]},
//!   {"type": "step", "run": "llm-7b", "rank": 3, "world_size": 512, "host": "gpu-017",
//!    "pid": 4242, "time_unix_s": 1764633601.5,
//!    "step": 100, "wall_s": 0.412, "device_s": 0.398, "loss": 2.31,
//!    "update": {"dot": 0.0123, "cosine": 0.9999, "update_norm": 0.81, "expected_norm": 0.81},
//!    "param_fingerprint": "a3f09c...", "update_fingerprint": "11bd07...",
//!    "replica_group": "pp0-tp0",
//!    "rng": {"torch_cuda": "77e0..."},
//!    "seed_calls": []},
//!   {"type": "heartbeat", "run": "llm-7b", "rank": 3, "world_size": 512, "host": "gpu-017",
//!    "pid": 4242, "time_unix_s": 1764633605.0, "step": 100},
//!   {"type": "process_exit", "run": "llm-7b", "rank": 3, "world_size": 512, "host": "gpu-017",
//!    "pid": 4242, "time_unix_s": 1764633700.0,
//!    "signal": 15, "core_dumped": false, "forwarded_signal": 15, "sender_pid": 1, "sender_uid": 0}
//! ]}
//! ```
//!
//! Every event carries `type`, `run` (1–128 of `[A-Za-z0-9._-]`, the run in the URL), `rank`
//! (below `world_size`), `world_size`, `host`, `pid`, `time_unix_s` and optionally `user`.
//!
//! - `step`: `step`, `wall_s` (wall-clock seconds of the rank's own timed section: the optimizer
//!   step and its compute, not the wait in collectives that every rank shares), and optionally
//!   `device_s` (CUDA-event seconds of the same section), `loss` (a number, or `"nan"`, `"inf"`,
//!   `"-inf"`: JSON has no NaN, so send `json.dumps(..., allow_nan=False)` after mapping them),
//!   `update` (`dot` = ⟨Δθ, u⟩ and `cosine` between the applied update Δθ and the update u the
//!   optimizer state predicts, plus optional `update_norm` ‖Δθ‖ and `expected_norm` ‖u‖),
//!   `param_fingerprint` and `update_fingerprint` (hex, up to 128 digits, equal bit for bit on
//!   replicas), `replica_group` (ranks with equal groups are replicas; absent = all ranks),
//!   `rng` (hex hashes of the `python`, `numpy`, `torch_cpu`, `torch_cuda` generator states;
//!   send only those that must agree within the group) and `seed_calls` made during the step
//!   (`api`, `seed`, `stack`).
//! - `heartbeat`: optional `step`.
//! - `process_start`: optional `seed` (the run's base seed), `argv`, `rng`, `seed_calls`.
//! - `process_exit`: `exit_code` or `signal` and `core_dumped`, and for a signal the launcher
//!   received and forwarded, `forwarded_signal`, `sender_pid`, `sender_uid` (see
//!   [`ProcessExit`] for what the kernel does and does not say).
//!
//! Fields this version does not know are ignored, so newer clients can talk to older collectors.
//!
//! # Detectors
//!
//! See [`Detector`] for the list and [`Thresholds`] for every threshold and its default.

mod config;
mod error;
mod event;
mod float;
mod incident;
mod replica;
mod stats;
mod timing;
mod watch;

pub use config::{Checked, Thresholds};
pub use error::{EventError, ThresholdError};
pub use event::{
    Batch, Body, Event, Heartbeat, MAX_HASH_HEX, MAX_NAME_LEN, MAX_SEED_CALLS, MAX_STACK_LEN,
    MAX_WORLD_SIZE, ProcessExit, ProcessStart, RngHashes, SeedCall, Step, UpdateCheck, signal_name,
    valid_run_id,
};
pub use incident::{Detector, Incident};
pub use watch::{RankPhase, RankView, RunWatch};

#[cfg(test)]
mod tests;
