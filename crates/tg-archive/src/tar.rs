//! A tar reader that sees what Python's `tarfile` (as `torch.serialization._legacy_load` opens
//! it: `tarfile.open(fileobj=f, mode="r:", format=PAX_FORMAT)`) sees.
//!
//! Hand-written rather than built on the `tar` crate: that crate reads sequentially from a
//! `Read`, allocates GNU long names and pax records without a size cap we control, and has its
//! own opinions on names and end markers; here every header is read at an offset through
//! [`ReadAt`], every variable-size record is checked against [`Limits`] before it is
//! allocated, and the rules follow `tarfile.TarInfo.frombuf` / `_proc_member` / `next()`:
//!
//! - the archive ends at the first all-zero block, at a short block, or (after the first
//!   member) at a header with a bad checksum, silently;
//! - ustar `prefix` (bytes 345..500) is joined to the name whenever it is non-empty, for every
//!   type except the GNU ones, without looking at the magic;
//! - data is skipped only for regular types (`0`, NUL, `7`, `S`) and unknown types;
//!   directories, links and devices do not skip their size;
//! - GNU `L`/`K` and pax `x` records rename the next header; pax `g` records only reach members
//!   through later `x` records;
//! - `getmember(name)` returns the **last** member with that exact name.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Limits, ReadAt};

const BLOCK: u64 = 512;
/// How far past the end marker to look for hidden non-zero data.
const TRAILING_SCAN_MAX: u64 = 64 << 20;

/// Why a tar archive could not be opened or a member not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// The source could not be read.
    #[error("i/o error reading tar {what} at offset {offset}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The first header is missing or invalid (`tarfile.ReadError`).
    #[error("not a tar archive: {reason}")]
    NotATar {
        /// Why.
        reason: &'static str,
    },
    /// A header after a GNU long-name or pax record is invalid (`SubsequentHeaderError`).
    #[error("corrupt tar: {what} at offset {offset}")]
    Corrupt {
        /// The check that failed.
        what: &'static str,
        /// Header offset.
        offset: u64,
    },
    /// More members than [`Limits::max_entries`].
    #[error("tar has more than {max} members")]
    TooManyEntries {
        /// Allowed.
        max: usize,
    },
    /// GNU long-name and pax records adding up to more than [`Limits::max_directory_bytes`].
    #[error(
        "tar metadata records reach {bytes} bytes at offset {offset}, more than the limit of {max}"
    )]
    RecordTooLarge {
        /// Header offset.
        offset: u64,
        /// Total metadata bytes including this record.
        bytes: u64,
        /// Allowed.
        max: u64,
    },
    /// The member is larger than [`Limits::max_member_bytes`].
    #[error("member {name}: {size} bytes, more than the limit of {max}")]
    MemberTooLarge {
        /// Member name.
        name: String,
        /// Declared size.
        size: u64,
        /// Allowed.
        max: u64,
    },
    /// Reading the member would exceed [`Limits::max_total_bytes`] for this archive.
    #[error("member {name}: reading it would exceed the archive budget of {max} bytes")]
    BudgetExceeded {
        /// Member name.
        name: String,
        /// Allowed total.
        max: u64,
    },
    /// The member's data runs past the end of the file.
    #[error("member {name}: data runs past the end of the archive")]
    OutOfBounds {
        /// Member name.
        name: String,
    },
}

/// What a tar member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TarEntryKind {
    /// `0`, NUL, `7` (contiguous) or `S` (GNU sparse, read as plain data).
    Regular,
    /// `5`, or NUL with a name ending in `/`.
    Directory,
    /// `1`.
    HardLink,
    /// `2`.
    SymLink,
    /// Any other type byte (devices, FIFOs, unknown types).
    Other(u8),
}

/// One member of a tar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TarEntry {
    /// Name (after GNU long-name, ustar prefix and pax `path`), lossy UTF-8.
    pub name: String,
    /// The name's bytes.
    pub raw_name: Vec<u8>,
    /// Member type.
    pub kind: TarEntryKind,
    /// Size in bytes (pax `size` applied).
    pub size: u64,
    /// Offset of the member's first header (the long-name or pax record, if any).
    pub header_offset: u64,
    /// Offset of the data.
    pub data_offset: u64,
}

/// Something unusual about a tar archive; [`TarAnomaly::is_hostile`] says what to flag.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TarAnomaly {
    /// Two members with the same name; `tarfile.getmember` returns the last one, other tools
    /// extract both in order (so the first is overwritten) or stop at the first.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A member's data runs past the end of the file; `tarfile` raises on it.
    EntryPastEnd {
        /// Member name.
        name: String,
    },
    /// Non-zero bytes after the end of the archive, which `tarfile` never reads.
    TrailingData {
        /// Bytes after the end marker.
        bytes: u64,
    },
    /// Parsing stopped at an invalid header (bad checksum or number); `tarfile` stops there
    /// silently, other tools may go on.
    InvalidHeader {
        /// Header offset.
        offset: u64,
    },
    /// A pax global header.
    GlobalPaxHeader {
        /// Header offset.
        offset: u64,
    },
}

impl TarAnomaly {
    /// Whether two readers could see different content.
    pub fn is_hostile(&self) -> bool {
        !matches!(self, TarAnomaly::GlobalPaxHeader { .. })
    }
}

impl fmt::Display for TarAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarAnomaly::DuplicateName { name } => write!(f, "duplicate tar member name {name:?}"),
            TarAnomaly::EntryPastEnd { name } => {
                write!(f, "tar member {name:?} runs past the end of the file")
            }
            TarAnomaly::TrailingData { bytes } => {
                write!(
                    f,
                    "{bytes} bytes with data after the end of the tar archive"
                )
            }
            TarAnomaly::InvalidHeader { offset } => {
                write!(
                    f,
                    "invalid tar header at offset {offset} ends the archive early"
                )
            }
            TarAnomaly::GlobalPaxHeader { offset } => {
                write!(f, "pax global header at offset {offset}")
            }
        }
    }
}

/// A tar archive opened the way Python's `tarfile` opens it.
#[derive(Debug)]
pub struct TarArchive<R> {
    src: R,
    limits: Limits,
    entries: Vec<TarEntry>,
    anomalies: Vec<TarAnomaly>,
    bytes_read: AtomicU64,
}

/// Outcome of reading one header block.
enum Header {
    /// All zeros, short, or missing: the end.
    End,
    /// Bad checksum or number field.
    Invalid,
    /// A parsed header.
    Ok(Box<RawHeader>),
}

struct RawHeader {
    name: Vec<u8>,
    size: u64,
    kind: u8,
    prefix: Vec<u8>,
}

/// `nts`: up to the first NUL.
fn nts(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(p) => &b[..p],
        None => b,
    }
}

/// `nti`: base-256 when the first byte is 0x80 or 0xff, else octal text.
fn nti(b: &[u8]) -> Option<u64> {
    match b.first() {
        Some(0x80) => {
            let mut n: u64 = 0;
            for &c in &b[1..] {
                n = n.checked_mul(256)?.checked_add(u64::from(c))?;
            }
            Some(n)
        }
        // Negative numbers are not valid sizes.
        Some(0xff) => None,
        _ => {
            let s = std::str::from_utf8(nts(b)).ok()?;
            let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
            if s.is_empty() {
                return Some(0);
            }
            u64::from_str_radix(s, 8).ok()
        }
    }
}

fn parse_header(block: &[u8; BLOCK as usize]) -> Header {
    if block.iter().all(|&c| c == 0) {
        return Header::End;
    }
    let Some(chksum) = nti(&block[148..156]) else {
        return Header::Invalid;
    };
    let mut unsigned: u64 = 256;
    let mut signed: i64 = 256;
    for (i, &c) in block.iter().enumerate() {
        if !(148..156).contains(&i) {
            unsigned += u64::from(c);
            signed += i64::from(c as i8);
        }
    }
    if chksum != unsigned && i64::try_from(chksum).ok() != Some(signed) {
        return Header::Invalid;
    }
    let Some(size) = nti(&block[124..136]) else {
        return Header::Invalid;
    };
    Header::Ok(Box::new(RawHeader {
        name: nts(&block[0..100]).to_vec(),
        size,
        kind: block[156],
        prefix: nts(&block[345..500]).to_vec(),
    }))
}

/// Round up to whole blocks.
fn blocks(size: u64) -> Option<u64> {
    size.checked_add(BLOCK - 1).map(|s| s / BLOCK * BLOCK)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses pax records `"<len> <key>=<value>\n"` into `into`.
fn parse_pax(buf: &[u8], into: &mut HashMap<Vec<u8>, Vec<u8>>) -> bool {
    let mut pos = 0usize;
    while pos < buf.len() {
        if buf[pos] == 0 {
            break;
        }
        let Some(space) = buf[pos..].iter().position(|&c| c == b' ') else {
            return false;
        };
        let Some(len) = std::str::from_utf8(&buf[pos..pos + space])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return false;
        };
        let Some(record) = pos.checked_add(len).and_then(|end| buf.get(pos..end)) else {
            return false;
        };
        // A length that does not even cover its own digits is invalid (and would never advance).
        let Some(body) = record.get(space + 1..) else {
            return false;
        };
        let Some(body) = body.strip_suffix(b"\n") else {
            return false;
        };
        let Some(eq) = body.iter().position(|&c| c == b'=') else {
            return false;
        };
        into.insert(body[..eq].to_vec(), body[eq + 1..].to_vec());
        pos += len;
    }
    true
}

impl<R: ReadAt> TarArchive<R> {
    /// Reads every header (never the data), like `tarfile.TarFile.getmembers`.
    pub fn open(src: R, limits: Limits) -> Result<Self, TarError> {
        let size = src.size();
        let mut entries: Vec<TarEntry> = Vec::new();
        let mut anomalies = Vec::new();
        let mut global_pax: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut offset = 0u64;
        let end: u64;

        let read_block = |offset: u64| -> Result<Header, TarError> {
            if offset.checked_add(BLOCK).is_none_or(|e| e > size) {
                return Ok(Header::End);
            }
            let mut block = [0u8; BLOCK as usize];
            src.read_exact_at(&mut block, offset)
                .map_err(|source| TarError::Io {
                    what: "header",
                    offset,
                    source,
                })?;
            Ok(parse_header(&block))
        };
        // All GNU long-name and pax records together, so many records cannot add up.
        let metadata_bytes = std::cell::Cell::new(0u64);
        let read_record = |offset: u64, len: u64| -> Result<Vec<u8>, TarError> {
            let total = metadata_bytes.get().saturating_add(len);
            metadata_bytes.set(total);
            if total > limits.max_directory_bytes {
                return Err(TarError::RecordTooLarge {
                    offset,
                    bytes: total,
                    max: limits.max_directory_bytes,
                });
            }
            if offset.checked_add(len).is_none_or(|e| e > size) {
                return Err(TarError::Corrupt {
                    what: "metadata record past the end",
                    offset,
                });
            }
            // Bounded by the limit and by the file size.
            let mut buf = vec![0u8; len as usize];
            src.read_exact_at(&mut buf, offset)
                .map_err(|source| TarError::Io {
                    what: "metadata record",
                    offset,
                    source,
                })?;
            Ok(buf)
        };

        'members: loop {
            let header_offset = offset;
            let mut long_name: Option<Vec<u8>> = None;
            let mut pax: Option<HashMap<Vec<u8>, Vec<u8>>> = None;
            let mut subsequent = false;
            // Follow extension records to the real header.
            let hdr = loop {
                match read_block(offset)? {
                    Header::End if subsequent => {
                        return Err(TarError::Corrupt {
                            what: "missing header after extension record",
                            offset,
                        });
                    }
                    Header::End => {
                        if offset == 0 {
                            return Err(TarError::NotATar {
                                reason: "empty archive",
                            });
                        }
                        end = offset;
                        break 'members;
                    }
                    Header::Invalid if subsequent => {
                        return Err(TarError::Corrupt {
                            what: "invalid header after extension record",
                            offset,
                        });
                    }
                    Header::Invalid => {
                        if offset == 0 {
                            return Err(TarError::NotATar {
                                reason: "invalid first header",
                            });
                        }
                        anomalies.push(TarAnomaly::InvalidHeader { offset });
                        end = offset;
                        break 'members;
                    }
                    Header::Ok(h) => {
                        let data = offset + BLOCK;
                        match h.kind {
                            b'L' | b'K' => {
                                let buf = read_record(data, h.size)?;
                                if h.kind == b'L' {
                                    long_name = Some(nts(&buf).to_vec());
                                }
                            }
                            b'x' | b'X' | b'g' => {
                                let buf = read_record(data, h.size)?;
                                if h.kind == b'g' {
                                    anomalies.push(TarAnomaly::GlobalPaxHeader { offset });
                                    if !parse_pax(&buf, &mut global_pax) {
                                        return Err(TarError::Corrupt {
                                            what: "invalid pax record",
                                            offset,
                                        });
                                    }
                                } else {
                                    // Looked up before the global records (never a copy of them,
                                    // so many `x` headers cannot multiply a large `g` header).
                                    let mut map = HashMap::new();
                                    if !parse_pax(&buf, &mut map) {
                                        return Err(TarError::Corrupt {
                                            what: "invalid pax record",
                                            offset,
                                        });
                                    }
                                    pax = Some(map);
                                }
                            }
                            _ => break h,
                        }
                        let skip = blocks(h.size).ok_or(TarError::Corrupt {
                            what: "size overflow",
                            offset,
                        })?;
                        offset = data.checked_add(skip).ok_or(TarError::Corrupt {
                            what: "size overflow",
                            offset,
                        })?;
                        subsequent = true;
                    }
                }
            };
            let hdr_pos = offset;
            let data_offset = hdr_pos + BLOCK;
            let mut name = hdr.name.clone();
            let mut kind_byte = hdr.kind;
            if kind_byte == 0 && name.last() == Some(&b'/') {
                kind_byte = b'5';
            }
            if kind_byte == b'5' {
                while name.last() == Some(&b'/') {
                    name.pop();
                }
            }
            if !hdr.prefix.is_empty() && !matches!(kind_byte, b'L' | b'K' | b'S') {
                let mut joined = hdr.prefix.clone();
                joined.push(b'/');
                joined.extend_from_slice(&name);
                name = joined;
            }
            if let Some(long) = long_name {
                name = long;
            }
            let mut member_size = hdr.size;
            if let Some(map) = &pax {
                let get = |key: &[u8]| map.get(key).or_else(|| global_pax.get(key));
                if let Some(path) = get(b"path") {
                    name = path.clone();
                }
                if let Some(s) = get(b"size") {
                    member_size = std::str::from_utf8(s)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or(TarError::Corrupt {
                            what: "invalid pax size",
                            offset: hdr_pos,
                        })?;
                }
            }
            let kind = match kind_byte {
                b'0' | 0 | b'7' | b'S' => TarEntryKind::Regular,
                b'5' => TarEntryKind::Directory,
                b'1' => TarEntryKind::HardLink,
                b'2' => TarEntryKind::SymLink,
                other => TarEntryKind::Other(other),
            };
            let supported = matches!(
                kind_byte,
                b'0' | 0 | b'7' | b'S' | b'1' | b'2' | b'3' | b'4' | b'5' | b'6'
            );
            let skips_data = matches!(kind, TarEntryKind::Regular) || !supported;
            if entries.len() >= limits.max_entries {
                return Err(TarError::TooManyEntries {
                    max: limits.max_entries,
                });
            }
            let entry = TarEntry {
                name: lossy(&name),
                raw_name: name,
                kind,
                size: member_size,
                header_offset,
                data_offset,
            };
            let past_end = data_offset
                .checked_add(member_size)
                .is_none_or(|e| e > size);
            if past_end && skips_data {
                anomalies.push(TarAnomaly::EntryPastEnd {
                    name: entry.name.clone(),
                });
                entries.push(entry);
                end = size;
                break;
            }
            entries.push(entry);
            offset = if skips_data {
                let skip = blocks(member_size).ok_or(TarError::Corrupt {
                    what: "size overflow",
                    offset: hdr_pos,
                })?;
                data_offset.checked_add(skip).ok_or(TarError::Corrupt {
                    what: "size overflow",
                    offset: hdr_pos,
                })?
            } else {
                data_offset
            };
        }

        // Duplicates, in member order.
        let mut seen: HashSet<&[u8]> = HashSet::new();
        let mut dups = Vec::new();
        for e in &entries {
            if !seen.insert(e.raw_name.as_slice()) {
                dups.push(TarAnomaly::DuplicateName {
                    name: e.name.clone(),
                });
            }
        }
        anomalies.extend(dups);

        if end < size {
            let tail = size - end;
            if tail > TRAILING_SCAN_MAX || has_nonzero(&src, end, size)? {
                anomalies.push(TarAnomaly::TrailingData { bytes: tail });
            }
        }

        Ok(TarArchive {
            src,
            limits,
            entries,
            anomalies,
            bytes_read: AtomicU64::new(0),
        })
    }

    /// Members in archive order.
    pub fn entries(&self) -> &[TarEntry] {
        &self.entries
    }

    /// Everything unusual found while opening.
    pub fn anomalies(&self) -> &[TarAnomaly] {
        &self.anomalies
    }

    /// Whether any recorded anomaly is hostile.
    pub fn is_hostile(&self) -> bool {
        self.anomalies.iter().any(TarAnomaly::is_hostile)
    }

    /// `tarfile.getmember(name)`: trailing `/` stripped from the query, exact byte compare,
    /// the **last** matching member wins.
    pub fn locate(&self, name: &str) -> Option<&TarEntry> {
        let query = name.trim_end_matches('/').as_bytes();
        self.entries.iter().rev().find(|e| e.raw_name == query)
    }

    /// Reads a member's data, capped by [`Limits`].
    pub fn read(&self, entry: &TarEntry) -> Result<Vec<u8>, TarError> {
        if entry.size > self.limits.max_member_bytes {
            return Err(TarError::MemberTooLarge {
                name: entry.name.clone(),
                size: entry.size,
                max: self.limits.max_member_bytes,
            });
        }
        self.read_n(entry, entry.size)
    }

    /// The first `n` bytes of a member (fewer if it is shorter).
    pub fn read_prefix(&self, entry: &TarEntry, n: usize) -> Result<Vec<u8>, TarError> {
        self.read_n(
            entry,
            entry.size.min(n as u64).min(self.limits.max_member_bytes),
        )
    }

    fn read_n(&self, entry: &TarEntry, n: u64) -> Result<Vec<u8>, TarError> {
        if entry
            .data_offset
            .checked_add(n)
            .is_none_or(|e| e > self.src.size())
        {
            return Err(TarError::OutOfBounds {
                name: entry.name.clone(),
            });
        }
        let max = self.limits.max_total_bytes;
        self.bytes_read
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&t| t <= max)
            })
            .map_err(|_| TarError::BudgetExceeded {
                name: entry.name.clone(),
                max,
            })?;
        // Bounded by the member limit and by the file size.
        let mut out = vec![0u8; n as usize];
        self.src
            .read_exact_at(&mut out, entry.data_offset)
            .map_err(|source| TarError::Io {
                what: "member data",
                offset: entry.data_offset,
                source,
            })?;
        Ok(out)
    }
}

fn has_nonzero<R: ReadAt>(src: &R, from: u64, to: u64) -> Result<bool, TarError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], pos)
            .map_err(|source| TarError::Io {
                what: "trailing data",
                offset: pos,
                source,
            })?;
        if buf[..n].iter().any(|&c| c != 0) {
            return Ok(true);
        }
        pos += n as u64;
    }
    Ok(false)
}
