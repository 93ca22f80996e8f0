//! Format detection and scanners for model files, judged against an allowlist [`Policy`].
//!
//! [`Scanner::scan_path`] detects a file's format from its bytes (never its extension), reads it
//! the way the loader that would open it does — PyTorch's zip reader, its legacy multi-pickle
//! stream and tar layout, TorchScript, numpy, joblib — and runs every pickle stream a loader
//! could reach through the symbolic machine of `tg-pickle`. Non-pickle formats are judged by
//! their own rules: Keras `.keras`/HDF5 configs, TensorFlow SavedModel ops, ONNX external data
//! and operator domains, GGUF bounds and chat templates, safetensors headers, skops schemas,
//! YAML configs (PyYAML Python tags, Hydra `_target_` keys);
//! zip/tar/7z/compressed wrappers are opened with bounded decompression and scanned
//! recursively. Nothing is ever imported, called or unpickled.
//!
//! The main design decision is *fail closed with evidence*: every global outside the active
//! policy is at least `suspicious`; anything that cannot be fully analysed (a budget reached, a
//! stream broken after it imported something, an unreadable archive) is `inconclusive`, never
//! `clean`; and a file no loader can execute (a PNG named `.pt`) is `clean` with a note saying
//! so. Only what a loader must read is read: a 10 GB torch zip costs its central directory and
//! its `data.pkl`, not its tensor storages, and a pickle file's large `bytes` objects (a pickled
//! array's raw data) are skipped unless a finding shows or follows them.

mod danger;
mod formats;
mod gguf;
mod json;
mod judge;
mod keras;
mod literal;
mod onnx;
pub mod policy;
mod proto;
mod safetensors;
mod skops;
mod strset;
mod tf;
mod yaml;

pub use gguf::rules as gguf_rules;
pub use keras::rules as keras_rules;
pub use onnx::rules as onnx_rules;
pub use safetensors::rules as safetensors_rules;
pub use skops::rules as skops_rules;
pub use tf::rules as tf_rules;
pub use yaml::rules as yaml_rules;

#[doc(hidden)]
pub use gguf::{fuzz_gguf, template_verdict as gguf_template_verdict};
#[doc(hidden)]
pub use keras::fuzz_keras_h5;
#[doc(hidden)]
pub use onnx::fuzz_onnx;
#[doc(hidden)]
pub use safetensors::fuzz_safetensors;
#[doc(hidden)]
pub use yaml::fuzz_yaml;

use std::path::Path;
use std::time::{Duration, Instant};

pub use judge::rules;
pub use policy::{Base, Kind, Policy, PolicyError};
use tg_report::{FileReport, Finding, Location, Verdict};

/// Every resource cap of a scan. Reaching one makes the file `inconclusive`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Caps of the symbolic pickle machine (opcodes, stack, memo, values).
    pub pickle: tg_pickle::Limits,
    /// Caps of the archive readers (entries, decompressed bytes, ratio).
    pub archive: tg_archive::Limits,
    /// How deep containers may nest (a zip in a tar in a gzip…).
    pub max_depth: u32,
    /// Most bytes read for one raw pickle stream.
    pub max_stream_bytes: u64,
    /// Wall-clock budget for one file.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pickle: tg_pickle::Limits::default(),
            archive: tg_archive::Limits::default(),
            max_depth: 4,
            max_stream_bytes: 2 << 30,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Scans files under one policy and one set of limits. Cheap to share across threads.
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    policy: Policy,
    limits: Limits,
}

/// Rule identifiers for container and format findings (pickle rules are in [`rules`]).
pub mod format_rules {
    /// A hostile archive structure (duplicate names, header mismatch, overlap, trailing data).
    pub const HOSTILE_ARCHIVE: &str = "TG-ARC-001";
    /// An archive or member that could not be read.
    pub const UNREADABLE: &str = "TG-ARC-002";
    /// A container nested deeper than the limit.
    pub const TOO_DEEP: &str = "TG-ARC-003";
    /// The per-file time budget ran out.
    pub const TIMEOUT: &str = "TG-SCAN-001";
    /// The file could not be opened or read.
    pub const IO_ERROR: &str = "TG-SCAN-002";
    /// A numpy header that cannot be parsed.
    pub const BAD_NPY: &str = "TG-NPY-001";
    /// TorchScript code that reaches Python or unknown native operators.
    pub const TORCHSCRIPT_CODE: &str = "TG-TS-001";
}

impl Scanner {
    /// A scanner with `policy` and `limits`.
    pub fn new(policy: Policy, limits: Limits) -> Self {
        Scanner { policy, limits }
    }

    /// The active policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Scan one file. Never fails: I/O errors become an `inconclusive` report.
    pub fn scan_path(&self, path: &Path) -> FileReport {
        let display = path.display().to_string();
        let file = match tg_archive::SizedFile::open(path) {
            Ok(f) => f,
            Err(e) => return io_report(display, &e),
        };
        let size = tg_archive::ReadAt::size(&file);
        let mut report = if size <= READ_WHOLE {
            // Buffers are reused from file to file: fresh memory costs a page fault per 4 KiB,
            // more than the read itself. The largest size is reserved once; memory is only
            // faulted in where a file reaches, and never again for a later file.
            let mut bytes = take_buffer();
            if bytes.capacity() < size as usize {
                bytes.reserve_exact(READ_WHOLE as usize);
            }
            let scanned = file
                .read_head(size, &mut bytes)
                .map(|head| self.scan_source(&display, &head));
            give_back_buffer(bytes);
            match scanned {
                Ok(mut r) => {
                    r.bytes_read = size;
                    r
                }
                Err(e) => return io_report(display, &e),
            }
        } else {
            // Counted where the reads happen: the readers' own tallies leave out headers and
            // directories that they read to find their way (`bytes_read` is what a benchmark's
            // floor reads back).
            let counted = tg_archive::Counted::new(&file);
            let mut r = self.scan_source(&display, &counted);
            r.bytes_read = counted.bytes();
            r
        };
        report.size = size;
        report
    }

    /// Scan bytes already in memory (`display` names them in the report).
    pub fn scan_bytes(&self, display: &str, bytes: &[u8]) -> FileReport {
        let mut report = self.scan_source(display, &bytes);
        report.size = bytes.len() as u64;
        report
    }

    /// Scans a small built-in model file (its report is returned, to be thrown away): for a
    /// thread that has nothing to do yet.
    ///
    /// A scan of a model folder lasts milliseconds, and much of that is the first touch of
    /// the scanner's code: each page fault on it maps 64 KiB. Code is the process's, whichever
    /// thread touched it first, so a thread that does this while the command line is parsed
    /// takes those faults off the scan's path. (Faulting in read buffers as well saved nothing
    /// measurable: most files read whole are far smaller than a buffer; bench/README.md, stop
    /// 16.)
    pub fn warm_up(&self) -> FileReport {
        self.scan_bytes("warm-up.pt", WARM_UP)
    }

    fn scan_source(&self, display: &str, src: &dyn tg_archive::ReadAt) -> FileReport {
        let mut cx = formats::Cx {
            scanner: self,
            deadline: Instant::now() + self.limits.timeout,
            bytes_read: 0,
        };
        let out = cx.scan(src, 0);
        let mut report = FileReport::new(display, out.format);
        report.extend(out.findings);
        report.notes = out.notes;
        report.bytes_read = cx.bytes_read;
        report
    }
}

/// Whether the file's name says it is in a format whose scan reads its header and nothing else
/// (safetensors, GGUF): such a scan takes as long at 10 GB as at 10 KB, so a caller ordering
/// files by expected cost need not read their size. Formats are still told by content when
/// scanned; a misnamed file is only ordered wrongly. (Not `.npy`: an array of objects is a
/// pickle after the header, read to its end.)
pub fn reads_header_only(path: &Path) -> bool {
    path.extension().is_some_and(|ext| {
        ["safetensors", "gguf"]
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known))
    })
}

/// What [`Scanner::warm_up`] scans: a small clean PyTorch checkpoint laid out as `torch.save`
/// writes it (`tests/fixtures/make_fixtures.py`), the format whose scan runs the most code
/// (zip, pickle machine, judge). A clean file of each other common format as well warmed
/// nothing more that could be measured.
const WARM_UP: &[u8] = include_bytes!("../tests/fixtures/torch_zip_benign.pt");

/// Files up to this size are read with one call and scanned from memory: the readers look at
/// a small file several times (sniffing, headers, members, the appended-zip tail), and one read
/// costs less than several positioned reads. Larger files are read only where needed.
const READ_WHOLE: u64 = 64 << 10;

/// Read buffers between files, shared by the scanning threads (one in use per thread at a
/// time). Shared rather than per thread: a thread's own buffer would be unmapped at its exit,
/// while the caller waits to join it.
static READ_BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// The largest buffer kept for reuse: a bigger one goes back to the system.
const MAX_POOLED_BUFFER: usize = 16 << 20;

fn read_buffers() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    READ_BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A read buffer from the pool (or a new, empty one). Its length is how far any earlier use
/// reached: that much of it is initialized and already faulted in.
fn take_buffer() -> Vec<u8> {
    read_buffers().pop().unwrap_or_default()
}

/// Returns a buffer from [`take_buffer`] to the pool.
fn give_back_buffer(buf: Vec<u8>) {
    if buf.capacity() > 0 && buf.capacity() <= MAX_POOLED_BUFFER {
        read_buffers().push(buf);
    }
}

fn io_report(display: String, e: &std::io::Error) -> FileReport {
    let mut r = FileReport::new(display, "unknown");
    r.push(Finding::new(
        format_rules::IO_ERROR,
        Verdict::Inconclusive,
        format!("cannot read the file: {e}"),
        Location::default(),
    ));
    r
}
