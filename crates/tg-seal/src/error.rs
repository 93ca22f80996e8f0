//! The one error type of this crate.

use std::path::PathBuf;

/// What can go wrong while hashing, signing or verifying a directory.
///
/// [`Error::is_verification_failure`] tells apart "the signature or manifest does not hold"
/// (the model is invalid, exit code 1) from "the check could not run" (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file or directory failed.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The model path is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path given as the model directory.
        path: PathBuf,
    },
    /// A symbolic link inside the model directory (OMS `allow_symlinks: false`).
    #[error("{} is a symbolic link; model signatures never follow links", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A FIFO, socket or device inside the model directory.
    #[error("{} is neither a regular file nor a directory", path.display())]
    SpecialFile {
        /// The special file.
        path: PathBuf,
    },
    /// A listed file was replaced (by a link or another file) before it could be hashed.
    #[error("{} was replaced while the directory was being hashed", path.display())]
    Replaced {
        /// The file.
        path: PathBuf,
    },
    /// A file name that is not UTF-8 cannot be recorded in the manifest.
    #[error("{} has a name that is not valid UTF-8", path.display())]
    NonUtf8Name {
        /// The file.
        path: PathBuf,
    },
    /// A PEM key that cannot be used.
    #[error("invalid key {origin}: {reason}")]
    InvalidKey {
        /// Where the key came from (its path, or `<pem>`).
        origin: String,
        /// Why it was refused.
        reason: String,
    },
    /// A signature file that is not a well-formed OMS bundle.
    #[error("malformed signature bundle {origin}: {reason}")]
    MalformedBundle {
        /// Where the bundle came from (its path, or `<bundle>`).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A well-formed bundle using a feature this crate does not verify (shards, BLAKE3,
    /// certificates, Sigstore keyless, the v0.1 predicate).
    #[error("unsupported signature bundle {origin}: {reason}")]
    Unsupported {
        /// Where the bundle came from.
        origin: String,
        /// The unsupported feature.
        reason: String,
    },
    /// The bundle names a different public key than the one given.
    #[error(
        "signature was made with a different key: bundle key hint {bundle_hint}, given key {key_hint}"
    )]
    KeyMismatch {
        /// `verificationMaterial.publicKey.hint` of the bundle.
        bundle_hint: String,
        /// SHA-256 of the given key's PEM.
        key_hint: String,
    },
    /// The ECDSA signature does not verify over the DSSE envelope.
    #[error("signature in {origin} does not verify with the given public key")]
    BadSignature {
        /// Where the bundle came from.
        origin: String,
    },
    /// The signed payload is not a consistent model-signing statement (wrong types, a root digest
    /// that does not match the resources, duplicate names).
    #[error("signed statement in {origin} is invalid: {reason}")]
    InvalidStatement {
        /// Where the bundle came from.
        origin: String,
        /// What is inconsistent.
        reason: String,
    },
}

impl Error {
    /// True when the error means "the signature or the signed statement does not hold" rather
    /// than "the check could not run": a bad signature, a key mismatch, an inconsistent statement.
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Error::KeyMismatch { .. } | Error::BadSignature { .. } | Error::InvalidStatement { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
