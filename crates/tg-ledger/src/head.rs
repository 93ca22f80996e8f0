//! Signed tree heads and the ECDSA P-256 key that signs them.
//!
//! A signed tree head (STH) commits to the whole log at one size: `(tree size, root hash,
//! timestamp)` as in RFC 9162 §4.10, plus the leaf hash of the newest entry. trainguard signs a
//! head after every append, so head `n` vouches for entry `n - 1` on its own: verification can
//! name every rewritten, removed or reordered entry, not only the first place the roots diverge.
//!
//! The signature is ECDSA P-256 with SHA-256 (DER) over [`SignedTreeHead::signed_bytes`]. The
//! key lives outside the database (by default `LEDGER.key`, mode 0600): whoever can rewrite the
//! database but not read the key cannot forge a head.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde::{Deserialize, Serialize};

use crate::merkle::Hash;

/// The domain separator at the start of every signed head, so a head signature can never be
/// mistaken for a signature over anything else made with the same key.
const DOMAIN: &[u8] = b"trainguard-ledger-tree-head/1\n";

/// A tree head and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTreeHead {
    /// The number of entries the head covers.
    pub tree_size: u64,
    /// The Merkle Tree Hash of those entries.
    #[serde(with = "hex_hash")]
    pub root_hash: Hash,
    /// When the head was signed, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The leaf hash of entry `tree_size - 1`.
    #[serde(with = "hex_hash")]
    pub last_leaf: Hash,
    /// ECDSA P-256 / SHA-256 signature over [`SignedTreeHead::signed_bytes`], DER, hex.
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

impl SignedTreeHead {
    /// Sign a head with `key`.
    pub fn sign(
        key: &SigningKey,
        tree_size: u64,
        root_hash: Hash,
        timestamp_ms: u64,
        last_leaf: Hash,
    ) -> Self {
        let bytes = Self::bytes(tree_size, &root_hash, timestamp_ms, &last_leaf);
        let sig: Signature = key.sign(&bytes);
        SignedTreeHead {
            tree_size,
            root_hash,
            timestamp_ms,
            last_leaf,
            signature: sig.to_der().as_bytes().to_vec(),
        }
    }

    /// The bytes the signature covers: the domain separator, then `tree_size` (u64 BE), the root
    /// hash, `timestamp_ms` (u64 BE) and the last leaf hash.
    pub fn signed_bytes(&self) -> Vec<u8> {
        Self::bytes(
            self.tree_size,
            &self.root_hash,
            self.timestamp_ms,
            &self.last_leaf,
        )
    }

    fn bytes(tree_size: u64, root: &Hash, timestamp_ms: u64, last_leaf: &Hash) -> Vec<u8> {
        let mut b = Vec::with_capacity(DOMAIN.len() + 80);
        b.extend_from_slice(DOMAIN);
        b.extend_from_slice(&tree_size.to_be_bytes());
        b.extend_from_slice(root);
        b.extend_from_slice(&timestamp_ms.to_be_bytes());
        b.extend_from_slice(last_leaf);
        b
    }

    /// Whether the signature is valid for `key`.
    pub fn verify_signature(&self, key: &VerifyingKey) -> bool {
        Signature::from_der(&self.signature)
            .is_ok_and(|sig| key.verify(&self.signed_bytes(), &sig).is_ok())
    }
}

/// Hex (de)serialisation of a 32-byte hash.
pub(crate) mod hex_hash {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::merkle::Hash;

    pub(crate) fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        let mut h = [0; 32];
        hex::decode_to_slice(&s, &mut h).map_err(serde::de::Error::custom)?;
        Ok(h)
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the key file failed (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file is not a PKCS#8 P-256 private key or an SPKI P-256 public key in PEM.
    #[error("{path} is not a P-256 key in PEM (PKCS#8 private or SPKI public)")]
    NotAKey {
        /// The key file.
        path: PathBuf,
    },
    /// A public key was given where the private key is needed to sign.
    #[error("{path} holds a public key; appending needs the private signing key")]
    PublicOnly {
        /// The key file.
        path: PathBuf,
    },
}

/// The default key file of a ledger: the database path with `.key` appended.
pub fn default_key_path(ledger: &Path) -> PathBuf {
    let mut s = ledger.as_os_str().to_owned();
    s.push(".key");
    PathBuf::from(s)
}

/// Load the signing key at `path`, or create one there (mode 0600) when no file exists.
///
/// Creation is race-free across processes: the key is written to a temporary file in the same
/// directory and moved into place only if no key exists yet; a process that loses the race
/// reads the winner's key.
pub fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    match load_signing_key(path) {
        Err(KeyError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let key = SigningKey::random(&mut rand_core::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::NotAKey {
            path: path.to_owned(),
        })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".tg-ledger-key")
        .tempfile_in(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{e} in {}", dir.display())))?;
    // tempfile creates the file with mode 0600 on Unix.
    tmp.as_file().write_all(pem.as_bytes())?;
    tmp.as_file().sync_all()?;
    // `persist_noclobber` links (or `renameat2(RENAME_NOREPLACE)`s) the complete file into
    // place and fails if the name exists: readers never see a half-written key.
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(key),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => load_signing_key(path),
        Err(e) => Err(std::io::Error::new(
            e.error.kind(),
            format!(
                "failed to create signing key {}: {}",
                path.display(),
                e.error
            ),
        )
        .into()),
    }
}

/// Load the PKCS#8 PEM signing key at `path`.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = fs_err::read_to_string(path)?;
    if VerifyingKey::from_public_key_pem(&pem).is_ok() {
        return Err(KeyError::PublicOnly {
            path: path.to_owned(),
        });
    }
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::NotAKey {
        path: path.to_owned(),
    })
}

/// Load the key that verifies heads from `path`: a PKCS#8 private key (its public half is
/// used) or an SPKI public key, both PEM.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = fs_err::read_to_string(path)?;
    if let Ok(key) = VerifyingKey::from_public_key_pem(&pem) {
        return Ok(key);
    }
    SigningKey::from_pkcs8_pem(&pem)
        .map(|k| *k.verifying_key())
        .map_err(|_| KeyError::NotAKey {
            path: path.to_owned(),
        })
}

/// The SPKI PEM of a public key, to hand to verifiers who must not hold the private key.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    // Encoding a valid P-256 point as SPKI cannot fail.
    key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
}

/// The SPKI DER of a public key, stored in the database to catch a swapped key file early.
pub(crate) fn public_key_der(key: &VerifyingKey) -> Vec<u8> {
    key.to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_verify_only_with_their_key_and_content() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let other = SigningKey::random(&mut rand_core::OsRng);
        let head = SignedTreeHead::sign(&key, 3, [1; 32], 99, [2; 32]);
        assert!(head.verify_signature(key.verifying_key()));
        assert!(!head.verify_signature(other.verifying_key()));
        for tamper in [
            |h: &mut SignedTreeHead| h.tree_size += 1,
            |h: &mut SignedTreeHead| h.root_hash[0] ^= 1,
            |h: &mut SignedTreeHead| h.timestamp_ms += 1,
            |h: &mut SignedTreeHead| h.last_leaf[31] ^= 1,
            |h: &mut SignedTreeHead| h.signature[10] ^= 1,
            |h: &mut SignedTreeHead| h.signature.clear(),
        ] {
            let mut h = head.clone();
            tamper(&mut h);
            assert!(!h.verify_signature(key.verifying_key()), "{h:?}");
        }
        let json = serde_json::to_string(&head).unwrap();
        assert_eq!(serde_json::from_str::<SignedTreeHead>(&json).unwrap(), head);
    }

    #[test]
    fn key_file_is_created_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db.key");
        let a = load_or_create_signing_key(&path).unwrap();
        let b = load_or_create_signing_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs_err::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_verifying_key(&path).unwrap(), *a.verifying_key());
        let pub_path = dir.path().join("ledger.pub");
        fs_err::write(&pub_path, public_key_pem(a.verifying_key())).unwrap();
        assert_eq!(load_verifying_key(&pub_path).unwrap(), *a.verifying_key());
        assert!(matches!(
            load_signing_key(&pub_path),
            Err(KeyError::PublicOnly { .. })
        ));
        let junk = dir.path().join("junk");
        fs_err::write(&junk, "not a key").unwrap();
        assert!(matches!(
            load_verifying_key(&junk),
            Err(KeyError::NotAKey { .. })
        ));
    }
}
