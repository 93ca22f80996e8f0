//! Archive readers for model files that read what PyTorch reads, and refuse what is ambiguous.
//!
//! A scanner that parses a container differently from the loader is bypassed by the difference:
//! CVE-2025-1944 (local vs central file name), CVE-2025-1945 (flag bits), CVE-2025-10156 (bad
//! CRC) all hid a pickle from scanners built on Python's `zipfile` while `torch.load` would
//! still have run it. So this crate does not implement "a zip reader": [`ZipArchive`] is a
//! re-implementation of the parts of miniz 3.0.2 that PyTorch's C++ `PyTorchStreamReader`
//! (`caffe2/serialize/inline_container.cc`) uses, checked against the miniz source vendored
//! in PyTorch (`third_party/miniz-3.0.2/miniz.c`):
//!
//! - `mz_zip_reader_locate_header_sig`: the end of central directory is the *last* signature
//!   with 22 bytes after it in the final ~64 KiB; the comment length is not checked.
//! - `mz_zip_reader_read_central_dir`: the zip64 locator must sit right before the EOCD and
//!   the zip64 record where it points; exactly `total entries` headers are parsed (bytes left
//!   in the directory are ignored, which Python's `zipfile` does not do); offsets are absolute
//!   (3.0.2 does not shift them for prepended data, Python does); flag bit 13 fails the archive.
//! - `mz_zip_file_stat_internal`: zip64 sizes come from the extra field only for 32-bit fields
//!   that are `0xFFFFFFFF`. It also calls `mz_zip_reader_is_file_supported`, which sets the
//!   archive's last error for flag bits 0x1/0x40 (encryption), 0x20 (patch) or a method other
//!   than 0/8; `getRecord` checks that error right after the stat, so **torch cannot load such a
//!   member**. The picklescan samples with those bits (`malicious1_0x{1,20,40}.zip`) are
//!   therefore loadable by a lenient reader, not by torch; this crate reads them as plain data
//!   anyway ([`Entry::encrypted`], [`Anomaly::EncryptedFlag`]) so the scanner sees the payload.
//! - `mz_zip_reader_locate_file(zip, name, NULL, 0)` (what `getRecordID` calls): flags 0 means a
//!   binary search over names sorted by miniz's own heap sort, comparing with ASCII
//!   `MZ_TOLOWER`: the lookup is **case-insensitive**, and among duplicate names the winner is
//!   whichever the search lands on. [`ZipArchive::locate`] reproduces the sort and the search
//!   step for step, so it returns the same entry torch would.
//! - `mz_zip_reader_extract_to_mem` (`..._no_alloc1`): the data starts after the *local* name
//!   and extra lengths; only stored (0) and deflate (8) are supported (miniz has no other
//!   decompressor); a stored member yields `uncompressed_size` bytes whatever its compressed
//!   size; a deflated member must inflate to exactly `uncompressed_size` with tinfl's
//!   non-wrapping output buffer (so a back-reference before the start of the output fails, as
//!   it does in zlib, instead of reading zeros; this crate uses miniz_oxide's port of tinfl in
//!   the same mode, and allocates the declared size only after the [`Limits`] checks, as miniz
//!   allocates it before extracting); members with a zero
//!   compressed size or a folder name are "extracted" without reading. PyTorch compiles miniz
//!   with `MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS` (pytorch#28858), so CRCs are ignored: this
//!   crate computes them and reports a mismatch ([`Member::crc_mismatch`]) instead of failing.
//!
//! Conformance is tested, not assumed: `tests/miniz_crosscheck/` holds C harnesses over the
//! real miniz 3.0.2; name lookups recorded from it are replayed in the default test run, and an
//! ignored differential test compares open/read outcomes, lengths and CRCs on thousands of
//! mutated archives. The tar reader is replayed against names recorded from CPython's `tarfile`.
//!
//! On top of that, [`ZipArchive::open`] reads every local header and records every
//! [`Anomaly`] that lets two readers disagree (duplicate or case-duplicate names, local/central
//! mismatches, overlapping members, leading or trailing data, hidden directory bytes, several
//! top-level folders); [`Anomaly::is_hostile`] says which the scanner must treat as malicious.
//!
//! [`TarArchive`] reads the oldest PyTorch format (a tar of `sys_info`, `pickle`, `storages`,
//! `tensors`) like Python's `tarfile` does, and [`decompress`] holds bounded one-shot decoders
//! for the wrappers joblib writes. Every reader takes a [`ReadAt`] source so that only the
//! needed parts of a large file are read, checks every untrusted offset, allocates only after
//! a size check against [`Limits`], and never panics on any input (see the fuzz target and the
//! mutation test).

pub mod decompress;
#[doc(hidden)]
pub mod fuzzing;
mod read_at;
mod tar;
mod zip;

pub use read_at::{Counted, ReadAt, SizedFile};
pub use tar::{TarAnomaly, TarArchive, TarEntry, TarEntryKind, TarError};
pub use zip::{
    Anomaly, Entry, FLAG_DATA_DESCRIPTOR, FLAG_ENCRYPTED, FLAG_PATCH, FLAG_STRONG_ENCRYPTION,
    METHOD_DEFLATED, METHOD_STORED, Member, ZipArchive, ZipError,
};

/// Resource caps for one archive. Build with `Limits { max_member_bytes: .., ..Limits::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most entries an archive may declare.
    pub max_entries: usize,
    /// Most decompressed bytes of one member read.
    pub max_member_bytes: u64,
    /// Highest declared uncompressed:compressed ratio of a deflated member over 64 KiB.
    pub max_ratio: u64,
    /// Most decompressed bytes read from one archive, all members together.
    pub max_total_bytes: u64,
    /// Largest central directory (or tar metadata record, such as a pax header) read.
    pub max_directory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 100_000,
            max_member_bytes: 1 << 30,
            max_ratio: 200,
            max_total_bytes: 4 << 30,
            max_directory_bytes: 256 << 20,
        }
    }
}
