//! The binary's two channels: stdout carries data, stderr carries diagnostics.
//!
//! A closed stdout (`trainguard scan . | head`) is not an error: the verbs stop quietly.

use std::io::{self, Write};

/// Write one line of data to stdout.
pub(crate) fn data(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

/// Write an `error:` diagnostic to stderr.
pub(crate) fn error(msg: &str) {
    let _ = writeln!(io::stderr().lock(), "error: {msg}");
}

/// Write a `hint:` line to stderr.
pub(crate) fn hint(msg: &str) {
    let _ = writeln!(io::stderr().lock(), "hint: {msg}");
}

/// Whether an error chain ends in a broken pipe.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
