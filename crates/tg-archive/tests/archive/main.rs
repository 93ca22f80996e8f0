//! Integration tests for tg-archive: one binary, one module per subject.

/// A tiny zip/tar writer that can also write hostile archives.
mod support;

/// Every zip in the shared corpus, and the picklescan bypass samples.
mod corpus;
/// Bounded decompression and sniffing.
mod decompress;
/// Differential check against miniz 3.0.2 itself (ignored: needs the C harness built).
mod miniz_diff;
/// Deterministic mutations of valid archives through the fuzz body.
mod mutation;
/// Tar archives in the legacy torch layout.
mod tar;
/// Hostile and well-formed zips built in Rust.
mod zip_hostile;
/// miniz's name lookup, reproduced.
mod zip_locate;
