//! A run's detector state: [`RunWatch`].

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::config::{Checked, Thresholds};
use crate::event::{Body, Event, ProcessExit, ProcessStart, Step, signal_name};
use crate::incident::{Detector, Incident};
use crate::replica::{Entry, Replicas};
use crate::stats::{MAD_TO_SIGMA, Window, median_mad};
use crate::timing::Timing;

/// Where a rank is in its life, as far as the collector can tell.
///
/// Ranks report from many hosts, out of order and sometimes twice, so this is data the detectors
/// read, not a typestate: a restart makes an exited rank run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RankPhase {
    /// Sending events (a process start, steps or heartbeats) and not known to have exited.
    Running,
    /// Its process exit was reported; silence is expected.
    Exited,
}

/// A read-only view of one rank, for dashboards and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RankView {
    /// Global rank.
    pub rank: u32,
    /// Host it last reported from.
    pub host: String,
    /// Process id it last reported.
    pub pid: u32,
    /// Running or exited.
    pub phase: RankPhase,
    /// Highest step reported.
    pub last_step: Option<u64>,
    /// Collector time of its last event, seconds since the Unix epoch.
    pub last_seen_unix_s: f64,
    /// Process starts reported (1 for a run that never restarted).
    pub starts: u32,
    /// Median and p99 step wall time over its window, once judged.
    pub step_p50_s: Option<f64>,
    /// See `step_p50_s`.
    pub step_p99_s: Option<f64>,
}

#[derive(Debug)]
struct Loss {
    window: Window,
    since_stats: u32,
    /// (median, σ) of the window, refreshed every few samples.
    stats: Option<(f64, f64)>,
}

#[derive(Debug)]
struct RankState {
    host: String,
    pid: u32,
    phase: RankPhase,
    last_seen: f64,
    last_step: Option<u64>,
    last_step_seen: f64,
    starts: u32,
    loss: Loss,
    heartbeat_reported: bool,
    stall_reported: bool,
}

#[derive(Debug, Clone, Copy)]
struct Quiet {
    last_step: u64,
    suppressed: u64,
}

/// The detectors of one run and their state. Feed it every event of the run with
/// [`observe`](RunWatch::observe) and call [`tick`](RunWatch::tick) every second or so for the
/// time-based detectors (missing heartbeats, stalls). Pure: the caller supplies the clock.
#[derive(Debug)]
pub struct RunWatch {
    run: String,
    t: Thresholds,
    world_size: u32,
    ranks: BTreeMap<u32, RankState>,
    timing: Timing,
    replicas: Replicas,
    /// (seed, rank that first reported it, pid).
    base_seed: Option<(u64, u32, u32)>,
    quiet: HashMap<(Detector, Option<u32>), Quiet>,
}

impl RunWatch {
    /// Start watching `run` with checked thresholds.
    pub fn new(run: impl Into<String>, thresholds: &Checked) -> Self {
        RunWatch {
            run: run.into(),
            t: thresholds.get().clone(),
            world_size: 1,
            ranks: BTreeMap::new(),
            timing: Timing::default(),
            replicas: Replicas::default(),
            base_seed: None,
            quiet: HashMap::new(),
        }
    }

    /// The run id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The world size last reported.
    pub fn world_size(&self) -> u32 {
        self.world_size
    }

    /// Every rank seen so far.
    pub fn ranks(&self) -> Vec<RankView> {
        self.ranks
            .iter()
            .map(|(&rank, s)| {
                let q = self.timing.quantiles(rank);
                RankView {
                    rank,
                    host: s.host.clone(),
                    pid: s.pid,
                    phase: s.phase,
                    last_step: s.last_step,
                    last_seen_unix_s: s.last_seen,
                    starts: s.starts,
                    step_p50_s: q.map(|q| q.0),
                    step_p99_s: q.map(|q| q.1),
                }
            })
            .collect()
    }

    /// The most recent step wall times of `rank`, oldest first.
    pub fn recent_step_times(&self, rank: u32, limit: usize) -> Vec<f64> {
        self.timing.recent(rank, limit)
    }

    fn incident(
        &self,
        rank: Option<u32>,
        step: Option<u64>,
        detector: Detector,
        summary: String,
        evidence: serde_json::Value,
        now: f64,
    ) -> Incident {
        let host = rank
            .and_then(|r| self.ranks.get(&r))
            .map(|s| s.host.clone());
        let mut evidence = evidence;
        if let serde_json::Value::Object(map) = &mut evidence {
            map.insert("world_size".into(), json!(self.world_size));
        }
        Incident {
            run: self.run.clone(),
            rank,
            host,
            step,
            detector,
            summary,
            evidence,
            time_unix_s: now,
        }
    }

    /// Per-step invariants fire at most once per `repeat_every_steps` per detector and rank;
    /// returns the number suppressed since the last report when this one may fire.
    fn debounce(&mut self, detector: Detector, rank: Option<u32>, step: u64) -> Option<u64> {
        let every = self.t.repeat_every_steps;
        match self.quiet.get_mut(&(detector, rank)) {
            Some(q) if step < q.last_step.saturating_add(every) && step >= q.last_step => {
                q.suppressed += 1;
                None
            }
            Some(q) => {
                let suppressed = q.suppressed;
                *q = Quiet {
                    last_step: step,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                self.quiet.insert(
                    (detector, rank),
                    Quiet {
                        last_step: step,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// Feed one event, received at collector time `now` (seconds since the Unix epoch); returns
    /// the incidents it reveals. The event should have passed [`Event::validate`].
    pub fn observe(&mut self, event: &Event, now: f64) -> Vec<Incident> {
        let mut out = Vec::new();
        self.world_size = event.world_size;
        let t = &self.t;
        let state = self.ranks.entry(event.rank).or_insert_with(|| RankState {
            host: event.host.clone(),
            pid: event.pid,
            phase: RankPhase::Running,
            last_seen: now,
            last_step: None,
            last_step_seen: now,
            starts: 0,
            loss: Loss {
                window: Window::new(t.loss_window),
                since_stats: 0,
                stats: None,
            },
            heartbeat_reported: false,
            stall_reported: false,
        });
        if state.host != event.host {
            state.host.clone_from(&event.host);
        }
        // An exited rank runs again only through a new process (a restart); a late batch from
        // the process that exited does not revive it.
        let new_process = state.pid != event.pid || matches!(event.body, Body::ProcessStart(_));
        match event.body {
            Body::ProcessExit(_) => {}
            _ if state.phase == RankPhase::Exited && !new_process => {}
            _ => state.phase = RankPhase::Running,
        }
        state.pid = event.pid;
        state.last_seen = now;
        state.heartbeat_reported = false;
        match &event.body {
            Body::Step(step) => self.on_step(event, step, now, &mut out),
            Body::Heartbeat(_) => {}
            Body::ProcessStart(start) => self.on_start(event, start, now, &mut out),
            Body::ProcessExit(exit) => self.on_exit(event, exit, now, &mut out),
        }
        out
    }

    fn on_step(&mut self, event: &Event, step: &Step, now: f64, out: &mut Vec<Incident>) {
        let rank = event.rank;
        let n = step.step;
        if let Some(state) = self.ranks.get_mut(&rank)
            && state.last_step.is_none_or(|last| n > last)
        {
            state.last_step = Some(n);
            state.last_step_seen = now;
            state.stall_reported = false;
        }

        if let Some(s) = self
            .timing
            .push(&self.t, rank, n, step.wall_s, step.device_s)
        {
            out.push(self.incident(
                Some(rank),
                Some(n),
                Detector::Straggler,
                s.summary,
                s.evidence,
                now,
            ));
        }

        if let Some(u) = step.update {
            let ratio = match (u.update_norm, u.expected_norm) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            if (!u.cosine.is_finite() || u.cosine < self.t.update_min_cosine)
                && let Some(suppressed) = self.debounce(Detector::UpdateFlipped, Some(rank), n)
            {
                let what = if u.cosine <= -0.9 {
                    "points opposite to (sign flip)"
                } else {
                    "does not point along"
                };
                out.push(self.incident(
                    Some(rank),
                    Some(n),
                    Detector::UpdateFlipped,
                    format!(
                        "rank {rank} step {n}: the applied update {what} the optimizer's \
                             direction (cosine {:.3}, threshold {})",
                        u.cosine, self.t.update_min_cosine
                    ),
                    json!({
                        "cosine": finite_or_string(u.cosine),
                        "dot": finite_or_string(u.dot),
                        "min_cosine": self.t.update_min_cosine,
                        "suppressed_since_last": suppressed,
                    }),
                    now,
                ));
            }
            if let Some(ratio) = ratio {
                let max = self.t.update_max_norm_ratio;
                if (!ratio.is_finite() || ratio > max || ratio < 1.0 / max)
                    && let Some(suppressed) = self.debounce(Detector::UpdateScaled, Some(rank), n)
                {
                    out.push(self.incident(
                        Some(rank),
                        Some(n),
                        Detector::UpdateScaled,
                        format!(
                            "rank {rank} step {n}: the applied update is {ratio:.3}x the \
                                 optimizer's (allowed {:.3}..{max})",
                            1.0 / max
                        ),
                        json!({
                            "norm_ratio": finite_or_string(ratio),
                            "update_norm": u.update_norm.map(finite_or_string),
                            "expected_norm": u.expected_norm.map(finite_or_string),
                            "max_norm_ratio": max,
                            "suppressed_since_last": suppressed,
                        }),
                        now,
                    ));
                }
            }
        }

        if let Some(loss) = step.loss {
            self.on_loss(rank, n, loss, now, out);
        }

        if !step.seed_calls.is_empty()
            && let Some(suppressed) = self.debounce(Detector::Reseed, Some(rank), n)
        {
            let calls: Vec<serde_json::Value> = step
                .seed_calls
                .iter()
                .map(|c| {
                    json!({
                        "api": c.api,
                        "seed": c.seed,
                        "stack": c.stack.as_deref().map(|s| truncate(s, 4096)),
                    })
                })
                .collect();
            let apis: Vec<&str> = step.seed_calls.iter().map(|c| c.api.as_str()).collect();
            out.push(self.incident(
                Some(rank),
                Some(n),
                Detector::Reseed,
                format!(
                    "rank {rank} step {n}: generator reseeded after initialisation ({})",
                    apis.join(", ")
                ),
                json!({ "calls": calls, "suppressed_since_last": suppressed }),
                now,
            ));
        }

        if step.param_fingerprint.is_some()
            || step.update_fingerprint.is_some()
            || step.rng.is_some()
        {
            let entry = Entry {
                group: step.replica_group.clone().unwrap_or_default(),
                param: step.param_fingerprint.clone(),
                update: step.update_fingerprint.clone(),
                rng: step.rng.clone(),
            };
            let findings =
                self.replicas
                    .insert(n, rank, entry, self.world_size, self.t.finalize_lag_steps);
            for f in findings {
                if let Some(suppressed) = self.debounce(f.detector, f.rank, f.step) {
                    let mut evidence = f.evidence;
                    if let serde_json::Value::Object(map) = &mut evidence {
                        map.insert("suppressed_since_last".into(), json!(suppressed));
                    }
                    out.push(self.incident(
                        f.rank,
                        Some(f.step),
                        f.detector,
                        f.summary,
                        evidence,
                        now,
                    ));
                }
            }
        }
    }

    fn on_loss(&mut self, rank: u32, n: u64, loss: f64, now: f64, out: &mut Vec<Incident>) {
        if !loss.is_finite() {
            if let Some(suppressed) = self.debounce(Detector::LossNonFinite, Some(rank), n) {
                out.push(self.incident(
                    Some(rank),
                    Some(n),
                    Detector::LossNonFinite,
                    format!("rank {rank} step {n}: loss is {loss}"),
                    json!({ "loss": finite_or_string(loss), "suppressed_since_last": suppressed }),
                    now,
                ));
            }
            return;
        }
        let (min, z_max, rel) = (self.t.loss_min_samples, self.t.loss_z, self.t.loss_rel);
        let Some(state) = self.ranks.get_mut(&rank) else {
            return;
        };
        let l = &mut state.loss;
        let mut spike = None;
        if l.window.len() >= min {
            if l.stats.is_none() || l.since_stats >= 8 {
                // Median and MAD need no sorted copy: selection is linear (this runs every
                // eighth step of every rank, under the collector's lock).
                let (med, mad) = median_mad(l.window.as_slice());
                l.stats = Some((med, MAD_TO_SIGMA * mad));
                l.since_stats = 0;
            }
            if let Some((med, sigma)) = l.stats {
                let sigma = sigma.max(1e-9 * med.abs()).max(1e-12);
                let z = (loss - med) / sigma;
                if z > z_max && loss > med + rel * med.abs() {
                    spike = Some((med, sigma, z));
                }
            }
        }
        l.window.push(loss);
        l.since_stats += 1;
        if let Some((med, sigma, z)) = spike
            && let Some(suppressed) = self.debounce(Detector::LossSpike, Some(rank), n)
        {
            out.push(self.incident(
                Some(rank),
                Some(n),
                Detector::LossSpike,
                format!(
                    "rank {rank} step {n}: loss {loss:.4} is {z:.1} robust sigmas above its \
                         recent median {med:.4}"
                ),
                json!({
                    "loss": loss,
                    "median": med,
                    "sigma": sigma,
                    "robust_z": z,
                    "z_threshold": z_max,
                    "suppressed_since_last": suppressed,
                }),
                now,
            ));
        }
    }

    fn on_start(&mut self, event: &Event, start: &ProcessStart, now: f64, out: &mut Vec<Incident>) {
        let rank = event.rank;
        let starts = self.ranks.get_mut(&rank).map_or(1, |s| {
            s.starts += 1;
            s.stall_reported = false;
            s.starts
        });
        let Some(seed) = start.seed else {
            return;
        };
        match self.base_seed {
            None => self.base_seed = Some((seed, rank, event.pid)),
            Some((expected, first_rank, first_pid)) if expected != seed => {
                let across = if first_rank == rank {
                    "across a restart"
                } else {
                    "across ranks"
                };
                out.push(self.incident(
                    Some(rank),
                    None,
                    Detector::SeedChanged,
                    format!(
                        "rank {rank} (pid {}) started with base seed {seed}, the run's is \
                         {expected} (first reported by rank {first_rank}); changed {across}",
                        event.pid
                    ),
                    json!({
                        "seed": seed,
                        "expected_seed": expected,
                        "expected_from_rank": first_rank,
                        "expected_from_pid": first_pid,
                        "pid": event.pid,
                        "starts_of_rank": starts,
                        "argv": start.argv,
                    }),
                    now,
                ));
            }
            Some(_) => {}
        }
    }

    fn on_exit(&mut self, event: &Event, exit: &ProcessExit, now: f64, out: &mut Vec<Incident>) {
        let rank = event.rank;
        let last_step = self.ranks.get_mut(&rank).and_then(|s| {
            s.phase = RankPhase::Exited;
            s.last_step
        });
        let sender = match (exit.sender_pid, exit.sender_uid) {
            (None, None) => None,
            (pid, uid) => Some(json!({ "pid": pid, "uid": uid })),
        };
        let forwarded = exit.forwarded_signal.map(|s| {
            json!({
                "signal": s,
                "name": signal_name(s),
                "sender": sender,
            })
        });
        if let Some(sig) = exit.signal {
            let name = signal_name(sig).unwrap_or("unknown signal");
            let who = if exit.forwarded_signal == Some(sig) && sender.is_some() {
                format!(
                    "sent to its launcher by pid {} (uid {}) and forwarded",
                    exit.sender_pid
                        .map_or_else(|| "?".into(), |p| p.to_string()),
                    exit.sender_uid
                        .map_or_else(|| "?".into(), |u| u.to_string())
                )
            } else {
                "sender unknown: for a child killed by a signal the kernel reports only the \
                 signal; audit or eBPF must name the sender"
                    .to_string()
            };
            out.push(self.incident(
                Some(rank),
                last_step,
                Detector::Killed,
                format!(
                    "rank {rank} (pid {}) was killed by {name} ({sig}); {who}",
                    event.pid
                ),
                json!({
                    "pid": event.pid,
                    "signal": sig,
                    "signal_name": signal_name(sig),
                    "core_dumped": exit.core_dumped,
                    "forwarded": forwarded,
                    "last_step": last_step,
                }),
                now,
            ));
        } else if let Some(code) = exit.exit_code.filter(|&c| c != 0) {
            out.push(self.incident(
                Some(rank),
                last_step,
                Detector::FailedExit,
                format!("rank {rank} (pid {}) exited with status {code}", event.pid),
                json!({
                    "pid": event.pid,
                    "exit_code": code,
                    "forwarded": forwarded,
                    "last_step": last_step,
                }),
                now,
            ));
        }
    }

    /// Run the time-based detectors at collector time `now`.
    pub fn tick(&mut self, now: f64) -> Vec<Incident> {
        let mut found = Vec::new();
        for (&rank, s) in &mut self.ranks {
            if s.phase != RankPhase::Running {
                continue;
            }
            let silent = now - s.last_seen;
            if silent > self.t.heartbeat_timeout_s {
                if !s.heartbeat_reported {
                    s.heartbeat_reported = true;
                    found.push((
                        rank,
                        s.last_step,
                        Detector::HeartbeatMissing,
                        format!(
                            "rank {rank} (pid {} on {}) sent nothing for {silent:.1} s \
                             (timeout {} s) without a reported exit: killed, hung or cut off",
                            s.pid, s.host, self.t.heartbeat_timeout_s
                        ),
                        json!({
                            "pid": s.pid,
                            "silent_s": silent,
                            "timeout_s": self.t.heartbeat_timeout_s,
                            "last_step": s.last_step,
                        }),
                    ));
                }
                continue;
            }
            let Some(last_step) = s.last_step else {
                continue;
            };
            let p50 = self.timing.quantiles(rank).map_or(0.0, |q| q.0);
            let limit = self.t.stall_min_s.max(self.t.stall_factor * p50);
            let stalled = now - s.last_step_seen;
            if stalled > limit && !s.stall_reported {
                s.stall_reported = true;
                found.push((
                    rank,
                    Some(last_step),
                    Detector::Stalled,
                    format!(
                        "rank {rank} (pid {}) is alive but has not finished a step for \
                         {stalled:.1} s (limit {limit:.1} s) after step {last_step}",
                        s.pid
                    ),
                    json!({
                        "pid": s.pid,
                        "stalled_s": stalled,
                        "limit_s": limit,
                        "median_step_s": p50,
                    }),
                ));
            }
        }
        found
            .into_iter()
            .map(|(rank, step, detector, summary, evidence)| {
                self.incident(Some(rank), step, detector, summary, evidence, now)
            })
            .collect()
    }
}

fn finite_or_string(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
