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
//! itself; here they are one call per hook over NumPy views held as Python buffers. The pass
//! over the weights is shared with, or left to, a persistent worker thread (module `pass`),
//! which reads the buffers' memory through a raw pointer: the crate's one `unsafe` block and
//! its exception to the workspace's `unsafe_code = "forbid"`, with its SAFETY argument next to
//! it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::IntoPyObjectExt as _;
use pyo3::buffer::{ElementType, PyBuffer, PyUntypedBuffer};
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

/// The pass over the weights behind [`WordSums`]: the raw reads of tensor memory, and the worker
/// thread that shares a pass with the calling thread.
///
/// A module of its own so that a [`Region`](pass::Region), the only thing the one `unsafe` read
/// trusts, can only be made from a buffer.
mod pass {
    use std::panic::AssertUnwindSafe;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
    use std::time::{Duration, Instant};

    use pyo3::buffer::PyUntypedBuffer;

    /// The integer words a tensor is summed as: their width, signed but for `U8`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Width {
        I64,
        I32,
        I16,
        U8,
    }

    impl Width {
        /// `s`, a wrap-around sum of words of this width taken modulo 2^64, reduced to this
        /// width and sign-extended (zero-extended for `U8`) to 64 bits: `int(sum) & (2**64 - 1)`.
        fn extend(self, s: u64) -> u64 {
            match self {
                Width::I64 => s,
                Width::I32 => i64::from(s as u32 as i32) as u64,
                Width::I16 => i64::from(s as u16 as i16) as u64,
                Width::U8 => u64::from(s as u8),
            }
        }
    }

    /// An integer word type: every bit pattern is a value, and sums wrap around.
    trait Word: Copy + Default {
        fn wrapping_add(self, other: Self) -> Self;
        /// The value modulo 2^64 (any extension: sums are reduced to their width at the end).
        fn widen(self) -> u64;
    }

    macro_rules! word {
        ($($t:ty),*) => {$(
            impl Word for $t {
                fn wrapping_add(self, other: Self) -> Self {
                    <$t>::wrapping_add(self, other)
                }
                fn widen(self) -> u64 {
                    self as u64
                }
            }
        )*};
    }
    word!(i64, i32, i16, u8);

    /// The wrap-around sum of `x`, eight independent lanes so that it vectorises.
    fn lane_sum<T: Word>(x: &[T]) -> T {
        let mut lanes = [T::default(); 8];
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            add8(&mut lanes, c);
        }
        let s = chunks
            .remainder()
            .iter()
            .fold(T::default(), |a, &v| a.wrapping_add(v));
        fold(s, lanes)
    }

    /// `lanes[j] += c[j]` for the 8 words of `c`.
    #[inline(always)]
    fn add8<T: Word>(lanes: &mut [T; 8], c: &[T]) {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane = lane.wrapping_add(v);
        }
    }

    /// `s` plus every lane.
    fn fold<T: Word>(s: T, lanes: [T; 8]) -> T {
        lanes.into_iter().fold(s, T::wrapping_add)
    }

    /// Cursors [`wrapping_sum`] reads a slice with at once.
    const STREAMS: usize = 8;

    /// The wrap-around sum of `x`. The slice is read as [`STREAMS`] parts in step, each summed
    /// in eight lanes: right after an optimizer step the weights come from main memory, in 4 KiB
    /// pages, and one sequential stream keeps too few cache misses (and page walks) in flight to
    /// use the bandwidth. On the benchmark machine, right after a step, one thread summed the
    /// 8.7 MB of bench/watch_overhead.py's transformer in 875-970 µs on one stream, 700-800 µs
    /// on four and 660-820 µs on eight (medians of 30 steps, two to four runs each).
    /// Wrap-around addition is commutative: the order of the additions does not change the sum.
    fn wrapping_sum<T: Word>(x: &[T]) -> T {
        let part = x.len() / (8 * STREAMS) * 8;
        if part == 0 {
            return lane_sum(x);
        }
        let (head, tail) = x.split_at(STREAMS * part);
        let parts: [&[T]; STREAMS] = std::array::from_fn(|k| &head[k * part..(k + 1) * part]);
        let mut lanes = [[T::default(); 8]; STREAMS];
        let mut at = 0;
        while at < part {
            for (l, p) in lanes.iter_mut().zip(&parts) {
                add8(l, &p[at..at + 8]);
            }
            at += 8;
        }
        lanes.into_iter().fold(lane_sum(tail), fold)
    }

    /// Bytes `addr..addr + len` of the memory of a buffer that a `WordSums` holds.
    ///
    /// Made only from such a buffer ([`Region::of`]) and narrowed inside it ([`Region::sub`]);
    /// read only through [`words`], during a `WordSums` method (see its SAFETY note).
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Region {
        addr: usize,
        len: usize,
    }

    impl Region {
        /// The memory of `buf`, which must be C-contiguous (a checked precondition).
        pub(super) fn of(buf: &PyUntypedBuffer) -> Region {
            assert!(buf.is_c_contiguous(), "a region of a non-contiguous buffer");
            Region {
                addr: buf.buf_ptr() as usize,
                len: buf.len_bytes(),
            }
        }

        /// Bytes `lo..hi` of this region.
        pub(super) fn sub(self, lo: usize, hi: usize) -> Region {
            assert!(
                lo <= hi && hi <= self.len,
                "a sub-region outside its region"
            );
            Region {
                addr: self.addr + lo,
                len: hi - lo,
            }
        }

        pub(super) fn len(self) -> usize {
            self.len
        }

        /// The bytes.
        pub(super) fn bytes(&self) -> &[u8] {
            words(self)
        }

        /// The bytes of `regions`, one after the other.
        pub(super) fn concat(regions: &[Region]) -> Vec<u8> {
            let mut out = Vec::with_capacity(regions.iter().map(|r| r.len).sum());
            for r in regions {
                out.extend_from_slice(r.bytes());
            }
            out
        }
    }

    /// The memory of `region` as `T`s (a remainder shorter than one `T` is not read).
    ///
    /// The one place where this crate reads memory through a raw pointer, and the reason for its
    /// exception to the workspace's `unsafe_code = "forbid"` (python/Cargo.toml): a pass over the
    /// weights runs on two threads, and PyO3's readers of a buffer need the GIL token, which
    /// only the calling thread holds.
    #[expect(
        unsafe_code,
        reason = "reads tensor memory on the pass worker thread, which cannot hold the GIL token"
    )]
    fn words<T: Word>(region: &Region) -> &[T] {
        let n = region.len / std::mem::size_of::<T>();
        if n == 0 {
            return &[];
        }
        // SAFETY:
        // - Valid and aligned for `n` `T`s: `region` lies inside the memory of a C-contiguous
        //   buffer (`Region::of`, `Region::sub`) that a `WordSums` holds until it is dropped.
        //   The buffer holds its exporter, a NumPy array, which NumPy refuses to resize or free
        //   while a buffer of it is exported; in `trainguard.watch` that array views a tensor
        //   (`Tensor.numpy()` of a detached alias), which holds its storage: replacing a
        //   parameter's data (`param.data = …`, `set_`), dropping the parameter or the model
        //   leaves that storage, and this memory, allocated. The one way Python code can still
        //   free it is torch's own hazard for every NumPy view of a tensor: resizing the shared
        //   storage in place (`untyped_storage().resize_()`, or `resize_` growing a tensor past
        //   its storage) reallocates it under every alias; no reference prevents that, and a
        //   program that does it to the parameters it watches is outside this argument.
        //   `WordSums::new` checked the buffer's alignment for its words, and `Pass::new` cuts
        //   regions at multiples of 8 bytes from the start.
        // - Read only while that `WordSums` lives: during its methods, which hold `&self`, by the
        //   calling thread, and by the worker between claiming a pass and reporting it done. A
        //   pass `sums` shares is waited for before it returns, also when it unwinds (`Split`'s
        //   `Drop`); one `post` hands out is waited for by `collect`, by the next `post`, or by
        //   the `WordSums`'s `Drop` before its buffers are released.
        // - Written meanwhile only by a program that races with itself. During `sums` the
        //   calling thread holds the GIL, so no Python code, hence no torch kernel or NumPy
        //   call, starts anywhere until it returns. Between `post` and `collect` the worker
        //   reads tensors `0..defer` (in `trainguard.watch`: the parameters, from one optimizer
        //   step's post-hook to the next one's pre-hook) while the program runs; a training loop
        //   does not write parameters there (zero_grad, forward and backward write gradients,
        //   activations and buffers; buffers are read inside `post`). A program that writes
        //   them in place meanwhile (a projection between steps, an attacker), or whose other
        //   threads write them during `sums` (its own optimizer races with those too), makes
        //   these reads race with the writes: a data race the slice does not exclude. Its
        //   effect is confined to the values read: the memory stays allocated (above), the
        //   words are only added up, no read word decides a branch or an index, and every bit
        //   pattern is a `T`, so it is a fingerprint that mixes old and new words, which
        //   `trainguard.watch` re-reads when a torch version counter shows the write and which
        //   replicas do not share otherwise (reported as divergence), never a read elsewhere.
        // - Any bit pattern is a valid `T`: `Word` is implemented for plain integers only.
        unsafe { std::slice::from_raw_parts(region.addr as *const T, n) }
    }

    /// The wrap-around sum of `region`'s words of `width`, modulo 2^64.
    fn region_sum(width: Width, region: &Region) -> u64 {
        match width {
            Width::I64 => wrapping_sum(words::<i64>(region)).widen(),
            Width::I32 => wrapping_sum(words::<i32>(region)).widen(),
            Width::I16 => wrapping_sum(words::<i16>(region)).widen(),
            Width::U8 => wrapping_sum(words::<u8>(region)).widen(),
        }
    }

    /// Part of a tensor to sum: `region` of tensor `tensor`, as words of `width`.
    #[derive(Clone, Copy, Debug)]
    struct Piece {
        tensor: usize,
        width: Width,
        region: Region,
    }

    /// Bytes per work item: small enough that the two threads finish within a few µs of each
    /// other, large enough that handing items out costs nothing measurable (32 KiB items were
    /// slower; 128 KiB to 512 KiB alike: bench/README.md).
    const CHUNK: usize = 128 << 10;

    /// The work of one pass over the weights, in items that either thread takes, the next one
    /// free at a time: a slice of a large tensor, or a run of small ones. Immutable once built;
    /// shared with the worker thread.
    pub(super) struct Pass {
        pieces: Vec<Piece>,
        /// Item `k` is `pieces[items[k].0..items[k].1]`.
        items: Vec<(usize, usize)>,
        /// Per tensor, the width of its words.
        widths: Vec<Width>,
    }

    impl Pass {
        /// The items over `tensors` (their memory and words), last tensor first (in a training
        /// loop the optimizer has just written the last ones, the likeliest to still be in a
        /// cache). A tensor is cut at multiples of `CHUNK` bytes from its start, so every piece
        /// stays aligned for its words; an item closes once it holds `CHUNK` bytes, so small
        /// tensors share one.
        /// Only the tensors in `range` are read.
        pub(super) fn new(tensors: &[(Region, Width)], range: std::ops::Range<usize>) -> Pass {
            let mut pieces = Vec::new();
            let mut items = Vec::new();
            let mut first = 0;
            let mut open = 0;
            for (tensor, &(region, width)) in tensors.iter().enumerate().rev() {
                if !range.contains(&tensor) {
                    continue;
                }
                let mut at = 0;
                while at < region.len {
                    let end = (at + CHUNK).min(region.len);
                    pieces.push(Piece {
                        tensor,
                        width,
                        region: region.sub(at, end),
                    });
                    open += end - at;
                    at = end;
                    if open >= CHUNK {
                        items.push((first, pieces.len()));
                        first = pieces.len();
                        open = 0;
                    }
                }
            }
            if first < pieces.len() {
                items.push((first, pieces.len()));
            }
            let widths = tensors.iter().map(|&(_, w)| w).collect();
            Pass {
                pieces,
                items,
                widths,
            }
        }

        /// `sums` (modulo 2^64, one per tensor) reduced to their words' width and extended to
        /// 64 bits.
        pub(super) fn extend(&self, sums: Vec<u64>) -> Vec<u64> {
            sums.into_iter()
                .zip(&self.widths)
                .map(|(s, w)| w.extend(s))
                .collect()
        }

        /// Per-tensor sums modulo 2^64 of the whole pass, on this thread.
        pub(super) fn alone(&self) -> Vec<u64> {
            self.take(&AtomicUsize::new(0)).0
        }

        /// Takes items from `next` until none is left: per-tensor sums modulo 2^64, and the
        /// bytes read.
        fn take(&self, next: &AtomicUsize) -> (Vec<u64>, usize) {
            let mut sums = vec![0u64; self.widths.len()];
            let mut bytes = 0;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(lo, hi)) = self.items.get(k) else {
                    break;
                };
                for p in &self.pieces[lo..hi] {
                    sums[p.tensor] = sums[p.tensor].wrapping_add(region_sum(p.width, &p.region));
                    bytes += p.region.len;
                }
            }
            (sums, bytes)
        }
    }

    /// The pass worker: one thread, started on first use and kept, that takes items of the pass
    /// a `WordSums::sums` call posts while the calling thread takes the others (the call waits
    /// for it before it returns), or makes the pass `WordSums::post` hands it, after copying the
    /// plans' bytes, while the caller goes on (`WordSums::collect` takes the items left). Items
    /// are handed out one at a time, so a worker that starts late (waking a sleeping thread
    /// takes 30-80 µs on a virtual machine, whose idle CPU halts) or whose core is busy only
    /// takes fewer: the caller never waits for it to start, only for the item it is on.
    struct Worker {
        /// `IDLE`, `POSTED`, `CLAIMED` or `DONE`.
        state: AtomicU8,
        /// The posted pass and the regions to copy before it, set before the state becomes
        /// `POSTED`.
        job: Mutex<Option<(Arc<Pass>, Vec<Region>)>>,
        /// What the worker did, set before the state becomes `DONE`; None when it panicked
        /// (the caller then redoes the pass alone).
        result: Mutex<Option<Done>>,
        /// Held to sleep on `posted` or `done`, and to signal them.
        sleep: Mutex<()>,
        /// Signalled when the state becomes `POSTED`.
        posted: Condvar,
        /// Signalled when the state becomes `DONE`.
        done: Condvar,
        /// The next item of the posted pass.
        next: AtomicUsize,
    }

    /// No pass: the worker sleeps. Only the caller leaves this state.
    const IDLE: u8 = 0;
    /// A pass is posted: the worker claims it, or the caller withdraws it (back to `IDLE`).
    const POSTED: u8 = 1;
    /// The worker took the pass.
    const CLAIMED: u8 = 2;
    /// The worker is done with the pass: the caller reads the result and sets `IDLE`.
    const DONE: u8 = 3;

    /// What the worker did with a pass: its per-tensor sums modulo 2^64, the bytes it summed,
    /// and the copies of the regions posted with the pass (None: not made, the caller makes
    /// them).
    pub(super) struct Done {
        sums: Vec<u64>,
        bytes: usize,
        copies: Option<Vec<u8>>,
    }

    /// How long the caller waits awake for the worker's last item before it sleeps.
    const DONE_SPIN: Duration = Duration::from_micros(200);

    static WORKER: Worker = Worker {
        state: AtomicU8::new(IDLE),
        job: Mutex::new(None),
        result: Mutex::new(None),
        sleep: Mutex::new(()),
        posted: Condvar::new(),
        done: Condvar::new(),
        next: AtomicUsize::new(0),
    };

    /// The worker thread: the process it was started in and its `pthread_t`; None when it
    /// could not be started.
    static WORKER_THREAD: OnceLock<Option<(u32, u64)>> = OnceLock::new();

    /// `m` locked; nothing panics while holding these locks, and their data stays consistent.
    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `cv.wait(guard)`, through a poisoned lock.
    fn wait<'a>(cv: &Condvar, guard: MutexGuard<'a, ()>) -> MutexGuard<'a, ()> {
        cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// The worker, started on first use; None when it cannot run here: it could not be
    /// started, or this is a child forked after it was (the thread did not survive the fork,
    /// and a lock may have been copied held).
    fn worker() -> Option<&'static Worker> {
        let started = WORKER_THREAD.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("trainguard-sums".to_owned())
                .spawn(|| WORKER.serve());
            spawned.ok().map(|h| (std::process::id(), pthread(&h)))
        });
        match *started {
            Some((pid, _)) if pid == std::process::id() => Some(&WORKER),
            _ => None,
        }
    }

    /// Starts the worker if it is not running; whether it can run here.
    pub(super) fn start_worker() -> bool {
        worker().is_some()
    }

    /// The worker's `pthread_t`, for `time.pthread_getcpuclockid`; None before it was started
    /// or where it cannot run.
    pub(super) fn worker_thread() -> Option<u64> {
        match WORKER_THREAD.get() {
            Some(Some((pid, thread))) if *pid == std::process::id() => Some(*thread),
            _ => None,
        }
    }

    /// `h`'s `pthread_t`.
    #[cfg(unix)]
    #[allow(
        clippy::unnecessary_cast,
        reason = "`pthread_t` is a u64 on Linux, another integer or a pointer elsewhere"
    )]
    fn pthread(h: &std::thread::JoinHandle<()>) -> u64 {
        use std::os::unix::thread::JoinHandleExt as _;
        h.as_pthread_t() as u64
    }

    #[cfg(not(unix))]
    fn pthread(_: &std::thread::JoinHandle<()>) -> u64 {
        0
    }

    impl Worker {
        /// The worker thread's loop.
        fn serve(&self) {
            loop {
                let mut guard = lock(&self.sleep);
                while self.state.load(Ordering::Acquire) != POSTED {
                    guard = wait(&self.posted, guard);
                }
                drop(guard);
                let claimed = self.state.compare_exchange(
                    POSTED,
                    CLAIMED,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                );
                if claimed.is_err() {
                    continue; // withdrawn meanwhile
                }
                let job = lock(&self.job).take();
                let got = job.and_then(|(pass, regions)| {
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        let copies = Region::concat(&regions);
                        let (sums, bytes) = pass.take(&self.next);
                        Done {
                            sums,
                            bytes,
                            copies: Some(copies),
                        }
                    }))
                    .ok()
                });
                *lock(&self.result) = got;
                let _guard = lock(&self.sleep);
                self.state.store(DONE, Ordering::Release);
                self.done.notify_one();
            }
        }

        /// Posts `pass` (after copies of `regions`) and wakes the worker; false when another
        /// pass is in flight or not yet settled.
        fn post(&self, pass: &Arc<Pass>, regions: Vec<Region>) -> bool {
            if self.state.load(Ordering::Acquire) != IDLE {
                return false;
            }
            self.next.store(0, Ordering::Relaxed);
            *lock(&self.job) = Some((Arc::clone(pass), regions));
            self.state.store(POSTED, Ordering::Release);
            let _guard = lock(&self.sleep);
            self.posted.notify_one();
            true
        }

        /// Withdraws the posted pass, or waits until the worker is done with it: what it did
        /// (nothing when it never took it), None when it panicked. Leaves the state `IDLE`.
        fn settle(&self) -> Option<Done> {
            let withdrawn =
                self.state
                    .compare_exchange(POSTED, IDLE, Ordering::AcqRel, Ordering::Acquire);
            if withdrawn.is_ok() {
                lock(&self.job).take();
                return Some(Done {
                    sums: Vec::new(),
                    bytes: 0,
                    copies: None,
                });
            }
            // Claimed: the worker is on its last item (every item is taken), a few µs. Wait
            // awake, yielding the CPU (on a loaded machine the worker may be queued behind this
            // thread), then asleep.
            let done = || self.state.load(Ordering::Acquire) == DONE;
            let until = Instant::now() + DONE_SPIN;
            while !done() && Instant::now() < until {
                std::thread::yield_now();
            }
            if !done() {
                let mut guard = lock(&self.sleep);
                while !done() {
                    guard = wait(&self.done, guard);
                }
            }
            let got = lock(&self.result).take();
            self.state.store(IDLE, Ordering::Release);
            got
        }
    }

    /// A pass in progress, shared with the worker if it was posted; dropping it (also when
    /// unwinding) waits for the worker to be done with it, or withdraws it if the worker never
    /// took it.
    pub(super) struct Split<'a> {
        pass: &'a Arc<Pass>,
        worker: Option<&'static Worker>,
    }

    impl<'a> Split<'a> {
        /// Posts `pass` to the worker when `two` (and the worker can run and is free).
        pub(super) fn start(pass: &'a Arc<Pass>, two: bool) -> Split<'a> {
            let worker = if two { worker() } else { None };
            let worker = worker.filter(|w| w.post(pass, Vec::new()));
            Split { pass, worker }
        }

        /// The pass [`post_with_copies`] posted, or a pass on this thread alone where the
        /// worker cannot run (a child forked meanwhile).
        pub(super) fn resume(pass: &'a Arc<Pass>) -> Split<'a> {
            Split {
                pass,
                worker: worker(),
            }
        }

        /// Takes the items left, waits for the worker: the per-tensor sums modulo 2^64 (see
        /// [`Pass::extend`]), the bytes the worker summed, and the copies it made (None when
        /// it made none: it never took the pass, or it panicked).
        pub(super) fn finish(mut self) -> (Vec<u64>, usize, Option<Vec<u8>>) {
            match self.worker {
                None => (self.pass.alone(), 0, None),
                Some(w) => {
                    let (mut sums, _) = self.pass.take(&w.next);
                    let got = w.settle();
                    self.worker = None; // settled: nothing left for `drop`
                    match got {
                        Some(done) => {
                            for (s, o) in sums.iter_mut().zip(done.sums) {
                                *s = s.wrapping_add(o);
                            }
                            (sums, done.bytes, done.copies)
                        }
                        None => (self.pass.alone(), 0, None),
                    }
                }
            }
        }
    }

    impl Drop for Split<'_> {
        fn drop(&mut self) {
            if let Some(w) = self.worker.take() {
                // Unwinding: let the worker run out of items, then wait for it.
                w.next.store(usize::MAX / 2, Ordering::Relaxed);
                w.settle();
            }
        }
    }

    /// Posts `pass` to the worker, which first copies `regions` (in order), ahead of the
    /// `Split` that will collect it ([`Split::resume`]); false when the worker cannot run here
    /// or is busy with another pass.
    pub(super) fn post_with_copies(pass: &Arc<Pass>, regions: Vec<Region>) -> bool {
        worker().is_some_and(|w| w.post(pass, regions))
    }

    /// Stops handing out the items of the pass [`post_with_copies`] posted and waits until the
    /// worker is done with its item; the result is discarded.
    pub(super) fn abandon() {
        if let Some(w) = worker() {
            w.next.store(usize::MAX / 2, Ordering::Relaxed);
            w.settle();
        }
    }

    /// Bytes below which a pass stays on one thread: waking the worker costs the caller tens
    /// of µs on a virtual machine, which a pass of less than about 1 MiB does not repay
    /// (bench/README.md).
    const SPLIT_MIN_BYTES: usize = 1 << 20;

    /// Whether a pass over `nbytes` is split over two threads by default: it is large enough,
    /// and the process may run on more than one CPU (affinity and cgroup quota included).
    pub(super) fn split_by_default(nbytes: usize) -> bool {
        nbytes >= SPLIT_MIN_BYTES && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
    }
}

use pass::{Pass, Region, Split, Width};

/// A pass [`WordSums::post`] handed out, until [`WordSums::collect`] takes it.
struct Posted {
    /// The plans to copy.
    plans: Vec<usize>,
    /// Whether the worker has the pass over tensors `0..defer`.
    on_worker: bool,
    /// The sums (modulo 2^64) of tensors `defer..`, read at `post`.
    sums: Vec<u64>,
    /// The plans' bytes in tensors `defer..`, copied at `post`, in order.
    copies: Vec<u8>,
    /// When the worker did not take the pass: the sums of tensors `0..defer` and the plans'
    /// bytes in them, read at `post` instead.
    done: Option<(Vec<u64>, Vec<u8>)>,
}

/// One tensor as `WordSums` reads it: the buffers of its words and bytes (held for as long as
/// the `WordSums` lives: they keep the memory alive and unmoved), their memory, the words'
/// width.
struct Weights {
    _words: PyUntypedBuffer,
    _bytes: PyBuffer<u8>,
    region: Region,
    width: Width,
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
/// hash covers at this step, the windows of the update check).
///
/// Built once over NumPy views of each tensor's bytes as signed 64-, 32- or 16-bit or unsigned
/// 8-bit words and as `uint8` (C-contiguous, aligned), and the plans: lists of
/// `(tensor, lo, hi)` byte ranges. It holds the buffers (the arrays stay alive and cannot be
/// resized). Each sum wraps around in the width of its words, like
/// `numpy.add.reduce(words, dtype=words.dtype)`, and is returned as 8 little-endian bytes,
/// sign-extended (zero-extended for `uint8`): exactly `int(s) & (2**64 - 1)`. Wrap-around
/// addition is exact and commutative, so the result does not depend on the summation order.
///
/// That is what lets the pass run on two threads ([`pass`]): from 1 MiB up, where the process
/// may use more than one CPU, a persistent worker thread sums part of the tensors while the
/// calling thread copies the plans and sums the rest, and the call returns once both are done.
/// `post` hands the whole pass over tensors `0..defer` (and the plans' bytes in them) to the
/// worker and returns; `collect`, called before those tensors are written again, waits for it
/// (taking the items it has not started) and returns the same bytes as `sums`. One thread or
/// two, now or later, the result is the same bytes.
#[pyclass(frozen, module = "trainguard", name = "WordSums")]
struct WordSums {
    tensors: Vec<Weights>,
    plans: Vec<Vec<Span>>,
    nbytes: usize,
    pass: Arc<Pass>,
    /// Whether `sums` shares its pass with the worker.
    two: bool,
    /// Bytes the worker summed in the last `sums`.
    worker_bytes: AtomicUsize,
    /// The tensors `post` may leave to the worker: `0..defer`.
    defer: usize,
    /// The pass over `0..defer` that `post` hands to the worker.
    deferred: Arc<Pass>,
    /// The pass over the other tensors, which `post` makes before it returns.
    eager: Pass,
    /// The pass `post` handed out, until `collect`.
    posted: std::sync::Mutex<Option<Posted>>,
}

/// The words of array `i` as a buffer, and their width.
fn typed_words(i: usize, a: &Bound<'_, PyAny>) -> PyResult<(PyUntypedBuffer, Width)> {
    let buf = PyUntypedBuffer::get(a)?;
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "WordSums: words {i} are not C-contiguous"
        )));
    }
    // `as_typed` checks the format, the item size and the alignment for the words.
    let width = match ElementType::from_format(buf.format()) {
        ElementType::SignedInteger { bytes: 8 } => buf.as_typed::<i64>().map(|_| Width::I64),
        ElementType::SignedInteger { bytes: 4 } => buf.as_typed::<i32>().map(|_| Width::I32),
        ElementType::SignedInteger { bytes: 2 } => buf.as_typed::<i16>().map(|_| Width::I16),
        ElementType::UnsignedInteger { bytes: 1 } => buf.as_typed::<u8>().map(|_| Width::U8),
        other => {
            return Err(PyValueError::new_err(format!(
                "WordSums: words {i} must be int64, int32, int16 or uint8, not {other:?} ({:?})",
                buf.format()
            )));
        }
    }?;
    Ok((buf, width))
}

impl WordSums {
    fn plan(&self, i: usize) -> PyResult<&[Span]> {
        self.plans
            .get(i)
            .map(Vec::as_slice)
            .ok_or_else(|| PyValueError::new_err(format!("WordSums: no plan {i}")))
    }

    /// The bytes of `span` (inside its tensor: checked by `new`).
    fn bytes(&self, span: &Span) -> &[u8] {
        &self.tensors[span.tensor].region.bytes()[span.lo..span.hi]
    }

    /// The bytes of the plans named, concatenated, into `out`.
    fn copy_plans(&self, plans: &[usize], out: &mut [u8]) -> PyResult<()> {
        let mut at = 0;
        for &i in plans {
            for span in self.plan(i)? {
                let src = self.bytes(span);
                out[at..at + src.len()].copy_from_slice(src);
                at += src.len();
            }
        }
        Ok(())
    }

    /// Settles a pass `post` handed to the worker that no `collect` took: the worker stops and
    /// its sums are dropped.
    fn abandon(&self) {
        let posted = self.posted().take();
        if posted.is_some_and(|p| p.on_worker) {
            pass::abandon();
        }
    }

    fn posted(&self) -> std::sync::MutexGuard<'_, Option<Posted>> {
        self.posted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether span `span` is in a tensor that `post` reads before it returns.
    fn eager_span(&self, span: &Span) -> bool {
        span.tensor >= self.defer
    }

    /// Bytes the plans named copy.
    fn plans_len(&self, plans: &[usize]) -> PyResult<usize> {
        let mut len = 0;
        for &i in plans {
            len += self.plan(i)?.iter().map(|s| s.hi - s.lo).sum::<usize>();
        }
        Ok(len)
    }
}

#[pymethods]
impl WordSums {
    /// `words[i]` and `data[i]` view the same tensor; `plans` are lists of `(tensor, lo, hi)`.
    /// `threads`: 1 or 2 puts every pass on one thread or two (tests, benchmarks); None lets
    /// the size and the CPUs the process may use decide.
    #[new]
    /// `defer`: `post` may leave tensors `0..defer` to be read after it returns (default: all).
    #[pyo3(signature = (words, data, plans = Vec::new(), threads = None, defer = None))]
    fn new(
        words: Vec<Bound<'_, PyAny>>,
        data: Vec<Bound<'_, PyAny>>,
        plans: Vec<Vec<(usize, usize, usize)>>,
        threads: Option<usize>,
        defer: Option<usize>,
    ) -> PyResult<Self> {
        if words.len() != data.len() {
            return Err(PyValueError::new_err(
                "WordSums: words and data of different lengths",
            ));
        }
        let mut tensors = Vec::with_capacity(words.len());
        let mut nbytes = 0;
        for (i, (w, b)) in words.iter().zip(&data).enumerate() {
            let (words, width) = typed_words(i, w)?;
            let bytes = PyBuffer::<u8>::get(b)?;
            let len = bytes.len_bytes();
            // An empty array's address is whatever NumPy allocated for it: nothing to compare.
            let same = len == words.len_bytes() && (len == 0 || bytes.buf_ptr() == words.buf_ptr());
            if !bytes.is_c_contiguous() || !same {
                return Err(PyValueError::new_err(format!(
                    "WordSums: data {i} is not the bytes of words {i}, C-contiguous"
                )));
            }
            nbytes += len;
            tensors.push(Weights {
                region: Region::of(&words),
                width,
                _words: words,
                _bytes: bytes,
            });
        }
        let plans = plans
            .into_iter()
            .map(|plan| {
                plan.into_iter()
                    .map(|(tensor, lo, hi)| {
                        let len = tensors.get(tensor).map(|t| t.region.len());
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
        let two = match threads {
            None => pass::split_by_default(nbytes),
            Some(1) => false,
            Some(2) => true,
            Some(n) => {
                return Err(PyValueError::new_err(format!(
                    "WordSums: threads must be 1, 2 or None, not {n}"
                )));
            }
        };
        // Started now rather than at the first step; where it cannot run, one thread.
        let two = two && pass::start_worker();
        let n = tensors.len();
        let defer = defer.unwrap_or(n).min(n);
        let layout: Vec<_> = tensors.iter().map(|t| (t.region, t.width)).collect();
        Ok(Self {
            pass: Arc::new(Pass::new(&layout, 0..n)),
            deferred: Arc::new(Pass::new(&layout, 0..defer)),
            eager: Pass::new(&layout, defer..n),
            defer,
            tensors,
            plans,
            nbytes,
            two,
            worker_bytes: AtomicUsize::new(0),
            posted: std::sync::Mutex::new(None),
        })
    }

    /// The sums, 8 little-endian bytes per tensor in order, then the bytes of the plans named,
    /// each in order. The calling thread posts the pass to the worker (when it is shared),
    /// copies the plans while the worker wakes up, then both sum, last tensor first.
    #[pyo3(signature = (*plans))]
    fn sums<'py>(&self, py: Python<'py>, plans: Vec<usize>) -> PyResult<Bound<'py, PyBytes>> {
        let n8 = 8 * self.tensors.len();
        let len = n8 + self.plans_len(&plans)?;
        PyBytes::new_with(py, len, |out| {
            let split = Split::start(&self.pass, self.two);
            self.copy_plans(&plans, &mut out[n8..])?;
            let (sums, theirs, _) = split.finish();
            for (dst, s) in out[..n8].chunks_exact_mut(8).zip(self.pass.extend(sums)) {
                dst.copy_from_slice(&s.to_le_bytes());
            }
            self.worker_bytes.store(theirs, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Hands the next `collect()`'s pass to the worker thread and returns: the worker copies
    /// the plans named (their parts in tensors `0..defer`) and sums tensors `0..defer` while
    /// the caller goes on; the other tensors are read now. The tensors must not be written
    /// until `collect()`, which returns what `sums(*plans)` would have returned now. True when
    /// the worker took the pass; false when it could not (one thread, a child forked after the
    /// worker started, the worker busy with another object's pass): then everything is read
    /// now. A pass never collected is waited for and dropped by the next `post()` or when this
    /// object is dropped.
    #[pyo3(signature = (*plans))]
    fn post(&self, plans: Vec<usize>) -> PyResult<bool> {
        self.abandon();
        let mut regions = Vec::new();
        let mut copies = Vec::new();
        for &i in &plans {
            for span in self.plan(i)? {
                if self.eager_span(span) {
                    copies.extend_from_slice(self.bytes(span));
                } else {
                    regions.push(self.tensors[span.tensor].region.sub(span.lo, span.hi));
                }
            }
        }
        let on_worker = self.two && pass::post_with_copies(&self.deferred, regions.clone());
        let done = (!on_worker).then(|| (self.deferred.alone(), Region::concat(&regions)));
        *self.posted() = Some(Posted {
            plans,
            on_worker,
            sums: self.eager.alone(),
            copies,
            done,
        });
        Ok(on_worker)
    }

    /// The result of the pass `post()` handed out: waits for the worker (or takes the items it
    /// has not started); the bytes `sums(*plans)` returns. `fresh`: the tensors `0..defer` may
    /// have been written since `post()`, so the worker's reads are dropped and they are read
    /// now. Raises ValueError without a `post()`.
    #[pyo3(signature = (fresh = false))]
    fn collect<'py>(&self, py: Python<'py>, fresh: bool) -> PyResult<Bound<'py, PyBytes>> {
        let Some(posted) = self.posted().take() else {
            return Err(PyValueError::new_err("WordSums: collect() without post()"));
        };
        let n8 = 8 * self.tensors.len();
        let len = n8 + self.plans_len(&posted.plans)?;
        PyBytes::new_with(py, len, |out| {
            let (mut sums, theirs, deferred) = if fresh {
                if posted.on_worker {
                    pass::abandon();
                }
                (self.deferred.alone(), 0, None)
            } else if let Some((sums, copies)) = posted.done {
                (sums, 0, Some(copies))
            } else {
                Split::resume(&self.deferred).finish()
            };
            for (s, o) in sums.iter_mut().zip(posted.sums) {
                *s = s.wrapping_add(o);
            }
            for (dst, s) in out[..n8].chunks_exact_mut(8).zip(self.pass.extend(sums)) {
                dst.copy_from_slice(&s.to_le_bytes());
            }
            // The plans' bytes, in order: from `post`'s copies, the worker's, or (none made, or
            // `fresh`) read now.
            let (mut at, mut eager, mut late) = (n8, 0, 0);
            for &i in &posted.plans {
                for span in self.plan(i)? {
                    let n = span.hi - span.lo;
                    let src = if self.eager_span(span) {
                        eager += n;
                        &posted.copies[eager - n..eager]
                    } else if let Some(copies) = &deferred {
                        late += n;
                        &copies[late - n..late]
                    } else {
                        self.bytes(span)
                    };
                    out[at..at + n].copy_from_slice(src);
                    at += n;
                }
            }
            self.worker_bytes.store(theirs, Ordering::Relaxed);
            Ok(())
        })
    }

    /// The bytes of plan `plan`, without the sums.
    fn copy<'py>(&self, py: Python<'py>, plan: usize) -> PyResult<Bound<'py, PyBytes>> {
        let len = self.plans_len(&[plan])?;
        PyBytes::new_with(py, len, |out| self.copy_plans(&[plan], out))
    }

    fn __len__(&self) -> usize {
        self.tensors.len()
    }

    /// Bytes summed by one `sums()`.
    #[getter]
    fn nbytes(&self) -> usize {
        self.nbytes
    }

    /// The threads `sums()` runs its pass on: 1, or 2 with the worker (1 in a child forked
    /// after the worker started: the thread did not survive the fork).
    #[getter]
    fn threads(&self) -> usize {
        if self.two && pass::worker_thread().is_some() {
            2
        } else {
            1
        }
    }

    /// Bytes the worker thread summed in the last `sums()` (0 on one thread).
    #[getter]
    fn worker_bytes(&self) -> usize {
        self.worker_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for WordSums {
    /// A pass `post` handed to the worker reads the buffers: it is settled before they are
    /// released.
    fn drop(&mut self) {
        self.abandon();
    }
}

/// The `pthread_t` of the thread that shares `WordSums.sums` passes, for
/// `time.pthread_getcpuclockid`; None before it was started (or where it cannot run).
#[pyfunction]
fn sums_worker_thread() -> Option<u64> {
    pass::worker_thread()
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
    m.add_function(wrap_pyfunction!(sums_worker_thread, m)?)?;
    Ok(())
}
