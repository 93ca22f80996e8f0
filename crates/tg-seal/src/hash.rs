//! Streaming SHA-256 of one file with a fixed buffer.

use std::fmt;
use std::io::Read;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Size of the read buffer used for every file: memory stays bounded (one buffer per worker
/// thread) whatever the file size. 1 MiB is what model_signing settled on too (its #342); 64 KiB
/// to 1 MiB measured the same on the benchmark directory (`bench/README.md`, integrity section).
pub const BUFFER_SIZE: usize = 1 << 20;

/// Where read buffers start: a page boundary. `read` from the page cache copies with `rep movsb`,
/// which took about 15% more kernel time on the benchmark machine when the destination was not
/// cache-line aligned, and malloc promises only 16 bytes (an mmap'd 1 MiB block starts 16 bytes
/// into its page).
const BUFFER_ALIGN: usize = 4096;

/// A zeroed read buffer of `len` bytes starting on a [`BUFFER_ALIGN`] boundary (safe code: the
/// storage is over-allocated and the aligned window is sliced out of it).
pub(crate) struct ReadBuffer {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl ReadBuffer {
    pub(crate) fn new(len: usize) -> Self {
        let storage = vec![0u8; len + BUFFER_ALIGN];
        // `align_offset` may answer "cannot" (usize::MAX); an unaligned buffer is only slower.
        let start = match storage.as_ptr().align_offset(BUFFER_ALIGN) {
            off if off < BUFFER_ALIGN => off,
            _ => 0,
        };
        ReadBuffer {
            storage,
            start,
            len,
        }
    }

    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lowercase hex, as OMS writes it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Digest(out))
    }

    /// SHA-256 of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// SHA-256 of the whole file at `path`, read sequentially with a [`BUFFER_SIZE`] buffer.
///
/// A file's digest is inherently sequential (SHA-256 is a chain), so callers that want both
/// cores busy hash several files at once, as [`crate::manifest`] does.
pub fn hash_file(path: &Path) -> Result<Digest> {
    let file = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
    hash_reader(file)
        .map(|(digest, _)| digest)
        .map_err(|e| Error::io(path, e))
}

/// SHA-256 of everything `reader` yields, and the number of bytes read.
pub fn hash_reader(reader: impl Read) -> std::io::Result<(Digest, u64)> {
    hash_reader_with(reader, ReadBuffer::new(BUFFER_SIZE).as_mut())
}

/// [`hash_reader`] through a buffer the caller reuses (one per worker thread, so hashing many
/// small files does not allocate and zero a buffer per file).
pub(crate) fn hash_reader_with(
    mut reader: impl Read,
    buf: &mut [u8],
) -> std::io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((Digest(hasher.finalize().into()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            Digest::of_bytes(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let (d, n) = hash_reader(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn streaming_across_buffer_boundaries_matches_one_shot() {
        let data: Vec<u8> = (0..(BUFFER_SIZE * 2 + 17))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs_err::write(&path, &data).unwrap();
        assert_eq!(hash_file(&path).unwrap(), Digest::of_bytes(&data));
    }

    #[test]
    fn read_buffers_are_page_aligned_and_sized() {
        for len in [1, 100, BUFFER_SIZE] {
            let mut buf = ReadBuffer::new(len);
            let slice = buf.as_mut();
            assert_eq!(slice.len(), len);
            assert_eq!(slice.as_ptr() as usize % BUFFER_ALIGN, 0);
        }
    }

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let d = Digest::of_bytes(b"x");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()), Some(d));
        assert_eq!(Digest::from_hex("abcd"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let err = hash_file(Path::new("/nonexistent/tg-seal/file")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/tg-seal/file"),
            "{err}"
        );
    }
}
