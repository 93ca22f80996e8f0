//! Bounded readers for hostile binary formats: a random-access byte source with a small read
//! cache ([`Bytes`]), and a protobuf wire-format walker over it ([`Walker`]) that visits one
//! message's fields without ever allocating for a length it has not checked against the input.
//!
//! Model files can be many gigabytes (an ONNX model with inline weights, a GGUF file), so the
//! readers never load the whole file: a field's bytes are read only when the caller asks for
//! them, and a skipped field costs nothing but its key and length.

use std::io;

use tg_archive::ReadAt;

/// How many bytes one cache refill reads.
const CHUNK: u64 = 64 * 1024;

/// Why a structure could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The input ends before a declared length or a fixed-size field.
    Truncated {
        /// Where the read started.
        offset: u64,
        /// How many bytes it needed.
        needed: u64,
    },
    /// A value that no writer produces (bad wire type, overlong varint, zero field number).
    Malformed {
        /// Where the bad value is.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
    },
    /// An I/O error from the source.
    Io(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Truncated { offset, needed } => write!(
                f,
                "the file ends before the {needed} bytes declared at offset {offset}"
            ),
            ReadError::Malformed { offset, what } => write!(f, "{what} at offset {offset}"),
            ReadError::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

/// A random-access source read through a one-chunk cache. Counts the bytes it read.
pub(crate) struct Bytes<'a> {
    src: &'a dyn ReadAt,
    size: u64,
    cache_at: u64,
    cache: Vec<u8>,
    /// Bytes read from the source so far.
    pub(crate) read: u64,
}

impl<'a> Bytes<'a> {
    pub(crate) fn new(src: &'a dyn ReadAt) -> Self {
        Bytes {
            src,
            size: src.size(),
            cache_at: 0,
            cache: Vec::new(),
            read: 0,
        }
    }

    /// Total size of the source.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// `len` bytes at `offset`, or `Truncated` if the source is shorter. `len` must already be
    /// capped by the caller: it is allocated.
    pub(crate) fn get(&mut self, offset: u64, len: u64) -> Result<&[u8], ReadError> {
        let end =
            offset
                .checked_add(len)
                .filter(|&e| e <= self.size)
                .ok_or(ReadError::Truncated {
                    offset,
                    needed: len,
                })?;
        let cached_end = self.cache_at + self.cache.len() as u64;
        if offset < self.cache_at || end > cached_end {
            let want = len.max(CHUNK).min(self.size - offset);
            let want = usize::try_from(want).map_err(|_| ReadError::Truncated {
                offset,
                needed: len,
            })?;
            self.cache.clear();
            self.cache.resize(want, 0);
            self.src
                .read_exact_at(&mut self.cache, offset)
                .map_err(|e: io::Error| ReadError::Io(e.to_string()))?;
            self.cache_at = offset;
            self.read += want as u64;
        }
        let from = usize::try_from(offset - self.cache_at).unwrap_or(usize::MAX);
        let to = usize::try_from(end - self.cache_at).unwrap_or(usize::MAX);
        self.cache.get(from..to).ok_or(ReadError::Truncated {
            offset,
            needed: len,
        })
    }

    /// A little-endian `u32` at `offset`.
    pub(crate) fn u32_le(&mut self, offset: u64) -> Result<u32, ReadError> {
        let b = self.get(offset, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian `u64` at `offset`.
    pub(crate) fn u64_le(&mut self, offset: u64) -> Result<u64, ReadError> {
        let b = self.get(offset, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A protobuf varint at `offset`: its value and its length in bytes.
    pub(crate) fn varint(&mut self, offset: u64) -> Result<(u64, u64), ReadError> {
        let avail = self.size.saturating_sub(offset).min(10);
        let b = self.get(offset, avail)?;
        let mut v = 0u64;
        for (i, &c) in b.iter().enumerate() {
            v |= u64::from(c & 0x7f) << (7 * i);
            if c & 0x80 == 0 {
                return Ok((v, i as u64 + 1));
            }
        }
        if avail < 10 {
            Err(ReadError::Truncated {
                offset,
                needed: avail + 1,
            })
        } else {
            Err(ReadError::Malformed {
                offset,
                what: "varint longer than 10 bytes",
            })
        }
    }
}

/// One protobuf field's value, as its wire type gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// A varint.
    Varint(u64),
    /// A fixed 32- or 64-bit value (not decoded).
    Fixed,
    /// A length-delimited field: `len` bytes at `offset` (a string, bytes, or a message).
    Len {
        /// Where the field's bytes start.
        offset: u64,
        /// How many bytes it has.
        len: u64,
    },
}

/// One field of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    /// The field number.
    pub(crate) number: u64,
    /// Its value.
    pub(crate) wire: Wire,
}

/// Walks the fields of one message occupying `[start, end)` of a [`Bytes`] source.
pub(crate) struct Walker {
    at: u64,
    end: u64,
}

impl Walker {
    /// A walker over `[start, end)`.
    pub(crate) fn new(start: u64, end: u64) -> Self {
        Walker { at: start, end }
    }

    /// A walker over a length-delimited field's bytes.
    pub(crate) fn of(offset: u64, len: u64) -> Result<Self, ReadError> {
        let end = offset.checked_add(len).ok_or(ReadError::Malformed {
            offset,
            what: "field length overflows",
        })?;
        Ok(Walker::new(offset, end))
    }

    /// The next field, `None` at the end of the message. Groups (wire types 3 and 4, unused by
    /// every format read here) are malformed.
    pub(crate) fn next(&mut self, b: &mut Bytes<'_>) -> Result<Option<Field>, ReadError> {
        if self.at >= self.end {
            return Ok(None);
        }
        let key_at = self.at;
        let (key, n) = b.varint(key_at)?;
        let mut at = key_at + n;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) - 1 {
            return Err(ReadError::Malformed {
                offset: key_at,
                what: "invalid protobuf field number",
            });
        }
        let wire = match key & 7 {
            0 => {
                let (v, n) = b.varint(at)?;
                at += n;
                Wire::Varint(v)
            }
            1 => {
                at = at.checked_add(8).ok_or(ReadError::Truncated {
                    offset: at,
                    needed: 8,
                })?;
                Wire::Fixed
            }
            5 => {
                at = at.checked_add(4).ok_or(ReadError::Truncated {
                    offset: at,
                    needed: 4,
                })?;
                Wire::Fixed
            }
            2 => {
                let (len, n) = b.varint(at)?;
                at += n;
                let offset = at;
                at = at.checked_add(len).ok_or(ReadError::Truncated {
                    offset,
                    needed: len,
                })?;
                Wire::Len { offset, len }
            }
            _ => {
                return Err(ReadError::Malformed {
                    offset: key_at,
                    what: "unsupported protobuf wire type",
                });
            }
        };
        if at > self.end {
            return Err(ReadError::Truncated {
                offset: key_at,
                needed: at - key_at,
            });
        }
        self.at = at;
        Ok(Some(Field { number, wire }))
    }
}

/// A length-delimited field's bytes as (lossy) UTF-8, capped at `cap` bytes; longer strings
/// are `Malformed` (no format read here has legitimate strings that long in the fields read).
pub(crate) fn string(
    b: &mut Bytes<'_>,
    offset: u64,
    len: u64,
    cap: u64,
) -> Result<String, ReadError> {
    if len > cap {
        return Err(ReadError::Malformed {
            offset,
            what: "string longer than the limit",
        });
    }
    Ok(String::from_utf8_lossy(b.get(offset, len)?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_fields_and_rejects_overruns() {
        // field 1 varint 150, field 2 bytes "hi", field 3 fixed32
        let msg: &[u8] = &[0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d, 1, 2, 3, 4];
        let mut b = Bytes::new(&msg);
        let mut w = Walker::new(0, msg.len() as u64);
        assert_eq!(w.next(&mut b).unwrap().unwrap().wire, Wire::Varint(150));
        let f = w.next(&mut b).unwrap().unwrap();
        assert_eq!(f.wire, Wire::Len { offset: 5, len: 2 });
        assert_eq!(w.next(&mut b).unwrap().unwrap().wire, Wire::Fixed);
        assert_eq!(w.next(&mut b).unwrap(), None);

        // a length that runs past the message end
        let bad: &[u8] = &[0x12, 0x7f, b'x'];
        let mut b = Bytes::new(&bad);
        let mut w = Walker::new(0, 3);
        assert!(matches!(w.next(&mut b), Err(ReadError::Truncated { .. })));
        // a huge declared length does not allocate
        let huge: &[u8] = &[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        let mut b = Bytes::new(&huge);
        let mut w = Walker::new(0, huge.len() as u64);
        assert!(w.next(&mut b).is_err());
        // an overlong varint
        let long: &[u8] = &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,
        ];
        let mut b = Bytes::new(&long);
        let mut w = Walker::new(0, long.len() as u64);
        assert!(matches!(w.next(&mut b), Err(ReadError::Malformed { .. })));
    }

    #[test]
    fn cached_reads_cross_chunks() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut b = Bytes::new(&data);
        assert_eq!(b.get(65_530, 12).unwrap(), &data[65_530..65_542]);
        assert_eq!(b.get(10, 2).unwrap(), &data[10..12]);
        assert!(b.get(199_999, 2).is_err());
        assert!(b.get(u64::MAX - 1, 4).is_err());
    }
}
