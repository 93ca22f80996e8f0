//! ONNX: a protobuf `ModelProto` (`onnx/onnx.proto`). There is no magic number: a file is ONNX
//! when its top-level message parses with an `ir_version` (field 1) and a `graph` (field 7).
//!
//! Loading ONNX runs no Python, but two things reach outside the model. External tensor data
//! (`TensorProto.external_data`, key `location`) names a file relative to the model's folder;
//! a location that is absolute or climbs out with `..` makes the loader read (and `save` write)
//! arbitrary files (CVE-2022-25882, its nested bypass CVE-2024-27318, CVE-2025-51480), so it is
//! malicious. And operators from a domain outside the standard ones need a custom-op library
//! (native code) registered by the runtime, so they are suspicious, with the domain named.
//! Every graph is walked, including subgraphs of `If`/`Loop`/`Scan` attributes, training
//! graphs and model-local functions, with a depth and a field budget.

use std::collections::{BTreeMap, BTreeSet};

use tg_archive::ReadAt;
use tg_report::{Finding, Location, Verdict};

use crate::formats::Outcome;
use crate::proto::{self, Bytes, ReadError, Walker, Wire};

/// Rule ids.
pub mod rules {
    /// An external-data location that leaves the model's folder (path traversal).
    pub const EXTERNAL_DATA_TRAVERSAL: &str = "TG-ONNX-001";
    /// An operator domain outside the standard ONNX and ONNX Runtime domains (custom ops).
    pub const CUSTOM_DOMAIN: &str = "TG-ONNX-002";
    /// A model that is ONNX at the top level but cannot be walked to the end.
    pub const MALFORMED: &str = "TG-ONNX-003";
}

/// Domains whose operators ship with ONNX and ONNX Runtime.
const STANDARD_DOMAINS: &[&str] = &[
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "com.microsoft",
    "ai.onnx.preview.training",
];

/// Longest name, domain or location read.
const MAX_STRING: u64 = 64 * 1024;
/// How deep graphs may nest (subgraph attributes).
const MAX_DEPTH: u32 = 64;
/// Most fields visited in one model.
const MAX_FIELDS: u64 = 50_000_000;

/// Whether `head` could start a `ModelProto` as every serializer writes it: field 1
/// (`ir_version`, a varint) first. `0x08` is not a pickle opcode.
pub(crate) fn may_be_onnx(head: &[u8]) -> bool {
    head.first() == Some(&0x08)
}

struct Walk<'a> {
    b: Bytes<'a>,
    fields: u64,
    /// domain → op types used with it
    domains: BTreeMap<String, BTreeSet<String>>,
    /// domains named in opset imports
    imported: BTreeSet<String>,
    /// domains of model-local functions
    local: BTreeSet<String>,
    findings: Vec<Finding>,
    external: u64,
}

type R<T> = Result<T, ReadError>;

impl Walk<'_> {
    fn each(
        &mut self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut Self, u64, Wire) -> R<()>,
    ) -> R<()> {
        let mut w = Walker::of(offset, len)?;
        while let Some(field) = w.next(&mut self.b)? {
            self.fields += 1;
            if self.fields > MAX_FIELDS {
                return Err(ReadError::Malformed {
                    offset,
                    what: "more protobuf fields than the scan limit",
                });
            }
            f(self, field.number, field.wire)?;
        }
        Ok(())
    }

    fn string(&mut self, wire: Wire) -> R<String> {
        match wire {
            Wire::Len { offset, len } => proto::string(&mut self.b, offset, len, MAX_STRING),
            _ => Err(ReadError::Malformed {
                offset: 0,
                what: "string field with a non-length wire type",
            }),
        }
    }

    fn graph(&mut self, offset: u64, len: u64, depth: u32) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(ReadError::Malformed {
                offset,
                what: "subgraphs nest deeper than the limit",
            });
        }
        self.each(offset, len, |s, n, w| match (n, w) {
            (1, Wire::Len { offset, len }) => s.node(offset, len, depth),
            (5, Wire::Len { offset, len }) => s.tensor(offset, len),
            (15, Wire::Len { offset, len }) => s.sparse(offset, len),
            _ => Ok(()),
        })
    }

    fn node(&mut self, offset: u64, len: u64, depth: u32) -> R<()> {
        let mut op = String::new();
        let mut domain = String::new();
        self.each(offset, len, |s, n, w| {
            match (n, w) {
                (4, w @ Wire::Len { .. }) => op = s.string(w)?,
                (7, w @ Wire::Len { .. }) => domain = s.string(w)?,
                (5, Wire::Len { offset, len }) => s.attribute(offset, len, depth)?,
                _ => {}
            }
            Ok(())
        })?;
        self.domains.entry(domain).or_default().insert(op);
        Ok(())
    }

    fn attribute(&mut self, offset: u64, len: u64, depth: u32) -> R<()> {
        self.each(offset, len, |s, n, w| match (n, w) {
            (5 | 10, Wire::Len { offset, len }) => s.tensor(offset, len),
            (6 | 11, Wire::Len { offset, len }) => s.graph(offset, len, depth + 1),
            (22 | 23, Wire::Len { offset, len }) => s.sparse(offset, len),
            _ => Ok(()),
        })
    }

    fn sparse(&mut self, offset: u64, len: u64) -> R<()> {
        self.each(offset, len, |s, n, w| match (n, w) {
            (1 | 2, Wire::Len { offset, len }) => s.tensor(offset, len),
            _ => Ok(()),
        })
    }

    fn tensor(&mut self, offset: u64, len: u64) -> R<()> {
        let mut name = String::new();
        let mut locations = Vec::new();
        self.each(offset, len, |s, n, w| {
            match (n, w) {
                (8, w @ Wire::Len { .. }) => name = s.string(w)?,
                (13, Wire::Len { offset, len }) => {
                    let (mut key, mut value) = (String::new(), String::new());
                    s.each(offset, len, |s, n, w| {
                        match (n, w) {
                            (1, w @ Wire::Len { .. }) => key = s.string(w)?,
                            (2, w @ Wire::Len { .. }) => value = s.string(w)?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    if key == "location" {
                        locations.push((value, offset));
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
        for (loc, at) in locations {
            self.external += 1;
            if let Some(why) = escapes_folder(&loc) {
                self.findings.push(
                    Finding::new(
                        rules::EXTERNAL_DATA_TRAVERSAL,
                        Verdict::Malicious,
                        format!("tensor '{name}' reads its data from '{loc}', which {why}: loading reads (and saving writes) a file outside the model folder (CVE-2022-25882, CVE-2024-27318)"),
                        Location::at(at),
                    )
                    .with_evidence(loc.clone()),
                );
            }
        }
        Ok(())
    }

    fn opset(&mut self, offset: u64, len: u64) -> R<()> {
        let mut domain = String::new();
        self.each(offset, len, |s, n, w| {
            if let (1, w @ Wire::Len { .. }) = (n, w) {
                domain = s.string(w)?;
            }
            Ok(())
        })?;
        self.imported.insert(domain);
        Ok(())
    }

    fn function(&mut self, offset: u64, len: u64) -> R<()> {
        self.each(offset, len, |s, n, w| match (n, w) {
            (7, Wire::Len { offset, len }) => s.node(offset, len, 0),
            (9, Wire::Len { offset, len }) => s.opset(offset, len),
            (10, w @ Wire::Len { .. }) => {
                let d = s.string(w)?;
                s.local.insert(d);
                Ok(())
            }
            _ => Ok(()),
        })
    }
}

/// Why an external-data location leaves the model's folder, if it does. ONNX joins it to the
/// model's directory; an absolute path replaces that directory, and `..` climbs out of it.
fn escapes_folder(loc: &str) -> Option<&'static str> {
    if loc.is_empty() {
        return Some("is empty (the model folder itself)");
    }
    if loc.contains('\0') {
        return Some("contains a NUL byte");
    }
    if loc.starts_with('/') || loc.starts_with('\\') {
        return Some("is an absolute path");
    }
    let b = loc.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Some("is a Windows drive path");
    }
    if loc.split(['/', '\\']).any(|c| c == "..") {
        return Some("climbs out with '..'");
    }
    if loc.starts_with('~') {
        return Some("starts at a home folder");
    }
    None
}

/// Scan `src` as ONNX; `None` when its top level is not a `ModelProto` with a graph.
pub(crate) fn scan(src: &dyn ReadAt, bytes_read: &mut u64) -> Option<Outcome> {
    let mut w = Walk {
        b: Bytes::new(src),
        fields: 0,
        domains: BTreeMap::new(),
        imported: BTreeSet::new(),
        local: BTreeSet::new(),
        findings: Vec::new(),
        external: 0,
    };
    // The top level, shallowly: is this a ModelProto?
    let size = w.b.size();
    let mut top = Vec::new();
    let mut walker = Walker::new(0, size);
    let mut has_ir = false;
    let mut has_graph = false;
    loop {
        match walker.next(&mut w.b) {
            Ok(Some(f)) => {
                match (f.number, f.wire) {
                    (1, Wire::Varint(_)) => has_ir = true,
                    (7, Wire::Len { .. }) => has_graph = true,
                    (1 | 7, _) => return None,
                    _ => {}
                }
                top.push(f);
                if top.len() > 1_000_000 {
                    return None;
                }
            }
            Ok(None) => break,
            Err(_) => {
                *bytes_read += w.b.read;
                return None;
            }
        }
    }
    if !(has_ir && has_graph) {
        *bytes_read += w.b.read;
        return None;
    }
    let mut out = Outcome {
        format: "onnx",
        ..Outcome::default()
    };
    let walked = top.iter().try_for_each(|f| match (f.number, f.wire) {
        (7, Wire::Len { offset, len }) => w.graph(offset, len, 0),
        (8, Wire::Len { offset, len }) => w.opset(offset, len),
        (20, Wire::Len { offset, len }) => w.each(offset, len, |s, n, wire| match (n, wire) {
            (1 | 3, Wire::Len { offset, len }) => s.graph(offset, len, 1),
            _ => Ok(()),
        }),
        (25, Wire::Len { offset, len }) => w.function(offset, len),
        _ => Ok(()),
    });
    if let Err(e) = walked {
        w.findings.push(Finding::new(
            rules::MALFORMED,
            Verdict::Inconclusive,
            format!("ONNX model cannot be read to the end: {e}"),
            Location::default(),
        ));
    }
    let custom: BTreeSet<&String> = w
        .domains
        .keys()
        .chain(w.imported.iter())
        .filter(|d| !STANDARD_DOMAINS.contains(&d.as_str()) && !w.local.contains(*d))
        .collect();
    for d in custom {
        let ops: Vec<&str> = w
            .domains
            .get(d)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        w.findings.push(
            Finding::new(
                rules::CUSTOM_DOMAIN,
                Verdict::Suspicious,
                format!("operator domain '{d}' is not a standard ONNX domain: running it needs a custom-op library (native code)"),
                Location::default(),
            )
            .with_evidence(if ops.is_empty() {
                format!("opset_import {d}")
            } else {
                format!("{d}: {}", ops.join(", "))
            }),
        );
    }
    if w.external > 0 {
        out.notes.push(format!(
            "{} tensors keep their data in external files",
            w.external
        ));
    }
    out.findings = w.findings;
    *bytes_read += w.b.read;
    Some(out)
}

/// Fuzzing entry point: scan `data` as an ONNX model.
#[doc(hidden)]
pub fn fuzz_onnx(data: &[u8]) {
    let mut n = 0;
    if let Some(out) = scan(&data, &mut n) {
        let _ = out.findings.len();
    }
}

#[cfg(test)]
mod tests {
    use super::escapes_folder;

    #[test]
    fn locations_that_leave_the_folder() {
        for bad in [
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a\\..\\..\\x",
            "C:\\x",
            "\\\\server\\share",
            "",
        ] {
            assert!(escapes_folder(bad).is_some(), "{bad}");
        }
        for good in ["weights.bin", "data/w.bin", "a..b", "x/..y"] {
            assert!(escapes_folder(good).is_none(), "{good}");
        }
    }
}
