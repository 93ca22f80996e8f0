//! Keras HDF5 model configs and TensorFlow SavedModel graphs: the two non-pickle formats of
//! the public corpus. (A full reader for every Keras/TF layout belongs to the "every model
//! format" work; this one judges what the corpus and common files carry.)

use tg_report::{Finding, Location, Verdict};

/// Rule ids.
pub mod rules {
    /// A Keras `Lambda` layer: Python code (source or marshalled bytecode) run on load.
    pub const KERAS_LAMBDA: &str = "TG-KERAS-001";
    /// A TensorFlow op that runs Python or touches files.
    pub const TF_OP: &str = "TG-TF-001";
}

/// HDF5's signature.
pub(crate) fn is_hdf5(head: &[u8]) -> bool {
    head.starts_with(b"\x89HDF\r\n\x1a\n")
}

/// Every Keras model config (`{"class_name": …}` JSON, the `model_config` attribute) in an HDF5
/// file's bytes, judged for `Lambda` layers.
pub(crate) fn scan_keras_h5(bytes: &[u8]) -> (Vec<Finding>, Vec<String>) {
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let needle = b"{\"class_name\"";
    let mut configs = 0;
    let mut at = 0;
    while let Some(p) = find(&bytes[at..], needle) {
        let start = at + p;
        let mut it =
            serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<serde_json::Value>();
        match it.next() {
            Some(Ok(v)) => {
                configs += 1;
                walk(&v, start as u64, &mut findings);
                at = start + it.byte_offset().max(1);
            }
            _ => at = start + 1,
        }
    }
    if configs == 0 {
        notes.push("HDF5 file without a Keras model config".into());
    }
    (findings, notes)
}

fn walk(v: &serde_json::Value, offset: u64, out: &mut Vec<Finding>) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("class_name").and_then(|c| c.as_str()) == Some("Lambda") {
                let code = map
                    .get("config")
                    .and_then(|c| c.get("function"))
                    .map(|f| f.to_string().chars().take(200).collect::<String>())
                    .unwrap_or_default();
                out.push(
                    Finding::new(
                        rules::KERAS_LAMBDA,
                        Verdict::Malicious,
                        "Keras Lambda layer: Python code runs when the model loads",
                        Location::at(offset),
                    )
                    .with_evidence(code),
                );
            }
            for child in map.values() {
                walk(child, offset, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|c| walk(c, offset, out)),
        _ => {}
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
