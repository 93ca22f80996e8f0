//! Python environment integrity: RECORD hashes, unrecorded files, start-up hooks, baselines.
//!
//! This is the defence against T2 and T3 of the threat table (`DESIGN.md`): an insider who edits
//! the installed PyTorch source on a shared cluster, drops a module into a package, or leaves a
//! start-up hook (`.pth` code, `sitecustomize`, `LD_PRELOAD`, a new `authorized_keys` line).
//!
//! [`verify`] checks one interpreter's environment:
//!
//! 1. every `*.dist-info/RECORD` in every site directory: each listed file's SHA-256 and size
//!    ([`Kind::ModifiedFile`], [`Kind::MissingFile`]); paths leaving the prefix are refused;
//! 2. every package directory some RECORD owns is walked for importable files no RECORD lists
//!    ([`Kind::UnrecordedFile`]), and `__pycache__` headers are checked against their sources;
//! 3. start-up hooks, accepted only in the exact text of a known legitimate form;
//! 4. with a [`Baseline`], every file under the site directories and the persistence files.
//!
//! The main design decision: RECORD is necessary, not sufficient. It is unsigned, leaves `.pyc`
//! files unhashed, and malware can ship *inside* it (litellm 1.82.8's `.pth`, 2026). So hooks are
//! judged by an allowlist of exact forms whatever RECORD says, and a sealed baseline (whose
//! digests cover `.pyc` files too) is the stronger check. The interpreter is asked once for its
//! paths with `-I -S`, so nothing in the environment runs during the check ([`Interpreter`]).
//!
//! What is *not* covered, on purpose or not yet:
//!
//! * a timestamp `.pyc` rewritten with a forged header (source mtime and size kept) is loaded by
//!   the interpreter and passes the header check; only a baseline (which hashes every `.pyc`)
//!   catches it. Recompiling and comparing code objects would, but costs seconds on torch;
//! * checked hash-based `.pyc` files are trusted because the import system re-hashes the source
//!   (SipHash) itself; the hash is not recomputed here;
//! * the interpreter binary and its standard library are the trust root (use the OS package
//!   manager's verification, `dpkg --verify` / `rpm -V`, for them);
//! * legacy `.egg-info` distributions and `RECORD`-less `.dist-info` have no hashes: they are
//!   reported as [`Kind::Unverifiable`], and their package directories as unrecorded;
//! * symbolic links to directories are reported, not followed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod baseline;
mod error;
mod finding;
mod hash;
mod hooks;
mod probe;
mod pyc;
mod record;
mod scan;

pub use baseline::{Baseline, FORMAT as BASELINE_FORMAT, FileEntry, Hook, Persist};
pub use error::Error;
pub use finding::{Finding, Kind};
pub use probe::Interpreter;

/// What to check and where the outside world is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The Python interpreter whose environment is checked.
    pub python: PathBuf,
    /// The home directory whose `.ssh/authorized_keys` and user site-packages are checked.
    pub home: Option<PathBuf>,
    /// Where `/etc` and `/var/spool` live (`/` for the running system; a mounted image's root).
    pub system_root: PathBuf,
    /// The environment variables of the processes being protected.
    pub env: BTreeMap<String, String>,
    /// A baseline to compare against.
    pub baseline: Option<Baseline>,
}

impl Options {
    /// Check `python`, with `HOME` and the variables of the current process, against `/`.
    pub fn new(python: impl Into<PathBuf>) -> Self {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        Options {
            python: python.into(),
            home: env.get("HOME").map(PathBuf::from),
            system_root: PathBuf::from("/"),
            env,
            baseline: None,
        }
    }
}

/// A start-up hook that was found and accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The hook file.
    pub path: String,
    /// Why it is accepted (the known form it matches).
    pub reason: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The interpreter checked.
    pub python: Interpreter,
    /// The site directories walked.
    pub site_dirs: Vec<PathBuf>,
    /// Distributions (`.dist-info`) found.
    pub distributions: usize,
    /// Files hashed.
    pub files_hashed: usize,
    /// Bytes hashed.
    pub bytes_hashed: u64,
    /// Whether a baseline was compared.
    pub baseline_compared: bool,
    /// Everything wrong, sorted by path.
    pub findings: Vec<Finding>,
    /// Informational findings that do not change the exit code (e.g. [`Kind::Overwritten`]).
    #[serde(default)]
    pub notes: Vec<Finding>,
    /// Start-up hooks present and accepted.
    pub accepted: Vec<Accepted>,
}

impl Report {
    /// `0` when nothing was found, else `1` (errors, exit `2`, never produce a report).
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.findings.is_empty())
    }
}

/// Check an environment: RECORDs, unrecorded files, `.pyc` headers, start-up hooks, and the
/// baseline in `opts` when there is one.
pub fn verify(opts: &Options) -> Result<Report, Error> {
    scan::run(opts, false).map(|(report, _)| report)
}

/// Record a baseline of the environment, with the report of its current state (a snapshot of
/// an environment that already has findings should be looked at before it is trusted).
pub fn snapshot(opts: &Options) -> Result<(Baseline, Report), Error> {
    let (report, baseline) = scan::run(opts, true)?;
    let baseline =
        baseline.ok_or_else(|| std::io::Error::other("snapshot produced no baseline"))?;
    Ok((baseline, report))
}
