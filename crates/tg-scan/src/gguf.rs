//! GGUF (llama.cpp): a header, typed metadata key/values, tensor infos, then aligned tensor
//! data (`ggml/docs/gguf.md`, versions 2 and 3).
//!
//! Two things on load can hurt. The parser itself: counts and lengths in the header drive
//! allocations and loops, and several GGUF readers overflowed on them (Cisco Talos,
//! CVE-2024-21825/21836/23496/23605), so every count and length is checked against the bytes
//! left in the file before anything is read or allocated, and one that could not fit is hostile.
//! And the chat template: `tokenizer.chat_template` is a Jinja template that runtimes render;
//! one rendered outside a sandbox reaches Python through attribute walks
//! (`{{ cycler.__init__.__globals__.os.popen(...) }}`, CVE-2024-34359 "Llama Drama"), so a
//! template that names private attributes or the usual escape gadgets is malicious.

use tg_archive::ReadAt;
use tg_report::{Finding, Location, Verdict};

use crate::formats::Outcome;
use crate::proto::{Bytes, ReadError};

/// Rule ids.
pub mod rules {
    /// A header, metadata or tensor-info structure llama.cpp refuses (truncated, unknown type,
    /// misaligned or out-of-range tensor data).
    pub const MALFORMED: &str = "TG-GGUF-001";
    /// A count, length, dimension or offset built to overflow or confuse parsers.
    pub const HOSTILE: &str = "TG-GGUF-002";
    /// A Jinja chat template that reaches Python objects (server-side template injection).
    pub const TEMPLATE_INJECTION: &str = "TG-GGUF-003";
    /// A chat template that loads other templates or is too large to analyse.
    pub const TEMPLATE_UNUSUAL: &str = "TG-GGUF-004";
    /// The file's first bytes also run as a pickle stream (a GGUF/pickle polyglot).
    pub const POLYGLOT: &str = "TG-GGUF-005";
}

/// Longest metadata key read (llama.cpp keys are short ASCII paths).
const MAX_KEY: u64 = 64 * 1024;
/// Longest chat template analysed; a larger one is reported as unusual.
const MAX_TEMPLATE: u64 = 4 << 20;
/// `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// A declared count or length at least this large is built to overflow, not a real file cut
/// short (1 TiB of metadata).
const HOSTILE_SIZE: u64 = 1 << 40;
/// How deep arrays of arrays may nest.
const MAX_ARRAY_DEPTH: u32 = 4;

/// Whether `head` starts with the GGUF magic.
pub(crate) fn is_gguf(head: &[u8]) -> bool {
    head.starts_with(b"GGUF")
}

/// Block size and bytes per block of a ggml tensor type (`GGML_QUANT_SIZES`).
fn ggml_type(t: u32) -> Option<(u64, u64)> {
    Some(match t {
        0 => (1, 4),
        1 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 40),
        10 => (256, 84),
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        16 => (256, 66),
        17 => (256, 74),
        18 => (256, 98),
        19 => (256, 50),
        20 => (32, 18),
        21 => (256, 110),
        22 => (256, 82),
        23 => (256, 136),
        24 => (1, 1),
        25 => (1, 2),
        26 | 6_000_000 => (1, 4),
        27 | 28 => (1, 8),
        29 => (256, 56),
        30 => (1, 2),
        34 => (256, 54),
        35 => (256, 66),
        39 => (32, 17),
        40 => (64, 36),
        41 => (128, 18),
        _ => return None,
    })
}

/// Size of a fixed-size metadata value type; `None` for strings, arrays and unknown types.
fn fixed_size(t: u32) -> Option<u64> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

/// Why reading stopped.
enum Stop {
    Read(ReadError),
    /// A hostile value: the message and its offset.
    Hostile(u64, String),
    /// A value llama.cpp refuses.
    Malformed(u64, String),
}

impl From<ReadError> for Stop {
    fn from(e: ReadError) -> Self {
        Stop::Read(e)
    }
}

struct Reader<'a> {
    b: Bytes<'a>,
    at: u64,
    findings: Vec<Finding>,
    notes: Vec<String>,
    alignment: u64,
}

impl Reader<'_> {
    fn left(&self) -> u64 {
        self.b.size().saturating_sub(self.at)
    }

    fn u32(&mut self) -> Result<u32, Stop> {
        let v = self.b.u32_le(self.at)?;
        self.at += 4;
        Ok(v)
    }

    fn u64(&mut self) -> Result<u64, Stop> {
        let v = self.b.u64_le(self.at)?;
        self.at += 8;
        Ok(v)
    }

    /// A declared count or length `n` that does not fit in the rest of the file: hostile when
    /// no real file could hold it (at least 2^40, the size that parsers overflow on), else the
    /// file was cut short.
    fn too_long(&self, at: u64, what: &str, n: u64) -> Stop {
        let left = self.left();
        if n >= HOSTILE_SIZE {
            Stop::Hostile(
                at,
                format!("{what} {n} cannot fit in the {left} bytes left in the file"),
            )
        } else {
            Stop::Malformed(
                at,
                format!("{what} {n} runs past the end of the file ({left} bytes left): truncated"),
            )
        }
    }

    /// A count of items of at least `min` bytes each, checked against the bytes left.
    fn count(&mut self, what: &str, min: u64) -> Result<u64, Stop> {
        let at = self.at;
        let n = self.u64()?;
        if n.checked_mul(min).is_none_or(|need| need > self.left()) {
            return Err(self.too_long(at, what, n));
        }
        Ok(n)
    }

    /// A string's length, checked against the bytes left; returns its offset and length.
    fn string_span(&mut self, what: &str) -> Result<(u64, u64), Stop> {
        let at = self.at;
        let len = self.u64()?;
        if len > self.left() {
            return Err(self.too_long(at, &format!("{what} length"), len));
        }
        let start = self.at;
        self.at += len;
        Ok((start, len))
    }

    fn string(&mut self, what: &str, cap: u64) -> Result<Option<String>, Stop> {
        let (start, len) = self.string_span(what)?;
        if len > cap {
            return Ok(None);
        }
        Ok(Some(
            String::from_utf8_lossy(self.b.get(start, len)?).into_owned(),
        ))
    }

    /// Skip (or, for templates, read) one value of type `t`.
    fn value(&mut self, key: &str, t: u32, depth: u32) -> Result<(), Stop> {
        if let Some(n) = fixed_size(t) {
            let at = self.at;
            if key == "general.alignment" && t == 4 && depth == 0 {
                let a = self.u32()?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(Stop::Malformed(
                        at,
                        format!("general.alignment {a} is not a power of two"),
                    ));
                }
                self.alignment = u64::from(a);
                return Ok(());
            }
            self.b.get(at, n)?;
            self.at += n;
            return Ok(());
        }
        match t {
            T_STRING => {
                let template = depth == 0
                    && (key == "tokenizer.chat_template"
                        || key.starts_with("tokenizer.chat_template."));
                if template {
                    let at = self.at;
                    match self.string("chat template", MAX_TEMPLATE)? {
                        Some(text) => judge_template(key, &text, at, &mut self.findings),
                        None => self.findings.push(Finding::new(
                            rules::TEMPLATE_UNUSUAL,
                            Verdict::Inconclusive,
                            format!("chat template '{key}' is larger than {MAX_TEMPLATE} bytes: not analysed"),
                            Location::at(at),
                        )),
                    }
                } else {
                    self.string_span("string value")?;
                }
                Ok(())
            }
            T_ARRAY => {
                let at = self.at;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Stop::Hostile(
                        at,
                        format!("arrays nest deeper than {MAX_ARRAY_DEPTH} levels"),
                    ));
                }
                let et = self.u32()?;
                if let Some(n) = fixed_size(et) {
                    let count = self.count("array length", n)?;
                    self.at += count * n; // checked by count()
                    return Ok(());
                }
                if et != T_STRING && et != T_ARRAY {
                    return Err(Stop::Malformed(
                        at,
                        format!("array of unknown value type {et}"),
                    ));
                }
                let count = self.count("array length", if et == T_STRING { 8 } else { 12 })?;
                for _ in 0..count {
                    self.value(key, et, depth + 1)?;
                }
                Ok(())
            }
            other => Err(Stop::Malformed(
                self.at,
                format!("metadata '{key}' has unknown value type {other}"),
            )),
        }
    }
}

/// Scan a GGUF file; adds the bytes it read to `bytes_read`.
pub(crate) fn scan(src: &dyn ReadAt, bytes_read: &mut u64) -> Outcome {
    let mut r = Reader {
        b: Bytes::new(src),
        at: 0,
        findings: Vec::new(),
        notes: Vec::new(),
        alignment: 32,
    };
    // `G` is BINFLOAT: a real file's pickle view dies on the zero bytes of its counts.
    let size = r.b.size();
    let window = size.min(64 * 1024);
    if let Ok(head) = r.b.get(0, window) {
        let view = crate::safetensors::pickle_view(head, window == size);
        if let Some(view) = view {
            let (verdict, what) = match view {
                crate::safetensors::PickleView::RunsCode => {
                    (Verdict::Malicious, "runs as a pickle that imports code")
                }
                crate::safetensors::PickleView::Undecided => (
                    Verdict::Suspicious,
                    "still parses as a pickle stream after 64 KiB",
                ),
            };
            r.findings.push(Finding::new(
                rules::POLYGLOT,
                verdict,
                format!("the GGUF file {what}: pickle-based loaders would read it as one"),
                Location::at(0),
            ));
        }
    }
    if let Err(stop) = read_all(&mut r) {
        let (rule, verdict, offset, msg) = match stop {
            Stop::Hostile(at, m) => (rules::HOSTILE, Verdict::Malicious, at, m),
            Stop::Malformed(at, m) => (rules::MALFORMED, Verdict::Suspicious, at, m),
            Stop::Read(ReadError::Io(e)) => (
                crate::format_rules::IO_ERROR,
                Verdict::Inconclusive,
                r.at,
                format!("cannot read the file: {e}"),
            ),
            Stop::Read(e) => (
                rules::MALFORMED,
                Verdict::Suspicious,
                r.at,
                format!("truncated or malformed GGUF: {e}"),
            ),
        };
        r.findings
            .push(Finding::new(rule, verdict, msg, Location::at(offset)));
    }
    *bytes_read += r.b.read;
    Outcome {
        format: "gguf",
        findings: r.findings,
        notes: r.notes,
        ..Outcome::default()
    }
}

fn read_all(r: &mut Reader<'_>) -> Result<(), Stop> {
    r.at = 4;
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Stop::Malformed(
            4,
            format!("GGUF version {version} is not 2 or 3"),
        ));
    }
    // Smallest tensor info: an empty name (8), n_dims (4), type (4), offset (8).
    let tensors = r.count("tensor count", 24)?;
    // Smallest key/value: an empty key (8), a type (4), a one-byte value.
    let kvs = r.count("metadata count", 13)?;
    for _ in 0..kvs {
        let key_at = r.at;
        let Some(key) = r.string("metadata key", MAX_KEY)? else {
            return Err(Stop::Malformed(
                key_at,
                format!("metadata key longer than {MAX_KEY} bytes"),
            ));
        };
        let t = r.u32()?;
        r.value(&key, t, 0)?;
    }
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for _ in 0..tensors {
        let info_at = r.at;
        let name = r
            .string("tensor name", MAX_KEY)?
            .ok_or_else(|| Stop::Malformed(info_at, "tensor name is too long".into()))?;
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(Stop::Hostile(
                info_at,
                format!("tensor '{name}' has {n_dims} dimensions (ggml allows {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let t = r.u32()?;
        let offset = r.u64()?;
        let Some((block, block_bytes)) = ggml_type(t) else {
            return Err(Stop::Malformed(
                info_at,
                format!("tensor '{name}' has unknown ggml type {t}"),
            ));
        };
        let mut elements = 1u64;
        for &d in &dims {
            elements = elements.checked_mul(d).ok_or_else(|| {
                Stop::Hostile(info_at, format!("tensor '{name}' shape {dims:?} overflows"))
            })?;
        }
        if dims.first().is_some_and(|d0| d0 % block != 0) {
            return Err(Stop::Malformed(
                info_at,
                format!(
                    "tensor '{name}' row of {} is not a multiple of its block size {block}",
                    dims[0]
                ),
            ));
        }
        let size = (elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| Stop::Hostile(info_at, format!("tensor '{name}' size overflows")))?;
        if offset % r.alignment != 0 {
            return Err(Stop::Malformed(
                info_at,
                format!(
                    "tensor '{name}' offset {offset} is not aligned to {}",
                    r.alignment
                ),
            ));
        }
        let end = offset.checked_add(size).ok_or_else(|| {
            Stop::Hostile(
                info_at,
                format!("tensor '{name}' offset {offset} overflows"),
            )
        })?;
        spans.push((offset, end, name));
    }
    let data_start = r.at.div_ceil(r.alignment) * r.alignment;
    let data_len = r.b.size().saturating_sub(data_start);
    spans.sort();
    let mut prev_end = 0u64;
    let mut prev_name = String::new();
    for (start, end, name) in &spans {
        if *start < prev_end {
            r.findings.push(Finding::new(
                rules::HOSTILE,
                Verdict::Malicious,
                format!(
                    "tensor '{name}' overlaps tensor '{prev_name}': readers disagree on its bytes"
                ),
                Location::at(data_start.saturating_add(*start)),
            ));
        }
        if *end > data_len {
            r.findings.push(Finding::new(
                rules::MALFORMED,
                Verdict::Suspicious,
                format!("tensor '{name}' ends {end} bytes into a {data_len}-byte data area: the file is truncated or corrupt"),
                Location::at(data_start.saturating_add(*start)),
            ));
        }
        if *end > prev_end {
            prev_end = *end;
            prev_name.clone_from(name);
        }
    }
    r.notes.push(format!(
        "GGUF v{version}: {kvs} metadata entries, {tensors} tensors"
    ));
    Ok(())
}

// ---------- Jinja chat templates ----------

/// Names that only an escape from the template reaches: Flask/Jinja globals that lead to
/// Python objects, and the usual callables of an SSTI payload.
const DANGEROUS_NAMES: &[&str] = &[
    "lipsum",
    "url_for",
    "get_flashed_messages",
    "config",
    "request",
    "self",
    "popen",
    "eval",
    "exec",
    "__import__",
    "builtins",
    "subprocess",
    "getattr",
    "func_globals",
    "f_globals",
    "f_locals",
    "f_back",
    "gi_frame",
    "gi_code",
    "cr_frame",
    "co_code",
    "tb_frame",
    "tb_next",
    "mro",
];

/// Jinja globals that are harmless to call (`namespace(...)`) but whose attributes lead to
/// Python internals (`cycler.__init__.__globals__`).
const ATTRIBUTE_WALK_ROOTS: &[&str] = &["cycler", "joiner", "namespace", "os", "range", "dict"];

/// One token of a Jinja expression or statement.
#[derive(Debug, PartialEq)]
enum Tok<'t> {
    Name(&'t str),
    Str(&'t str),
    Punct(char),
}

fn tokens(code: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\'' || c == b'"' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && bytes[j] != c {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            let end = j.min(bytes.len());
            out.push(Tok::Str(code.get(start..end).unwrap_or("")));
            i = end + 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(&code[start..i]));
        } else {
            if !c.is_ascii_whitespace() {
                // non-ASCII bytes are punctuation here; take the whole char
                match code.get(i..).and_then(|s| s.chars().next()) {
                    Some(ch) => {
                        out.push(Tok::Punct(ch));
                        i += ch.len_utf8();
                    }
                    None => i += 1, // inside a character a string literal's escape skipped into
                }
                continue;
            }
            i += 1;
        }
    }
    out
}

/// The code parts of a template: the insides of `{{ }}` and `{% %}` (comments skipped).
fn code_blocks(t: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = t[i..].find('{') {
        let at = i + p;
        let rest = &t[at..];
        let close = if rest.starts_with("{{") {
            "}}"
        } else if rest.starts_with("{%") {
            "%}"
        } else if rest.starts_with("{#") {
            match rest.find("#}") {
                Some(e) => {
                    i = at + e + 2;
                    continue;
                }
                None => break,
            }
        } else {
            i = at + 1;
            continue;
        };
        let body_start = at + 2;
        let end = find_close(&t[body_start..], close).map_or(t.len(), |e| body_start + e);
        out.push((body_start, &t[body_start..end]));
        i = (end + 2).min(t.len());
    }
    out
}

/// The closing delimiter outside string literals.
fn find_close(s: &str, close: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut quote = None;
    let mut i = 0;
    while i < b.len() {
        match quote {
            Some(_) if b[i] == b'\\' => i += 1,
            Some(q) if b[i] == q => quote = None,
            Some(_) => {}
            None if b[i] == b'\'' || b[i] == b'"' => quote = Some(b[i]),
            None if b[i..].starts_with(close.as_bytes()) => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

/// Why one code block of a template reaches Python, if it does.
fn block_danger(code: &str) -> Option<String> {
    let toks = tokens(code);
    for (i, t) in toks.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|p| toks.get(p));
        let next = toks.get(i + 1);
        match t {
            Tok::Name(n) => {
                if n.starts_with("__") || (n.starts_with('_') && prev == Some(&Tok::Punct('.'))) {
                    return Some(format!("private attribute or name '{n}'"));
                }
                if DANGEROUS_NAMES.contains(n) {
                    return Some(format!("'{n}'"));
                }
                if ATTRIBUTE_WALK_ROOTS.contains(n) && next == Some(&Tok::Punct('.')) {
                    return Some(format!("attribute walk from '{n}.'"));
                }
                if *n == "attr" && prev == Some(&Tok::Punct('|')) {
                    return Some("the '|attr(...)' filter".into());
                }
                if (*n == "system" || *n == "import_module") && prev == Some(&Tok::Punct('.')) {
                    return Some(format!("a call of '.{n}'"));
                }
            }
            Tok::Str(s) => {
                let lower = s.to_ascii_lowercase();
                if s.contains("__")
                    || ["\\x5f", "\\u005f", "\\137", "\\n{low line}"]
                        .iter()
                        .any(|e| lower.contains(e))
                {
                    return Some(format!("a string naming a private attribute ('{s}')"));
                }
            }
            Tok::Punct(_) => {}
        }
    }
    None
}

/// Judge one chat template; findings go to `out`.
fn judge_template(key: &str, text: &str, offset: u64, out: &mut Vec<Finding>) {
    for (at, code) in code_blocks(text) {
        if let Some(why) = block_danger(code) {
            out.push(
                Finding::new(
                    rules::TEMPLATE_INJECTION,
                    Verdict::Malicious,
                    format!("chat template '{key}' reaches Python objects through {why} (server-side template injection, CVE-2024-34359)"),
                    Location::at(offset + at as u64),
                )
                .with_evidence(code.trim().chars().take(200).collect::<String>()),
            );
            return;
        }
        let first = tokens(code)
            .into_iter()
            .find(|t| !matches!(t, Tok::Punct('-' | '+')));
        if let Some(Tok::Name(kw @ ("include" | "import" | "extends" | "from"))) = first {
            out.push(
                Finding::new(
                    rules::TEMPLATE_UNUSUAL,
                    Verdict::Suspicious,
                    format!("chat template '{key}' uses '{{% {kw} %}}' to load other templates"),
                    Location::at(offset + at as u64),
                )
                .with_evidence(code.trim().chars().take(200).collect::<String>()),
            );
        }
    }
}

/// The verdict a chat template alone would get (for tests and tools).
#[doc(hidden)]
pub fn template_verdict(text: &str) -> Verdict {
    let mut f = Vec::new();
    judge_template("tokenizer.chat_template", text, 0, &mut f);
    f.iter().map(|f| f.verdict).max().unwrap_or(Verdict::Clean)
}

/// Fuzzing entry point: scan `data` as a GGUF file, and as a chat template.
#[doc(hidden)]
pub fn fuzz_gguf(data: &[u8]) {
    let mut n = 0;
    let out = scan(&data, &mut n);
    let _ = out.findings.len();
    let _ = template_verdict(&String::from_utf8_lossy(data));
}
