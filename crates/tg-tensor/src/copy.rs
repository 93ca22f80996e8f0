//! Copying a byte range of the checkpoint file into the output, inside the kernel.
//!
//! A torch zip member's data starts on a 64-byte boundary, the safetensors data on a page
//! boundary, so a storage's bytes move to a different offset within the page. The
//! `copy_file_range` fallback on file systems without shared extents (ext4: splice through the
//! task's internal 16-page pipe) then writes chunks of 64 KiB less 64 bytes: each one ends
//! inside a page, the next one starts there, and the page cache gets small folios with every
//! page written in two parts.
//!
//! So on Linux the bytes go through a pipe of our own, grown to 512 KiB: `splice` moves
//! references to the source's pages into it (no copy), and a second `splice` writes them out,
//! one call per chunk, chunks ending on 256 KiB boundaries of the output. The kernel then
//! fills whole, aligned folios, one copy per byte, whatever the source alignment. The output
//! is also preallocated ([`preallocate`]), which spares ext4 a delayed-allocation reservation
//! per page. Copying 1 GiB from offset 64 to offset 0 (Linux 6.18, ext4, page cache warm,
//! medians of 7 interleaved runs): `copy_file_range` 517 ms, at equal offsets as `cp` does
//! 334 ms, through the pipe 291 ms, through the pipe into a preallocated file 224 ms.
//! Elsewhere, or where splicing is refused (a file system without splice support, a pipe that
//! cannot be grown), it falls back to `std::io::copy` (`copy_file_range`, then read/write).

use std::fs::File;
use std::io::{self, Read as _, Seek as _};

/// Which side of a copy an error came from.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the output failed.
    Write(io::Error),
}

/// Copies byte ranges into one output file, at its current position.
#[derive(Debug)]
pub(crate) struct Copier {
    #[cfg(target_os = "linux")]
    pipe: Option<linux::Pipe>,
}

impl Copier {
    /// A copier; on Linux with a pipe of its own when one can be made large enough.
    pub(crate) fn new() -> Copier {
        Copier {
            #[cfg(target_os = "linux")]
            pipe: linux::Pipe::new(),
        }
    }

    /// Copies `len` bytes of `src` from `offset` to `dst` at its current position, which is
    /// `dst_pos`, and advances it. Returns the bytes copied: fewer than `len` only when `src`
    /// ended first. `src`'s own position is left alone on Linux (positioned reads).
    pub(crate) fn copy(
        &mut self,
        src: &File,
        offset: u64,
        len: u64,
        dst: &File,
        dst_pos: u64,
    ) -> Result<u64, CopyError> {
        #[cfg(target_os = "linux")]
        if let Some(pipe) = &mut self.pipe {
            match pipe.copy(src, offset, len, dst, dst_pos) {
                Ok(n) => return Ok(n),
                Err(linux::Failed::Refused { done }) => {
                    // This pair of files does not splice (and nothing is in the pipe): the
                    // rest the portable way, and every later copy too.
                    self.pipe = None;
                    return Ok(done + fallback(src, offset + done, len - done, dst)?);
                }
                Err(linux::Failed::Error(e)) => return Err(e),
            }
        }
        let _ = dst_pos;
        fallback(src, offset, len, dst)
    }
}

/// `std::io::copy` of the range: `copy_file_range` where the kernel has it, else read/write.
fn fallback(mut src: &File, offset: u64, len: u64, mut dst: &File) -> Result<u64, CopyError> {
    src.seek(io::SeekFrom::Start(offset))
        .map_err(CopyError::Read)?;
    // std::io::copy does not say which side failed; read errors are the rare ones here (the
    // source was just opened and measured), so a failed copy is reported as the write's.
    io::copy(&mut src.take(len), &mut dst).map_err(CopyError::Write)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::io::{self, Read as _, Write as _};
    use std::os::fd::OwnedFd;

    use rustix::io::Errno;
    use rustix::pipe::{SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with};

    use super::CopyError;

    /// The pipe size asked for: room for a [`MAX_CHUNK`] from any source offset, and half of
    /// Linux's default `pipe-max-size` (what an unprivileged process may ask for).
    const PIPE_SIZE: usize = 512 << 10;
    /// Output bytes per splice at most. 512 KiB was as fast in some runs, but bimodal or several
    /// times slower in others, on a VM that hands freed memory back to its host and whose page
    /// cache filled memory (the kernel allocates folios of the write's size); 256 KiB was
    /// steady, and smaller chunks cost more syscalls.
    const MAX_CHUNK: u64 = 256 << 10;
    /// Below this the internal pipe of `copy_file_range` is as good.
    const MIN_PIPE_SIZE: usize = 256 << 10;
    /// Page size assumed for the chunk arithmetic (only the speed depends on it).
    const PAGE: u64 = 4096;

    /// How a pipe copy failed.
    pub(super) enum Failed {
        /// The kernel will not splice these files; `done` bytes were copied, none are left in
        /// the pipe.
        Refused { done: u64 },
        /// A real I/O error.
        Error(CopyError),
    }

    /// A pipe and the chunk size it can carry from any source offset.
    #[derive(Debug)]
    pub(super) struct Pipe {
        read: File,
        write: OwnedFd,
        /// Output bytes per round trip, a power of two: a chunk that starts inside a source
        /// page spans one page more than its length, so it is at most the pipe less a page.
        chunk: u64,
    }

    impl Pipe {
        pub(super) fn new() -> Option<Pipe> {
            let (read, write) = pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
            // Refused where the user's pipe-buffer quota is spent; the default size is kept.
            let _ = fcntl_setpipe_size(&write, PIPE_SIZE);
            let size = fcntl_getpipe_size(&write).ok()?;
            if size < MIN_PIPE_SIZE {
                return None;
            }
            let room = size as u64 - PAGE;
            let chunk = (1u64 << (63 - room.leading_zeros())).min(MAX_CHUNK);
            Some(Pipe {
                read: File::from(read),
                write,
                chunk,
            })
        }

        pub(super) fn copy(
            &mut self,
            src: &File,
            offset: u64,
            len: u64,
            dst: &File,
            dst_pos: u64,
        ) -> Result<u64, Failed> {
            let mut done = 0u64;
            while done < len {
                // End each chunk on a multiple of `chunk` in the output, so the kernel writes
                // whole, aligned folios.
                let at = dst_pos + done;
                let want = (self.chunk - at % self.chunk).min(len - done);
                let mut off = offset + done;
                let got = match retry(|| {
                    rustix::pipe::splice(
                        src,
                        Some(&mut off),
                        &self.write,
                        None,
                        want as usize,
                        SpliceFlags::empty(),
                    )
                }) {
                    Ok(0) => return Ok(done),
                    Ok(n) => n,
                    Err(e) if done == 0 && unsupported(e) => return Err(Failed::Refused { done }),
                    Err(e) => return Err(Failed::Error(CopyError::Read(e.into()))),
                };
                let mut left = got;
                while left > 0 {
                    match retry(|| {
                        rustix::pipe::splice(
                            &self.read,
                            None,
                            dst,
                            None,
                            left,
                            SpliceFlags::empty(),
                        )
                    }) {
                        Ok(0) => {
                            return Err(Failed::Error(CopyError::Write(
                                io::ErrorKind::WriteZero.into(),
                            )));
                        }
                        Ok(n) => left -= n,
                        Err(e) if unsupported(e) => {
                            // The output does not take splices: write what the pipe holds
                            // the ordinary way, so the caller can go on without it.
                            self.drain(left, dst)?;
                            return Err(Failed::Refused {
                                done: done + got as u64,
                            });
                        }
                        Err(e) => return Err(Failed::Error(CopyError::Write(e.into()))),
                    }
                }
                done += got as u64;
            }
            Ok(done)
        }

        /// Moves the `left` bytes still in the pipe to `dst` through memory.
        fn drain(&mut self, mut left: usize, mut dst: &File) -> Result<(), Failed> {
            let mut buf = vec![0u8; left.min(64 << 10)];
            while left > 0 {
                let want = left.min(buf.len());
                let n = match self.read.read(&mut buf[..want]) {
                    Ok(0) => {
                        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                        return Err(Failed::Error(CopyError::Write(e)));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Failed::Error(CopyError::Write(e))),
                };
                dst.write_all(&buf[..n])
                    .map_err(|e| Failed::Error(CopyError::Write(e)))?;
                left -= n;
            }
            Ok(())
        }
    }

    fn retry(mut f: impl FnMut() -> rustix::io::Result<usize>) -> rustix::io::Result<usize> {
        loop {
            match f() {
                Err(Errno::INTR) => continue,
                r => return r,
            }
        }
    }

    /// Errors that mean "these files do not splice", not "the copy failed".
    fn unsupported(e: Errno) -> bool {
        matches!(
            e,
            Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::BADF
        )
    }
}

/// Reserves `len` bytes for `file` up front where the file system can (Linux `fallocate`),
/// so the copies do not reserve blocks page by page. Only a full disk or quota is an error;
/// file systems without `fallocate` are written as before.
#[cfg(target_os = "linux")]
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    use rustix::io::Errno;
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Err(e @ (Errno::NOSPC | Errno::DQUOT | Errno::FBIG)) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Reserves nothing: `fallocate` is Linux's.
#[cfg(not(target_os = "linux"))]
pub(crate) fn preallocate(_file: &File, _len: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Seek as _, Write as _};

    use super::*;

    fn source(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    #[test]
    fn ranges_copy_exactly_from_any_offset_to_any_position() {
        let (src, data) = source(3 << 20);
        let mut copier = Copier::new();
        let mut out = tempfile::tempfile().unwrap();
        out.write_all(b"header!").unwrap();
        let mut expect = b"header!".to_vec();
        let mut pos = 7u64;
        for (off, len) in [
            (64u64, 1u64 << 20),
            (1, 4095),
            (4096, 2 << 20),
            (0, 0),
            (77, 12345),
        ] {
            let n = copier.copy(src.as_file(), off, len, &out, pos).unwrap();
            assert_eq!(n, len);
            expect.extend_from_slice(&data[off as usize..(off + len) as usize]);
            pos += len;
        }
        assert_eq!(out.stream_position().unwrap(), pos);
        let mut back = Vec::new();
        out.rewind().unwrap();
        out.read_to_end(&mut back).unwrap();
        assert!(back == expect, "copied bytes differ");
    }

    #[test]
    fn a_short_source_copies_what_there_is() {
        let (src, data) = source(10_000);
        let mut out = tempfile::tempfile().unwrap();
        let n = Copier::new()
            .copy(src.as_file(), 9_000, 5_000, &out, 0)
            .unwrap();
        assert_eq!(n, 1_000);
        let mut back = Vec::new();
        out.rewind().unwrap();
        out.read_to_end(&mut back).unwrap();
        assert_eq!(back, &data[9_000..]);
    }

    #[test]
    fn an_output_that_does_not_splice_gets_the_bytes_anyway() {
        // O_APPEND outputs refuse splice (EINVAL): the pipe's contents are drained and the
        // copier carries on without it.
        let (src, data) = source(2 << 20);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let out = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut copier = Copier::new();
        let n = copier
            .copy(src.as_file(), 100, 1 << 20, out.file(), 0)
            .unwrap();
        assert_eq!(n, 1 << 20);
        let n = copier
            .copy(src.as_file(), 5, 1000, out.file(), 1 << 20)
            .unwrap();
        assert_eq!(n, 1000);
        let back = fs_err::read(&path).unwrap();
        let mut expect = data[100..100 + (1 << 20)].to_vec();
        expect.extend_from_slice(&data[5..1005]);
        assert!(back == expect, "copied bytes differ");
    }
}
