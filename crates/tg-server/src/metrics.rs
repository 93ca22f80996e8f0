//! Prometheus text exposition: base units, `_total` counters, per-rank labels, and never a step
//! number or a hash as a label (they belong in events; each label set is a time series).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tg_watch::{Body, Detector, Event, RankPhase, RunWatch};

/// Upper bounds of the step-duration histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Default)]
struct RankMetrics {
    events: [u64; 4],
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
    cosine: Option<f64>,
    loss: Option<f64>,
    exits_by_signal: BTreeMap<i32, u64>,
}

/// Counters of one run.
#[derive(Debug, Default)]
pub(crate) struct RunMetrics {
    ranks: BTreeMap<u32, RankMetrics>,
    incidents: BTreeMap<Detector, u64>,
}

const TYPES: [&str; 4] = ["step", "heartbeat", "process_start", "process_exit"];

impl RunMetrics {
    pub(crate) fn event(&mut self, e: &Event) {
        let r = self.ranks.entry(e.rank).or_default();
        let idx = match &e.body {
            Body::Step(s) => {
                let slot = BUCKETS.iter().position(|&b| s.wall_s <= b);
                if let Some(slot) = slot {
                    r.buckets[slot] += 1;
                }
                r.count += 1;
                r.sum += s.wall_s;
                if let Some(u) = s.update {
                    r.cosine = Some(u.cosine);
                }
                if s.loss.is_some() {
                    r.loss = s.loss;
                }
                0
            }
            Body::Heartbeat(_) => 1,
            Body::ProcessStart(_) => 2,
            Body::ProcessExit(x) => {
                if let Some(sig) = x.signal {
                    *r.exits_by_signal.entry(sig).or_default() += 1;
                }
                3
            }
        };
        r.events[idx] += 1;
    }

    pub(crate) fn incident(&mut self, d: Detector) {
        *self.incidents.entry(d).or_default() += 1;
    }

    pub(crate) fn add_incidents(&mut self, d: Detector, n: u64) {
        *self.incidents.entry(d).or_default() += n;
    }
}

/// Collector-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Global {
    pub(crate) batches: u64,
    pub(crate) events: u64,
    /// Store commits (one fsync each), copied in from the committer when rendering.
    pub(crate) commits: u64,
    pub(crate) rejected: BTreeMap<&'static str, u64>,
    pub(crate) webhook_delivered: u64,
    pub(crate) webhook_failed: u64,
}

/// Escape a label value (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Render every metric; `now` is the collector clock for heartbeat ages.
pub(crate) fn render<'a>(
    runs: impl Iterator<Item = (&'a str, &'a RunWatch, &'a RunMetrics)> + Clone,
    global: &Global,
    now: f64,
) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "trainguard_build_info",
        "gauge",
        "Build metadata of the collector.",
    );
    let _ = writeln!(
        out,
        "trainguard_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    header(
        &mut out,
        "trainguard_ingest_batches_total",
        "counter",
        "Event batches stored and acknowledged.",
    );
    let _ = writeln!(out, "trainguard_ingest_batches_total {}", global.batches);
    header(
        &mut out,
        "trainguard_ingest_events_total",
        "counter",
        "Events stored and acknowledged.",
    );
    let _ = writeln!(out, "trainguard_ingest_events_total {}", global.events);
    header(
        &mut out,
        "trainguard_store_commits_total",
        "counter",
        "Durable commits (one fsync each); batches that arrive together share one.",
    );
    let _ = writeln!(out, "trainguard_store_commits_total {}", global.commits);
    header(
        &mut out,
        "trainguard_ingest_rejected_total",
        "counter",
        "Requests refused, by reason.",
    );
    for (reason, n) in &global.rejected {
        let _ = writeln!(
            out,
            "trainguard_ingest_rejected_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        &mut out,
        "trainguard_webhook_deliveries_total",
        "counter",
        "Incident webhook deliveries, by outcome.",
    );
    let _ = writeln!(
        out,
        "trainguard_webhook_deliveries_total{{outcome=\"delivered\"}} {}",
        global.webhook_delivered
    );
    let _ = writeln!(
        out,
        "trainguard_webhook_deliveries_total{{outcome=\"failed\"}} {}",
        global.webhook_failed
    );

    header(
        &mut out,
        "trainguard_events_total",
        "counter",
        "Events received per run, rank and type.",
    );
    for (run, _, m) in runs.clone() {
        for (rank, r) in &m.ranks {
            for (i, t) in TYPES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "trainguard_events_total{{run=\"{}\",rank=\"{rank}\",type=\"{t}\"}} {}",
                    esc(run),
                    r.events[i]
                );
            }
        }
    }
    header(
        &mut out,
        "trainguard_step_duration_seconds",
        "histogram",
        "Wall-clock time of the timed step section per rank.",
    );
    for (run, _, m) in runs.clone() {
        for (rank, r) in &m.ranks {
            if r.count == 0 {
                continue;
            }
            let labels = format!("run=\"{}\",rank=\"{rank}\"", esc(run));
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(r.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "trainguard_step_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "trainguard_step_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                r.count
            );
            let _ = writeln!(
                out,
                "trainguard_step_duration_seconds_sum{{{labels}}} {}",
                num(r.sum)
            );
            let _ = writeln!(
                out,
                "trainguard_step_duration_seconds_count{{{labels}}} {}",
                r.count
            );
        }
    }
    header(
        &mut out,
        "trainguard_update_cosine",
        "gauge",
        "Cosine between the last applied update and the optimizer-predicted one (healthy: 1).",
    );
    for (run, _, m) in runs.clone() {
        for (rank, r) in &m.ranks {
            if let Some(c) = r.cosine {
                let _ = writeln!(
                    out,
                    "trainguard_update_cosine{{run=\"{}\",rank=\"{rank}\"}} {}",
                    esc(run),
                    num(c)
                );
            }
        }
    }
    header(
        &mut out,
        "trainguard_loss",
        "gauge",
        "Last loss reported per rank.",
    );
    for (run, _, m) in runs.clone() {
        for (rank, r) in &m.ranks {
            if let Some(l) = r.loss {
                let _ = writeln!(
                    out,
                    "trainguard_loss{{run=\"{}\",rank=\"{rank}\"}} {}",
                    esc(run),
                    num(l)
                );
            }
        }
    }
    header(
        &mut out,
        "trainguard_process_signal_exits_total",
        "counter",
        "Process exits by signal per rank.",
    );
    for (run, _, m) in runs.clone() {
        for (rank, r) in &m.ranks {
            for (sig, n) in &r.exits_by_signal {
                let name = tg_watch::signal_name(*sig).unwrap_or("unknown");
                let _ = writeln!(
                    out,
                    "trainguard_process_signal_exits_total{{run=\"{}\",rank=\"{rank}\",signal=\"{name}\"}} {n}",
                    esc(run)
                );
            }
        }
    }
    header(
        &mut out,
        "trainguard_rank_up",
        "gauge",
        "1 while a rank runs, 0 after its exit was reported.",
    );
    header(
        &mut out,
        "trainguard_rank_last_event_age_seconds",
        "gauge",
        "Seconds since the rank's last event.",
    );
    header(
        &mut out,
        "trainguard_rank_step",
        "gauge",
        "Highest step reported by the rank.",
    );
    for (run, watch, _) in runs.clone() {
        for v in watch.ranks() {
            let labels = format!("run=\"{}\",rank=\"{}\"", esc(run), v.rank);
            let up = u8::from(v.phase == RankPhase::Running);
            let _ = writeln!(out, "trainguard_rank_up{{{labels}}} {up}");
            let _ = writeln!(
                out,
                "trainguard_rank_last_event_age_seconds{{{labels}}} {}",
                num((now - v.last_seen_unix_s).max(0.0))
            );
            if let Some(s) = v.last_step {
                let _ = writeln!(out, "trainguard_rank_step{{{labels}}} {s}");
            }
        }
    }
    header(
        &mut out,
        "trainguard_incidents_total",
        "counter",
        "Incidents raised per run and detector.",
    );
    for (run, _, m) in runs {
        for d in Detector::ALL {
            let n = m.incidents.get(&d).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "trainguard_incidents_total{{run=\"{}\",detector=\"{d}\"}} {n}",
                esc(run)
            );
        }
    }
    out
}
