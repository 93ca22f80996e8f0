//! A zip reader that sees what PyTorch's `PyTorchStreamReader` (miniz 3.0.2) sees.
//!
//! Every step mirrors a miniz function, named in the comment above it. Where miniz is lenient
//! in a way another reader (Python's `zipfile`, a streaming unzipper) is not, the archive is
//! still read the miniz way and the difference is recorded as an [`Anomaly`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Limits, ReadAt};

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD_SIZE: u64 = 22;
const CDH_SIG: u32 = 0x0201_4b50;
const CDH_SIZE: usize = 46;
const LFH_SIG: u32 = 0x0403_4b50;
const LFH_SIZE: u64 = 30;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_SIZE: u64 = 20;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_EOCD_SIZE: u64 = 56;
const ZIP64_EXTRA_ID: u16 = 0x0001;

/// `MZ_ZIP_GENERAL_PURPOSE_BIT_FLAG_IS_ENCRYPTED`.
pub const FLAG_ENCRYPTED: u16 = 0x0001;
/// `MZ_ZIP_GENERAL_PURPOSE_BIT_FLAG_COMPRESSED_PATCH_FLAG`.
pub const FLAG_PATCH: u16 = 0x0020;
/// `MZ_ZIP_GENERAL_PURPOSE_BIT_FLAG_USES_STRONG_ENCRYPTION`.
pub const FLAG_STRONG_ENCRYPTION: u16 = 0x0040;
/// Bit 3: sizes and CRC follow the data in a data descriptor (PyTorch sets it on every record).
pub const FLAG_DATA_DESCRIPTOR: u16 = 0x0008;
/// `MZ_ZIP_GENERAL_PURPOSE_BIT_FLAG_LOCAL_DIR_IS_MASKED`: miniz refuses the whole archive.
const FLAG_MASKED_DIRECTORY: u16 = 0x2000;
/// The bits that make miniz's `mz_zip_reader_is_file_supported` refuse a member.
const FLAGS_REFUSED_BY_MINIZ: u16 = FLAG_ENCRYPTED | FLAG_PATCH | FLAG_STRONG_ENCRYPTION;

/// Method 0.
pub const METHOD_STORED: u16 = 0;
/// Method 8, the only compression miniz's reader implements.
pub const METHOD_DEFLATED: u16 = 8;

/// `MZ_ZIP_DOS_DIR_ATTRIBUTE_BITFLAG`.
const DOS_DIR_ATTRIBUTE: u32 = 0x10;

/// Stop recording anomalies after this many, so a hostile directory cannot grow the list.
const MAX_ANOMALIES: usize = 1000;
/// Compression ratio caps only apply to members larger than this.
const RATIO_FLOOR: u64 = 64 * 1024;
/// Chunk size for positioned reads of compressed data.
const IO_CHUNK: usize = 64 * 1024;

/// Why an archive could not be opened or a member could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZipError {
    /// The source could not be read.
    #[error("i/o error reading {what} at offset {offset}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No end-of-central-directory record in the last 64 KiB (miniz: `MZ_ZIP_FAILED_FINDING_CENTRAL_DIR`).
    #[error("not a zip archive: no end of central directory record")]
    NotAZip,
    /// A structural field is inconsistent (miniz: `MZ_ZIP_INVALID_HEADER_OR_CORRUPTED`).
    #[error("corrupt zip: {what} at offset {offset}")]
    Corrupt {
        /// The check that failed.
        what: &'static str,
        /// Offset of the record that failed it.
        offset: u64,
    },
    /// A spanned archive (miniz: `MZ_ZIP_UNSUPPORTED_MULTIDISK`).
    #[error("multi-disk zip archives are not supported")]
    MultiDisk,
    /// The central directory is masked (flag bit 13); miniz refuses the archive.
    #[error("central directory entry {index} has a masked (encrypted) directory")]
    MaskedDirectory {
        /// Central-directory index.
        index: usize,
    },
    /// More entries than [`Limits::max_entries`].
    #[error("zip declares {count} entries, more than the limit of {max}")]
    TooManyEntries {
        /// Declared.
        count: u64,
        /// Allowed.
        max: usize,
    },
    /// A central directory larger than [`Limits::max_directory_bytes`].
    #[error("zip central directory is {bytes} bytes, more than the limit of {max}")]
    DirectoryTooLarge {
        /// Declared.
        bytes: u64,
        /// Allowed.
        max: u64,
    },
    /// The member's local header is missing or invalid (miniz fails the read the same way).
    #[error("member {name}: invalid local header at offset {offset}")]
    BadLocalHeader {
        /// Member name.
        name: String,
        /// Offset of the local header.
        offset: u64,
    },
    /// The member's data runs past the end of the archive.
    #[error("member {name}: data runs past the end of the archive")]
    OutOfBounds {
        /// Member name.
        name: String,
    },
    /// A compression method miniz cannot read (only stored and deflate are supported).
    #[error("member {name}: unsupported compression method {method}")]
    UnsupportedMethod {
        /// Member name.
        name: String,
        /// The method number.
        method: u16,
    },
    /// The member is larger than [`Limits::max_member_bytes`].
    #[error("member {name}: {size} bytes, more than the limit of {max}")]
    MemberTooLarge {
        /// Member name.
        name: String,
        /// Declared uncompressed size.
        size: u64,
        /// Allowed.
        max: u64,
    },
    /// The declared compression ratio is above [`Limits::max_ratio`].
    #[error("member {name}: compression ratio of {uncompressed}:{compressed} exceeds {max}:1")]
    RatioExceeded {
        /// Member name.
        name: String,
        /// Declared uncompressed size.
        uncompressed: u64,
        /// Declared compressed size.
        compressed: u64,
        /// Allowed ratio.
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
    /// The deflate stream is invalid or truncated.
    #[error("member {name}: invalid deflate data: {message}")]
    Inflate {
        /// Member name.
        name: String,
        /// The decoder's message.
        message: String,
    },
    /// The data decompresses to a size other than the declared one (miniz: `MZ_ZIP_UNEXPECTED_DECOMPRESSED_SIZE`).
    #[error("member {name}: declared {declared} bytes but the data holds {actual_at_least}{}", if *.more { " or more" } else { "" })]
    SizeMismatch {
        /// Member name.
        name: String,
        /// Declared uncompressed size.
        declared: u64,
        /// Bytes actually produced.
        actual_at_least: u64,
        /// Whether the data holds more than `actual_at_least`.
        more: bool,
    },
}

/// One central-directory entry, with its local header resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// Position in the central directory.
    pub index: usize,
    /// The central name, decoded as lossy UTF-8.
    pub name: String,
    /// The central name's bytes.
    pub raw_name: Vec<u8>,
    /// Compression method from the central directory.
    pub method: u16,
    /// General-purpose flags from the central directory.
    pub flags: u16,
    /// Compressed size (zip64 resolved).
    pub compressed_size: u64,
    /// Uncompressed size (zip64 resolved).
    pub uncompressed_size: u64,
    /// CRC-32 from the central directory.
    pub crc32: u32,
    /// External attributes (the DOS directory bit makes miniz treat the entry as a folder).
    pub external_attributes: u32,
    /// Offset of the local header.
    pub local_header_offset: u64,
    /// Offset of the data: local header + 30 + local name + local extra, as miniz computes it.
    /// Zero when the local header could not be read.
    pub data_offset: u64,
    local_ok: bool,
    metadata_ok: bool,
}

impl Entry {
    /// Flag bits 0x1 or 0x40 (encryption). miniz's `mz_zip_reader_is_file_supported` refuses
    /// such a member, so PyTorch cannot load it; [`ZipArchive::read`] still returns the bytes as
    /// stored data, so a scanner sees what a lenient reader would.
    pub fn encrypted(&self) -> bool {
        self.flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0
    }

    /// Whether miniz would refuse to extract this member (flag bits 0x1/0x20/0x40 or a method
    /// other than stored/deflate).
    pub fn refused_by_miniz(&self) -> bool {
        self.flags & FLAGS_REFUSED_BY_MINIZ != 0
            || !matches!(self.method, METHOD_STORED | METHOD_DEFLATED)
    }

    /// Whether miniz's `mz_zip_reader_file_stat` succeeds for this entry (it fails on a
    /// malformed zip64 extra field, and then torch cannot read the member; neither can
    /// [`ZipArchive::read`]).
    pub fn metadata_ok(&self) -> bool {
        self.metadata_ok
    }

    /// miniz's `mz_zip_reader_is_file_a_directory`: the name ends in `/` or the DOS directory
    /// attribute is set. miniz "extracts" a directory without reading its data.
    pub fn is_directory(&self) -> bool {
        self.raw_name.last() == Some(&b'/') || self.external_attributes & DOS_DIR_ATTRIBUTE != 0
    }

    /// End of the bytes miniz may read for this member (stored members read `uncompressed_size`
    /// bytes, whatever `compressed_size` says).
    fn data_end(&self) -> u64 {
        let len = if self.method == METHOD_STORED {
            self.compressed_size.max(self.uncompressed_size)
        } else {
            self.compressed_size
        };
        self.data_offset.saturating_add(len)
    }
}

/// Something about the archive that a loader could read differently from another reader, or
/// that is merely unusual. [`Anomaly::is_hostile`] says which.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Anomaly {
    /// Two central entries with the same name, exactly or after ASCII lower-casing (miniz looks
    /// names up case-insensitively, so either way only one of them is reachable).
    DuplicateName {
        /// The name (of the later entry).
        name: String,
        /// The names differ only in ASCII case.
        case_insensitive: bool,
    },
    /// The local header names a different file than the central directory (CVE-2025-1944).
    LocalNameMismatch {
        /// Name in the central directory (what torch uses).
        central: String,
        /// Name in the local header (what a streaming reader uses).
        local: String,
    },
    /// The local header declares other sizes than the central directory (and no data descriptor).
    LocalSizeMismatch {
        /// Member name.
        name: String,
        /// Central (compressed, uncompressed).
        central: (u64, u64),
        /// Local (compressed, uncompressed).
        local: (u64, u64),
    },
    /// The local header declares another compression method than the central directory.
    LocalMethodMismatch {
        /// Member name.
        name: String,
        /// Central method.
        central: u16,
        /// Local method.
        local: u16,
    },
    /// The local header is missing or has a bad signature.
    LocalHeaderInvalid {
        /// Member name.
        name: String,
        /// Where the central directory says it is.
        offset: u64,
    },
    /// The member's data runs past the end of the file.
    EntryOutOfBounds {
        /// Member name.
        name: String,
    },
    /// Two members share bytes: `[local header, data end)` ranges overlap.
    Overlap {
        /// The earlier member.
        a: String,
        /// The later member.
        b: String,
    },
    /// A member's range overlaps the central directory or end records.
    OverlapsDirectory {
        /// Member name.
        name: String,
    },
    /// Bytes before the first local header (a polyglot; Python's `zipfile` shifts offsets to
    /// compensate, miniz 3.0.2 does not, and torch routes the file by its first bytes).
    LeadingData {
        /// How many bytes.
        bytes: u64,
    },
    /// Bytes after the end-of-central-directory record and its comment.
    TrailingData {
        /// How many bytes.
        bytes: u64,
    },
    /// The central directory does not end where the end records begin; Python's `zipfile`
    /// shifts every offset by the difference, miniz does not.
    DirectoryOffsetMismatch {
        /// Where the directory should end.
        expected: u64,
        /// Where it ends.
        actual: u64,
    },
    /// Central-directory bytes after the declared number of entries: miniz stops at the count,
    /// Python's `zipfile` reads headers until the directory size is used up.
    HiddenDirectoryBytes {
        /// Unparsed bytes.
        bytes: u64,
    },
    /// A stored member whose compressed and uncompressed sizes differ: miniz reads the
    /// uncompressed size, other readers the compressed size.
    StoredSizeMismatch {
        /// Member name.
        name: String,
        /// Compressed size.
        compressed: u64,
        /// Uncompressed size.
        uncompressed: u64,
    },
    /// A folder entry with data: miniz returns no bytes for it, other readers return the data.
    DirectoryWithData {
        /// Member name.
        name: String,
    },
    /// The first entry is in a folder (torch's archive name) but other entries are not in it;
    /// torch's `getAllRecords` throws, other readers see extra members.
    MultipleTopLevel {
        /// All distinct first path components.
        prefixes: Vec<String>,
    },
    /// Flag bits 0x1/0x20/0x40: miniz (so torch) refuses the member, Python's `zipfile` asks
    /// for a password; this crate reads it as plain data.
    EncryptedFlag {
        /// Member name.
        name: String,
        /// All flag bits.
        flags: u16,
    },
    /// A method other than stored/deflate: neither miniz nor this crate reads it.
    UnsupportedMethod {
        /// Member name.
        name: String,
        /// The method.
        method: u16,
    },
    /// A member read whose CRC-32 differs from the central directory's (CVE-2025-10156: torch
    /// ignores CRCs, Python's `zipfile` raises). Only reported for members actually read.
    CrcMismatch {
        /// Member name.
        name: String,
        /// CRC in the central directory.
        expected: u32,
        /// CRC of the data.
        actual: u32,
    },
    /// The archive has a comment.
    CommentPresent {
        /// Declared comment length.
        bytes: u16,
    },
    /// The comment length runs past the end of the file.
    CommentTruncated {
        /// Declared comment length.
        declared: u16,
        /// Bytes actually present.
        available: u64,
    },
    /// A member whose zip64 extra field is malformed: miniz opens the archive but fails any
    /// use of this member (Python's `zipfile` refuses the whole archive).
    MalformedEntry {
        /// Member name.
        name: String,
    },
    /// More anomalies were found than are recorded.
    AnomalyLimit,
}

impl Anomaly {
    /// Whether the anomaly means two readers could see different content: the scanner reports
    /// these as malicious structure. Flag bits, comments and unsupported methods are notes.
    pub fn is_hostile(&self) -> bool {
        match self {
            Anomaly::DuplicateName { .. }
            | Anomaly::LocalNameMismatch { .. }
            | Anomaly::LocalSizeMismatch { .. }
            | Anomaly::LocalMethodMismatch { .. }
            | Anomaly::LocalHeaderInvalid { .. }
            | Anomaly::EntryOutOfBounds { .. }
            | Anomaly::Overlap { .. }
            | Anomaly::OverlapsDirectory { .. }
            | Anomaly::LeadingData { .. }
            | Anomaly::TrailingData { .. }
            | Anomaly::DirectoryOffsetMismatch { .. }
            | Anomaly::HiddenDirectoryBytes { .. }
            | Anomaly::StoredSizeMismatch { .. }
            | Anomaly::DirectoryWithData { .. }
            | Anomaly::MultipleTopLevel { .. }
            | Anomaly::CrcMismatch { .. } => true,
            Anomaly::EncryptedFlag { .. }
            | Anomaly::UnsupportedMethod { .. }
            | Anomaly::CommentPresent { .. }
            | Anomaly::CommentTruncated { .. }
            | Anomaly::MalformedEntry { .. }
            | Anomaly::AnomalyLimit => false,
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::DuplicateName {
                name,
                case_insensitive: false,
            } => {
                write!(f, "duplicate member name {name:?}")
            }
            Anomaly::DuplicateName {
                name,
                case_insensitive: true,
            } => {
                write!(
                    f,
                    "member name {name:?} duplicates another one up to letter case"
                )
            }
            Anomaly::LocalNameMismatch { central, local } => {
                write!(
                    f,
                    "member {central:?} is named {local:?} in its local header"
                )
            }
            Anomaly::LocalSizeMismatch {
                name,
                central,
                local,
            } => write!(
                f,
                "member {name:?}: local header sizes {}/{} differ from central {}/{}",
                local.0, local.1, central.0, central.1
            ),
            Anomaly::LocalMethodMismatch {
                name,
                central,
                local,
            } => write!(
                f,
                "member {name:?}: local header method {local} differs from central {central}"
            ),
            Anomaly::LocalHeaderInvalid { name, offset } => {
                write!(
                    f,
                    "member {name:?}: no valid local header at offset {offset}"
                )
            }
            Anomaly::EntryOutOfBounds { name } => {
                write!(f, "member {name:?}: data runs past the end of the file")
            }
            Anomaly::Overlap { a, b } => write!(f, "members {a:?} and {b:?} overlap"),
            Anomaly::OverlapsDirectory { name } => {
                write!(f, "member {name:?} overlaps the central directory")
            }
            Anomaly::LeadingData { bytes } => {
                write!(f, "{bytes} bytes before the first local header")
            }
            Anomaly::TrailingData { bytes } => {
                write!(f, "{bytes} bytes after the end of central directory")
            }
            Anomaly::DirectoryOffsetMismatch { expected, actual } => write!(
                f,
                "central directory ends at offset {actual}, the end record is at {expected}"
            ),
            Anomaly::HiddenDirectoryBytes { bytes } => write!(
                f,
                "{bytes} central directory bytes after the declared number of entries"
            ),
            Anomaly::StoredSizeMismatch {
                name,
                compressed,
                uncompressed,
            } => write!(
                f,
                "stored member {name:?} declares {compressed} compressed but {uncompressed} uncompressed bytes"
            ),
            Anomaly::DirectoryWithData { name } => {
                write!(f, "folder entry {name:?} carries data")
            }
            Anomaly::MultipleTopLevel { prefixes } => {
                write!(f, "members under several top-level names: {prefixes:?}")
            }
            Anomaly::EncryptedFlag { name, flags } => write!(
                f,
                "member {name:?} has flags {flags:#06x} (encrypted or patch) that torch refuses"
            ),
            Anomaly::UnsupportedMethod { name, method } => {
                write!(
                    f,
                    "member {name:?} uses unsupported compression method {method}"
                )
            }
            Anomaly::CrcMismatch {
                name,
                expected,
                actual,
            } => write!(
                f,
                "member {name:?}: crc-32 {actual:#010x} does not match the declared {expected:#010x}"
            ),
            Anomaly::CommentPresent { bytes } => write!(f, "archive comment of {bytes} bytes"),
            Anomaly::CommentTruncated {
                declared,
                available,
            } => write!(
                f,
                "archive comment declares {declared} bytes but {available} remain"
            ),
            Anomaly::MalformedEntry { name } => {
                write!(f, "member {name:?} has a malformed zip64 extra field")
            }
            Anomaly::AnomalyLimit => write!(f, "more anomalies than recorded"),
        }
    }
}

/// A member read in full, with its CRC checked (but not enforced, like torch).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// The decompressed bytes.
    pub data: Vec<u8>,
    /// CRC-32 of `data`.
    pub crc32: u32,
    /// A [`Anomaly::CrcMismatch`] when `crc32` differs from the central directory's.
    pub crc_mismatch: Option<Anomaly>,
}

/// A zip archive opened the way PyTorch's `PyTorchStreamReader` opens it.
#[derive(Debug)]
pub struct ZipArchive<R> {
    src: R,
    limits: Limits,
    entries: Vec<Entry>,
    /// Entry indices sorted by miniz's heap sort (`mz_zip_reader_sort_central_dir_offsets_by_filename`).
    sorted: Vec<u32>,
    anomalies: Vec<Anomaly>,
    torch_prefix: Option<String>,
    zip64: bool,
    central_directory_offset: u64,
    bytes_read: AtomicU64,
}

/// Little-endian field readers over a slice whose length the caller has checked.
fn le16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 8) {
        Some(s) => u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
        None => 0,
    }
}

/// `MZ_TOLOWER`: ASCII only, byte-wise.
fn mz_tolower(c: u8) -> u8 {
    c.to_ascii_lowercase()
}

/// `mz_zip_reader_filename_less`: what [`miniz_heap_sort`]'s comparison of lowered names
/// must agree with.
#[cfg(test)]
fn filename_less(l: &[u8], r: &[u8]) -> bool {
    let n = l.len().min(r.len());
    for i in 0..n {
        let (a, b) = (mz_tolower(l[i]), mz_tolower(r[i]));
        if a != b {
            return a < b;
        }
    }
    l.len() < r.len()
}

/// `mz_zip_filename_compare`: the sign of `central - query`.
fn filename_compare(central: &[u8], query: &[u8]) -> std::cmp::Ordering {
    let n = central.len().min(query.len());
    for i in 0..n {
        let (a, b) = (mz_tolower(central[i]), mz_tolower(query[i]));
        if a != b {
            return a.cmp(&b);
        }
    }
    central.len().cmp(&query.len())
}

/// `mz_zip_reader_sort_central_dir_offsets_by_filename`, step for step, so that among names
/// equal up to case, [`ZipArchive::locate`] finds the same one miniz does.
fn miniz_heap_sort(entries: &[Entry]) -> Vec<u32> {
    let size = entries.len();
    let mut idx: Vec<u32> = (0..size as u32).collect();
    if size <= 1 {
        return idx;
    }
    // The names lowered once, side by side: miniz lowers each byte at every comparison, and
    // on a checkpoint's hundreds of `archive/data/N` names, which share a long prefix, that was
    // most of the time an archive took to open. Comparing lowered names as byte strings
    // (shorter first on a tie) is `filename_less`, so the order is the same.
    let mut lowered = Vec::with_capacity(entries.iter().map(|e| e.raw_name.len()).sum());
    let mut spans = Vec::with_capacity(size);
    for e in entries {
        let start = lowered.len();
        lowered.extend(e.raw_name.iter().map(|&c| mz_tolower(c)));
        spans.push(start..lowered.len());
    }
    let name = |i: u32| &lowered[spans[i as usize].clone()];
    let less = |idx: &[u32], a: usize, b: usize| name(idx[a]) < name(idx[b]);

    let mut start = (size - 2) >> 1;
    loop {
        let mut root = start;
        loop {
            let mut child = (root << 1) + 1;
            if child >= size {
                break;
            }
            if child + 1 < size && less(&idx, child, child + 1) {
                child += 1;
            }
            if !less(&idx, root, child) {
                break;
            }
            idx.swap(root, child);
            root = child;
        }
        if start == 0 {
            break;
        }
        start -= 1;
    }

    let mut end = size - 1;
    while end > 0 {
        idx.swap(end, 0);
        let mut root = 0;
        loop {
            let mut child = (root << 1) + 1;
            if child >= end {
                break;
            }
            if child + 1 < end && less(&idx, child, child + 1) {
                child += 1;
            }
            if !less(&idx, root, child) {
                break;
            }
            idx.swap(root, child);
            root = child;
        }
        end -= 1;
    }
    idx
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Appends anomalies up to [`MAX_ANOMALIES`].
struct AnomalySink(Vec<Anomaly>);

impl AnomalySink {
    fn push(&mut self, a: Anomaly) {
        if self.0.len() < MAX_ANOMALIES {
            self.0.push(a);
        } else if self.0.last() != Some(&Anomaly::AnomalyLimit) {
            self.0.push(Anomaly::AnomalyLimit);
        }
    }
}

/// Reads the zip64 extended-information extra field the way `mz_zip_file_stat_internal` does:
/// each value is present only if its 32-bit field is `0xFFFFFFFF`, in the order uncompressed,
/// compressed, local header offset.
fn apply_zip64_extra(
    extra: &[u8],
    uncompressed: &mut u64,
    compressed: &mut u64,
    local_offset: Option<&mut u64>,
    at: u64,
) -> Result<(), ZipError> {
    let corrupt = |what| ZipError::Corrupt { what, offset: at };
    let mut rest = extra;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(corrupt("truncated extra field"));
        }
        let id = le16(rest, 0);
        let len = usize::from(le16(rest, 2));
        let data = rest
            .get(4..4 + len)
            .ok_or_else(|| corrupt("extra field overruns its header"))?;
        if id == ZIP64_EXTRA_ID {
            let mut pos = 0usize;
            let mut take = |v: &mut u64| -> Result<(), ZipError> {
                if *v == u64::from(u32::MAX) {
                    let s = data
                        .get(pos..pos + 8)
                        .ok_or_else(|| corrupt("short zip64 extra field"))?;
                    *v = le64(s, 0);
                    pos += 8;
                }
                Ok(())
            };
            take(uncompressed)?;
            take(compressed)?;
            if let Some(lo) = local_offset {
                take(lo)?;
            }
            return Ok(());
        }
        rest = &rest[4 + len..];
    }
    Ok(())
}

impl<R: ReadAt> ZipArchive<R> {
    /// Opens an archive the way `mz_zip_reader_init` + `mz_zip_reader_read_central_dir` do,
    /// then reads and compares every local header and records every [`Anomaly`].
    pub fn open(src: R, limits: Limits) -> Result<Self, ZipError> {
        let size = src.size();
        let read = |buf: &mut [u8], offset: u64, what: &'static str| {
            src.read_exact_at(buf, offset)
                .map_err(|source| ZipError::Io {
                    what,
                    offset,
                    source,
                })
        };
        if size < EOCD_SIZE {
            return Err(ZipError::NotAZip);
        }
        let eocd_ofs = locate_eocd(&src, size)?;
        let mut eocd = [0u8; EOCD_SIZE as usize];
        read(&mut eocd, eocd_ofs, "end of central directory")?;

        // The zip64 locator and record, as miniz 3.0.2 finds them: the locator right before the
        // EOCD, the record where the locator points.
        let mut zip64 = false;
        let mut locator = [0u8; ZIP64_LOCATOR_SIZE as usize];
        let mut eocd64 = [0u8; ZIP64_EOCD_SIZE as usize];
        let mut eocd64_ofs = 0u64;
        if eocd_ofs >= ZIP64_LOCATOR_SIZE + ZIP64_EOCD_SIZE
            && read(&mut locator, eocd_ofs - ZIP64_LOCATOR_SIZE, "zip64 locator").is_ok()
            && le32(&locator, 0) == ZIP64_LOCATOR_SIG
        {
            eocd64_ofs = le64(&locator, 8);
            if eocd64_ofs > size - ZIP64_EOCD_SIZE {
                return Err(ZipError::NotAZip);
            }
            if read(&mut eocd64, eocd64_ofs, "zip64 end of central directory").is_ok()
                && le32(&eocd64, 0) == ZIP64_EOCD_SIG
            {
                zip64 = true;
            }
        }

        let mut total = u64::from(le16(&eocd, 10));
        let mut on_this_disk = u64::from(le16(&eocd, 8));
        let mut disk = u64::from(le16(&eocd, 4));
        let mut cdir_disk = u64::from(le16(&eocd, 6));
        let mut cdir_size = u64::from(le32(&eocd, 12));
        let mut cdir_ofs = u64::from(le32(&eocd, 16));
        if zip64 {
            if le64(&eocd64, 4) < ZIP64_EOCD_SIZE - 12 {
                return Err(ZipError::Corrupt {
                    what: "zip64 record too small",
                    offset: eocd64_ofs,
                });
            }
            if le32(&locator, 16) != 1 {
                return Err(ZipError::MultiDisk);
            }
            total = le64(&eocd64, 32);
            on_this_disk = le64(&eocd64, 24);
            if total > u64::from(u32::MAX) || on_this_disk > u64::from(u32::MAX) {
                return Err(ZipError::TooManyEntries {
                    count: total,
                    max: limits.max_entries,
                });
            }
            cdir_size = le64(&eocd64, 40);
            if cdir_size > u64::from(u32::MAX) {
                return Err(ZipError::DirectoryTooLarge {
                    bytes: cdir_size,
                    max: limits.max_directory_bytes,
                });
            }
            disk = u64::from(le32(&eocd64, 16));
            cdir_disk = u64::from(le32(&eocd64, 20));
            cdir_ofs = le64(&eocd64, 48);
        }
        if total != on_this_disk {
            return Err(ZipError::MultiDisk);
        }
        if (disk | cdir_disk) != 0 && (disk != 1 || cdir_disk != 1) {
            return Err(ZipError::MultiDisk);
        }
        if cdir_size < total.saturating_mul(CDH_SIZE as u64) {
            return Err(ZipError::Corrupt {
                what: "central directory smaller than its entry count",
                offset: eocd_ofs,
            });
        }
        let cdir_end = cdir_ofs
            .checked_add(cdir_size)
            .filter(|&e| e <= size)
            .ok_or(ZipError::Corrupt {
                what: "central directory past the end of the file",
                offset: eocd_ofs,
            })?;
        if total > limits.max_entries as u64 {
            return Err(ZipError::TooManyEntries {
                count: total,
                max: limits.max_entries,
            });
        }
        if cdir_size > limits.max_directory_bytes {
            return Err(ZipError::DirectoryTooLarge {
                bytes: cdir_size,
                max: limits.max_directory_bytes,
            });
        }

        // Both bounded above: by the file size and by the limits.
        let mut cdir = vec![0u8; cdir_size as usize];
        if total > 0 {
            read(&mut cdir, cdir_ofs, "central directory")?;
        }
        let mut entries = Vec::with_capacity(total as usize);
        let mut pos = 0usize;
        let mut zip64_seen = false;
        for index in 0..total as usize {
            let (entry, len) =
                parse_central(&cdir, pos, index, cdir_ofs, disk, size, &mut zip64_seen)?;
            entries.push(entry);
            pos += len;
        }

        let mut sink = AnomalySink(Vec::new());
        let leftover = cdir.len() - pos;
        if leftover > 0 {
            sink.push(Anomaly::HiddenDirectoryBytes {
                bytes: leftover as u64,
            });
        }
        let expected_cdir_end = if zip64 { eocd64_ofs } else { eocd_ofs };
        if cdir_end != expected_cdir_end {
            sink.push(Anomaly::DirectoryOffsetMismatch {
                expected: expected_cdir_end,
                actual: cdir_end,
            });
        }
        let comment_len = le16(&eocd, 20);
        let after_eocd = size - eocd_ofs - EOCD_SIZE;
        if comment_len > 0 {
            sink.push(Anomaly::CommentPresent { bytes: comment_len });
        }
        if u64::from(comment_len) > after_eocd {
            sink.push(Anomaly::CommentTruncated {
                declared: comment_len,
                available: after_eocd,
            });
        } else if after_eocd > u64::from(comment_len) {
            sink.push(Anomaly::TrailingData {
                bytes: after_eocd - u64::from(comment_len),
            });
        }

        if let Some(file) = src.as_file() {
            prefetch_local_headers(file, &entries);
        }
        let mut scratch = Vec::new();
        for entry in &mut entries {
            if entry.metadata_ok {
                check_local(&src, size, entry, &mut scratch, &mut sink)?;
            } else {
                sink.push(Anomaly::MalformedEntry {
                    name: entry.name.clone(),
                });
            }
        }

        let sorted = miniz_heap_sort(&entries);
        find_duplicates(&entries, &sorted, &mut sink);
        find_overlaps(
            &entries,
            cdir_ofs,
            eocd_ofs,
            zip64.then_some(eocd64_ofs),
            &mut sink,
        );

        let torch_prefix = entries.first().and_then(|e| {
            let slash = e.raw_name.iter().position(|&c| c == b'/')?;
            Some(lossy(&e.raw_name[..slash]))
        });
        let mut archive = ZipArchive {
            src,
            limits,
            entries,
            sorted,
            anomalies: Vec::new(),
            torch_prefix,
            zip64,
            central_directory_offset: cdir_ofs,
            bytes_read: AtomicU64::new(0),
        };
        if let Some(first) = archive.entries.first()
            && let Some(slash) = first.raw_name.iter().position(|&c| c == b'/')
        {
            let prefix = &first.raw_name[..=slash];
            if archive
                .entries
                .iter()
                .any(|e| !e.raw_name.starts_with(prefix))
            {
                sink.push(Anomaly::MultipleTopLevel {
                    prefixes: archive.top_level_prefixes(),
                });
            }
        }
        archive.anomalies = sink.0;
        Ok(archive)
    }

    /// The entries in central-directory order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Everything unusual found while opening.
    pub fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }

    /// Whether any recorded anomaly is hostile.
    pub fn is_hostile(&self) -> bool {
        self.anomalies.iter().any(Anomaly::is_hostile)
    }

    /// Whether the archive has zip64 end records.
    pub fn is_zip64(&self) -> bool {
        self.zip64
    }

    /// Offset of the central directory.
    pub fn central_directory_offset(&self) -> u64 {
        self.central_directory_offset
    }

    /// The limits this archive was opened with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decompressed bytes read so far (counted against [`Limits::max_total_bytes`]).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Finds a member exactly as `mz_zip_reader_locate_file(zip, name, NULL, 0)` does, which
    /// is how PyTorch's `getRecordID` calls it: flags 0 means a binary search over the names
    /// sorted by miniz's heap sort, compared after ASCII lower-casing, so `DATA.PKL` finds
    /// `data.pkl`, and among names equal up to case the one the search lands on wins (neither
    /// necessarily the first nor the last). The name is a C string: it ends at the first NUL.
    pub fn locate(&self, name: &str) -> Option<&Entry> {
        let query = name.as_bytes();
        let query = match query.iter().position(|&c| c == 0) {
            Some(nul) => &query[..nul],
            None => query,
        };
        let (mut l, mut h) = (0i64, self.sorted.len() as i64 - 1);
        while l <= h {
            let m = l + ((h - l) >> 1);
            let index = *self.sorted.get(m as usize)? as usize;
            let entry = self.entries.get(index)?;
            match filename_compare(&entry.raw_name, query) {
                std::cmp::Ordering::Equal => return Some(entry),
                std::cmp::Ordering::Less => l = m + 1,
                std::cmp::Ordering::Greater => h = m - 1,
            }
        }
        None
    }

    /// PyTorch's archive name: the first central entry's name up to its first `/`. `None` when
    /// that name has no `/` (torch refuses such an archive) or the archive is empty.
    pub fn torch_prefix(&self) -> Option<&str> {
        self.torch_prefix.as_deref()
    }

    /// Locates `<torch_prefix>/<record>` the way `PyTorchStreamReader::getRecord` does.
    pub fn torch_record(&self, record: &str) -> Option<&Entry> {
        let prefix = self.torch_prefix.as_deref()?;
        self.locate(&format!("{prefix}/{record}"))
    }

    /// The distinct first path components of all entries, sorted (a name without `/` counts
    /// as its own component).
    pub fn top_level_prefixes(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                let end = e
                    .raw_name
                    .iter()
                    .position(|&c| c == b'/')
                    .unwrap_or(e.raw_name.len());
                lossy(&e.raw_name[..end])
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Reads a member in full; the CRC is computed but not enforced (see [`ZipArchive::read_member`]).
    pub fn read(&self, entry: &Entry) -> Result<Vec<u8>, ZipError> {
        self.read_member(entry).map(|m| m.data)
    }

    /// Reads a member in full like `mz_zip_reader_extract_to_mem` built with
    /// `MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS` (as PyTorch builds it): stored members yield
    /// `uncompressed_size` bytes from the data offset, deflated members must inflate to exactly
    /// `uncompressed_size` bytes. Unlike miniz, flag bits 0x1/0x20/0x40 are ignored (the data is
    /// read as if plain) and folder entries return their data. Capped by [`Limits`].
    pub fn read_member(&self, entry: &Entry) -> Result<Member, ZipError> {
        let want = entry.uncompressed_size;
        if want > self.limits.max_member_bytes {
            return Err(ZipError::MemberTooLarge {
                name: entry.name.clone(),
                size: want,
                max: self.limits.max_member_bytes,
            });
        }
        if entry.method == METHOD_DEFLATED
            && want > RATIO_FLOOR
            && want > entry.compressed_size.saturating_mul(self.limits.max_ratio)
        {
            return Err(ZipError::RatioExceeded {
                name: entry.name.clone(),
                uncompressed: want,
                compressed: entry.compressed_size,
                max: self.limits.max_ratio,
            });
        }
        let data = self.extract(entry, want, true)?;
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        let actual = crc.sum();
        let crc_mismatch = (actual != entry.crc32).then(|| Anomaly::CrcMismatch {
            name: entry.name.clone(),
            expected: entry.crc32,
            actual,
        });
        Ok(Member {
            data,
            crc32: actual,
            crc_mismatch,
        })
    }

    /// The first `n` decompressed bytes of a member (fewer if it is shorter), for sniffing.
    pub fn read_prefix(&self, entry: &Entry, n: usize) -> Result<Vec<u8>, ZipError> {
        let want = entry
            .uncompressed_size
            .min(n as u64)
            .min(self.limits.max_member_bytes);
        self.extract(entry, want, false)
    }

    /// Shared by full and prefix reads; `exact` demands the declared size, no more, no less.
    fn extract(&self, entry: &Entry, want: u64, exact: bool) -> Result<Vec<u8>, ZipError> {
        let name = || entry.name.clone();
        if !matches!(entry.method, METHOD_STORED | METHOD_DEFLATED) {
            return Err(ZipError::UnsupportedMethod {
                name: name(),
                method: entry.method,
            });
        }
        if !entry.metadata_ok {
            return Err(ZipError::Corrupt {
                what: "malformed zip64 extra field",
                offset: entry.local_header_offset,
            });
        }
        if !entry.local_ok {
            return Err(ZipError::BadLocalHeader {
                name: name(),
                offset: entry.local_header_offset,
            });
        }
        let size = self.src.size();
        if entry
            .data_offset
            .checked_add(entry.compressed_size)
            .is_none_or(|end| end > size)
        {
            return Err(ZipError::OutOfBounds { name: name() });
        }
        // miniz returns success without reading anything when the compressed size is 0.
        if entry.compressed_size == 0 {
            if exact && entry.uncompressed_size != 0 {
                return Err(ZipError::SizeMismatch {
                    name: name(),
                    declared: entry.uncompressed_size,
                    actual_at_least: 0,
                    more: false,
                });
            }
            return Ok(Vec::new());
        }
        self.reserve_budget(entry, want)?;
        let io = |offset, source| ZipError::Io {
            what: "member data",
            offset,
            source,
        };

        if entry.method == METHOD_STORED {
            if entry
                .data_offset
                .checked_add(want)
                .is_none_or(|end| end > size)
            {
                return Err(ZipError::OutOfBounds { name: name() });
            }
            // `want` is at most the limit and at most what the file holds.
            let mut out = vec![0u8; want as usize];
            self.src
                .read_exact_at(&mut out, entry.data_offset)
                .map_err(|e| io(entry.data_offset, e))?;
            return Ok(out);
        }

        // `tinfl_decompress` with `TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF` into a buffer of
        // exactly the declared size, fed in 64 KiB reads, as `mz_zip_reader_extract_to_mem`
        // does. The buffer is allocated only after the member, ratio and budget checks.
        use miniz_oxide::inflate::TINFLStatus;
        use miniz_oxide::inflate::core::inflate_flags::{
            TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        };
        let mut out = vec![0u8; want as usize];
        let mut out_pos = 0usize;
        let mut inflater = Box::<miniz_oxide::inflate::core::DecompressorOxide>::default();
        let mut inbuf = vec![0u8; (entry.compressed_size.min(IO_CHUNK as u64)) as usize];
        let (mut in_pos, mut in_len) = (0usize, 0usize);
        let mut file_pos = entry.data_offset;
        let mut comp_left = entry.compressed_size;
        let bad = |message: String| ZipError::Inflate {
            name: name(),
            message,
        };
        loop {
            if in_pos == in_len && comp_left > 0 {
                let n = comp_left.min(inbuf.len() as u64) as usize;
                self.src
                    .read_exact_at(&mut inbuf[..n], file_pos)
                    .map_err(|e| io(file_pos, e))?;
                file_pos += n as u64;
                comp_left -= n as u64;
                in_pos = 0;
                in_len = n;
            }
            let mut flags = TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
            if comp_left > 0 {
                flags |= TINFL_FLAG_HAS_MORE_INPUT;
            }
            let (status, consumed, produced) = miniz_oxide::inflate::core::decompress(
                &mut inflater,
                &inbuf[in_pos..in_len],
                &mut out,
                out_pos,
                flags,
            );
            in_pos += consumed;
            out_pos += produced;
            if consumed == 0
                && produced == 0
                && in_pos < in_len
                && matches!(status, TINFLStatus::NeedsMoreInput)
            {
                return Err(bad("deflate stream made no progress".to_owned()));
            }
            match status {
                TINFLStatus::Done => break,
                TINFLStatus::NeedsMoreInput if in_pos < in_len || comp_left > 0 => {}
                TINFLStatus::HasMoreOutput if exact => {
                    return Err(ZipError::SizeMismatch {
                        name: name(),
                        declared: want,
                        actual_at_least: out_pos as u64 + 1,
                        more: true,
                    });
                }
                // A prefix read with a full buffer.
                TINFLStatus::HasMoreOutput => break,
                TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                    return Err(bad("truncated deflate stream".to_owned()));
                }
                other => return Err(bad(format!("{other:?}"))),
            }
        }
        if exact && out_pos as u64 != want {
            return Err(ZipError::SizeMismatch {
                name: name(),
                declared: want,
                actual_at_least: out_pos as u64,
                more: false,
            });
        }
        out.truncate(out_pos);
        Ok(out)
    }

    fn reserve_budget(&self, entry: &Entry, want: u64) -> Result<(), ZipError> {
        let max = self.limits.max_total_bytes;
        self.bytes_read
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(want).filter(|&t| t <= max)
            })
            .map(|_| ())
            .map_err(|_| ZipError::BudgetExceeded {
                name: entry.name.clone(),
                max,
            })
    }
}

/// `mz_zip_reader_locate_header_sig`: scan backwards in 4 KiB windows for the last EOCD
/// signature with at least 22 bytes after it, giving up about 64 KiB + 22 from the end.
fn locate_eocd<R: ReadAt>(src: &R, size: u64) -> Result<u64, ZipError> {
    const WINDOW: u64 = 4096;
    let mut buf = [0u8; WINDOW as usize];
    let mut cur = size.saturating_sub(WINDOW);
    loop {
        let n = (size - cur).min(WINDOW) as usize;
        src.read_exact_at(&mut buf[..n], cur)
            .map_err(|source| ZipError::Io {
                what: "end of central directory",
                offset: cur,
                source,
            })?;
        if n >= 4 {
            for i in (0..=n - 4).rev() {
                if le32(&buf, i) == EOCD_SIG && size - (cur + i as u64) >= EOCD_SIZE {
                    return Ok(cur + i as u64);
                }
            }
        }
        if cur == 0 || size - cur >= u64::from(u16::MAX) + EOCD_SIZE {
            return Err(ZipError::NotAZip);
        }
        cur = cur.saturating_sub(WINDOW - 3);
    }
}

/// One central header, with the checks of `mz_zip_reader_read_central_dir` and the zip64
/// resolution of `mz_zip_file_stat_internal`. Returns the entry and the header's length.
///
/// `zip64_seen` is miniz's `m_zip64_has_extended_info_fields`: once one entry had a zip64
/// extra field, the open-time walk of extra fields is skipped for the rest.
fn parse_central(
    cdir: &[u8],
    pos: usize,
    index: usize,
    cdir_ofs: u64,
    disk: u64,
    size: u64,
    zip64_seen: &mut bool,
) -> Result<(Entry, usize), ZipError> {
    let at = cdir_ofs + pos as u64;
    let corrupt = |what| ZipError::Corrupt { what, offset: at };
    let p = cdir.get(pos..).unwrap_or(&[]);
    if p.len() < CDH_SIZE || le32(p, 0) != CDH_SIG {
        return Err(corrupt("missing central directory header"));
    }
    let flags = le16(p, 8);
    let method = le16(p, 10);
    let crc32 = le32(p, 16);
    let mut compressed = u64::from(le32(p, 20));
    let mut uncompressed = u64::from(le32(p, 24));
    let name_len = usize::from(le16(p, 28));
    let extra_len = usize::from(le16(p, 30));
    let comment_len = usize::from(le16(p, 32));
    let disk_index = u64::from(le16(p, 34));
    let external_attributes = le32(p, 38);
    let mut local_header_offset = u64::from(le32(p, 42));
    let max32 = u64::from(u32::MAX);

    if compressed != max32 && uncompressed != max32 {
        // miniz reads 32 bits at the method offset (method and time together) here.
        if (le32(p, 10) == 0 && uncompressed != compressed)
            || (uncompressed != 0 && compressed == 0)
        {
            return Err(corrupt("stored sizes disagree"));
        }
    }
    if disk_index == u64::from(u16::MAX) || (disk_index != disk && disk_index != 1) {
        return Err(ZipError::MultiDisk);
    }
    if compressed != max32 && local_header_offset + LFH_SIZE + compressed > size {
        return Err(corrupt("member data past the end of the file"));
    }
    if flags & FLAG_MASKED_DIRECTORY != 0 {
        return Err(ZipError::MaskedDirectory { index });
    }
    let total_len = CDH_SIZE + name_len + extra_len + comment_len;
    if total_len > p.len() {
        return Err(corrupt("central directory header overruns the directory"));
    }
    let raw_name = p[CDH_SIZE..CDH_SIZE + name_len].to_vec();
    let extra = &p[CDH_SIZE + name_len..CDH_SIZE + name_len + extra_len];
    let needs_zip64 = compressed.max(uncompressed).max(local_header_offset) == max32;
    if needs_zip64 && !*zip64_seen && extra_len > 0 {
        // The open-time walk in `mz_zip_reader_read_central_dir`: malformed fields fail the
        // archive, a zip64 field stops the walk (for this and every later entry).
        let mut rest = extra;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(corrupt("truncated extra field"));
            }
            let len = usize::from(le16(rest, 2));
            if len + 4 > rest.len() {
                return Err(corrupt("extra field overruns its header"));
            }
            if le16(rest, 0) == ZIP64_EXTRA_ID {
                *zip64_seen = true;
                break;
            }
            rest = &rest[4 + len..];
        }
    }
    // `mz_zip_file_stat_internal` resolves the 64-bit values only when a member is used, and
    // fails that member alone when the field is malformed.
    let (mut u64_uncompressed, mut u64_compressed, mut u64_offset) =
        (uncompressed, compressed, local_header_offset);
    let metadata_ok = !needs_zip64
        || apply_zip64_extra(
            extra,
            &mut u64_uncompressed,
            &mut u64_compressed,
            Some(&mut u64_offset),
            at,
        )
        .is_ok();
    if metadata_ok {
        (uncompressed, compressed, local_header_offset) =
            (u64_uncompressed, u64_compressed, u64_offset);
    }
    let entry = Entry {
        index,
        name: lossy(&raw_name),
        raw_name,
        method,
        flags,
        compressed_size: compressed,
        uncompressed_size: uncompressed,
        crc32,
        external_attributes,
        local_header_offset,
        data_offset: 0,
        local_ok: false,
        metadata_ok,
    };
    Ok((entry, total_len))
}

/// Room for the local extra field in the one read of a local header: PyTorch pads each
/// member's data to 64 bytes with an extra field of 4 to 67 bytes, and a zip64 field adds 20.
const LOCAL_EXTRA_GUESS: u64 = 96;

/// How much [`check_local`] reads of `entry`'s local header at first (before clamping to the
/// file), and so how much of it [`prefetch_local_headers`] asks for.
fn first_local_read(entry: &Entry) -> u64 {
    LFH_SIZE + entry.raw_name.len() as u64 + LOCAL_EXTRA_GUESS
}

/// The fewest members for which [`prefetch_local_headers`] probes the cache: a smaller zip has
/// few headers to wait for, and they often share pages with what was already read.
const PREFETCH_MIN_ENTRIES: usize = 16;

/// Asks for every local header of a file whose headers are not in the page cache, all at once.
///
/// [`check_local`] reads the headers one after the other, and on a cold file each one is a
/// disk read: the 326 of a 10 GiB checkpoint took 11.5 ms here, and on a network file system
/// each costs a round trip. One header in the middle is probed with a read that may not wait
/// (`preadv2` with `RWF_NOWAIT`, one byte, not counted as read); if it is not cached, every
/// header's bytes are advised as needed (`POSIX_FADV_WILLNEED`), and the disk reads them side
/// by side while the first ones are checked: 2.2-2.5 ms here. On a cached file this costs the
/// probe. Where the probe or the advice is not supported, nothing changes.
#[cfg(target_os = "linux")]
fn prefetch_local_headers(file: &std::fs::File, entries: &[Entry]) {
    use rustix::fs::{Advice, fadvise};
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    if entries.len() < PREFETCH_MIN_ENTRIES {
        return;
    }
    let probe = entries[entries.len() / 2].local_header_offset;
    let mut byte = [0u8; 1];
    let cold = matches!(
        preadv2(
            file,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            probe,
            ReadWriteFlags::NOWAIT,
        ),
        Err(Errno::AGAIN)
    );
    if cold {
        for entry in entries {
            let _ = fadvise(
                file,
                entry.local_header_offset,
                std::num::NonZeroU64::new(first_local_read(entry)),
                Advice::WillNeed,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn prefetch_local_headers(_file: &std::fs::File, _entries: &[Entry]) {}

/// Reads the local header of `entry`, sets its data offset, and compares it with the central one.
///
/// One positioned read takes the fixed header, the name (as long as the central one) and room
/// for the extra field; a second read is made only when the local lengths reach past it. A
/// 10 GB checkpoint has hundreds of members, and three reads each were most of its scan time.
fn check_local<R: ReadAt>(
    src: &R,
    size: u64,
    entry: &mut Entry,
    head: &mut Vec<u8>,
    sink: &mut AnomalySink,
) -> Result<(), ZipError> {
    let lho = entry.local_header_offset;
    let guess = first_local_read(entry)
        .min(size.saturating_sub(lho))
        .max(LFH_SIZE);
    head.clear();
    head.resize(guess as usize, 0);
    let readable = lho.checked_add(LFH_SIZE).is_some_and(|e| e <= size)
        && src.read_exact_at(head, lho).is_ok()
        && le32(head, 0) == LFH_SIG;
    if !readable {
        sink.push(Anomaly::LocalHeaderInvalid {
            name: entry.name.clone(),
            offset: lho,
        });
        return Ok(());
    }
    let mut lfh = [0u8; LFH_SIZE as usize];
    lfh.copy_from_slice(&head[..LFH_SIZE as usize]);
    let name_len = u64::from(le16(&lfh, 26));
    let extra_len = u64::from(le16(&lfh, 28));
    let data_offset = lho + LFH_SIZE + name_len + extra_len;
    entry.data_offset = data_offset;
    entry.local_ok = true;
    if data_offset > size {
        sink.push(Anomaly::EntryOutOfBounds {
            name: entry.name.clone(),
        });
        return Ok(());
    }
    // Both at most 64 KiB and inside the file.
    let header_len = (LFH_SIZE + name_len + extra_len) as usize;
    if head.len() < header_len {
        let have = head.len();
        head.resize(header_len, 0);
        src.read_exact_at(&mut head[have..], lho + have as u64)
            .map_err(|source| ZipError::Io {
                what: "local header",
                offset: lho,
                source,
            })?;
    }
    let local_name = &head[LFH_SIZE as usize..LFH_SIZE as usize + name_len as usize];
    let local_extra = &head[LFH_SIZE as usize + name_len as usize..header_len];
    if local_name != entry.raw_name {
        sink.push(Anomaly::LocalNameMismatch {
            central: entry.name.clone(),
            local: lossy(local_name),
        });
    }
    let local_method = le16(&lfh, 8);
    if local_method != entry.method {
        sink.push(Anomaly::LocalMethodMismatch {
            name: entry.name.clone(),
            central: entry.method,
            local: local_method,
        });
    }
    let local_flags = le16(&lfh, 6);
    let mut lc = u64::from(le32(&lfh, 18));
    let mut lu = u64::from(le32(&lfh, 22));
    if lc == u64::from(u32::MAX) || lu == u64::from(u32::MAX) {
        // A malformed local zip64 field leaves the 32-bit values, which then mismatch below.
        let _ = apply_zip64_extra(local_extra, &mut lu, &mut lc, None, lho);
    }
    let deferred = local_flags & FLAG_DATA_DESCRIPTOR != 0 && lc == 0 && lu == 0;
    if !deferred && (lc, lu) != (entry.compressed_size, entry.uncompressed_size) {
        sink.push(Anomaly::LocalSizeMismatch {
            name: entry.name.clone(),
            central: (entry.compressed_size, entry.uncompressed_size),
            local: (lc, lu),
        });
    }
    if data_offset
        .checked_add(entry.compressed_size)
        .is_none_or(|e| e > size)
        || (entry.method == METHOD_STORED && entry.data_end() > size)
    {
        sink.push(Anomaly::EntryOutOfBounds {
            name: entry.name.clone(),
        });
    }
    if entry.method == METHOD_STORED && entry.compressed_size != entry.uncompressed_size {
        sink.push(Anomaly::StoredSizeMismatch {
            name: entry.name.clone(),
            compressed: entry.compressed_size,
            uncompressed: entry.uncompressed_size,
        });
    }
    if entry.flags & FLAGS_REFUSED_BY_MINIZ != 0 {
        sink.push(Anomaly::EncryptedFlag {
            name: entry.name.clone(),
            flags: entry.flags,
        });
    }
    if !matches!(entry.method, METHOD_STORED | METHOD_DEFLATED) {
        sink.push(Anomaly::UnsupportedMethod {
            name: entry.name.clone(),
            method: entry.method,
        });
    }
    if entry.is_directory() && entry.compressed_size > 0 {
        sink.push(Anomaly::DirectoryWithData {
            name: entry.name.clone(),
        });
    }
    Ok(())
}

/// Names equal byte for byte, or after `MZ_TOLOWER`, sit next to each other in miniz's order.
fn find_duplicates(entries: &[Entry], sorted: &[u32], sink: &mut AnomalySink) {
    let mut run_start = 0usize;
    for i in 1..sorted.len() {
        let first = &entries[sorted[run_start] as usize];
        let this = &entries[sorted[i] as usize];
        if filename_compare(&first.raw_name, &this.raw_name).is_eq() {
            // Report against every earlier member of the run, so exact twins are found even
            // when a case variant sits between them.
            let exact = sorted[run_start..i]
                .iter()
                .any(|&j| entries[j as usize].raw_name == this.raw_name);
            sink.push(Anomaly::DuplicateName {
                name: this.name.clone(),
                case_insensitive: !exact,
            });
        } else {
            run_start = i;
        }
    }
}

/// Sweeps the `[local header, data end)` ranges in offset order.
fn find_overlaps(
    entries: &[Entry],
    cdir_ofs: u64,
    eocd_ofs: u64,
    eocd64_ofs: Option<u64>,
    sink: &mut AnomalySink,
) {
    let mut spans: Vec<(u64, u64, usize)> = entries
        .iter()
        .filter(|e| e.local_ok)
        .map(|e| (e.local_header_offset, e.data_end(), e.index))
        .collect();
    spans.sort_unstable();
    if let Some(&(first, _, _)) = spans.first() {
        if first > 0 {
            sink.push(Anomaly::LeadingData { bytes: first });
        }
    } else if entries.is_empty() && cdir_ofs > 0 {
        sink.push(Anomaly::LeadingData { bytes: cdir_ofs });
    }
    let mut reach: Option<(u64, usize)> = None;
    let dir_start = eocd64_ofs.map_or(cdir_ofs, |z| z.min(cdir_ofs));
    let dir_end = eocd_ofs + EOCD_SIZE;
    for &(start, end, index) in &spans {
        if let Some((reach_end, reach_index)) = reach
            && start < reach_end
        {
            sink.push(Anomaly::Overlap {
                a: entries[reach_index].name.clone(),
                b: entries[index].name.clone(),
            });
        }
        if reach.is_none_or(|(reach_end, _)| end > reach_end) {
            reach = Some((end, index));
        }
        if start < dir_end && end > dir_start {
            sink.push(Anomaly::OverlapsDirectory {
                name: entries[index].name.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowered names compared as byte strings order exactly as miniz's comparison does,
    /// prefixes, case variants and non-ASCII bytes included.
    #[test]
    fn lowered_byte_order_is_miniz_order() {
        let alphabet: &[u8] = b"aAbB/_.0\xff";
        let mut names = vec![Vec::new()];
        for len in 1..=3 {
            let mut grown = Vec::new();
            for n in names.iter().filter(|n| n.len() == len - 1) {
                for &c in alphabet {
                    let mut m = n.clone();
                    m.push(c);
                    grown.push(m);
                }
            }
            names.extend(grown);
        }
        let lower = |n: &[u8]| n.iter().map(|&c| mz_tolower(c)).collect::<Vec<u8>>();
        for l in &names {
            for r in &names {
                assert_eq!(lower(l) < lower(r), filename_less(l, r), "{l:?} vs {r:?}");
            }
        }
    }
}
