//! Directory manifests, parallel hashing, signing and verification in the OpenSSF Model Signing
//! (OMS) v1.0 format, interoperable with the `model-signing` Python package.
//!
//! A signature is a Sigstore bundle v0.3 (JSON) wrapping a DSSE envelope whose payload is an
//! in-toto Statement v1 with predicate `https://model_signing/signature/v1.0`, listing every
//! file of the directory with its SHA-256 (the `files` serialization), signed with ECDSA on
//! P-256, P-384 or P-521. Files are enumerated exactly as `model_signing` does: recursive, no
//! symbolic links or special files, `.git`, `.gitattributes`, `.github`, `.gitignore` and the
//! signature file left out at the root, sorted component by component.
//!
//! Main design decision: we emit only what the `model_signing verify key` CLI accepts (file-level
//! SHA-256; it ignores the recorded hashing config), so a file's digest is one sequential
//! SHA-256. Parallelism is therefore across files (every rayon thread, largest files first), and
//! every file streams through a fixed 1 MiB buffer, so memory is bounded by the number of
//! worker threads, not file sizes. An optional digest cache ([`cache`]) skips files whose size,
//! mtime, ctime, inode and device are unchanged.
//!
//! ```no_run
//! # fn main() -> Result<(), tg_seal::Error> {
//! use std::path::Path;
//! let dir = Path::new("checkpoints/step-1000");
//! let sig = dir.join(tg_seal::DEFAULT_SIGNATURE_NAME);
//! let key = tg_seal::SigningKey::read_pem_file(Path::new("key.pem"))?;
//! let mut opts = tg_seal::Options::default();
//! opts.ignore_signature(dir, &sig)?;
//! tg_seal::sign(&tg_seal::manifest(dir, &opts)?, &key)?.write(&sig)?;
//!
//! let bundle = tg_seal::Bundle::read(&sig)?;
//! let report = tg_seal::verify(dir, &bundle, &key.verifying_key(), &opts)?;
//! assert!(report.is_valid());
//! # Ok(()) }
//! ```

mod bundle;
pub mod cache;
mod error;
mod hash;
mod keys;
mod manifest;
mod verify;

pub use bundle::{
    BUNDLE_MEDIA_TYPE, Bundle, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, SignedManifest, sign,
};
pub use error::{Error, Result};
pub use hash::{BUFFER_SIZE, Digest, hash_file, hash_reader};
pub use keys::{Curve, SigningKey, VerifyingKey};
pub use manifest::{
    DEFAULT_SIGNATURE_NAME, GIT_PATHS, HashStats, Manifest, Options, Resource, manifest,
};
pub use verify::{Changed, VerifyReport, verify};
