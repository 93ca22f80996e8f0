//! The one error type of this crate: what stops a check before it reaches a verdict.
//!
//! Problems with individual installed files (unreadable, modified, missing) are not errors: they
//! are [`crate::Finding`]s, so one bad file never hides the rest of the report.

use std::io;
use std::path::PathBuf;

/// Why an environment could not be checked or a baseline could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Python interpreter could not be started.
    #[error("cannot run python interpreter {path}")]
    Spawn {
        /// The interpreter path as given.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The interpreter exited with a failure while reporting its paths.
    #[error("python interpreter {path} failed to report its paths ({status}): {stderr}")]
    ProbeFailed {
        /// The interpreter path as given.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The interpreter printed something other than the expected JSON path report.
    #[error("python interpreter {path} printed an unexpected path report")]
    ProbeOutput {
        /// The interpreter path as given.
        path: PathBuf,
        /// Why the report did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A baseline file is not a trainguard environment baseline.
    #[error("baseline {path} is not a trainguard env baseline")]
    Baseline {
        /// The baseline file.
        path: PathBuf,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A baseline file has a format this version does not read.
    #[error("baseline {path} has format {found:?}, expected {expected:?}")]
    BaselineFormat {
        /// The baseline file.
        path: PathBuf,
        /// The format string it declares.
        found: String,
        /// The format string this version reads and writes.
        expected: &'static str,
    },
    /// A site-packages directory could not be walked.
    #[error("cannot walk {path}")]
    Walk {
        /// The directory being walked.
        path: PathBuf,
        /// What went wrong (carries the entry's path).
        #[source]
        source: walkdir::Error,
    },
    /// A file or directory could not be read or written (the message names the path).
    #[error(transparent)]
    Io(#[from] io::Error),
}
