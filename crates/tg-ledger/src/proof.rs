//! Proofs as self-contained JSON documents that a client checks with the public key alone.
//!
//! An [`InclusionProof`] carries the entry, its leaf hash, the RFC 9162 audit path and the signed
//! head it leads to; a [`ConsistencyProof`] carries two signed heads and the RFC 9162 consistency
//! path between them. Both are hostile input when read back: [`InclusionProof::from_json`] and
//! [`ConsistencyProof::from_json`] parse, and `verify` checks everything, trusting no field.

use p256::ecdsa::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::head::SignedTreeHead;
use crate::merkle::{Hash, ProofError, verify_consistency, verify_inclusion};

/// Most hashes a proof over a tree of at most 2^64 leaves can need (two per level).
const MAX_PROOF_HASHES: usize = 128;

/// Proof that an entry is in the tree a signed head commits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The entry's 0-based leaf index.
    pub leaf_index: u64,
    /// The entry itself.
    pub entry: Entry,
    /// `SHA-256(0x00 || leaf bytes of entry)`.
    #[serde(with = "crate::head::hex_hash")]
    pub leaf_hash: Hash,
    /// The audit path, leaf first (RFC 9162 §2.1.3.1).
    #[serde(with = "hex_hashes")]
    pub audit_path: Vec<Hash>,
    /// The signed head the path leads to.
    pub tree_head: SignedTreeHead,
}

/// Proof that the tree of an older signed head is a prefix of the tree of a newer one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The older head.
    pub old_head: SignedTreeHead,
    /// The newer head.
    pub new_head: SignedTreeHead,
    /// The consistency path (RFC 9162 §2.1.4.1).
    #[serde(with = "hex_hashes")]
    pub proof: Vec<Hash>,
}

/// Why a proof document is not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofCheckError {
    /// The document is not valid JSON of the expected shape.
    #[error("not a proof document: {0}")]
    Parse(#[source] serde_json::Error),
    /// A path has more hashes than any tree can need.
    #[error("the proof has {len} hashes; no tree needs more than {MAX_PROOF_HASHES}")]
    TooLong {
        /// How many hashes it has.
        len: usize,
    },
    /// A signed head's signature does not verify with the key given.
    #[error("the signature on tree head {tree_size} does not verify")]
    BadSignature {
        /// The head.
        tree_size: u64,
    },
    /// The leaf hash is not the hash of the entry carried.
    #[error("the leaf hash is not the hash of the entry the proof carries")]
    LeafMismatch,
    /// The Merkle path does not lead to the signed root.
    #[error(transparent)]
    Proof(ProofError),
}

impl InclusionProof {
    /// Parse a proof document; nothing in it is trusted until [`InclusionProof::verify`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProofCheckError> {
        let p: Self = serde_json::from_slice(bytes).map_err(ProofCheckError::Parse)?;
        if p.audit_path.len() > MAX_PROOF_HASHES {
            return Err(ProofCheckError::TooLong {
                len: p.audit_path.len(),
            });
        }
        Ok(p)
    }

    /// Check the head's signature, the leaf hash against the entry, and the audit path
    /// (RFC 9162 §2.1.3.2) against the signed root.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), ProofCheckError> {
        let head = &self.tree_head;
        if !head.verify_signature(key) {
            return Err(ProofCheckError::BadSignature {
                tree_size: head.tree_size,
            });
        }
        if self.entry.leaf_hash() != self.leaf_hash {
            return Err(ProofCheckError::LeafMismatch);
        }
        verify_inclusion(
            self.leaf_index,
            head.tree_size,
            &self.leaf_hash,
            &self.audit_path,
            &head.root_hash,
        )
        .map_err(ProofCheckError::Proof)
    }
}

impl ConsistencyProof {
    /// Parse a proof document; nothing in it is trusted until [`ConsistencyProof::verify`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProofCheckError> {
        let p: Self = serde_json::from_slice(bytes).map_err(ProofCheckError::Parse)?;
        if p.proof.len() > MAX_PROOF_HASHES {
            return Err(ProofCheckError::TooLong { len: p.proof.len() });
        }
        Ok(p)
    }

    /// Check both heads' signatures and the consistency path (RFC 9162 §2.1.4.2).
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), ProofCheckError> {
        for head in [&self.old_head, &self.new_head] {
            if !head.verify_signature(key) {
                return Err(ProofCheckError::BadSignature {
                    tree_size: head.tree_size,
                });
            }
        }
        verify_consistency(
            self.old_head.tree_size,
            self.new_head.tree_size,
            &self.old_head.root_hash,
            &self.new_head.root_hash,
            &self.proof,
        )
        .map_err(ProofCheckError::Proof)
    }
}

/// Hex (de)serialisation of a list of hashes.
mod hex_hashes {
    use serde::{Deserialize as _, Deserializer, Serializer, ser::SerializeSeq as _};

    use crate::merkle::Hash;

    pub(crate) fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for h in v {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        strings
            .iter()
            .map(|s| {
                let mut h = [0; 32];
                hex::decode_to_slice(s, &mut h).map_err(serde::de::Error::custom)?;
                Ok(h)
            })
            .collect()
    }
}
