//! TensorFlow SavedModel graphs, and the entry point for Keras HDF5 model configs (judged in
//! [`crate::keras`]).

use tg_report::{Finding, Location, Verdict};

/// Rule ids.
pub mod rules {
    /// A Keras `Lambda` layer: Python code (source or marshalled bytecode) run on load.
    pub const KERAS_LAMBDA: &str = crate::keras::rules::LAMBDA;
    /// A TensorFlow op that runs Python or touches files.
    pub const TF_OP: &str = "TG-TF-001";
}

/// HDF5's signature.
pub(crate) fn is_hdf5(head: &[u8]) -> bool {
    head.starts_with(b"\x89HDF\r\n\x1a\n")
}

/// Every Keras model config in an HDF5 file's bytes, judged (see [`crate::keras`]).
pub(crate) fn scan_keras_h5(bytes: &[u8]) -> (Vec<Finding>, Vec<String>) {
    crate::keras::scan_h5(bytes)
}

/// Ops that run Python (malicious) or touch the file system (suspicious).
fn op_verdict(op: &str) -> Option<(Verdict, &'static str)> {
    match op {
        "PyFunc" | "PyFuncStateless" | "EagerPyFunc" => {
            Some((Verdict::Malicious, "runs a Python function"))
        }
        "WriteFile" => Some((Verdict::Malicious, "writes a file")),
        "ReadFile" | "MatchingFiles" | "DeleteFile" | "ImmutableConst" => {
            Some((Verdict::Suspicious, "reads or lists files"))
        }
        _ => None,
    }
}

/// Parse `bytes` as a SavedModel protobuf; `None` if it is not one.
pub(crate) fn scan_saved_model(bytes: &[u8]) -> Option<Vec<Finding>> {
    let top = fields(bytes)?;
    let mut nodes = Vec::new();
    for (num, f) in &top {
        if let (2, Field::Bytes(meta)) = (num, f) {
            for (n, g) in fields(meta)? {
                if let (2, Field::Bytes(graph)) = (n, g) {
                    graph_nodes(graph, &mut nodes)?;
                }
            }
        }
    }
    if nodes.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (name, op) in nodes {
        if let Some((verdict, why)) = op_verdict(&op) {
            out.push(
                Finding::new(
                    rules::TF_OP,
                    verdict,
                    format!("graph node '{name}' uses op {op}, which {why}"),
                    Location::default(),
                )
                .with_evidence(format!("{name} = {op}(...)")),
            );
        }
    }
    Some(out)
}

fn graph_nodes(graph: &[u8], nodes: &mut Vec<(String, String)>) -> Option<()> {
    for (n, f) in fields(graph)? {
        match (n, f) {
            (1, Field::Bytes(node)) => nodes.push(node_def(node)?),
            (2, Field::Bytes(library)) => {
                for (fnum, func) in fields(library)? {
                    if let (1, Field::Bytes(func)) = (fnum, func) {
                        for (k, nd) in fields(func)? {
                            if let (3, Field::Bytes(nd)) = (k, nd) {
                                nodes.push(node_def(nd)?);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(())
}

fn node_def(node: &[u8]) -> Option<(String, String)> {
    let mut name = String::new();
    let mut op = String::new();
    for (n, f) in fields(node)? {
        match (n, f) {
            (1, Field::Bytes(b)) => name = String::from_utf8_lossy(b).into_owned(),
            (2, Field::Bytes(b)) => op = String::from_utf8_lossy(b).into_owned(),
            _ => {}
        }
    }
    (!op.is_empty()).then_some((name, op))
}

enum Field<'a> {
    Varint,
    Fixed,
    Bytes(&'a [u8]),
}

/// Every field of one protobuf message; `None` if the bytes are not a well-formed message.
fn fields(mut b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (key, n) = varint(b)?;
        b = &b[n..];
        let num = key >> 3;
        if num == 0 {
            return None;
        }
        match key & 7 {
            0 => {
                let (_, n) = varint(b)?;
                b = &b[n..];
                out.push((num, Field::Varint));
            }
            1 | 5 => {
                let w = if key & 7 == 1 { 8 } else { 4 };
                b = b.get(w..)?;
                out.push((num, Field::Fixed));
            }
            2 => {
                let (len, n) = varint(b)?;
                let len = usize::try_from(len).ok()?;
                let body = b.get(n..n.checked_add(len)?)?;
                out.push((num, Field::Bytes(body)));
                b = &b[n + len..];
            }
            _ => return None,
        }
        if out.len() > 10_000_000 {
            return None;
        }
    }
    Some(out)
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &c) in b.iter().enumerate().take(10) {
        v |= u64::from(c & 0x7f) << (7 * i);
        if c & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}
