//! The body shared by the `zip` fuzz target and the mutation test: open the input every way
//! this crate can, read everything, render everything. It must never panic.

use crate::decompress::{self, Compression};
use crate::{Limits, TarArchive, ZipArchive};

/// Small caps so a fuzz iteration stays fast.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_entries: 1000,
        max_member_bytes: 1 << 20,
        max_ratio: 200,
        max_total_bytes: 4 << 20,
        max_directory_bytes: 1 << 20,
    }
}

/// Runs every reader over `data`; returns how many members were read, for tests to check.
pub fn exercise(data: &[u8]) -> usize {
    let mut read = 0usize;
    if let Ok(zip) = ZipArchive::open(data, fuzz_limits()) {
        for entry in zip.entries() {
            if let Ok(member) = zip.read_member(entry) {
                read += 1;
                if let Some(a) = member.crc_mismatch {
                    let _ = a.to_string();
                }
            }
            let _ = zip.read_prefix(entry, 16);
            let _ = zip.locate(&entry.name);
        }
        for a in zip.anomalies() {
            let _ = (a.to_string(), a.is_hostile());
        }
        let _ = (
            zip.torch_prefix(),
            zip.top_level_prefixes(),
            zip.torch_record("data.pkl"),
        );
    }
    if let Ok(tar) = TarArchive::open(data, fuzz_limits()) {
        for entry in tar.entries() {
            if tar.read(entry).is_ok() {
                read += 1;
            }
            let _ = tar.locate(&entry.name);
        }
        for a in tar.anomalies() {
            let _ = (a.to_string(), a.is_hostile());
        }
    }
    let kinds = [
        Compression::Zlib,
        Compression::Gzip,
        Compression::Bzip2,
        Compression::Xz,
        Compression::Lzma,
        Compression::Lz4,
        Compression::Zstd,
    ];
    let _ = decompress::sniff(data);
    for kind in kinds {
        if let Err(e) = decompress::decompress(kind, data, 64 * 1024) {
            let _ = e.to_string();
        }
    }
    read
}
