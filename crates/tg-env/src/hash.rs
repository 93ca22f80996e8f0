//! Parallel, streaming file hashing (SHA-256 with the CPU's SHA extensions where present).
//!
//! The cost is the bytes: `sha2` detects SHA-NI at run time and hashes about 1.78 GB/s per core
//! on the benchmark machine (AMD EPYC Zen 4; `openssl speed -evp sha256` gives the same), and
//! the copy out of the page cache adds about 15% CPU. A full torch + CUDA environment is 5.4 GB
//! in 17k files, so the files are spread over every core, largest first (see [`hash_all`]).
//!
//! Every worker reuses one page-aligned 64 KiB buffer (inside the core's L2 cache between the
//! kernel's copy and the hash); small files take one `read`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha384, Sha512};

const BUF: usize = 64 * 1024;
/// Where read buffers start: a page boundary. `read` from the page cache copies with `rep movsb`,
/// which took about 15% more kernel time on the benchmark machine when the destination was not
/// cache-line aligned, and malloc promises only 16 bytes.
const BUF_ALIGN: usize = 4096;

/// A zeroed read buffer of [`BUF`] bytes starting on a [`BUF_ALIGN`] boundary (safe code: the
/// storage is over-allocated and the aligned window is sliced out of it).
struct ReadBuffer {
    storage: Vec<u8>,
    start: usize,
}

impl ReadBuffer {
    fn new() -> Self {
        let storage = vec![0u8; BUF + BUF_ALIGN];
        // `align_offset` may answer "cannot" (usize::MAX); an unaligned buffer is only slower.
        let start = match storage.as_ptr().align_offset(BUF_ALIGN) {
            off if off < BUF_ALIGN => off,
            _ => 0,
        };
        ReadBuffer { storage, start }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + BUF]
    }
}

/// The size and SHA-256 of one file, as read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileDigest {
    /// Bytes read.
    pub(crate) size: u64,
    /// SHA-256 of those bytes.
    pub(crate) sha256: [u8; 32],
}

fn stream<D: Digest>(path: &Path, buf: &mut [u8]) -> std::io::Result<(u64, D)> {
    let mut file = fs_err::File::open(path)?;
    let mut hasher = D::new();
    let mut size = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher))
}

/// Why a file could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HashError {
    /// The file does not exist (a dangling symlink counts).
    pub(crate) not_found: bool,
    /// The error message, naming the path.
    pub(crate) message: String,
}

/// Hash one file with SHA-256.
pub(crate) fn sha256_file(path: &Path, buf: &mut [u8]) -> Result<FileDigest, HashError> {
    let (size, hasher) = stream::<Sha256>(path, buf).map_err(|e| HashError {
        not_found: e.kind() == std::io::ErrorKind::NotFound,
        message: e.to_string(),
    })?;
    Ok(FileDigest {
        size,
        sha256: hasher.finalize().into(),
    })
}

/// Hash one file with SHA-384 or SHA-512 (the rare RECORD algorithms).
pub(crate) fn other_sha2(path: &Path, algo: &str) -> Result<Vec<u8>, String> {
    let mut buf = ReadBuffer::new();
    let buf = buf.as_mut();
    let out = match algo {
        "sha384" => stream::<Sha384>(path, buf).map(|(_, h)| h.finalize().to_vec()),
        _ => stream::<Sha512>(path, buf).map(|(_, h)| h.finalize().to_vec()),
    };
    out.map_err(|e| e.to_string())
}

/// Hash every path once, in parallel. Errors are kept per file (as the message, which names the
/// path) so that one unreadable file becomes a finding, not an abort.
///
/// Largest files first, each thread taking the next file when it finishes one
/// (longest-processing-time-first list scheduling): one file's SHA-256 is a sequential chain, so
/// a big shared library (`libtorch_cuda.so` is 900 MB, half a second of hashing) must start
/// early, and no thread may sit on a fixed share of the list while the others idle. (A rayon
/// `par_iter` over the sorted list did exactly that: its leaf chunks are contiguous, so one
/// thread got the first quarter of the list, which holds most of the bytes.)
pub(crate) fn hash_all(paths: Vec<PathBuf>) -> HashMap<PathBuf, Result<FileDigest, HashError>> {
    let mut sized: Vec<(u64, PathBuf)> = paths
        .into_par_iter()
        .map(|p| (fs_err::metadata(&p).map_or(0, |m| m.len()), p))
        .collect();
    sized.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
    let digests = in_order_on_every_thread(&sized, ReadBuffer::new, |buf, (_, path)| {
        sha256_file(path, buf.as_mut())
    });
    sized.into_iter().map(|(_, p)| p).zip(digests).collect()
}

/// `work` applied to every item, results in item order. Every thread of the current rayon pool
/// takes the next unclaimed item (a shared counter) until none is left, so items *start* in
/// slice order and no thread is idle while an item is unclaimed. `init` makes per-thread state
/// (a read buffer).
fn in_order_on_every_thread<T: Sync, R: Send, S>(
    items: &[T],
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let parts: Vec<Vec<(usize, R)>> = rayon::broadcast(|_| {
        let mut state = init();
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, work(&mut state, item)));
        }
    });
    let mut all: Vec<(usize, R)> = parts.into_iter().flatten().collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    debug_assert!(all.iter().enumerate().all(|(k, (i, _))| k == *i));
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_are_page_aligned() {
        let mut buf = ReadBuffer::new();
        assert_eq!(buf.as_mut().len(), BUF);
        assert_eq!(buf.as_mut().as_ptr() as usize % BUF_ALIGN, 0);
    }

    #[test]
    fn every_item_once_results_in_item_order() {
        let items: Vec<u64> = (0..5000).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let got = pool.install(|| {
            in_order_on_every_thread(
                &items,
                || 0u64,
                |seen, &i| {
                    *seen += 1;
                    i * 2
                },
            )
        });
        assert_eq!(got, items.iter().map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn matches_known_vector_across_buffer_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs_err::write(&a, b"abc").unwrap();
        // Larger than one buffer, so the streaming path runs more than once.
        let big = vec![7u8; BUF * 2 + 5];
        fs_err::write(&b, &big).unwrap();
        let map = hash_all(vec![a.clone(), b.clone(), dir.path().join("missing")]);
        let da = map[&a].clone().unwrap();
        assert_eq!(da.size, 3);
        assert_eq!(
            hex::encode(da.sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let db = map[&b].clone().unwrap();
        assert_eq!(db.size, big.len() as u64);
        assert_eq!(db.sha256, <[u8; 32]>::from(Sha256::digest(&big)));
        let err = map[&dir.path().join("missing")].clone().unwrap_err();
        assert!(err.not_found);
        assert!(err.message.contains("missing"), "{}", err.message);
        assert_eq!(
            other_sha2(&a, "sha512").unwrap(),
            Sha512::digest(b"abc").to_vec()
        );
    }
}
