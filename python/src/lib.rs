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

use std::path::{Path, PathBuf};

use pyo3::IntoPyObjectExt as _;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyString, PyTuple};
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
    m.add_function(wrap_pyfunction!(scan_path, m)?)?;
    m.add_function(wrap_pyfunction!(scan_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(check_path, m)?)?;
    m.add_function(wrap_pyfunction!(check_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(read_tensors, m)?)?;
    Ok(())
}
