//! `.pyc` headers (PEP 552) and `__pycache__` file names (PEP 3147, PEP 488).
//!
//! A header is 16 bytes: the interpreter's magic number (4), a flags word (4, little endian),
//! then either the source's mtime and size (flags = 0, each truncated to 32 bits) or an 8-byte
//! SipHash of the source (bit 0 set; bit 1 = `check_source`). The import system recompiles a
//! timestamp pyc whose mtime/size differ from the source's, and a checked hash-based pyc whose
//! hash differs; it loads an *unchecked* hash-based pyc without looking at the source at all.

/// What a pyc header says about how it is tied to its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// Timestamp-based: valid while the source's mtime and size (mod 2^32) match.
    Timestamp {
        /// Source mtime in seconds, truncated to 32 bits.
        mtime: u32,
        /// Source size, truncated to 32 bits.
        size: u32,
    },
    /// Hash-based: `check_source` says whether the import system compares it with the source.
    Hash {
        /// Whether the import system re-hashes the source on import.
        check_source: bool,
    },
}

/// Parse the 16-byte header: the magic number and the validation mode.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<([u8; 4], Header), String> {
    let Some(head) = bytes.get(..16) else {
        return Err(format!("header is {} bytes, expected 16", bytes.len()));
    };
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let magic = [head[0], head[1], head[2], head[3]];
    let flags = word(4);
    let header = match flags {
        0 => Header::Timestamp {
            mtime: word(8),
            size: word(12),
        },
        1 => Header::Hash {
            check_source: false,
        },
        3 => Header::Hash { check_source: true },
        other => return Err(format!("unknown flags {other:#x}")),
    };
    Ok((magic, header))
}

/// Split `name.cpython-311.opt-1.pyc` into the module stem and the cache tag.
pub(crate) fn split_cached_name(file_name: &str) -> Option<(&str, &str)> {
    let rest = file_name.strip_suffix(".pyc")?;
    let (stem, tagged) = rest.split_once('.')?;
    let tag = tagged.split('.').next()?;
    (!stem.is_empty() && !tag.is_empty()).then_some((stem, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, a: u32, b: u32) -> Vec<u8> {
        let mut h = vec![0xa7, 0x0d, 0x0d, 0x0a];
        h.extend(flags.to_le_bytes());
        h.extend(a.to_le_bytes());
        h.extend(b.to_le_bytes());
        h
    }

    #[test]
    fn parses_the_three_modes() {
        assert_eq!(
            parse_header(&header(0, 1_700_000_000, 42)).unwrap(),
            (
                [0xa7, 0x0d, 0x0d, 0x0a],
                Header::Timestamp {
                    mtime: 1_700_000_000,
                    size: 42
                }
            )
        );
        assert_eq!(
            parse_header(&header(1, 0, 0)).unwrap().1,
            Header::Hash {
                check_source: false
            }
        );
        assert_eq!(
            parse_header(&header(3, 0, 0)).unwrap().1,
            Header::Hash { check_source: true }
        );
        assert!(parse_header(&header(2, 0, 0)).is_err());
        assert!(parse_header(&[0xa7, 0x0d]).is_err());
    }

    #[test]
    fn splits_cache_names() {
        assert_eq!(
            split_cached_name("core.cpython-311.pyc"),
            Some(("core", "cpython-311"))
        );
        assert_eq!(
            split_cached_name("__init__.cpython-311.opt-1.pyc"),
            Some(("__init__", "cpython-311"))
        );
        assert_eq!(split_cached_name("core.pyc"), None);
        assert_eq!(split_cached_name("core.py"), None);
    }
}
