//! Stragglers and intermittent sleeps: per-rank tail statistics of step time against the peers,
//! and wall against device time.
//!
//! A median-based score (NVRx's) does not move when one rank sleeps 200 ms in one step of 50:
//! its median is unchanged. So each rank keeps a bounded window of step times and is judged on
//! its *tail*: how many of its steps exceed `reference + max(k·σ, rel·reference, abs)`, where the
//! reference median and σ (1.4826·MAD) come from the other ranks. A rank whose outlier count is
//! well above its peers' is a straggler; the median ratio catches persistent slowness as well.
//! When device time is reported, the outlier steps say where the time went: a `time.sleep` or
//! other host-side work raises wall time while device time stays flat.

use std::collections::BTreeMap;

use serde_json::json;

use crate::config::Thresholds;
use crate::stats::{MAD_TO_SIGMA, Window, median, median_mad, quantile_max};

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: f64,
    sigma: f64,
    p99: f64,
    outliers: usize,
}

#[derive(Debug)]
struct RankTiming {
    wall: Window,
    /// Device seconds aligned with `wall`; NaN where not reported.
    device: Window,
    since_eval: u64,
    stats: Option<Stats>,
    last_report: Option<u64>,
}

/// A straggler verdict: the summary sentence and the evidence.
#[derive(Debug)]
pub(crate) struct Straggle {
    pub(crate) summary: String,
    pub(crate) evidence: serde_json::Value,
}

/// Per-run timing state.
#[derive(Debug, Default)]
pub(crate) struct Timing {
    ranks: BTreeMap<u32, RankTiming>,
}

impl Timing {
    /// Recent wall times of a rank, oldest first (at most `limit`).
    pub(crate) fn recent(&self, rank: u32, limit: usize) -> Vec<f64> {
        self.ranks.get(&rank).map_or_else(Vec::new, |r| {
            let skip = r.wall.len().saturating_sub(limit);
            r.wall.iter().skip(skip).collect()
        })
    }

    /// Median and p99 of a rank's window, once it has been judged.
    pub(crate) fn quantiles(&self, rank: u32) -> Option<(f64, f64)> {
        self.ranks
            .get(&rank)
            .and_then(|r| r.stats)
            .map(|s| (s.p50, s.p99))
    }

    /// Record one step of `rank`; judge the rank when its turn comes.
    pub(crate) fn push(
        &mut self,
        t: &Thresholds,
        rank: u32,
        step: u64,
        wall_s: f64,
        device_s: Option<f64>,
    ) -> Option<Straggle> {
        let entry = self.ranks.entry(rank).or_insert_with(|| RankTiming {
            wall: Window::new(t.timing_window),
            device: Window::new(t.timing_window),
            since_eval: 0,
            stats: None,
            last_report: None,
        });
        entry.wall.push(wall_s);
        entry.device.push(device_s.unwrap_or(f64::NAN));
        entry.since_eval += 1;
        if entry.wall.len() < t.timing_min_samples || entry.since_eval < t.timing_eval_every {
            return None;
        }
        entry.since_eval = 0;
        self.judge(t, rank, step)
    }

    fn judge(&mut self, t: &Thresholds, rank: u32, step: u64) -> Option<Straggle> {
        let mut peer_p50 = Vec::new();
        let mut peer_sigma = Vec::new();
        let mut peer_p99 = Vec::new();
        let mut peer_outliers = Vec::new();
        for (&r, rt) in &self.ranks {
            if let (true, Some(s)) = (r != rank, rt.stats) {
                peer_p50.push(s.p50);
                peer_sigma.push(s.sigma);
                peer_p99.push(s.p99);
                peer_outliers.push(s.outliers as f64);
            }
        }
        let me = self.ranks.get_mut(&rank)?;
        // Selections, not a sort: the same values, in linear time.
        let (p50, mad) = median_mad(me.wall.as_slice());
        let sigma = MAD_TO_SIGMA * mad;
        let (p99, max) = quantile_max(me.wall.as_slice(), 0.99);
        let peers = peer_p50.len();
        // Without peers, a rank is judged against its own history only for the record (its
        // outlier count becomes a peer statistic for others), never reported.
        let (ref_p50, ref_sigma) = if peers == 0 {
            (p50, sigma)
        } else {
            (median(&mut peer_p50), median(&mut peer_sigma))
        };
        let threshold = ref_p50
            + (t.outlier_sigmas * ref_sigma)
                .max(t.outlier_rel * ref_p50)
                .max(t.outlier_abs_s);
        let outlier_idx: Vec<usize> = me
            .wall
            .iter()
            .enumerate()
            .filter(|&(_, w)| w > threshold)
            .map(|(i, _)| i)
            .collect();
        let outliers = outlier_idx.len();
        me.stats = Some(Stats {
            p50,
            sigma,
            p99,
            outliers,
        });
        if peers == 0 {
            return None;
        }
        let peer_typical = median(&mut peer_outliers);
        let ref_p99 = median(&mut peer_p99);
        let tail = outliers >= t.outlier_min_count
            && outliers as f64 >= t.outlier_peer_factor * (peer_typical + 1.0);
        let slow = p50 >= t.slow_median_ratio * ref_p50;
        if !(tail || slow) {
            return None;
        }
        if me
            .last_report
            .is_some_and(|last| step < last.saturating_add(t.timing_window as u64))
        {
            return None;
        }
        me.last_report = Some(step);

        // Where did the extra time go? Compare device time in the outlier steps with the rank's
        // typical device time.
        let walls: Vec<f64> = me.wall.iter().collect();
        let devices: Vec<f64> = me.device.iter().collect();
        let mut dev_all: Vec<f64> = devices.iter().copied().filter(|d| !d.is_nan()).collect();
        let mut dev_out: Vec<f64> = outlier_idx
            .iter()
            .map(|&i| devices[i])
            .filter(|d| !d.is_nan())
            .collect();
        let mut excess: Vec<f64> = outlier_idx.iter().map(|&i| walls[i] - ref_p50).collect();
        let excess_p50 = median(&mut excess);
        let device_p50 = median(&mut dev_all);
        let device_p50_outliers = median(&mut dev_out);
        let cause = if dev_out.is_empty() || device_p50.is_nan() {
            "unknown (no device time reported)"
        } else if device_p50_outliers <= device_p50 * 1.1 + t.outlier_abs_s {
            "host side: wall time rose while device time stayed flat (a sleep or CPU work)"
        } else {
            "device side: device time rose with wall time"
        };
        let kind = if tail { "tail" } else { "median" };
        let summary = if tail {
            format!(
                "rank {rank}: {outliers} of its last {} steps took over {threshold:.3} s \
                 (peers' median step {ref_p50:.3} s, peers typically {peer_typical} such steps); \
                 cause: {cause}",
                walls.len()
            )
        } else {
            format!(
                "rank {rank}: median step {p50:.3} s is {:.2}x its peers' {ref_p50:.3} s; \
                 cause: {cause}",
                p50 / ref_p50
            )
        };
        let evidence = json!({
            "kind": kind,
            "window_steps": walls.len(),
            "outlier_steps": outliers,
            "outlier_threshold_s": threshold,
            "peer_median_outlier_steps": peer_typical,
            "p50_s": p50,
            "p99_s": p99,
            "max_s": max,
            "peer_p50_s": ref_p50,
            "peer_p99_s": ref_p99,
            "peer_sigma_s": ref_sigma,
            "peers": peers,
            "median_excess_s": nan_to_null(excess_p50),
            "device_p50_s": nan_to_null(device_p50),
            "device_p50_in_outliers_s": nan_to_null(device_p50_outliers),
            "cause": cause,
        });
        Some(Straggle { summary, evidence })
    }
}

fn nan_to_null(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}
