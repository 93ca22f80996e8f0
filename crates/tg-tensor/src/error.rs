//! The one error type of this crate.

use std::path::PathBuf;

/// Why a checkpoint could not be read, converted or compared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not in a format this crate reads.
    #[error("{}: {why}", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// What it is, or why it is refused.
        why: String,
    },
    /// The zip container could not be read.
    #[error("{}: cannot read the archive", path.display())]
    Archive {
        /// The file.
        path: PathBuf,
        /// The archive reader's error.
        #[source]
        source: tg_archive::ZipError,
    },
    /// A pickle stream did not end in `STOP` the way a loader would accept.
    #[error("{}: pickle {stream} cannot be loaded: {why}", path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// Which stream (an archive member or a position in a legacy file).
        stream: String,
        /// What the symbolic machine reported.
        why: String,
    },
    /// A structure that the rebuild functions would reject (bad arguments, a missing or
    /// undersized storage, a view that reaches outside its storage).
    #[error("{}: {what}: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The tensor, storage or value concerned.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two tensors or values end up with the same flattened name.
    #[error("{}: the name {name} occurs twice after flattening", path.display())]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The flattened name.
        name: String,
    },
    /// A sharded checkpoint whose index or shards do not fit together.
    #[error("{}: {why}", path.display())]
    Index {
        /// The index file or directory.
        path: PathBuf,
        /// What does not fit.
        why: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            path: path.into(),
            what: what.into(),
            why: why.into(),
        }
    }
}
