//! Checking a directory against a signed manifest.

use std::collections::HashMap;
use std::path::Path;

use crate::bundle::Bundle;
use crate::error::Result;
use crate::hash::Digest;
use crate::keys::VerifyingKey;
use crate::manifest::{HashStats, Options, manifest, name_order};

/// A file whose content differs from what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// Relative path.
    pub name: String,
    /// Signed digest.
    pub expected: Digest,
    /// Digest of the file now.
    pub actual: Digest,
}

/// The outcome of checking a directory against a bundle whose signature verified.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Model name recorded by the signer.
    pub model_name: String,
    /// Signed root digest.
    pub root_digest: Digest,
    /// Number of signed files.
    pub signed_files: usize,
    /// Signed files that are no longer there.
    pub missing: Vec<String>,
    /// Files there now that were not signed.
    pub extra: Vec<String>,
    /// Files whose content changed.
    pub changed: Vec<Changed>,
    /// Paths left out of the check (the signer's plus the verifier's own).
    pub ignore_paths: Vec<String>,
    /// What hashing the directory cost.
    pub stats: HashStats,
}

impl VerifyReport {
    /// True when nothing is missing, extra or changed.
    pub fn is_valid(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.changed.is_empty()
    }
}

/// Verifies `bundle` with `key`, then hashes `dir` and compares it file by file with the signed
/// manifest. A bad signature, a key mismatch or an inconsistent statement is an `Err` for which
/// [`crate::Error::is_verification_failure`] is true; a readable directory that does not match is
/// an `Ok` report with [`VerifyReport::is_valid`] false.
///
/// Paths the signer recorded as ignored are ignored here too (as model_signing does), on top of
/// `opts.ignore_paths`; state is per call, so ignores never leak between models (model_signing
/// PR #650).
pub fn verify(
    dir: &Path,
    bundle: &Bundle,
    key: &VerifyingKey,
    opts: &Options,
) -> Result<VerifyReport> {
    let signed = bundle.verify_signature(key)?;
    let mut opts = opts.clone();
    opts.ignore_paths
        .extend(signed.ignore_paths.iter().cloned());
    let actual = manifest(dir, &opts)?;

    let expected: HashMap<&str, Digest> = signed
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.digest))
        .collect();
    let present: HashMap<&str, Digest> = actual
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.digest))
        .collect();
    let mut missing: Vec<String> = signed
        .resources
        .iter()
        .filter(|r| !present.contains_key(r.name.as_str()))
        .map(|r| r.name.clone())
        .collect();
    missing.sort_by(|a, b| name_order(a, b));
    let extra: Vec<String> = actual
        .resources
        .iter()
        .filter(|r| !expected.contains_key(r.name.as_str()))
        .map(|r| r.name.clone())
        .collect();
    let changed: Vec<Changed> = actual
        .resources
        .iter()
        .filter_map(|r| {
            let want = *expected.get(r.name.as_str())?;
            (want != r.digest).then(|| Changed {
                name: r.name.clone(),
                expected: want,
                actual: r.digest,
            })
        })
        .collect();
    Ok(VerifyReport {
        model_name: signed.model_name,
        root_digest: signed.root_digest,
        signed_files: signed.resources.len(),
        missing,
        extra,
        changed,
        ignore_paths: actual.ignore_paths,
        stats: actual.stats,
    })
}
