//! Positioned reads over a file or a byte slice.

use std::io;

/// A source that can be read at any offset without moving a cursor.
///
/// The readers in this crate only ever read the parts of a file they need (the end of central
/// directory, the central directory, the local headers and the members asked for), so a 10 GB
/// checkpoint is never read in full. `Sync` so one archive can be read from several threads.
pub trait ReadAt: Sync {
    /// Total size of the source in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`, or fails (with [`io::ErrorKind::UnexpectedEof`] past the end).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The open file behind this source, when there is one (lets a copy of a region go through
    /// the kernel, `copy_file_range`, instead of user space).
    fn as_file(&self) -> Option<&std::fs::File> {
        None
    }

    /// The whole source, when it is already in memory (lets a reader look at it in place
    /// instead of copying it out).
    fn as_slice(&self) -> Option<&[u8]> {
        None
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn as_slice(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn as_slice(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn as_file(&self) -> Option<&std::fs::File> {
        (**self).as_file()
    }

    fn as_slice(&self) -> Option<&[u8]> {
        (**self).as_slice()
    }
}

/// A file whose size cannot be read reports size 0, which every reader here rejects as "not an
/// archive"; open through [`fs_err::File`] to get errors that name the path.
impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn as_file(&self) -> Option<&std::fs::File> {
        Some(self)
    }
}

/// Errors carry the file's path.
impl ReadAt for fs_err::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        fs_err::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn as_file(&self) -> Option<&std::fs::File> {
        Some(self.file())
    }
}

/// An open file with its size read once. Every reader here asks for the size, and on a bare
/// file each ask is an `fstat`. A file that shrinks after opening fails later reads with
/// [`io::ErrorKind::UnexpectedEof`], as a short read would.
#[derive(Debug)]
pub struct SizedFile {
    file: fs_err::File,
    size: u64,
}

impl SizedFile {
    /// Wraps `file`, reading its size now.
    pub fn new(file: fs_err::File) -> io::Result<SizedFile> {
        let size = file.metadata()?.len();
        Ok(SizedFile { file, size })
    }

    /// Opens `path` for reading.
    pub fn open(path: impl AsRef<std::path::Path>) -> io::Result<SizedFile> {
        SizedFile::new(fs_err::File::open(path.as_ref())?)
    }

    /// The first `len` bytes, read with one positioned read into `buf`, which keeps its length
    /// from call to call: only the part of it no earlier call reached is zeroed first (memory a
    /// read is about to fill is touched either way), and there is no seek, no read in growing
    /// steps and no probe for the end, which reading to the end through the cursor costs.
    pub fn read_head<'b>(&self, len: u64, buf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
        let len = usize::try_from(len).map_err(|_| eof())?;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let head = &mut buf[..len];
        self.read_exact_at(head, 0)?;
        Ok(head)
    }
}

impl ReadAt for SizedFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn as_file(&self) -> Option<&std::fs::File> {
        Some(self.file.file())
    }
}

/// A source that counts the bytes read through it: what a reader built on it really read
/// from the file, its headers and directories included.
#[derive(Debug)]
pub struct Counted<R> {
    inner: R,
    bytes: std::sync::atomic::AtomicU64,
}

impl<R: ReadAt> Counted<R> {
    /// Counts the reads of `inner`, from zero.
    pub fn new(inner: R) -> Counted<R> {
        Counted {
            inner,
            bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Bytes asked for so far (a read that failed counts too: it was made).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Only positioned reads are forwarded: `as_slice` would let a reader look at the bytes
/// without a read to count.
impl<R: ReadAt> ReadAt for Counted<R> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.bytes
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner.read_exact_at(buf, offset)
    }

    fn as_file(&self) -> Option<&std::fs::File> {
        self.inner.as_file()
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the source",
    )
}
