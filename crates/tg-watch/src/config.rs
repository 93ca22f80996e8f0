//! Detector thresholds, with the reasoning behind each default.

use crate::error::ThresholdError;

/// Detector thresholds. Build with [`Thresholds::default`] (or from JSON, where missing fields
/// take their defaults), adjust, then [`Thresholds::check`]: a [`RunWatch`](crate::RunWatch) can
/// only be made from checked thresholds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Thresholds {
    /// Step timings kept per rank (bounded memory; FlagScale#1215 flags unbounded histories).
    pub timing_window: usize,
    /// Timings a rank needs before it is judged.
    pub timing_min_samples: usize,
    /// A rank is re-judged every this many of its steps.
    pub timing_eval_every: u64,
    /// A step is an outlier above `reference median + max(k·σ, rel·median, abs)`: this is k, σ
    /// being the peers' median MAD-based standard deviation.
    pub outlier_sigmas: f64,
    /// ... rel: the relative floor, so that very steady runs do not flag ordinary jitter.
    pub outlier_rel: f64,
    /// ... abs: the absolute floor, in seconds.
    pub outlier_abs_s: f64,
    /// A rank is a straggler when it has at least this many outlier steps in its window ...
    pub outlier_min_count: usize,
    /// ... and at least this many times (the peers' median outlier count + 1).
    pub outlier_peer_factor: f64,
    /// A rank whose median step time is this many times its peers' is a (persistent) straggler.
    pub slow_median_ratio: f64,
    /// An update whose cosine with the predicted direction is below this is flagged (healthy
    /// ≈ +1, a flip ≈ −1; 0 has no false positives by construction when the reference is exact).
    pub update_min_cosine: f64,
    /// An update whose norm ratio to the prediction is above this, or below its inverse, is
    /// flagged.
    pub update_max_norm_ratio: f64,
    /// Losses kept per rank for the robust z-score.
    pub loss_window: usize,
    /// Losses needed before spikes are judged.
    pub loss_min_samples: usize,
    /// Robust z-score (`(loss − median) / (1.4826·MAD)`) above which a loss is a spike.
    pub loss_z: f64,
    /// A spike must also exceed the median by this fraction (noise-free losses have MAD ≈ 0).
    pub loss_rel: f64,
    /// Seconds without any event from a live rank before it is reported missing (the goal is
    /// attribution within 15 s; senders heartbeat every 5 s by default).
    pub heartbeat_timeout_s: f64,
    /// A heartbeating rank whose step has not advanced for `max(stall_min_s, stall_factor ×
    /// its median step time)` is stalled.
    pub stall_min_s: f64,
    /// See `stall_min_s`.
    pub stall_factor: f64,
    /// After an incident, the same detector on the same rank stays quiet for this many steps
    /// (the next report carries the count it suppressed).
    pub repeat_every_steps: u64,
    /// Fingerprints and RNG hashes of step `s` are compared once every rank reported `s`, or
    /// once some rank reached `s + finalize_lag_steps`.
    pub finalize_lag_steps: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            timing_window: 512,
            timing_min_samples: 50,
            timing_eval_every: 25,
            outlier_sigmas: 8.0,
            outlier_rel: 0.25,
            outlier_abs_s: 0.010,
            outlier_min_count: 5,
            outlier_peer_factor: 3.0,
            slow_median_ratio: 1.25,
            update_min_cosine: 0.0,
            update_max_norm_ratio: 2.0,
            loss_window: 200,
            loss_min_samples: 30,
            loss_z: 10.0,
            loss_rel: 0.2,
            heartbeat_timeout_s: 15.0,
            stall_min_s: 120.0,
            stall_factor: 20.0,
            repeat_every_steps: 100,
            finalize_lag_steps: 64,
        }
    }
}

/// Thresholds that passed [`Thresholds::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Checked(pub(crate) Thresholds);

impl Checked {
    /// The thresholds.
    pub fn get(&self) -> &Thresholds {
        &self.0
    }
}

impl Thresholds {
    /// Check every threshold against its range.
    pub fn check(self) -> Result<Checked, ThresholdError> {
        fn range(name: &'static str, v: f64, lo: f64, hi: f64) -> Result<(), ThresholdError> {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(ThresholdError::OutOfRange {
                    name,
                    value: v,
                    reason: "outside its allowed range",
                })
            }
        }
        range("timing_window", self.timing_window as f64, 16.0, 65536.0)?;
        range(
            "timing_min_samples",
            self.timing_min_samples as f64,
            8.0,
            self.timing_window as f64,
        )?;
        range("timing_eval_every", self.timing_eval_every as f64, 1.0, 1e6)?;
        range("outlier_sigmas", self.outlier_sigmas, 1.0, 1000.0)?;
        range("outlier_rel", self.outlier_rel, 0.0, 100.0)?;
        range("outlier_abs_s", self.outlier_abs_s, 0.0, 3600.0)?;
        range("outlier_min_count", self.outlier_min_count as f64, 1.0, 1e6)?;
        range("outlier_peer_factor", self.outlier_peer_factor, 1.0, 1000.0)?;
        range("slow_median_ratio", self.slow_median_ratio, 1.0, 1000.0)?;
        range("update_min_cosine", self.update_min_cosine, -1.0, 1.0)?;
        range(
            "update_max_norm_ratio",
            self.update_max_norm_ratio,
            1.0,
            1e6,
        )?;
        range("loss_window", self.loss_window as f64, 8.0, 65536.0)?;
        range(
            "loss_min_samples",
            self.loss_min_samples as f64,
            4.0,
            self.loss_window as f64,
        )?;
        range("loss_z", self.loss_z, 1.0, 1e6)?;
        range("loss_rel", self.loss_rel, 0.0, 1e6)?;
        range(
            "heartbeat_timeout_s",
            self.heartbeat_timeout_s,
            0.1,
            86400.0,
        )?;
        range("stall_min_s", self.stall_min_s, 0.1, 86400.0)?;
        range("stall_factor", self.stall_factor, 1.0, 1e6)?;
        range(
            "repeat_every_steps",
            self.repeat_every_steps as f64,
            1.0,
            1e12,
        )?;
        range(
            "finalize_lag_steps",
            self.finalize_lag_steps as f64,
            1.0,
            1e6,
        )?;
        Ok(Checked(self))
    }
}
