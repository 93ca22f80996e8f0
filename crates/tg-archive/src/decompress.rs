//! Bounded one-shot decompression for wrapper formats (joblib writes zlib, gzip, bz2, xz,
//! lzma and lz4; zstd is sniffed too).
//!
//! Every decoder writes through a sink that refuses byte `max_out + 1`, so a bomb costs at most
//! `max_out + 1` bytes of output memory (plus the decoder's own window) before
//! [`DecompressError::TooLarge`]. All decoders are pure Rust. They may be more lenient than
//! Python's modules on malformed input (e.g. a deflate back-reference before the start of the
//! stream); for a scanner that errs on the side of seeing more, which is safe.

use std::fmt;
use std::io::{self, Read, Write};

/// A compression format, as recognised by [`sniff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// zlib (RFC 1950), what joblib's `.z` files hold.
    Zlib,
    /// gzip (RFC 1952), possibly several members, as Python's `gzip` reads them.
    Gzip,
    /// bzip2, possibly several streams.
    Bzip2,
    /// xz container.
    Xz,
    /// Legacy `.lzma` ("lzma-alone").
    Lzma,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard frames.
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Zlib => "zlib",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

/// Why decompression failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecompressError {
    /// The output would exceed `max_out` bytes.
    #[error("{kind} data decompresses to more than {max_out} bytes")]
    TooLarge {
        /// The format.
        kind: Compression,
        /// The cap.
        max_out: u64,
    },
    /// The input is not valid for the format, or truncated.
    #[error("invalid {kind} data: {message}")]
    Corrupt {
        /// The format.
        kind: Compression,
        /// The decoder's message.
        message: String,
    },
}

/// Recognises a compressed stream by its magic number.
pub fn sniff(bytes: &[u8]) -> Option<Compression> {
    match bytes {
        [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..] => Some(Compression::Zlib),
        [0x1f, 0x8b, ..] => Some(Compression::Gzip),
        [b'B', b'Z', b'h', ..] => Some(Compression::Bzip2),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Some(Compression::Xz),
        [0x5d, 0x00, 0x00, ..] => Some(Compression::Lzma),
        [0x04, 0x22, 0x4d, 0x18, ..] => Some(Compression::Lz4),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Compression::Zstd),
        _ => None,
    }
}

/// A `Write` that holds at most `max` bytes and fails on the next one.
struct CappedSink {
    out: Vec<u8>,
    max: u64,
    overflowed: bool,
}

impl Write for CappedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.max - self.out.len() as u64;
        if buf.len() as u64 > room {
            self.overflowed = true;
            return Err(io::Error::other("output cap reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decompresses `input` in one go, failing with [`DecompressError::TooLarge`] as soon as the
/// output would pass `max_out` bytes.
pub fn decompress(
    kind: Compression,
    input: &[u8],
    max_out: u64,
) -> Result<Vec<u8>, DecompressError> {
    let mut sink = CappedSink {
        out: Vec::new(),
        max: max_out,
        overflowed: false,
    };
    let result: Result<(), String> = match kind {
        Compression::Zlib => copy(flate2::read::ZlibDecoder::new(input), &mut sink),
        Compression::Gzip => copy(flate2::read::MultiGzDecoder::new(input), &mut sink),
        Compression::Bzip2 => copy(bzip2::read::MultiBzDecoder::new(input), &mut sink),
        Compression::Lz4 => copy(lz4_flex::frame::FrameDecoder::new(input), &mut sink),
        Compression::Xz => lzma_rs::xz_decompress(&mut io::BufReader::new(input), &mut sink)
            .map_err(|e| format!("{e:?}")),
        Compression::Lzma => {
            let options = lzma_rs::decompress::Options {
                // The dictionary never needs to be larger than the output it may produce.
                memlimit: Some(usize::try_from(max_out.saturating_add(1)).unwrap_or(usize::MAX)),
                ..Default::default()
            };
            match lzma_rs::lzma_decompress_with_options(
                &mut io::BufReader::new(input),
                &mut sink,
                &options,
            ) {
                // The dictionary only grows with the output, so passing the limit means the
                // output passed `max_out`.
                Err(lzma_rs::error::Error::LzmaError(m)) if m.contains("memory limit") => {
                    sink.overflowed = true;
                    Err(m)
                }
                other => other.map_err(|e| format!("{e:?}")),
            }
        }
        Compression::Zstd => zstd_frames(input, &mut sink),
    };
    if sink.overflowed {
        return Err(DecompressError::TooLarge { kind, max_out });
    }
    result.map_err(|message| DecompressError::Corrupt { kind, message })?;
    Ok(sink.out)
}

/// Streams `reader` straight into the sink's vector (no bounce buffer to zero and copy from:
/// on a freshly started scanner each zeroed 64 KiB costs 16 page faults), reading at most one
/// byte past the cap to know that it was passed.
fn copy<R: Read>(reader: R, sink: &mut CappedSink) -> Result<(), String> {
    let room = sink.max.saturating_sub(sink.out.len() as u64);
    let read = reader
        .take(room.saturating_add(1))
        .read_to_end(&mut sink.out);
    if sink.out.len() as u64 > sink.max {
        sink.overflowed = true;
        return Err("output cap reached".to_owned());
    }
    read.map(drop).map_err(|e| e.to_string())
}

/// Decodes consecutive zstd frames until the input is used up.
fn zstd_frames(input: &[u8], sink: &mut CappedSink) -> Result<(), String> {
    let mut rest = input;
    if rest.is_empty() {
        return Err("empty input".to_owned());
    }
    while !rest.is_empty() {
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut rest).map_err(|e| e.to_string())?;
        copy(decoder, sink)?;
    }
    Ok(())
}
