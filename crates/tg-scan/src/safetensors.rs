//! safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
//!
//! Loading safetensors never executes anything, so a well-formed file is clean whatever its
//! `__metadata__` strings say (a code-looking string is a note, not a finding). What can go
//! wrong is structure: this module checks what the reference reader's `read_metadata` and
//! `validate` check (`safetensors/src/tensor.rs`): the header size cap, a UTF-8 JSON object,
//! known dtypes, `shape × itemsize == data length`, and offsets that tile the data area exactly.
//! Overlapping or out-of-range offsets, duplicate names and size overflows are hostile: they
//! make readers disagree about which bytes a tensor is (or target readers that trust them).
//! A file whose first bytes also run as a pickle is a polyglot and is malicious.

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use tg_archive::ReadAt;
use tg_pickle::{End, NoHook, Options};
use tg_report::{Finding, Location, Verdict};

use crate::formats::Outcome;

/// Rule ids.
pub mod rules {
    /// A header or layout every conforming reader refuses (bad JSON, unknown dtype, size
    /// mismatch, gaps or trailing bytes, non-string metadata).
    pub const MALFORMED: &str = "TG-ST-001";
    /// A layout readers disagree on: overlapping or out-of-range offsets, duplicate names,
    /// sizes that overflow.
    pub const AMBIGUOUS: &str = "TG-ST-002";
    /// The file's first bytes also run as a pickle stream (a safetensors/pickle polyglot).
    pub const POLYGLOT: &str = "TG-ST-003";
}

/// `MAX_HEADER_SIZE` of the safetensors crate.
pub(crate) const MAX_HEADER_SIZE: u64 = 100_000_000;

/// Whether `head` starts like a safetensors file: a little-endian length below 2^40 (no real
/// header is larger; larger ones are reported, not silently skipped) followed by `{`.
pub(crate) fn is_safetensors(head: &[u8]) -> bool {
    match (head.get(..8), head.get(8)) {
        (Some(len), Some(b'{')) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(len);
            let n = u64::from_le_bytes(a);
            (2..1 << 40).contains(&n)
        }
        _ => false,
    }
}

/// A JSON object whose entries keep their order and duplicates.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Bits per element of a safetensors dtype (the crate's `Dtype::bitsize`).
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

struct Report {
    findings: Vec<Finding>,
    notes: Vec<String>,
}

impl Report {
    fn malformed(&mut self, offset: u64, msg: String) {
        self.findings.push(Finding::new(
            rules::MALFORMED,
            Verdict::Suspicious,
            format!("{msg}: safetensors readers refuse this file"),
            Location::at(offset),
        ));
    }

    fn ambiguous(&mut self, offset: u64, msg: String) {
        self.findings.push(Finding::new(
            rules::AMBIGUOUS,
            Verdict::Malicious,
            format!("hostile safetensors layout: {msg}"),
            Location::at(offset),
        ));
    }
}

/// Scan a safetensors file; adds the bytes it read to `bytes_read`. Reads only the header (and
/// at most the first 4 KiB of the file for the polyglot check).
pub(crate) fn scan(src: &dyn ReadAt, bytes_read: &mut u64) -> Outcome {
    let mut out = Outcome {
        format: "safetensors",
        ..Outcome::default()
    };
    let mut r = Report {
        findings: Vec::new(),
        notes: Vec::new(),
    };
    check(src, bytes_read, &mut r);
    out.findings = r.findings;
    out.notes = r.notes;
    out
}

fn read(src: &dyn ReadAt, offset: u64, len: u64, bytes_read: &mut u64) -> Option<Vec<u8>> {
    let len = usize::try_from(len).ok()?;
    let mut buf = vec![0u8; len];
    src.read_exact_at(&mut buf, offset).ok()?;
    *bytes_read += len as u64;
    Some(buf)
}

fn check(src: &dyn ReadAt, bytes_read: &mut u64, r: &mut Report) {
    let size = src.size();
    let Some(len_bytes) = read(src, 0, 8.min(size), bytes_read).filter(|b| b.len() == 8) else {
        r.malformed(0, "file is shorter than the 8-byte header length".into());
        return;
    };
    let mut a = [0u8; 8];
    a.copy_from_slice(&len_bytes);
    let n = u64::from_le_bytes(a);
    // The pickle view first: a file that is not a valid safetensors file may still be a
    // pickle built to pass as one.
    let upto = size.min(8 + n.min(MAX_HEADER_SIZE) + POLYGLOT_WINDOW);
    let Some(prefix) = read(src, 0, upto, bytes_read) else {
        r.malformed(0, "file cannot be read".into());
        return;
    };
    polyglot(&prefix, upto == size, r);
    if n > MAX_HEADER_SIZE {
        r.malformed(
            0,
            format!("header length {n} is above the {MAX_HEADER_SIZE}-byte limit"),
        );
        return;
    }
    let Some(data_start) = n.checked_add(8).filter(|&e| e <= size) else {
        r.malformed(
            0,
            format!("header length {n} runs past the end of the {size}-byte file"),
        );
        return;
    };
    let Some(header) = prefix.get(8..8 + n as usize) else {
        r.malformed(8, "header cannot be read".into());
        return;
    };
    let Ok(text) = std::str::from_utf8(header) else {
        r.malformed(8, "header is not UTF-8".into());
        return;
    };
    if !text.starts_with('{') {
        r.malformed(8, "header does not start with '{'".into());
        return;
    }
    let entries = match serde_json::from_str::<Entries>(text) {
        Ok(e) => e.0,
        Err(e) => {
            r.malformed(8, format!("header is not a JSON object ({e})"));
            return;
        }
    };
    let data_len = size - data_start;
    let mut seen = std::collections::HashSet::new();
    // (start, end, name) of every tensor
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for (name, value) in &entries {
        if !seen.insert(name.as_str()) {
            r.ambiguous(
                8,
                format!("header names '{name}' twice: readers keep different copies"),
            );
            continue;
        }
        if name == "__metadata__" {
            metadata(value, r);
            continue;
        }
        if let Some(span) = tensor(name, value, data_len, r) {
            spans.push(span);
        }
    }
    spans.sort();
    let mut expected = 0u64;
    for (start, end, name) in &spans {
        if *start < expected {
            r.ambiguous(
                data_start + start,
                format!(
                    "tensor '{name}' overlaps the tensor before it (offset {start} < {expected})"
                ),
            );
        } else if *start > expected {
            r.malformed(
                data_start + expected,
                format!(
                    "{} bytes before tensor '{name}' belong to no tensor",
                    start - expected
                ),
            );
        }
        expected = expected.max(*end);
    }
    if expected < data_len {
        r.malformed(
            data_start + expected,
            format!(
                "{} bytes after the last tensor belong to no tensor",
                data_len - expected
            ),
        );
    }
}

/// One tensor entry: `{"dtype", "shape", "data_offsets"}`; its span when the entry is usable.
fn tensor(
    name: &str,
    value: &serde_json::Value,
    data_len: u64,
    r: &mut Report,
) -> Option<(u64, u64, String)> {
    let Ok(fields) = serde_json::from_value::<Entries>(value.clone()) else {
        r.malformed(8, format!("tensor '{name}' is not a JSON object"));
        return None;
    };
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &fields.0 {
        if !seen.insert(k.as_str()) {
            r.malformed(8, format!("tensor '{name}' repeats the field '{k}'"));
            return None;
        }
    }
    let get = |k: &str| fields.0.iter().find(|(f, _)| f == k).map(|(_, v)| v);
    let Some(dtype) = get("dtype").and_then(|d| d.as_str()) else {
        r.malformed(8, format!("tensor '{name}' has no string dtype"));
        return None;
    };
    let Some(shape) = get("shape").and_then(|s| s.as_array()) else {
        r.malformed(8, format!("tensor '{name}' has no shape array"));
        return None;
    };
    let Some(offsets) = get("data_offsets").and_then(|o| o.as_array()) else {
        r.malformed(8, format!("tensor '{name}' has no data_offsets array"));
        return None;
    };
    let (Some(start), Some(end), 2) = (
        offsets.first().and_then(|v| v.as_u64()),
        offsets.get(1).and_then(|v| v.as_u64()),
        offsets.len(),
    ) else {
        r.malformed(
            8,
            format!("tensor '{name}' data_offsets is not two non-negative integers"),
        );
        return None;
    };
    if end < start {
        r.ambiguous(
            8,
            format!("tensor '{name}' ends before it starts ({start}..{end})"),
        );
        return None;
    }
    if end > data_len {
        r.ambiguous(
            8,
            format!("tensor '{name}' ends at {end}, past the {data_len}-byte data area"),
        );
        return None;
    }
    let span = Some((start, end, name.to_owned()));
    let Some(bits) = dtype_bits(dtype) else {
        r.malformed(8, format!("tensor '{name}' has unknown dtype '{dtype}'"));
        return span;
    };
    let mut elements = 1u64;
    for d in shape {
        let Some(d) = d.as_u64() else {
            r.malformed(
                8,
                format!("tensor '{name}' shape is not non-negative integers"),
            );
            return span;
        };
        let Some(e) = elements.checked_mul(d) else {
            r.ambiguous(8, format!("tensor '{name}' shape overflows"));
            return span;
        };
        elements = e;
    }
    let Some(total_bits) = elements.checked_mul(bits) else {
        r.ambiguous(8, format!("tensor '{name}' size overflows"));
        return span;
    };
    if total_bits % 8 != 0 || total_bits / 8 != end - start {
        r.malformed(
            8,
            format!(
                "tensor '{name}' is {dtype} {shape:?} ({total_bits} bits) but spans {} bytes",
                end - start
            ),
        );
    }
    span
}

/// `__metadata__` must map strings to strings; code-looking values are only notes, since no
/// reader executes them.
fn metadata(value: &serde_json::Value, r: &mut Report) {
    let Some(map) = value.as_object() else {
        r.malformed(8, "__metadata__ is not a JSON object".into());
        return;
    };
    for (k, v) in map {
        let Some(s) = v.as_str() else {
            r.malformed(8, format!("__metadata__ value of '{k}' is not a string"));
            continue;
        };
        let lower = s.to_ascii_lowercase();
        if [
            "import ",
            "exec(",
            "eval(",
            "os.system",
            "subprocess",
            "<script",
            "__import__",
        ]
        .iter()
        .any(|w| lower.contains(w))
        {
            r.notes.push(format!(
                "__metadata__ '{k}' holds code-like text; safetensors never executes metadata"
            ));
        }
    }
}

/// How many bytes after the header the pickle view reads.
const POLYGLOT_WINDOW: u64 = 64 * 1024;

/// Report the file's pickle view (see [`pickle_view`]). `buf` is the header and up to 64 KiB
/// after it; `complete` says whether it is the whole file.
fn polyglot(buf: &[u8], complete: bool, r: &mut Report) {
    match pickle_view(buf, complete) {
        Some(PickleView::RunsCode) => r.findings.push(Finding::new(
            rules::POLYGLOT,
            Verdict::Malicious,
            "the file's first bytes also run as a pickle that imports code: pickle-based loaders would execute it",
            Location::at(0),
        )),
        Some(PickleView::Undecided) => r.findings.push(Finding::new(
            rules::POLYGLOT,
            Verdict::Suspicious,
            "the file's first 64 KiB after the header still parse as a pickle stream",
            Location::at(0),
        )),
        None => {}
    }
}

/// What the pickle view of a binary format's first bytes shows.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PickleView {
    /// The bytes run as a pickle that imports or calls something.
    RunsCode,
    /// The bytes still parse as a pickle where they end (or a cap was hit).
    Undecided,
}

/// Whether `buf`, the start of a file detected by its own magic or header, also runs as a
/// pickle. A real file of these formats fails as a pickle within a few bytes without touching
/// code (its length fields hold zero bytes, and `{` or the magic are not importing opcodes); one
/// that reaches an import was built as a polyglot that `pickle.load`/`torch.load` would run.
/// `None` when the pickle view is harmless.
pub(crate) fn pickle_view(buf: &[u8], complete: bool) -> Option<PickleView> {
    let opts = Options {
        limits: tg_pickle::Limits::default(),
        complete,
        record_opcodes: false,
        elide_floats: true,
    };
    let a = tg_pickle::analyze(buf, 0, &opts, &mut NoHook);
    if a.touched_code() {
        Some(PickleView::RunsCode)
    } else if matches!(a.end, End::NeedMore | End::Limit { .. }) {
        Some(PickleView::Undecided)
    } else {
        None
    }
}

/// Fuzzing entry point: scan `data` as a safetensors file.
#[doc(hidden)]
pub fn fuzz_safetensors(data: &[u8]) {
    let mut n = 0;
    let out = scan(&data, &mut n);
    for f in &out.findings {
        let _ = f.message.len();
    }
}
