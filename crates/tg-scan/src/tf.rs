//! TensorFlow SavedModel graphs: ops that run Python or touch files, read with the bounded
//! protobuf walker of [`crate::proto`].

use tg_report::{Finding, Location, Verdict};

use crate::proto::{Bytes, ReadError, Walker, Wire, string};

/// Rule ids.
pub mod rules {
    /// A Keras `Lambda` layer: Python code (source or marshalled bytecode) run on load.
    pub const KERAS_LAMBDA: &str = crate::keras::rules::LAMBDA;
    /// A TensorFlow op that runs Python or touches files.
    pub const TF_OP: &str = "TG-TF-001";
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

/// Parse `bytes` as a SavedModel protobuf; `None` if it is not one (any field that does not
/// parse, or no graph node at all).
pub(crate) fn scan_saved_model(bytes: &[u8]) -> Option<Vec<Finding>> {
    let mut b = Bytes::new(&bytes);
    let nodes = saved_model_nodes(&mut b, bytes.len() as u64).ok()?;
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

/// Longest node or op name read.
const MAX_NAME: u64 = 64 << 10;

/// `SavedModel.meta_graphs` (2) → `MetaGraphDef.graph_def` (2) → `GraphDef.node` (1), and
/// `GraphDef.library` (2) → `FunctionDefLibrary.function` (1) → `FunctionDef.node_def` (3).
fn saved_model_nodes(b: &mut Bytes<'_>, len: u64) -> Result<Vec<(String, String)>, ReadError> {
    let mut nodes = Vec::new();
    for_each_len(b, 0, len, 2, &mut |b, meta, meta_len| {
        for_each_len(b, meta, meta_len, 2, &mut |b, graph, graph_len| {
            let mut w = Walker::of(graph, graph_len)?;
            while let Some(f) = w.next(b)? {
                match (f.number, f.wire) {
                    (1, Wire::Len { offset, len }) => nodes.push(node_def(b, offset, len)?),
                    (2, Wire::Len { offset, len }) => {
                        for_each_len(b, offset, len, 1, &mut |b, func, func_len| {
                            for_each_len(b, func, func_len, 3, &mut |b, nd, nd_len| {
                                nodes.push(node_def(b, nd, nd_len)?);
                                Ok(())
                            })
                        })?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })
    })?;
    Ok(nodes)
}

/// Calls `f(offset, len)` for every length-delimited field numbered `number` of the message at
/// `[offset, offset + len)`; every other field must still parse.
fn for_each_len(
    b: &mut Bytes<'_>,
    offset: u64,
    len: u64,
    number: u64,
    f: &mut dyn FnMut(&mut Bytes<'_>, u64, u64) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let mut w = Walker::of(offset, len)?;
    while let Some(field) = w.next(b)? {
        if let (n, Wire::Len { offset, len }) = (field.number, field.wire)
            && n == number
        {
            f(b, offset, len)?;
        }
    }
    Ok(())
}

/// `NodeDef.name` (1) and `NodeDef.op` (2).
fn node_def(b: &mut Bytes<'_>, offset: u64, len: u64) -> Result<(String, String), ReadError> {
    let mut name = String::new();
    let mut op = String::new();
    let mut w = Walker::of(offset, len)?;
    while let Some(f) = w.next(b)? {
        match (f.number, f.wire) {
            (1, Wire::Len { offset, len }) => name = string(b, offset, len, MAX_NAME)?,
            (2, Wire::Len { offset, len }) => op = string(b, offset, len, MAX_NAME)?,
            _ => {}
        }
    }
    if op.is_empty() {
        return Err(ReadError::Malformed {
            offset,
            what: "graph node without an op",
        });
    }
    Ok((name, op))
}
