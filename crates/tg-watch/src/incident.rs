//! What the detectors find.

use serde::{Deserialize, Serialize};

/// Which detector raised an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Detector {
    /// A rank's step time has a heavy tail (rare sleeps) or a high median compared with its peers.
    Straggler,
    /// The applied update points away from the optimizer-predicted direction (cosine below the
    /// threshold; a sign flip gives ≈ −1).
    UpdateFlipped,
    /// The applied update's norm is far from the predicted norm.
    UpdateScaled,
    /// Parameter or update fingerprints differ between replicas at the same step.
    ReplicaDivergence,
    /// RNG-state hashes differ between replicas at the same step.
    RngDivergence,
    /// A process reported a different base seed than the run's (another rank, or a restart).
    SeedChanged,
    /// A generator was reseeded after initialisation.
    Reseed,
    /// A live rank sent nothing for longer than the heartbeat timeout.
    HeartbeatMissing,
    /// A rank keeps heartbeating but its step count stopped advancing.
    Stalled,
    /// A process was terminated by a signal.
    Killed,
    /// A process exited with a non-zero status.
    FailedExit,
    /// The loss jumped far above its recent robust range.
    LossSpike,
    /// The loss is NaN or infinite.
    LossNonFinite,
}

impl Detector {
    /// Every detector, in declaration order.
    pub const ALL: [Detector; 13] = [
        Detector::Straggler,
        Detector::UpdateFlipped,
        Detector::UpdateScaled,
        Detector::ReplicaDivergence,
        Detector::RngDivergence,
        Detector::SeedChanged,
        Detector::Reseed,
        Detector::HeartbeatMissing,
        Detector::Stalled,
        Detector::Killed,
        Detector::FailedExit,
        Detector::LossSpike,
        Detector::LossNonFinite,
    ];

    /// The snake_case name used on the wire and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Straggler => "straggler",
            Detector::UpdateFlipped => "update_flipped",
            Detector::UpdateScaled => "update_scaled",
            Detector::ReplicaDivergence => "replica_divergence",
            Detector::RngDivergence => "rng_divergence",
            Detector::SeedChanged => "seed_changed",
            Detector::Reseed => "reseed",
            Detector::HeartbeatMissing => "heartbeat_missing",
            Detector::Stalled => "stalled",
            Detector::Killed => "killed",
            Detector::FailedExit => "failed_exit",
            Detector::LossSpike => "loss_spike",
            Detector::LossNonFinite => "loss_non_finite",
        }
    }
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding about one run: who, when, which detector, and the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The run.
    pub run: String,
    /// The rank blamed, when one is (a two-way disagreement blames nobody in particular).
    pub rank: Option<u32>,
    /// The host of that rank, when known.
    pub host: Option<String>,
    /// The step at which it was seen, when it is tied to one.
    pub step: Option<u64>,
    /// The detector.
    pub detector: Detector,
    /// One readable sentence.
    pub summary: String,
    /// Machine-readable evidence: the numbers, hashes, pids and thresholds behind the verdict.
    pub evidence: serde_json::Value,
    /// When the collector saw it (its clock), seconds since the Unix epoch.
    pub time_unix_s: f64,
}
