//! One ledger entry and its canonical leaf bytes.
//!
//! The leaf bytes are what the Merkle tree hashes (`SHA-256(0x00 || leaf bytes)`), and
//! verification recomputes them from the stored row fields, never from a stored hash. The
//! encoding is length-prefixed binary, chosen over canonical JSON because it has exactly one
//! encoding per entry without any normalisation rules (no key order, escaping or number forms
//! to agree on):
//!
//! ```text
//! leaf   = magic  time_ms  str(user)  uid  str(host)  str(verb)  str(path)
//!          count  count × (str(name) str(hex))  str(verdict)
//! magic  = "tg-ledger-entry/1" (17 bytes)
//! time_ms= u64, milliseconds since the Unix epoch
//! uid    = 0x00 (unknown) | 0x01 u32
//! count  = u32, the number of digests
//! str(s) = u32 byte length, then the UTF-8 bytes of s
//! ```
//!
//! All integers are big-endian. [`Entry::from_leaf_bytes`] accepts exactly the output of
//! [`Entry::leaf_bytes`] (no trailing bytes, every length checked against what is left before
//! anything is allocated), so `leaf_bytes(from_leaf_bytes(b)) == b` for every accepted `b`.

use serde::{Deserialize, Serialize};

use crate::merkle::{Hash, leaf_hash};

const MAGIC: &[u8] = b"tg-ledger-entry/1";

/// One digest recorded with an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// An algorithm (`sha256`) for a single file, or the file inside a directory it belongs to.
    pub name: String,
    /// The digest, hex.
    pub hex: String,
}

/// What one trainguard command did: who, where, which verb on which path, with which result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The user name of the process that recorded the entry.
    pub user: String,
    /// The numeric user id, where the platform has one.
    pub uid: Option<u32>,
    /// The host name.
    pub host: String,
    /// The trainguard verb (`scan`, `seal`, `env verify`, …).
    pub verb: String,
    /// The path the verb acted on (non-UTF-8 bytes replaced).
    pub path: String,
    /// The digests the verb computed or checked.
    pub digests: Vec<Digest>,
    /// The verdict the verb reached (`clean`, `malicious`, `valid`, …).
    pub verdict: String,
}

/// Why bytes are not the leaf encoding of an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The bytes do not start with the entry magic.
    #[error("not a ledger entry: the magic is missing")]
    BadMagic,
    /// The bytes end inside a field.
    #[error("ledger entry truncated in field `{field}` at byte {offset}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// The byte offset where it starts.
        offset: usize,
    },
    /// A string field is not UTF-8.
    #[error("ledger entry field `{field}` at byte {offset} is not UTF-8")]
    NotUtf8 {
        /// The field being read.
        field: &'static str,
        /// The byte offset where it starts.
        offset: usize,
    },
    /// The uid marker is neither 0 nor 1.
    #[error("ledger entry uid marker at byte {offset} is {value}, not 0 or 1")]
    BadUidMarker {
        /// The byte offset of the marker.
        offset: usize,
        /// The marker found.
        value: u8,
    },
    /// Bytes follow the last field.
    #[error("ledger entry has {extra} bytes after its last field")]
    TrailingBytes {
        /// How many bytes are left over.
        extra: usize,
    },
}

impl Entry {
    /// The canonical leaf bytes (see the module documentation).
    pub fn leaf_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        put_str(&mut out, &self.user);
        match self.uid {
            None => out.push(0),
            Some(uid) => {
                out.push(1);
                out.extend_from_slice(&uid.to_be_bytes());
            }
        }
        put_str(&mut out, &self.host);
        put_str(&mut out, &self.verb);
        put_str(&mut out, &self.path);
        put_len(&mut out, self.digests.len());
        for d in &self.digests {
            put_str(&mut out, &d.name);
            put_str(&mut out, &d.hex);
        }
        put_str(&mut out, &self.verdict);
        out
    }

    /// The RFC 9162 leaf hash of [`Entry::leaf_bytes`].
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.leaf_bytes())
    }

    /// Parse canonical leaf bytes back into an entry; the input is treated as hostile.
    pub fn from_leaf_bytes(bytes: &[u8]) -> Result<Self, EntryError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(MAGIC.len(), "magic").ok() != Some(MAGIC) {
            return Err(EntryError::BadMagic);
        }
        let time_ms = r.u64("time_ms")?;
        let user = r.string("user")?;
        let offset = r.pos;
        let uid = match r.take(1, "uid")?[0] {
            0 => None,
            1 => Some(r.u32("uid")?),
            value => return Err(EntryError::BadUidMarker { offset, value }),
        };
        let host = r.string("host")?;
        let verb = r.string("verb")?;
        let path = r.string("path")?;
        let count = r.u32("digest count")? as usize;
        // Each digest takes at least 8 bytes, so a count the input cannot hold is refused
        // before anything is allocated for it.
        if count > r.remaining() / 8 {
            return Err(EntryError::Truncated {
                field: "digests",
                offset: r.pos,
            });
        }
        let mut digests = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.string("digest name")?;
            let hex = r.string("digest hex")?;
            digests.push(Digest { name, hex });
        }
        let verdict = r.string("verdict")?;
        if r.remaining() != 0 {
            return Err(EntryError::TrailingBytes {
                extra: r.remaining(),
            });
        }
        Ok(Entry {
            time_ms,
            user,
            uid,
            host,
            verb,
            path,
            digests,
            verdict,
        })
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Fields longer than 4 GiB cannot be stored in SQLite's default limits anyway; saturating
    // keeps the encoding total, and such an entry would simply fail to parse back.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EntryError> {
        let truncated = EntryError::Truncated {
            field,
            offset: self.pos,
        };
        let end = self.pos.checked_add(n).ok_or(truncated.clone())?;
        let slice = self.bytes.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, EntryError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, EntryError> {
        let b = self.take(8, field)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self, field: &'static str) -> Result<String, EntryError> {
        let offset = self.pos;
        let len = self.u32(field)? as usize;
        let b = self.take(len, field)?;
        let s = std::str::from_utf8(b).map_err(|_| EntryError::NotUtf8 { field, offset })?;
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Entry {
        Entry {
            time_ms: 1_780_000_000_123,
            user: "alice".into(),
            uid: Some(1000),
            host: "gpu-node-07".into(),
            verb: "scan".into(),
            path: "/ckpt/step-100/model.pt".into(),
            digests: vec![Digest {
                name: "sha256".into(),
                hex: "ab".repeat(32),
            }],
            verdict: "clean".into(),
        }
    }

    #[test]
    fn leaf_bytes_round_trip() {
        let e = sample();
        let bytes = e.leaf_bytes();
        assert_eq!(Entry::from_leaf_bytes(&bytes), Ok(e.clone()));
        let none = Entry {
            uid: None,
            digests: vec![],
            ..e
        };
        assert_eq!(Entry::from_leaf_bytes(&none.leaf_bytes()), Ok(none));
    }

    /// The encoding is pinned byte for byte: changing it changes every leaf of every ledger.
    #[test]
    fn leaf_bytes_are_the_documented_encoding() {
        let e = Entry {
            time_ms: 258,
            user: "u".into(),
            uid: Some(7),
            host: "h".into(),
            verb: "v".into(),
            path: "p".into(),
            digests: vec![Digest {
                name: "n".into(),
                hex: "ff".into(),
            }],
            verdict: "ok".into(),
        };
        let mut want = b"tg-ledger-entry/1".to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        want.extend_from_slice(&[0, 0, 0, 1, b'u', 1, 0, 0, 0, 7]);
        want.extend_from_slice(&[0, 0, 0, 1, b'h', 0, 0, 0, 1, b'v', 0, 0, 0, 1, b'p']);
        want.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'n', 0, 0, 0, 2, b'f', b'f']);
        want.extend_from_slice(&[0, 0, 0, 2, b'o', b'k']);
        assert_eq!(e.leaf_bytes(), want);
    }

    #[test]
    fn every_field_changes_the_leaf_hash() {
        let base = sample();
        let mut variants = vec![];
        let mut e = base.clone();
        e.time_ms += 1;
        variants.push(e);
        let mut e = base.clone();
        e.user.push('x');
        variants.push(e);
        let mut e = base.clone();
        e.uid = None;
        variants.push(e);
        let mut e = base.clone();
        e.host = "gpu-node-08".into();
        variants.push(e);
        let mut e = base.clone();
        e.verb = "seal".into();
        variants.push(e);
        let mut e = base.clone();
        e.path.push('/');
        variants.push(e);
        let mut e = base.clone();
        e.digests[0].hex = "cd".repeat(32);
        variants.push(e);
        let mut e = base.clone();
        e.verdict = "malicious".into();
        variants.push(e);
        // Moving bytes between adjacent fields must not collide (the reason for length prefixes).
        let mut e = base.clone();
        e.user = "alicegpu-node-07".into();
        e.host = String::new();
        variants.push(e);
        for v in variants {
            assert_ne!(v.leaf_hash(), base.leaf_hash(), "{v:?}");
        }
    }

    #[test]
    fn malformed_leaves_are_named() {
        let bytes = sample().leaf_bytes();
        assert_eq!(Entry::from_leaf_bytes(b"nope"), Err(EntryError::BadMagic));
        assert!(matches!(
            Entry::from_leaf_bytes(&bytes[..bytes.len() - 1]),
            Err(EntryError::Truncated {
                field: "verdict",
                ..
            })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Entry::from_leaf_bytes(&longer),
            Err(EntryError::TrailingBytes { extra: 1 })
        );
        let mut bad_uid = bytes.clone();
        bad_uid[MAGIC.len() + 8 + 4 + 5] = 9;
        assert!(matches!(
            Entry::from_leaf_bytes(&bad_uid),
            Err(EntryError::BadUidMarker { value: 9, .. })
        ));
    }

    /// Fuzz-style: random bytes and random mutations of a valid leaf never panic, and whatever
    /// parses re-encodes to exactly the same bytes (the encoding is canonical).
    #[test]
    fn random_bytes_never_panic_and_accepted_bytes_are_canonical() {
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        let valid = sample().leaf_bytes();
        let mut accepted = 0;
        for round in 0..20_000 {
            let bytes = if round % 2 == 0 {
                let len = rng.usize(..200);
                (0..len).map(|_| rng.u8(..)).collect::<Vec<_>>()
            } else {
                let mut b = valid.clone();
                for _ in 0..rng.usize(1..=4) {
                    let i = rng.usize(..=b.len());
                    match rng.u8(..3) {
                        0 if i < b.len() => b[i] = rng.u8(..),
                        1 if i < b.len() => {
                            b.truncate(i);
                        }
                        _ => b.insert(i, rng.u8(..)),
                    }
                }
                b
            };
            if let Ok(e) = Entry::from_leaf_bytes(&bytes) {
                accepted += 1;
                assert_eq!(e.leaf_bytes(), bytes);
            }
        }
        // Mutations that only touch string contents or the timestamp still parse.
        assert!(accepted > 100, "only {accepted} inputs parsed");
    }
}
