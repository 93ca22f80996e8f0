//! Tensor-level comparison of two checkpoints, for forensics: which tensors were added,
//! removed, reshaped or retyped, and for the rest how much and how they changed. Computed in
//! `f64`, streaming both tensors chunk by chunk.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::dtype::DType;
use crate::error::Error;
use crate::tensor::Tensor;

/// Elements compared per chunk.
const CHUNK_ELEMENTS: usize = 1 << 20;

/// A tensor present on one side only.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TensorInfo {
    /// Flattened name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
}

/// Statistics of `b` against `a` over the elements where both are finite (NaN and infinities
/// are counted instead).
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Elements compared.
    pub numel: u64,
    /// Elements whose values (bits, for equal dtypes) differ.
    pub differing: u64,
    /// Largest `|b - a|`.
    #[serde(serialize_with = "float")]
    pub max_abs_diff: f64,
    /// `‖b − a‖₂ / ‖a‖₂` (infinite when `a` is all zeros and `b` is not).
    #[serde(serialize_with = "float")]
    pub rel_l2: f64,
    /// `a·b / (‖a‖₂‖b‖₂)`; NaN when either is all zeros.
    #[serde(serialize_with = "float")]
    pub cosine: f64,
    /// Fraction of all elements with `a·b < 0` (the sign flipped).
    #[serde(serialize_with = "float")]
    pub sign_flip_fraction: f64,
    /// NaN elements in `a`.
    pub nan_a: u64,
    /// NaN elements in `b`.
    pub nan_b: u64,
    /// Infinite elements in `a`.
    pub inf_a: u64,
    /// Infinite elements in `b`.
    pub inf_b: u64,
}

/// A tensor present on both sides that is not bit-identical.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TensorChange {
    /// Flattened name.
    pub name: String,
    /// Element type in `a`.
    pub dtype_a: DType,
    /// Element type in `b`.
    pub dtype_b: DType,
    /// Shape in `a`.
    pub shape_a: Vec<u64>,
    /// Shape in `b`.
    pub shape_b: Vec<u64>,
    /// Value statistics, when the shapes agree.
    pub stats: Option<Stats>,
}

impl TensorChange {
    /// Whether the shape or the dtype changed.
    pub fn layout_changed(&self) -> bool {
        self.dtype_a != self.dtype_b || self.shape_a != self.shape_b
    }
}

/// A non-tensor value (JSON text) that differs.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ValueChange {
    /// Flattened name.
    pub name: String,
    /// In `a` (absent: added in `b`).
    pub a: Option<String>,
    /// In `b` (absent: removed).
    pub b: Option<String>,
}

/// Everything that differs between two checkpoints.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct DiffReport {
    /// Tensors in `a`.
    pub tensors_a: usize,
    /// Tensors in `b`.
    pub tensors_b: usize,
    /// Tensors only in `b`.
    pub added: Vec<TensorInfo>,
    /// Tensors only in `a`.
    pub removed: Vec<TensorInfo>,
    /// Tensors in both that are not bit-identical, by name.
    pub changed: Vec<TensorChange>,
    /// Tensors in both that are bit-identical.
    pub identical: usize,
    /// Non-tensor values added, removed or changed.
    pub values: Vec<ValueChange>,
}

impl DiffReport {
    /// Whether the two checkpoints hold the same tensors, bit for bit, and the same values.
    pub fn is_identical(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.values.is_empty()
    }

    /// The `n` changed tensors with the largest relative L2 change (layout changes first).
    pub fn most_changed(&self, n: usize) -> Vec<&TensorChange> {
        let key = |c: &TensorChange| match &c.stats {
            None => f64::INFINITY,
            Some(s) if s.rel_l2.is_nan() => f64::INFINITY,
            Some(s) => s.rel_l2,
        };
        let mut v: Vec<&TensorChange> = self.changed.iter().collect();
        v.sort_by(|x, y| key(y).total_cmp(&key(x)).then_with(|| x.name.cmp(&y.name)));
        v.truncate(n);
        v
    }
}

fn float<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else if v.is_nan() {
        s.serialize_str("nan")
    } else if *v > 0.0 {
        s.serialize_str("inf")
    } else {
        s.serialize_str("-inf")
    }
}

/// Opens a checkpoint file, or every checkpoint of a model directory.
pub fn open(path: &Path) -> Result<Vec<Checkpoint>, Error> {
    if path.is_dir() {
        crate::shards::open_dir(path)
    } else {
        Ok(vec![Checkpoint::open(path)?])
    }
}

fn by_name(cks: &[Checkpoint]) -> Result<BTreeMap<&str, &Tensor>, Error> {
    let mut out = BTreeMap::new();
    for ck in cks {
        for t in ck.tensors() {
            if out.insert(t.name(), t).is_some() {
                return Err(Error::DuplicateName {
                    path: ck.path().into(),
                    name: t.name().into(),
                });
            }
        }
    }
    Ok(out)
}

fn info(t: &Tensor) -> TensorInfo {
    TensorInfo {
        name: t.name().into(),
        dtype: t.dtype(),
        shape: t.shape().to_vec(),
    }
}

/// Compares two checkpoints (each one file or the shards of a directory).
pub fn diff(a: &[Checkpoint], b: &[Checkpoint]) -> Result<DiffReport, Error> {
    let ta = by_name(a)?;
    let tb = by_name(b)?;
    let mut report = DiffReport {
        tensors_a: ta.len(),
        tensors_b: tb.len(),
        ..DiffReport::default()
    };
    for (name, x) in &ta {
        let Some(y) = tb.get(name) else {
            report.removed.push(info(x));
            continue;
        };
        let stats = if x.shape() == y.shape() {
            Some(compare(x, y)?)
        } else {
            None
        };
        let same = stats.as_ref().is_some_and(|s| s.differing == 0) && x.dtype() == y.dtype();
        if same {
            report.identical += 1;
        } else {
            report.changed.push(TensorChange {
                name: (*name).into(),
                dtype_a: x.dtype(),
                dtype_b: y.dtype(),
                shape_a: x.shape().to_vec(),
                shape_b: y.shape().to_vec(),
                stats,
            });
        }
    }
    report.added = tb
        .iter()
        .filter(|(n, _)| !ta.contains_key(*n))
        .map(|(_, t)| info(t))
        .collect();
    let va: BTreeMap<&str, &str> = a
        .iter()
        .flat_map(|c| c.values())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let vb: BTreeMap<&str, &str> = b
        .iter()
        .flat_map(|c| c.values())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let names: std::collections::BTreeSet<&str> = va.keys().chain(vb.keys()).copied().collect();
    for n in names {
        let (x, y) = (va.get(n), vb.get(n));
        if x != y {
            report.values.push(ValueChange {
                name: n.into(),
                a: x.map(|s| (*s).into()),
                b: y.map(|s| (*s).into()),
            });
        }
    }
    Ok(report)
}

/// Element-wise statistics of two tensors of the same shape.
pub fn compare(a: &Tensor, b: &Tensor) -> Result<Stats, Error> {
    let (ea, eb) = (a.dtype().size(), b.dtype().size());
    let n = a.numel().min(CHUNK_ELEMENTS as u64).max(1) as usize;
    let mut ba = vec![0u8; n * ea];
    let mut bb = vec![0u8; n * eb];
    let (mut ra, mut rb) = (a.reader(), b.reader());
    let same_type = a.dtype() == b.dtype();
    let mut s = Stats {
        numel: a.numel(),
        ..Stats::default()
    };
    let (mut diff2, mut a2, mut b2, mut dot) = (0f64, 0f64, 0f64, 0f64);
    let mut flips = 0u64;
    loop {
        let la = ra.read(&mut ba)?;
        let lb = rb.read(&mut bb)?;
        if la / ea != lb / eb {
            return Err(Error::invalid(
                a.storage_name(),
                format!("tensor {}", a.name()),
                "the two readers went out of step",
            ));
        }
        if la == 0 {
            break;
        }
        for (x, y) in ba[..la].chunks_exact(ea).zip(bb[..lb].chunks_exact(eb)) {
            let (fx, fy) = (a.dtype().to_f64(x), b.dtype().to_f64(y));
            let differs = if same_type {
                x != y
            } else {
                fx.to_bits() != fy.to_bits()
            };
            s.differing += u64::from(differs);
            s.nan_a += u64::from(fx.is_nan());
            s.nan_b += u64::from(fy.is_nan());
            s.inf_a += u64::from(fx.is_infinite());
            s.inf_b += u64::from(fy.is_infinite());
            if !(fx.is_finite() && fy.is_finite()) {
                continue;
            }
            let d = fy - fx;
            s.max_abs_diff = s.max_abs_diff.max(d.abs());
            diff2 += d * d;
            a2 += fx * fx;
            b2 += fy * fy;
            dot += fx * fy;
            flips += u64::from(fx * fy < 0.0);
        }
    }
    s.rel_l2 = if a2 > 0.0 {
        diff2.sqrt() / a2.sqrt()
    } else if diff2 == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    s.cosine = if a2 > 0.0 && b2 > 0.0 {
        dot / (a2.sqrt() * b2.sqrt())
    } else {
        f64::NAN
    };
    s.sign_flip_fraction = if s.numel == 0 {
        0.0
    } else {
        flips as f64 / s.numel as f64
    };
    Ok(s)
}
