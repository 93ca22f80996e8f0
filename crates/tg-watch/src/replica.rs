//! Step-aligned comparisons between replicas: parameter and update fingerprints, RNG states.
//!
//! Data-parallel replicas apply the same reduced gradient with the same optimizer, so their
//! parameters and updates must match bit for bit, and generators that must agree must hash the
//! same. Entries of one step wait until every rank reported it, or until some rank is
//! `finalize_lag_steps` ahead; then each replica group is compared. The minority is blamed when
//! there is a strict majority; otherwise (e.g. two ranks that disagree) nobody in particular is.

use std::collections::BTreeMap;

use serde_json::json;

use crate::event::RngHashes;
use crate::incident::Detector;

/// Most ranks listed by value in one piece of evidence.
const MAX_LISTED: usize = 64;

/// What one rank reported at one step.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) group: String,
    pub(crate) param: Option<String>,
    pub(crate) update: Option<String>,
    pub(crate) rng: Option<RngHashes>,
}

/// A disagreement found at one step.
#[derive(Debug)]
pub(crate) struct Finding {
    pub(crate) detector: Detector,
    pub(crate) step: u64,
    pub(crate) rank: Option<u32>,
    pub(crate) summary: String,
    pub(crate) evidence: serde_json::Value,
}

/// Pending steps of one run.
#[derive(Debug, Default)]
pub(crate) struct Replicas {
    pending: BTreeMap<u64, BTreeMap<u32, Entry>>,
    /// Highest step already compared; later reports for it are ignored.
    finalized_upto: Option<u64>,
}

impl Replicas {
    /// Add one rank's entry; compare the step if it is complete, and any step left behind.
    pub(crate) fn insert(
        &mut self,
        step: u64,
        rank: u32,
        entry: Entry,
        world_size: u32,
        lag: u64,
    ) -> Vec<Finding> {
        let mut out = Vec::new();
        if self.finalized_upto.is_some_and(|f| step <= f) {
            return out;
        }
        let slot = self.pending.entry(step).or_default();
        slot.entry(rank).or_insert(entry);
        if slot.len() >= world_size as usize
            && let Some(slot) = self.pending.remove(&step)
        {
            out.extend(compare(step, &slot));
        }
        let cutoff = step.saturating_sub(lag);
        while let Some((&old, _)) = self.pending.first_key_value() {
            if old >= cutoff {
                break;
            }
            if let Some((old, slot)) = self.pending.pop_first() {
                out.extend(compare(old, &slot));
                self.finalized_upto = Some(self.finalized_upto.map_or(old, |f| f.max(old)));
            }
        }
        out
    }
}

fn compare(step: u64, slot: &BTreeMap<u32, Entry>) -> Vec<Finding> {
    let mut groups: BTreeMap<&str, Vec<(u32, &Entry)>> = BTreeMap::new();
    for (&rank, e) in slot {
        groups.entry(e.group.as_str()).or_default().push((rank, e));
    }
    // (detector, blamed rank) → mismatching fields with their evidence
    let mut found: BTreeMap<(Detector, Option<u32>), Vec<serde_json::Value>> = BTreeMap::new();
    for (group, members) in &groups {
        if members.len() < 2 {
            continue;
        }
        type Getter = fn(&Entry) -> Option<&str>;
        let fields: [(&str, Detector, Getter); 6] = [
            ("param_fingerprint", Detector::ReplicaDivergence, |e| {
                e.param.as_deref()
            }),
            ("update_fingerprint", Detector::ReplicaDivergence, |e| {
                e.update.as_deref()
            }),
            ("rng.python", Detector::RngDivergence, |e| {
                e.rng.as_ref()?.python.as_deref()
            }),
            ("rng.numpy", Detector::RngDivergence, |e| {
                e.rng.as_ref()?.numpy.as_deref()
            }),
            ("rng.torch_cpu", Detector::RngDivergence, |e| {
                e.rng.as_ref()?.torch_cpu.as_deref()
            }),
            ("rng.torch_cuda", Detector::RngDivergence, |e| {
                e.rng.as_ref()?.torch_cuda.as_deref()
            }),
        ];
        for (field, detector, get) in fields {
            let mut by_value: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for (rank, e) in members {
                if let Some(v) = get(e) {
                    by_value
                        .entry(v.to_ascii_lowercase())
                        .or_default()
                        .push(*rank);
                }
            }
            if by_value.len() < 2 {
                continue;
            }
            let total: usize = by_value.values().map(Vec::len).sum();
            let majority = by_value
                .iter()
                .find(|(_, ranks)| ranks.len() * 2 > total)
                .map(|(v, ranks)| (v.clone(), ranks.len()));
            let listing: serde_json::Map<String, serde_json::Value> = by_value
                .iter()
                .map(|(v, ranks)| {
                    let shown: Vec<u32> = ranks.iter().copied().take(MAX_LISTED).collect();
                    (v.clone(), json!({ "ranks": shown, "count": ranks.len() }))
                })
                .collect();
            match majority {
                Some((expected, agreeing)) => {
                    for (value, ranks) in &by_value {
                        if *value == expected {
                            continue;
                        }
                        for &rank in ranks {
                            found
                                .entry((detector, Some(rank)))
                                .or_default()
                                .push(json!({
                                    "field": field,
                                    "replica_group": group,
                                    "expected": expected,
                                    "got": value,
                                    "agreeing_ranks": agreeing,
                                    "compared_ranks": total,
                                }));
                        }
                    }
                }
                None => {
                    found.entry((detector, None)).or_default().push(json!({
                        "field": field,
                        "replica_group": group,
                        "values": listing,
                        "compared_ranks": total,
                    }));
                }
            }
        }
    }
    found
        .into_iter()
        .map(|((detector, rank), fields)| {
            let names: Vec<&str> = fields
                .iter()
                .filter_map(|f| f.get("field").and_then(|v| v.as_str()))
                .collect();
            let what = if detector == Detector::ReplicaDivergence {
                "replicas disagree"
            } else {
                "RNG states disagree"
            };
            let summary = match rank {
                Some(r) => format!(
                    "step {step}: rank {r} differs from the majority of its replicas ({})",
                    names.join(", ")
                ),
                None => format!(
                    "step {step}: {what} with no majority ({})",
                    names.join(", ")
                ),
            };
            Finding {
                detector,
                step,
                rank,
                summary,
                evidence: json!({ "step": step, "mismatches": fields }),
            }
        })
        .collect()
}
