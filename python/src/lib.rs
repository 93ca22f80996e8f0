//! `trainguard._native`: the private native module behind the Python package `trainguard`.
//!
//! This crate is glue. It converts Python arguments into `tg-scan` scanners and `tg-tensor`
//! checkpoints, converts their results into two frozen Python classes ([`Report`], [`Finding`])
//! and plain tuples of bytes, and maps every Rust error onto one exception family rooted at
//! `trainguard.TrainguardError`. The public API, its types and its documentation live in the
//! Python facade (`python/trainguard/__init__.py` and its `.pyi` stubs); nothing here is meant
//! to be imported directly.
//!
//! The main design decision: tensors are handed to Python as raw little-endian bytes with a
//! dtype name and a shape, and the facade builds numpy arrays or torch tensors over them. No
//! Python object is ever created from the checkpoint's pickle, so nothing in it can run. The
//! GIL is released while files are scanned or read.
//!
//! The one exception to "glue": [`WordSums`] and [`Gather`], the reads `trainguard.watch` makes
//! in the optimizer hooks of a CPU training loop at every step (the word sums of every weight,
//! copies of a few byte ranges). Through torch or NumPy they cost one dispatched call per
//! tensor, which on a cold cache after an optimizer step costs as much as the memory pass
//! itself; here they are one call per hook over NumPy views held as Python buffers. Reading a
//! buffer's memory as a slice is `unsafe` in PyO3 0.30 (another thread could write it); the one
//! place that does it uses the deprecated safe wrapper, with the reason next to it.

use std::path::{Path, PathBuf};

use pyo3::IntoPyObjectExt as _;
use pyo3::buffer::{Element, ElementType, PyBuffer, PyUntypedBuffer, ReadOnlyCell};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyTuple};
use tg_report::{FileReport, Verdict};
use tg_scan::{Base, Limits, Policy, Scanner};
use tg_tensor::{Checkpoint, Tensor};

create_exception!(
    trainguard,
    TrainguardError,
    PyException,
    "Base class of every error trainguard raises."
);
create_exception!(
    trainguard,
    UnsafeModelError,
    TrainguardError,
    "A file was refused because its scan verdict is not clean; `report` holds the scan."
);
create_exception!(
    trainguard,
    PolicyError,
    TrainguardError,
    "An unknown policy name or a malformed allowlist entry."
);
create_exception!(
    trainguard,
    CheckpointError,
    TrainguardError,
    "A checkpoint that is clean but cannot be turned into tensors (format, structure, I/O)."
);

/// One finding of a scan.
#[pyclass(frozen, get_all, module = "trainguard", name = "Finding")]
#[derive(Debug, Clone)]
struct Finding {
    rule: String,
    verdict: String,
    message: String,
    /// `member@offset`, `member`, `@offset` or the empty string.
    location: String,
    member: Option<String>,
    offset: Option<u64>,
    evidence: Option<String>,
}

#[pymethods]
impl Finding {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Finding(rule={}, verdict={}, message={}, location={}, evidence={})",
            py_repr(py, &self.rule)?,
            py_repr(py, &self.verdict)?,
            py_repr(py, &self.message)?,
            py_repr(py, &self.location)?,
            py_repr(py, &self.evidence)?,
        ))
    }
}

/// Python's `repr()` of a Rust value, so reprs read like Python (`None`, `'quoted'`).
fn py_repr<'py, T>(py: Python<'py>, value: &T) -> PyResult<String>
where
    T: Clone + IntoPyObject<'py>,
{
    let obj = value.clone().into_bound_py_any(py)?;
    Ok(obj.repr()?.to_string())
}

/// The result of scanning one file.
#[pyclass(frozen, module = "trainguard", name = "Report")]
#[derive(Debug)]
struct Report {
    #[pyo3(get)]
    path: String,
    #[pyo3(get)]
    format: String,
    #[pyo3(get)]
    verdict: String,
    #[pyo3(get)]
    size: u64,
    #[pyo3(get)]
    bytes_read: u64,
    findings: Py<PyTuple>,
    notes: Py<PyTuple>,
}

#[pymethods]
impl Report {
    /// The findings, most severe first as the scanner produced them.
    #[getter]
    fn findings<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        self.findings.bind(py).clone()
    }

    /// Notes that are not findings (what was skipped, why a file is harmless).
    #[getter]
    fn notes<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        self.notes.bind(py).clone()
    }

    /// Whether the verdict is `clean`.
    #[getter]
    fn is_clean(&self) -> bool {
        self.verdict == Verdict::Clean.as_str()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Report(path={}, format={}, verdict={}, findings={})",
            py_repr(py, &self.path)?,
            py_repr(py, &self.format)?,
            py_repr(py, &self.verdict)?,
            self.findings.bind(py).len()
        ))
    }
}

fn to_report(py: Python<'_>, r: FileReport) -> PyResult<Report> {
    let findings = r
        .findings
        .into_iter()
        .map(|f| {
            Py::new(
                py,
                Finding {
                    rule: f.rule,
                    verdict: f.verdict.as_str().to_owned(),
                    message: f.message,
                    location: f.location.to_string(),
                    member: f.location.member,
                    offset: f.location.offset,
                    evidence: f.evidence,
                },
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(Report {
        path: r.path,
        format: r.format,
        verdict: r.verdict.as_str().to_owned(),
        size: r.size,
        bytes_read: r.bytes_read,
        findings: PyTuple::new(py, findings)?.unbind(),
        notes: PyTuple::new(py, r.notes)?.unbind(),
    })
}

/// `message: cause: cause…`, the way the CLI prints an error chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn scanner(policy: &str, allow: &[String]) -> PyResult<Scanner> {
    let base = match policy {
        "default" => Base::Default,
        "weights-only" | "weights_only" => Base::WeightsOnly,
        other => {
            return Err(PolicyError::new_err(format!(
                "unknown policy '{other}' (expected 'default' or 'weights-only')"
            )));
        }
    };
    let mut p = Policy::new(base);
    for entry in allow {
        p.allow(entry)
            .map_err(|e| PolicyError::new_err(chain(&e)))?;
    }
    Ok(Scanner::new(p, Limits::default()))
}

/// An `UnsafeModelError` for `report`, with the report attached as its `report` attribute.
fn refuse(py: Python<'_>, report: FileReport) -> PyResult<PyErr> {
    let first = report
        .findings
        .iter()
        .find(|f| f.verdict == report.verdict)
        .map(|f| match &f.evidence {
            Some(ev) => format!(" ({}: {ev})", f.rule),
            None => format!(" ({}: {})", f.rule, f.message),
        })
        .unwrap_or_default();
    let msg = format!(
        "{}: refused, scan verdict is {}{first}",
        report.path,
        report.verdict.as_str()
    );
    let err = UnsafeModelError::new_err(msg);
    let report = Py::new(py, to_report(py, report)?)?;
    err.value(py).setattr("report", report)?;
    Ok(err)
}

/// Scan `path` and return its report if clean, or the `UnsafeModelError` refusing it.
/// `display`, when given, names the file in the report and the error instead of `path`.
fn scan_clean(
    py: Python<'_>,
    scanner: &Scanner,
    path: &Path,
    display: Option<String>,
) -> PyResult<FileReport> {
    let mut report = py.detach(|| scanner.scan_path(path));
    if let Some(display) = display {
        report.path = display;
    }
    if report.verdict != Verdict::Clean {
        return Err(refuse(py, report)?);
    }
    Ok(report)
}

/// Scan the file at `path`; never raises for unreadable files (they are `inconclusive`).
#[pyfunction]
#[pyo3(signature = (path, policy = "default", allow = Vec::new()))]
fn scan_path(py: Python<'_>, path: PathBuf, policy: &str, allow: Vec<String>) -> PyResult<Report> {
    let scanner = scanner(policy, &allow)?;
    let report = py.detach(|| scanner.scan_path(&path));
    to_report(py, report)
}

/// Scan bytes already in memory; `display` names them in the report.
#[pyfunction]
#[pyo3(signature = (display, data, policy = "default", allow = Vec::new()))]
fn scan_bytes(
    py: Python<'_>,
    display: &str,
    data: &[u8],
    policy: &str,
    allow: Vec<String>,
) -> PyResult<Report> {
    let scanner = scanner(policy, &allow)?;
    let report = py.detach(|| scanner.scan_bytes(display, data));
    to_report(py, report)
}

/// Like [`scan_path`], but raise `UnsafeModelError` (with the report) unless the verdict is clean.
/// `display` names the file in the report when `path` is an alias (`/proc/self/fd/N`).
#[pyfunction]
#[pyo3(signature = (path, policy = "default", allow = Vec::new(), display = None))]
fn check_path(
    py: Python<'_>,
    path: PathBuf,
    policy: &str,
    allow: Vec<String>,
    display: Option<String>,
) -> PyResult<Report> {
    let report = scan_clean(py, &scanner(policy, &allow)?, &path, display)?;
    to_report(py, report)
}

/// Like [`scan_bytes`], but raise `UnsafeModelError` (with the report) unless the verdict is
/// clean.
#[pyfunction]
#[pyo3(signature = (display, data, policy = "default", allow = Vec::new()))]
fn check_bytes(
    py: Python<'_>,
    display: &str,
    data: &[u8],
    policy: &str,
    allow: Vec<String>,
) -> PyResult<Report> {
    let scanner = scanner(policy, &allow)?;
    let report = py.detach(|| scanner.scan_bytes(display, data));
    if report.verdict != Verdict::Clean {
        return Err(refuse(py, report)?);
    }
    to_report(py, report)
}

/// Fills `dst` with `t`'s elements in row-major order.
fn fill(t: &Tensor, dst: &mut [u8]) -> Result<(), String> {
    let mut reader = t.reader();
    let mut at = 0;
    while at < dst.len() {
        let n = reader.read(&mut dst[at..]).map_err(|e| chain(&e))?;
        if n == 0 {
            return Err(format!(
                "tensor {}: ended after {at} of {} bytes",
                t.name(),
                dst.len()
            ));
        }
        at += n;
    }
    Ok(())
}

/// `(tensors, dropped)`, as [`read_tensors`] returns them.
type TensorsAndDropped<'py> = (Vec<Bound<'py, PyTuple>>, Vec<(String, String)>);

/// Scan `path`, refuse it unless clean, then read every tensor without unpickling.
///
/// Returns `(tensors, dropped)`: `tensors` is a list of `(name, dtype, shape, data)` with the
/// safetensors dtype name (`F32`, `BF16`, …) and the row-major little-endian bytes in a
/// `bytearray`; `dropped` lists `(name, why)` for what is not a tensor.
#[pyfunction]
#[pyo3(signature = (path, policy = "default", allow = Vec::new()))]
fn read_tensors<'py>(
    py: Python<'py>,
    path: PathBuf,
    policy: &str,
    allow: Vec<String>,
) -> PyResult<TensorsAndDropped<'py>> {
    scan_clean(py, &scanner(policy, &allow)?, &path, None)?;
    let checkpoint = py
        .detach(|| Checkpoint::open(&path))
        .map_err(|e| CheckpointError::new_err(chain(&e)))?;
    let mut tensors = Vec::with_capacity(checkpoint.tensors().len());
    for t in checkpoint.tensors() {
        let len = usize::try_from(t.nbytes()).map_err(|_| {
            CheckpointError::new_err(format!(
                "{}: tensor {} does not fit in memory",
                path.display(),
                t.name()
            ))
        })?;
        let data = PyByteArray::new_with(py, len, |dst| {
            py.detach(|| fill(t, dst))
                .map_err(|why| CheckpointError::new_err(format!("{}: {why}", path.display())))
        })?;
        let entry = (
            PyString::new(py, t.name()),
            t.dtype().safetensors_name(),
            PyTuple::new(py, t.shape())?,
            data,
        );
        tensors.push(entry.into_pyobject(py)?);
    }
    let dropped = checkpoint
        .dropped()
        .iter()
        .map(|d| (d.name.clone(), d.why.clone()))
        .collect();
    Ok((tensors, dropped))
}

// ----------------------------------------------------------------------------------------------
// trainguard.watch: the reads its optimizer hooks make at every step, one call each.
// ----------------------------------------------------------------------------------------------

/// The integer words of one array, typed by their width.
enum Words {
    I64(PyBuffer<i64>),
    I32(PyBuffer<i32>),
    I16(PyBuffer<i16>),
    U8(PyBuffer<u8>),
}

/// One tensor as `WordSums` reads it: its integer words (summed) and its bytes (copied).
struct Weights {
    words: Words,
    bytes: PyBuffer<u8>,
}

/// Bytes `lo..hi` of tensor `tensor`.
#[derive(Clone, Copy)]
struct Span {
    tensor: usize,
    lo: usize,
    hi: usize,
}

/// The per-step reads of `trainguard.watch`'s host path over the tensors it fingerprints, in one
/// call: the wrap-around sums of every tensor's integer words (the per-tensor part of the
/// parameter fingerprint) and copies of byte ranges of them ("plans": the slice the positional
/// hash covers at this step, the windows of the update check), taken while the sum reads them.
///
/// Built once over NumPy views of each tensor's bytes as signed 64-, 32- or 16-bit or unsigned
/// 8-bit words and as `uint8` (C-contiguous, aligned), and the plans: lists of
/// `(tensor, lo, hi)` byte ranges. It holds the buffers (the arrays stay alive and cannot be
/// resized). Each sum wraps around in the width of its words, like
/// `numpy.add.reduce(words, dtype=words.dtype)`, and is returned as 8 little-endian bytes,
/// sign-extended (zero-extended for `uint8`): exactly `int(s) & (2**64 - 1)`. Wrap-around
/// addition is exact and commutative, so the result does not depend on the summation order.
#[pyclass(frozen, module = "trainguard", name = "WordSums")]
struct WordSums {
    tensors: Vec<Weights>,
    plans: Vec<Vec<Span>>,
    nbytes: usize,
}

/// The wrap-around sum of `x`, eight independent lanes so that it vectorises.
fn wrapping_sum<T: Element + Copy + Default>(x: &[ReadOnlyCell<T>], add: fn(T, T) -> T) -> T {
    let mut lanes = [T::default(); 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(c) {
            *lane = add(*lane, v.get());
        }
    }
    let mut s = chunks
        .remainder()
        .iter()
        .fold(T::default(), |a, v| add(a, v.get()));
    for lane in lanes {
        s = add(s, lane);
    }
    s
}

/// The C-contiguous contents of `buf`, read through `ReadOnlyCell`s.
#[expect(
    deprecated,
    reason = "PyO3 0.30 deprecates `as_slice` because another thread could write the memory \
              while the slice is alive (a data race); its replacement is `unsafe`, which this \
              workspace forbids, and a copy first (`copy_to_slice`) doubles the cost. The slices \
              live for one call of `WordSums`, made with the GIL held by the thread that runs \
              the optimizer step that writes these tensors: the reads NumPy's reduction made."
)]
fn cells<'a, T: Element>(buf: &'a PyBuffer<T>, py: Python<'a>) -> PyResult<&'a [ReadOnlyCell<T>]> {
    buf.as_slice(py)
        .ok_or_else(|| PyValueError::new_err("WordSums: an array is no longer C-contiguous"))
}

/// `src` into `dst` (the same length).
fn copy_cells(dst: &mut [u8], src: &[ReadOnlyCell<u8>]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.get();
    }
}

/// The words of array `i`, typed by their width.
fn typed_words(i: usize, a: &Bound<'_, PyAny>) -> PyResult<Words> {
    let buf = PyUntypedBuffer::get(a)?;
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "WordSums: words {i} are not C-contiguous"
        )));
    }
    Ok(match ElementType::from_format(buf.format()) {
        ElementType::SignedInteger { bytes: 8 } => Words::I64(buf.into_typed()?),
        ElementType::SignedInteger { bytes: 4 } => Words::I32(buf.into_typed()?),
        ElementType::SignedInteger { bytes: 2 } => Words::I16(buf.into_typed()?),
        ElementType::UnsignedInteger { bytes: 1 } => Words::U8(buf.into_typed()?),
        other => {
            return Err(PyValueError::new_err(format!(
                "WordSums: words {i} must be int64, int32, int16 or uint8, not {other:?} ({:?})",
                buf.format()
            )));
        }
    })
}

impl Words {
    fn untyped(&self) -> &PyUntypedBuffer {
        match self {
            Words::I64(b) => b,
            Words::I32(b) => b,
            Words::I16(b) => b,
            Words::U8(b) => b,
        }
    }

    /// The wrap-around sum, sign-extended (zero-extended for `u8`) to 64 bits.
    fn sum(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(match self {
            Words::I64(b) => wrapping_sum(cells(b, py)?, i64::wrapping_add) as u64,
            Words::I32(b) => i64::from(wrapping_sum(cells(b, py)?, i32::wrapping_add)) as u64,
            Words::I16(b) => i64::from(wrapping_sum(cells(b, py)?, i16::wrapping_add)) as u64,
            Words::U8(b) => u64::from(wrapping_sum(cells(b, py)?, u8::wrapping_add)),
        })
    }
}

impl WordSums {
    fn plan(&self, i: usize) -> PyResult<&[Span]> {
        self.plans
            .get(i)
            .map(Vec::as_slice)
            .ok_or_else(|| PyValueError::new_err(format!("WordSums: no plan {i}")))
    }
}

#[pymethods]
impl WordSums {
    /// `words[i]` and `data[i]` view the same tensor; `plans` are lists of `(tensor, lo, hi)`.
    #[new]
    #[pyo3(signature = (words, data, plans = Vec::new()))]
    fn new(
        words: Vec<Bound<'_, PyAny>>,
        data: Vec<Bound<'_, PyAny>>,
        plans: Vec<Vec<(usize, usize, usize)>>,
    ) -> PyResult<Self> {
        if words.len() != data.len() {
            return Err(PyValueError::new_err(
                "WordSums: words and data of different lengths",
            ));
        }
        let mut tensors = Vec::with_capacity(words.len());
        let mut nbytes = 0;
        for (i, (w, b)) in words.iter().zip(&data).enumerate() {
            let words = typed_words(i, w)?;
            let bytes = PyBuffer::<u8>::get(b)?;
            // An empty array's address is whatever NumPy allocated for it: nothing to compare.
            let same = bytes.len_bytes() == words.untyped().len_bytes()
                && (bytes.len_bytes() == 0 || bytes.buf_ptr() == words.untyped().buf_ptr());
            if !bytes.is_c_contiguous() || !same {
                return Err(PyValueError::new_err(format!(
                    "WordSums: data {i} is not the bytes of words {i}, C-contiguous"
                )));
            }
            nbytes += bytes.len_bytes();
            tensors.push(Weights { words, bytes });
        }
        let plans = plans
            .into_iter()
            .map(|plan| {
                plan.into_iter()
                    .map(|(tensor, lo, hi)| {
                        let len = tensors.get(tensor).map(|t| t.bytes.len_bytes());
                        match len {
                            Some(len) if lo <= hi && hi <= len => Ok(Span { tensor, lo, hi }),
                            _ => Err(PyValueError::new_err(format!(
                                "WordSums: span ({tensor}, {lo}, {hi}) is outside the tensors"
                            ))),
                        }
                    })
                    .collect::<PyResult<Vec<_>>>()
            })
            .collect::<PyResult<_>>()?;
        Ok(Self {
            tensors,
            plans,
            nbytes,
        })
    }

    /// The sums, 8 little-endian bytes per tensor in order, then the bytes of the plans named,
    /// each in order. The tensors are read last to first (in a training loop the optimizer has
    /// just written the last ones, the likeliest to still be in cache), each one's spans copied
    /// just before its sum reads it.
    #[pyo3(signature = (*plans))]
    fn sums<'py>(&self, py: Python<'py>, plans: Vec<usize>) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.tensors.len();
        let mut copies: Vec<(Span, usize)> = Vec::new();
        let mut at = 8 * n;
        for &i in &plans {
            for &span in self.plan(i)? {
                copies.push((span, at));
                at += span.hi - span.lo;
            }
        }
        copies.sort_by_key(|(span, _)| span.tensor);
        PyBytes::new_with(py, at, |out| {
            for (i, t) in self.tensors.iter().enumerate().rev() {
                let first = copies.partition_point(|(span, _)| span.tensor < i);
                let spans = copies[first..]
                    .iter()
                    .take_while(|(span, _)| span.tensor == i);
                for &(span, at) in spans {
                    let src = &cells(&t.bytes, py)?[span.lo..span.hi];
                    copy_cells(&mut out[at..at + src.len()], src);
                }
                let s = t.words.sum(py)?;
                out[8 * i..8 * i + 8].copy_from_slice(&s.to_le_bytes());
            }
            Ok(())
        })
    }

    /// The bytes of plan `plan`, without the sums.
    fn copy<'py>(&self, py: Python<'py>, plan: usize) -> PyResult<Bound<'py, PyBytes>> {
        let spans = self.plan(plan)?;
        let len = spans.iter().map(|s| s.hi - s.lo).sum();
        PyBytes::new_with(py, len, |out| {
            let mut at = 0;
            for span in spans {
                let src = &cells(&self.tensors[span.tensor].bytes, py)?[span.lo..span.hi];
                copy_cells(&mut out[at..at + src.len()], src);
                at += src.len();
            }
            Ok(())
        })
    }

    fn __len__(&self) -> usize {
        self.tensors.len()
    }

    /// Bytes summed by one `sums()`.
    #[getter]
    fn nbytes(&self) -> usize {
        self.nbytes
    }
}

/// Copies of a fixed list of byte arrays, concatenated: the windows of optimizer state that
/// `trainguard.watch` reads at every step, in one call.
///
/// Built once over C-contiguous `uint8` arrays (NumPy views of tensors' bytes) and optional
/// guards `(dict, key, tensor)`: `copy()` gives None unless every `dict.get(key)` is still
/// `tensor` (the state was replaced: the views are stale), else a new `bytes` with the current
/// contents of the arrays, in order.
#[pyclass(frozen, module = "trainguard", name = "Gather")]
struct Gather {
    bufs: Vec<PyBuffer<u8>>,
    nbytes: usize,
    guards: Vec<Guard>,
}

/// `mapping[key]` was `tensor`.
struct Guard {
    mapping: Py<PyDict>,
    key: Py<PyString>,
    tensor: Py<PyAny>,
}

#[pymethods]
impl Gather {
    #[new]
    #[pyo3(signature = (arrays, guards = Vec::new()))]
    fn new(
        arrays: Vec<Bound<'_, PyAny>>,
        guards: Vec<(Bound<'_, PyDict>, Bound<'_, PyString>, Bound<'_, PyAny>)>,
    ) -> PyResult<Self> {
        let mut bufs = Vec::with_capacity(arrays.len());
        let mut nbytes = 0;
        for (i, a) in arrays.iter().enumerate() {
            let buf = PyBuffer::<u8>::get(a)?;
            if !buf.is_c_contiguous() {
                return Err(PyValueError::new_err(format!(
                    "Gather: array {i} is not C-contiguous"
                )));
            }
            nbytes += buf.len_bytes();
            bufs.push(buf);
        }
        let guards = guards
            .into_iter()
            .map(|(mapping, key, tensor)| Guard {
                mapping: mapping.unbind(),
                key: key.unbind(),
                tensor: tensor.unbind(),
            })
            .collect();
        Ok(Self {
            bufs,
            nbytes,
            guards,
        })
    }

    /// The arrays' bytes, concatenated in order; None when a guard no longer holds.
    fn copy<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        for g in &self.guards {
            match g.mapping.bind(py).get_item(g.key.bind(py))? {
                Some(now) if now.is(&g.tensor) => {}
                _ => return Ok(None),
            }
        }
        let out = PyBytes::new_with(py, self.nbytes, |out| {
            let mut at = 0;
            for b in &self.bufs {
                let n = b.len_bytes();
                b.copy_to_slice(py, &mut out[at..at + n])?;
                at += n;
            }
            Ok(())
        })?;
        Ok(Some(out))
    }

    fn __len__(&self) -> usize {
        self.bufs.len()
    }

    /// Bytes returned by one `copy()`.
    #[getter]
    fn nbytes(&self) -> usize {
        self.nbytes
    }
}

/// The module `trainguard._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TrainguardError", py.get_type::<TrainguardError>())?;
    m.add("UnsafeModelError", py.get_type::<UnsafeModelError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add_class::<Report>()?;
    m.add_class::<Finding>()?;
    // bench/watch_overhead.py says when it times an unoptimised build.
    m.add("debug_build", cfg!(debug_assertions))?;
    m.add_class::<WordSums>()?;
    m.add_class::<Gather>()?;
    m.add_function(wrap_pyfunction!(scan_path, m)?)?;
    m.add_function(wrap_pyfunction!(scan_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(check_path, m)?)?;
    m.add_function(wrap_pyfunction!(check_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(read_tensors, m)?)?;
    Ok(())
}
