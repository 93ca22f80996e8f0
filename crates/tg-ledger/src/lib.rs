//! An append-only, tamper-evident log of what trainguard did: who, on which host, which verb,
//! on which path with which digests, which verdict, when.
//!
//! The main design decision: the log is a Merkle tree hashed exactly as RFC 9162 (Certificate
//! Transparency v2) §2.1 defines, and a signed tree head is written after **every** append,
//! signing the new root *and* the new entry's leaf hash with an ECDSA P-256 key kept outside the
//! database. So an insider who can edit the SQLite file but not read the key cannot rewrite,
//! remove, insert or reorder an entry without [`Ledger::verify`] naming it, and every head a
//! user or witness kept can be proven a prefix of today's log (a consistency proof).
//!
//! - [`merkle`]: RFC 9162 hashing, proof generation and free-standing proof verification;
//! - [`Entry`]: one record and its canonical leaf bytes (length-prefixed binary);
//! - [`SignedTreeHead`] and the key file helpers;
//! - [`Ledger`]: the SQLite store, with its lifecycle as types (`Ledger<Writer>` appends,
//!   `Ledger<Reader>` only verifies; `verify(self)` yields a [`VerifiedLedger`], the only source
//!   of proofs);
//! - [`InclusionProof`] / [`ConsistencyProof`]: JSON proof documents checked with the public key.
//!
//! Entry indexes are 0-based leaf indexes, as in the RFC; heads are named by their tree size,
//! so head `n` is the one signed right after entry `n - 1` was appended.

mod entry;
mod head;
mod ledger;
pub mod merkle;
mod proof;
mod verify;

pub use entry::{Digest, Entry, EntryError};
pub use head::{
    KeyError, SignedTreeHead, default_key_path, load_or_create_signing_key, load_signing_key,
    load_verifying_key, public_key_pem,
};
pub use ledger::{
    Ledger, LedgerError, Mode, Reader, Receipt, StoredEntry, Writer, now_ms, read_entries,
};
pub use p256::ecdsa::{SigningKey, VerifyingKey};
pub use proof::{ConsistencyProof, InclusionProof, ProofCheckError};
pub use verify::{Problem, TamperReport, VerifiedLedger};
