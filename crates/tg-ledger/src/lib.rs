//! Append-only Merkle log with RFC 9162 hashing, signed tree heads and proofs
