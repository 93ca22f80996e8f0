//! Per-format readers: each one reads a container the way its loader does and hands every
//! pickle stream the loader could reach to the judge.

use std::time::Instant;

use tg_archive::decompress::{self, Compression};
use tg_archive::{ReadAt, TarArchive, ZipArchive};
use tg_pickle::{AfterBuild, Analysis, Arena, Call, End, Event, Hook, Id, NoHook, Options, Value};
use tg_report::{Finding, Location, Verdict};

use crate::Scanner;
use crate::format_rules as fr;
use crate::judge::{self, Context};

/// The own part of each window an HDF5 file is read in (the overlap comes on top).
const H5_WINDOW: u64 = 64 << 20;

/// `torch.serialization.MAGIC_NUMBER`, the first pickle of a legacy (pre-1.6) checkpoint.
const TORCH_LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// What scanning one source produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub format: &'static str,
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
    /// Torch storage keys the stream's persistent ids referenced (members read as raw bytes).
    pub storage_keys: std::collections::HashSet<String>,
}

impl Outcome {
    fn new(format: &'static str) -> Self {
        Outcome {
            format,
            ..Outcome::default()
        }
    }

    fn absorb(&mut self, other: Outcome, member: Option<&str>) {
        for f in other.findings {
            self.findings.push(match member {
                Some(m) => f.within(m),
                None => f,
            });
        }
        for n in other.notes {
            self.notes.push(match member {
                Some(m) => format!("{m}: {n}"),
                None => n,
            });
        }
    }
}

/// One file's scan: the scanner, the deadline and the byte count.
pub(crate) struct Cx<'s> {
    pub scanner: &'s Scanner,
    pub deadline: Instant,
    /// The readers' own tally of bytes read, the report's `bytes_read` for bytes scanned in
    /// memory; a file's reads are counted at the file instead (`tg_archive::Counted`), since
    /// this tally leaves out the headers and directories the readers read to find their way.
    pub bytes_read: u64,
}

fn read_at(src: &dyn ReadAt, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| std::io::Error::other("read too large"))?;
    let mut buf = vec![0u8; len];
    src.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Whether `tail` holds a zip end-of-central-directory signature (`PK\x05\x06`).
fn contains_eocd(tail: &[u8]) -> bool {
    // Built once: every file that is not a container is checked, and building a searcher
    // costs more than running it over 64 KiB.
    static EOCD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"PK\x05\x06"));
    EOCD.find(tail).is_some()
}

fn is_zip_head(h: &[u8]) -> bool {
    h.starts_with(b"PK\x03\x04") || h.starts_with(b"PK\x05\x06")
}

fn is_7z(h: &[u8]) -> bool {
    h.starts_with(b"7z\xbc\xaf\x27\x1c")
}

/// A tar header as Python's `tarfile` accepts it (what torch's legacy loader tries first on
/// every non-zip file): the checksum must match, the magic is not required (v7 archives have
/// none), and an all-zero block is not a header.
fn is_tar(h: &[u8]) -> bool {
    let Some(block) = h.get(..512) else {
        return false;
    };
    if block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|&b| b as char)
        .take_while(|c| *c != '\0')
        .filter(|c| !c.is_whitespace())
        .collect();
    let Ok(stored) = u32::from_str_radix(&digits, 8) else {
        return false;
    };
    // tarfile.calc_chksums: unsigned and signed sums, with the checksum field read as spaces.
    let unsigned: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    stored == unsigned || i64::from(stored) == signed
}

/// Where the zlib data of a joblib (< 0.10) z-file starts, when `head` is one that
/// `joblib.load` reads: `ZF`, then 19 bytes holding the uncompressed length as Python's
/// `int(field, 16)` parses it, then (files of joblib <= 0.8.4) an optional space.
fn joblib_zfile(head: &[u8]) -> Option<u64> {
    let field = head.strip_prefix(b"ZF")?.get(..19)?;
    python_hex_int(field)?;
    Some(if head.get(21) == Some(&b' ') { 22 } else { 21 })
}

/// `int(field, 16)` as Python computes it for a non-negative result (surrounding whitespace,
/// an optional `+` and `0x`, single underscores between digits), or `None` where it raises or
/// is negative (joblib then fails before decompressing anything).
fn python_hex_int(field: &[u8]) -> Option<u64> {
    let is_space = |b: &u8| b.is_ascii_whitespace() || *b == 0x0b || (0x1c..=0x1f).contains(b);
    let start = field.iter().position(|b| !is_space(b))?;
    let end = field.iter().rposition(|b| !is_space(b))? + 1;
    let mut digits = &field[start..end];
    if let Some(rest) = digits.strip_prefix(b"+") {
        digits = rest;
    }
    if let Some(rest) = digits
        .strip_prefix(b"0x")
        .or_else(|| digits.strip_prefix(b"0X"))
    {
        // `0x_1` is allowed: an underscore may follow the prefix.
        digits = rest.strip_prefix(b"_").unwrap_or(rest);
    }
    if digits.is_empty() || digits.starts_with(b"_") || digits.ends_with(b"_") {
        return None;
    }
    let mut value: u64 = 0;
    let mut last_underscore = false;
    for &b in digits {
        if b == b'_' {
            if last_underscore {
                return None;
            }
            last_underscore = true;
            continue;
        }
        last_underscore = false;
        let d = char::from(b).to_digit(16)?;
        value = value.saturating_mul(16).saturating_add(u64::from(d));
    }
    Some(value)
}

/// Adds `from` to `into`, moving it when `into` is empty: a checkpoint's storage keys pass
/// from the judge up to the archive, and hashing hundreds of keys again at each step showed
/// in its scan time.
pub(crate) fn merge_keys(
    into: &mut std::collections::HashSet<String>,
    from: std::collections::HashSet<String>,
) {
    if into.is_empty() {
        *into = from;
    } else {
        into.extend(from);
    }
}

fn is_npy(h: &[u8]) -> bool {
    h.starts_with(b"\x93NUMPY")
}

impl Cx<'_> {
    fn timed_out(&self) -> bool {
        Instant::now() > self.deadline
    }

    fn read(&mut self, src: &dyn ReadAt, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let b = read_at(src, offset, len)?;
        self.bytes_read += b.len() as u64;
        Ok(b)
    }

    /// Detect the format of `src` and scan it.
    pub(crate) fn scan(&mut self, src: &dyn ReadAt, depth: u32) -> Outcome {
        let size = src.size();
        if size == 0 {
            let mut o = Outcome::new("empty");
            o.notes
                .push("empty file: nothing a loader could execute".into());
            return o;
        }
        if depth > self.scanner.limits.max_depth {
            let mut o = Outcome::new("nested");
            o.findings.push(Finding::new(
                fr::TOO_DEEP,
                Verdict::Inconclusive,
                format!(
                    "containers nest deeper than {} levels",
                    self.scanner.limits.max_depth
                ),
                Location::default(),
            ));
            return o;
        }
        let head = match self.read(src, 0, size.min(512)) {
            Ok(h) => h,
            Err(e) => return unreadable("file", &e.to_string()),
        };
        if is_zip_head(&head) {
            return self.scan_zip(src, depth);
        }
        if is_npy(&head) {
            return self.scan_npy(src, depth);
        }
        if is_7z(&head) {
            return self.scan_7z(src, depth);
        }
        if is_tar(&head) {
            return self.scan_tar(src, depth);
        }
        if crate::keras::is_hdf5(&head) {
            return self.scan_h5(src);
        }
        if crate::safetensors::is_safetensors(&head) {
            return crate::safetensors::scan(src, &mut self.bytes_read);
        }
        if crate::gguf::is_gguf(&head) {
            return crate::gguf::scan(src, &mut self.bytes_read);
        }
        if crate::onnx::may_be_onnx(&head)
            && let Some(o) = crate::onnx::scan(src, &mut self.bytes_read)
        {
            return o;
        }
        if let Some(data_at) = joblib_zfile(&head) {
            return self.scan_joblib_zfile(src, data_at, depth);
        }
        if let Some(kind) = decompress::sniff(&head) {
            // zlib's magic is not a pickle opcode, so this never hides a raw pickle.
            return self.scan_compressed(src, 0, kind, depth);
        }
        let mut out = self.scan_stream_file(src);
        // A zip appended to another file still opens with zipfile-based loaders (numpy,
        // generic archive loaders): scan that view too.
        if size > 22 {
            let tail_len = size.min(65_557);
            let eocd = match src.as_slice() {
                // In memory already (a small file, a member): no copy.
                Some(b) => contains_eocd(&b[b.len() - tail_len as usize..]),
                None => self
                    .read(src, size - tail_len, tail_len)
                    .is_ok_and(|tail| contains_eocd(&tail)),
            };
            if eocd
                && let Ok(zip) = ZipArchive::open(src, self.scanner.limits.archive.clone())
                && !zip.entries().is_empty()
            {
                let z = self.scan_zip_archive(&zip, depth);
                out.notes
                    .push("a zip archive is appended to this file: scanned as a polyglot".into());
                out.findings.push(Finding::new(
                    fr::HOSTILE_ARCHIVE,
                    Verdict::Suspicious,
                    "file is a polyglot: a zip archive follows other data",
                    Location::default(),
                ));
                out.absorb(z, Some("<appended zip>"));
            }
        }
        out
    }

    // ---------- raw pickle streams: plain, stacked, legacy torch ----------

    /// Options for one analysis of a stream whose buffer is `complete` or not.
    fn options(&self, complete: bool) -> Options {
        Options {
            limits: self.scanner.limits.pickle.clone(),
            complete,
            record_opcodes: self.scanner.policy.restricts_opcodes(),
            elide_floats: true,
        }
    }

    /// Run one pickle starting at `pos` in `src`, reading more of the file into `prefix` as
    /// needed (a prefix already read from an earlier pickle of the same file is reused).
    /// Returns the analysis, run on `prefix.buf` from `pos - prefix.at`.
    fn run_pickle(
        &mut self,
        src: &dyn ReadAt,
        pos: u64,
        hook: &mut dyn Hook,
        prefix: &mut Prefix,
    ) -> Result<Analysis, String> {
        let size = src.size();
        let limit = self.scanner.limits.max_stream_bytes;
        // Spans another view of this pickle left unread may be opcodes to this one: it sees the
        // prefix only up to the first of them, and reads each when it gets there.
        let mut foreign = Vec::new();
        if prefix.covers(pos) {
            let start = (pos - prefix.at) as usize;
            for (from, to) in prefix.unread.clone() {
                if from < start && to > start {
                    self.fill_span(src, prefix, from, to)?;
                } else if to > start {
                    foreign.push((from, to));
                }
            }
        } else {
            prefix.reset(pos);
            let first = size.saturating_sub(pos).min(FIRST_WINDOW);
            self.extend(src, prefix, 0, first, first)?;
        }
        let start = (pos - prefix.at) as usize;
        loop {
            let visible = foreign.first().map_or(prefix.len, |&(from, _)| from);
            let complete = visible == prefix.len && prefix.end() == size;
            let a = tg_pickle::analyze(
                &prefix.bytes()[..visible],
                start,
                &self.options(complete),
                hook,
            );
            if a.end != End::NeedMore {
                return Ok(a);
            }
            if !foreign.is_empty() {
                let (from, to) = foreign.remove(0);
                self.fill_span(src, prefix, from, to)?;
                continue;
            }
            let have = prefix.end();
            if have - pos >= limit {
                return Err(format!(
                    "pickle stream is longer than the {limit} byte limit"
                ));
            }
            let need = prefix.at.saturating_add(a.need.end);
            let contents = a.need.contents.map(|c| prefix.at.saturating_add(c));
            let cap = size.min(pos.saturating_add(limit));
            let (read_from, to) = match contents {
                // Only the contents of a large bytes object are missing: the machine records
                // their span and never reads them, so read on after them and leave them
                // unread unless the verdict turns out to depend on them.
                Some(_)
                    if need - have >= UNREAD_CONTENTS
                        && need <= cap
                        && prefix.unread.len() < MAX_UNREAD_SPANS =>
                {
                    (need, need.saturating_add(FIRST_WINDOW).min(cap))
                }
                _ => {
                    // Four times what was read so far, as a growing read would.
                    let read = prefix.len - prefix.unread.iter().map(|(a, b)| b - a).sum::<usize>();
                    let grown = have.saturating_add((read as u64).saturating_mul(3));
                    (have, need.max(grown).min(cap))
                }
            };
            let whole = cap - prefix.at;
            self.extend(src, prefix, read_from - prefix.at, to - prefix.at, whole)?;
        }
    }

    /// Grows `prefix` to `len` bytes from its start, reading `[from, len)` and leaving
    /// `[old length, from)` unread; `whole` is the most the prefix can grow to.
    fn extend(
        &mut self,
        src: &dyn ReadAt,
        prefix: &mut Prefix,
        from: u64,
        len: u64,
        whole: u64,
    ) -> Result<(), String> {
        let old = prefix.len;
        let (from, len) = (to_usize(from)?, to_usize(len)?);
        prefix.grow(len, from > old, to_usize(whole)?);
        if from > old {
            prefix.unread.push((old, from));
        }
        let at = prefix.at + from as u64;
        src.read_exact_at(&mut prefix.buf[from..len], at)
            .map_err(|e| e.to_string())?;
        self.bytes_read += (len - from) as u64;
        Ok(())
    }

    /// Reads the span `[from, to)` of `prefix` that was left unread.
    fn fill_span(
        &mut self,
        src: &dyn ReadAt,
        prefix: &mut Prefix,
        from: usize,
        to: usize,
    ) -> Result<(), String> {
        src.read_exact_at(&mut prefix.buf[from..to], prefix.at + from as u64)
            .map_err(|e| e.to_string())?;
        self.bytes_read += (to - from) as u64;
        prefix.unread.retain(|&span| span != (from, to));
        Ok(())
    }

    /// Reads every span `run_pickle` left unread in `prefix`.
    fn fill(&mut self, src: &dyn ReadAt, prefix: &mut Prefix) -> Result<(), String> {
        while let Some(&(from, to)) = prefix.unread.first() {
            self.fill_span(src, prefix, from, to)?;
        }
        Ok(())
    }

    /// A judged pickle at `pos`, with absolute offsets and the number of bytes it consumed.
    /// Runs joblib's view and the plain `pickle.load` view when they differ.
    fn judged_pickle(
        &mut self,
        src: &mut Stream<'_>,
        pos: u64,
        ctx: Context,
    ) -> Result<(Analysis, u64, judge::Judged), String> {
        let (a, consumed, mut j) = self.judged_view(src, pos, ctx, &mut JoblibHook)?;
        if !a.skipped.is_empty() || !a.nested.is_empty() {
            // joblib reads raw array bytes after each NumpyArrayWrapper; plain pickle.load would
            // read them as opcodes. Judge that view too, so a payload hidden as "array data"
            // for one loader is still seen for the other.
            let (_, _, pj) = self.judged_view(src, pos, ctx, &mut NoHook)?;
            for f in pj.findings {
                if f.verdict >= Verdict::Suspicious
                    && !j
                        .findings
                        .iter()
                        .any(|g| g.rule == f.rule && g.message == f.message)
                {
                    j.findings.push(f);
                }
            }
        }
        Ok((a, consumed, j))
    }

    fn judged_view(
        &mut self,
        src: &mut Stream<'_>,
        pos: u64,
        ctx: Context,
        hook: &mut dyn Hook,
    ) -> Result<(Analysis, u64, judge::Judged), String> {
        match src {
            Stream::Mem(buf) => {
                // The whole stream is in memory: no copy, offsets are already absolute.
                let start = usize::try_from(pos).map_err(|_| "offset out of range".to_owned())?;
                let a = tg_pickle::analyze(buf, start, &self.options(true), hook);
                let j = self.judge(&a, buf, ctx);
                let consumed = a.consumed.saturating_sub(pos);
                Ok((a, consumed, j))
            }
            Stream::File(file, prefix) => {
                let a = self.run_pickle(*file, pos, hook, prefix)?;
                let mut j = self.judge(&a, prefix.bytes(), ctx);
                if prefix.read_unread(&a) {
                    // The judge rendered or followed a value whose contents were left unread:
                    // read them and judge again. The analysis stands: neither the machine nor
                    // the hooks here read such contents.
                    self.fill(*file, prefix)?;
                    j = self.judge(&a, prefix.bytes(), ctx);
                }
                for f in &mut j.findings {
                    if let Some(o) = f.location.offset.as_mut() {
                        *o += prefix.at;
                    }
                }
                let consumed = (prefix.at + a.consumed).saturating_sub(pos);
                Ok((a, consumed, j))
            }
        }
    }

    fn judge(&self, a: &Analysis, buf: &[u8], ctx: Context) -> judge::Judged {
        let scanner = self.scanner;
        let follow = |bytes: &[u8], depth: u32| -> Vec<Finding> {
            let opts = Options {
                limits: scanner.limits.pickle.clone(),
                complete: true,
                record_opcodes: scanner.policy.restricts_opcodes(),
                elide_floats: true,
            };
            let inner = tg_pickle::analyze(bytes, 0, &opts, &mut NoHook);
            judge::judge(
                &inner,
                bytes,
                &scanner.policy,
                Context::default(),
                depth,
                &|_, _| Vec::new(),
            )
            .findings
        };
        judge::judge(a, buf, &self.scanner.policy, ctx, 0, &follow)
    }

    /// A file (or member) that is not a container: one or more pickle streams, or nothing a
    /// loader executes.
    fn scan_stream_file(&mut self, src: &dyn ReadAt) -> Outcome {
        self.scan_stream(src, Context::default(), "pickle")
    }

    fn scan_stream(&mut self, src: &dyn ReadAt, ctx: Context, format: &'static str) -> Outcome {
        let size = src.size();
        // A source already in memory (a small file, an archive member) is analysed in place;
        // a file is read a growing prefix at a time from each pickle on, so a legacy checkpoint
        // with megabytes of raw storages after its pickles is never read in full.
        let mut stream = match src.as_slice() {
            Some(b) => Stream::Mem(b),
            None => Stream::File(src, Prefix::default()),
        };
        let mut out = Outcome::new(format);
        let mut pos = 0u64;
        let mut legacy = false;
        for index in 0..64u32 {
            if self.timed_out() {
                out.findings.push(timeout());
                break;
            }
            let ctx = if legacy {
                Context { torch: true, ..ctx }
            } else {
                ctx
            };
            let (a, consumed, j) = match self.judged_pickle(&mut stream, pos, ctx) {
                Ok(r) => r,
                Err(e) => {
                    out.findings.push(limit(e, pos));
                    break;
                }
            };
            let stopped = a.stopped();
            // A stream that fails before importing anything executed nothing, and neither did
            // one whose first import cannot succeed; one that hit a resource cap first is not
            // understood, which is inconclusive, never clean.
            let inert = !stopped
                && matches!(a.end, End::Error { .. })
                && (!a.touched_code() || aborts_at_first_import(&a));
            if index == 0 {
                if inert {
                    let mut o = Outcome::new("not-a-model");
                    let why = match &a.end {
                        End::Error { message, .. } => message.clone(),
                        _ => "no pickle stream".into(),
                    };
                    if let Some(found) = self.not_pickle_view(src) {
                        return found;
                    }
                    o.notes.push(format!(
                        "not a pickle or a known model format ({why}): no loader executes it"
                    ));
                    return o;
                }
                if let End::Stop { value, .. } = a.end
                    && int_value(&a.arena, value) == Some(TORCH_LEGACY_MAGIC)
                {
                    legacy = true;
                    out.format = "pytorch-legacy";
                }
            } else if inert {
                // Trailing bytes that are not another pickle: nothing reads them as one.
                if !legacy {
                    out.notes.push(format!(
                        "{} bytes after the last pickle are not a pickle",
                        size - pos
                    ));
                }
                break;
            } else if !legacy {
                out.notes.push(format!(
                    "pickle #{} starts at offset {pos} (stacked pickles)",
                    index + 1
                ));
            }
            out.findings.extend(j.findings);
            out.notes.extend(j.notes);
            merge_keys(&mut out.storage_keys, j.storage_keys);
            if !stopped {
                break;
            }
            pos += consumed;
            if consumed == 0 || pos >= size {
                break;
            }
            if legacy && index == 4 {
                // magic, protocol, sys_info, the object, the storage keys: torch then reads raw
                // storage bytes, never another pickle.
                out.notes.push(format!(
                    "legacy checkpoint: {} bytes of raw storages follow the five pickles",
                    size - pos
                ));
                break;
            }
        }
        out
    }

    // ---------- zip: PyTorch, TorchScript, npz, generic ----------

    fn scan_zip(&mut self, src: &dyn ReadAt, depth: u32) -> Outcome {
        match ZipArchive::open(src, self.scanner.limits.archive.clone()) {
            Ok(zip) => {
                let o = self.scan_zip_archive(&zip, depth);
                self.bytes_read += zip.bytes_read();
                o
            }
            Err(e) => unreadable("zip archive", &e.to_string()),
        }
    }

    fn scan_zip_archive<R: ReadAt>(&mut self, zip: &ZipArchive<R>, depth: u32) -> Outcome {
        let mut out = Outcome::new("zip");
        let data_pkl = zip.torch_record("data.pkl").cloned();
        let constants = zip.torch_record("constants.pkl").cloned();
        let torch = data_pkl.is_some() || constants.is_some();
        let encrypted = |name: &str| {
            zip.entries()
                .iter()
                .any(|e| e.name == name && e.encrypted())
        };
        for an in zip.anomalies() {
            let hostile = match an {
                // Only torch gives the first folder a meaning; a generic zip may have several.
                tg_archive::Anomaly::MultipleTopLevel { .. } => false,
                // ZipCrypto adds a 12-byte header to a stored member: sizes differ by design.
                tg_archive::Anomaly::StoredSizeMismatch { name, .. } if encrypted(name) => false,
                other => other.is_hostile(),
            };
            if hostile {
                out.findings.push(Finding::new(
                    fr::HOSTILE_ARCHIVE,
                    Verdict::Malicious,
                    format!("ambiguous zip structure: {an}"),
                    Location::default(),
                ));
            } else {
                out.notes.push(an.to_string());
            }
        }
        if let Some(k) = crate::keras::scan_zip(zip).or_else(|| crate::skops::scan_zip(zip)) {
            out.format = k.format;
            out.absorb(k, None);
        }
        let torchscript = constants.is_some();
        if torch {
            out.format = if torchscript {
                "torchscript"
            } else {
                "pytorch-zip"
            };
            let prefixes = zip.top_level_prefixes();
            if prefixes.len() > 1 {
                out.findings.push(Finding::new(
                    fr::HOSTILE_ARCHIVE,
                    Verdict::Malicious,
                    format!("torch archive has {} top-level folders ({}): loaders disagree on which one holds the model", prefixes.len(), prefixes.join(", ")),
                    Location::default(),
                ));
            }
        }
        let ctx = Context { torch, torchscript };
        let mut storage_keys = std::collections::HashSet::new();
        let mut done = std::collections::HashSet::new();
        // The pickles torch itself reads, first: they tell which members are raw storages.
        for entry in [data_pkl.as_ref(), constants.as_ref()]
            .into_iter()
            .flatten()
        {
            done.insert(entry.index);
            match read_checked(zip, entry, &mut out) {
                Ok(bytes) => {
                    self.bytes_read += bytes.len() as u64;
                    let mut o = self.scan_stream(&bytes.as_slice(), ctx, "pickle");
                    merge_keys(&mut storage_keys, std::mem::take(&mut o.storage_keys));
                    out.absorb(o, Some(&entry.name));
                }
                Err(e) => out.findings.push(Finding::new(
                    fr::UNREADABLE,
                    Verdict::Inconclusive,
                    format!("cannot read {}: {e}", entry.name),
                    Location::default(),
                )),
            }
        }
        let prefix = zip.torch_prefix().unwrap_or("").to_owned();
        let mut npy_members = 0usize;
        let mut members = 0usize;
        for entry in zip.entries() {
            if entry.is_directory() || done.contains(&entry.index) {
                continue;
            }
            if self.timed_out() {
                out.findings.push(timeout());
                break;
            }
            members += 1;
            if torch
                && let Some(key) = entry.name.strip_prefix(&format!("{prefix}/data/"))
                && storage_keys.contains(key)
            {
                continue; // raw tensor bytes, only ever read as a storage
            }
            let head = match zip.read_prefix(entry, 512) {
                Ok(h) => h,
                Err(e) => {
                    out.notes.push(format!(
                        "{}: not readable ({e}); no loader can read it either",
                        entry.name
                    ));
                    continue;
                }
            };
            self.bytes_read += head.len() as u64;
            if is_npy(&head) {
                npy_members += 1;
            }
            let is_code =
                torchscript && entry.name.contains("/code/") && entry.name.ends_with(".py");
            if is_code {
                if let Ok(bytes) = read_checked(zip, entry, &mut out) {
                    self.bytes_read += bytes.len() as u64;
                    scan_torchscript_code(&entry.name, &bytes, &mut out);
                }
                continue;
            }
            if !self.worth_reading(&head, &entry.name) {
                continue;
            }
            match read_checked(zip, entry, &mut out) {
                Ok(bytes) => {
                    self.bytes_read += bytes.len() as u64;
                    let inner = self.scan_member(&bytes, ctx, depth);
                    if inner.format == "not-a-model" {
                        continue; // bytes no loader unpickles: nothing to say about them
                    }
                    out.absorb(inner, Some(&entry.name));
                }
                Err(e) => out.findings.push(unreadable_member(&entry.name, &e)),
            }
        }
        if !torch && members > 0 && npy_members == members {
            out.format = "npz";
        }
        out
    }

    /// Whether an archive member whose first bytes are `head` is read: a container, a pickle,
    /// or a YAML config (by name: loaders find `model_config.yaml` in a `.nemo` by its name).
    fn worth_reading(&self, head: &[u8], name: &str) -> bool {
        let Some(&b0) = head.first() else {
            return false;
        };
        crate::yaml::is_yaml_name(name)
            || is_zip_head(head)
            || is_npy(head)
            || is_7z(head)
            || is_tar(head)
            || decompress::sniff(head).is_some()
            || tg_pickle::Opcode::from_byte(b0).is_some()
    }

    /// A member's bytes: a nested container or a pickle stream.
    fn scan_member(&mut self, bytes: &[u8], ctx: Context, depth: u32) -> Outcome {
        let head = &bytes[..bytes.len().min(512)];
        if is_zip_head(head)
            || is_npy(head)
            || is_7z(head)
            || is_tar(head)
            || decompress::sniff(head).is_some()
        {
            return self.scan(&bytes, depth + 1);
        }
        self.scan_stream(&bytes, ctx, "pickle")
    }

    // ---------- numpy ----------

    fn scan_npy(&mut self, src: &dyn ReadAt, depth: u32) -> Outcome {
        let _ = depth;
        let mut out = Outcome::new("npy");
        let head = match self.read(src, 0, src.size().min(10)) {
            Ok(h) => h,
            Err(e) => return unreadable("npy header", &e.to_string()),
        };
        if head.len() < 10 {
            out.findings.push(bad_npy("header is truncated"));
            return out;
        }
        let (hlen, hstart) = match head[6] {
            1 => (u64::from(u16::from_le_bytes([head[8], head[9]])), 10u64),
            2 | 3 => match self.read(src, 8, 4) {
                Ok(b) => (
                    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    12u64,
                ),
                Err(e) => return unreadable("npy header", &e.to_string()),
            },
            v => {
                out.findings
                    .push(bad_npy(&format!("unknown format version {v}")));
                return out;
            }
        };
        if hlen > 1 << 20 || hstart + hlen > src.size() {
            out.findings.push(bad_npy("header length is out of range"));
            return out;
        }
        let header = match self.read(src, hstart, hlen) {
            Ok(h) => h,
            Err(e) => return unreadable("npy header", &e.to_string()),
        };
        let text = String::from_utf8_lossy(&header);
        let Some(object) = descr_has_object(&text) else {
            out.findings.push(bad_npy("header has no readable 'descr'"));
            return out;
        };
        if !object {
            return out;
        }
        // np.load(allow_pickle=True) calls pickle.load on the rest of the file.
        let data_start = hstart + hlen;
        let rest = Window {
            src,
            start: data_start,
        };
        let s = self.scan_stream(&rest, Context::default(), "pickle");
        out.notes.push("object array: its data is a pickle".into());
        for mut f in s.findings {
            if let Some(o) = f.location.offset.as_mut() {
                *o += data_start;
            }
            out.findings.push(f);
        }
        out.notes.extend(
            s.notes
                .into_iter()
                .filter(|n| !n.starts_with("not a pickle")),
        );
        out
    }

    // ---------- tar (oldest torch format, generic tar) ----------

    fn scan_tar(&mut self, src: &dyn ReadAt, depth: u32) -> Outcome {
        let tar = match TarArchive::open(src, self.scanner.limits.archive.clone()) {
            Ok(t) => t,
            Err(e) => return unreadable("tar archive", &e.to_string()),
        };
        let mut out = Outcome::new("tar");
        for an in tar.anomalies() {
            if an.is_hostile() {
                out.findings.push(Finding::new(
                    fr::HOSTILE_ARCHIVE,
                    Verdict::Malicious,
                    format!("ambiguous tar structure: {an}"),
                    Location::default(),
                ));
            } else {
                out.notes.push(an.to_string());
            }
        }
        let torch = ["sys_info", "pickle", "storages", "tensors"]
            .iter()
            .all(|n| tar.locate(n).is_some());
        if torch {
            out.format = "pytorch-tar";
        }
        let ctx = Context {
            torch,
            torchscript: false,
        };
        for entry in tar.entries() {
            if entry.kind != tg_archive::TarEntryKind::Regular {
                if ["sys_info", "pickle", "storages", "tensors"].contains(&entry.name.as_str())
                    && matches!(
                        entry.kind,
                        tg_archive::TarEntryKind::SymLink | tg_archive::TarEntryKind::HardLink
                    )
                {
                    out.findings.push(Finding::new(
                        fr::HOSTILE_ARCHIVE,
                        Verdict::Malicious,
                        "a legacy torch member is a link: torch extracts it and unpickles whatever file it points to",
                        Location::default().within(&entry.name),
                    ));
                }
                continue;
            }
            if self.timed_out() {
                out.findings.push(timeout());
                break;
            }
            let head = match tar.read_prefix(entry, 512) {
                Ok(h) => h,
                Err(e) => {
                    out.findings.push(unreadable_member(&entry.name, &e));
                    continue;
                }
            };
            self.bytes_read += head.len() as u64;
            if !self.worth_reading(&head, &entry.name) {
                continue;
            }
            match tar.read(entry) {
                Ok(bytes) => {
                    self.bytes_read += bytes.len() as u64;
                    let inner = if torch && (entry.name == "storages" || entry.name == "tensors") {
                        self.scan_torch_tar_records(&bytes, &entry.name)
                    } else {
                        self.scan_member(&bytes, ctx, depth)
                    };
                    out.absorb(inner, Some(&entry.name));
                }
                Err(e) => out.findings.push(unreadable_member(&entry.name, &e)),
            }
        }
        out
    }

    /// The `storages` and `tensors` members of the tar format interleave small pickles with raw
    /// data (`torch/serialization.py`, `legacy_load`): a count, then per record a pickle and
    /// its raw bytes. Every record pickle is scanned.
    fn scan_torch_tar_records(&mut self, bytes: &[u8], member: &str) -> Outcome {
        let mut out = Outcome::new("pickle");
        let ctx = Context {
            torch: true,
            torchscript: false,
        };
        let mut src = Stream::Mem(bytes);
        let (a, consumed, j) = match self.judged_pickle(&mut src, 0, ctx) {
            Ok(r) => r,
            Err(e) => return unreadable(member, &e),
        };
        out.findings.extend(j.findings);
        let count = match a.end {
            End::Stop { value, .. } => a.arena.as_int(value),
            _ => None,
        };
        let Some(count) = count else {
            return out;
        };
        let mut pos = consumed;
        for _ in 0..count.clamp(0, 1_000_000) {
            let (rec, consumed, j) = match self.judged_pickle(&mut src, pos, ctx) {
                Ok(r) => r,
                Err(e) => {
                    out.findings.push(limit(e, pos));
                    return out;
                }
            };
            out.findings.extend(j.findings);
            let End::Stop { value, .. } = rec.end else {
                return out;
            };
            pos += consumed;
            let skip = if member == "storages" {
                // (key, location, storage_type): 8-byte element count, then the elements.
                let elem = rec
                    .arena
                    .as_tuple(value)
                    .and_then(|t| t.get(2))
                    .and_then(|s| rec.arena.global_name(*s))
                    .map(|(_, n)| storage_element_size(n));
                let Some(Some(elem)) = elem else {
                    out.findings.push(Finding::new(
                        judge::rules::BROKEN_AFTER_CODE,
                        Verdict::Inconclusive,
                        "cannot tell the size of a storage record",
                        Location::at(pos),
                    ));
                    return out;
                };
                let n = bytes
                    .get(pos as usize..pos as usize + 8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                n.and_then(|n| n.checked_mul(elem))
                    .and_then(|d| d.checked_add(8))
            } else {
                // (key, storage_id, type), i32 ndim, 4 padding bytes, ndim sizes, ndim strides, offset.
                let ndim = bytes
                    .get(pos as usize..pos as usize + 4)
                    .map(|b| i32::from_le_bytes(b.try_into().unwrap_or([0; 4])));
                ndim.and_then(|n| u64::try_from(n).ok())
                    .and_then(|n| n.checked_mul(16))
                    .and_then(|d| d.checked_add(16))
            };
            match skip {
                Some(s) if pos + s <= bytes.len() as u64 => pos += s,
                _ => {
                    out.findings.push(Finding::new(
                        judge::rules::BROKEN_AFTER_CODE,
                        Verdict::Inconclusive,
                        "a raw record runs past the end of the member",
                        Location::at(pos),
                    ));
                    return out;
                }
            }
        }
        out
    }

    // ---------- Keras HDF5, TensorFlow SavedModel ----------

    /// A Keras HDF5 file, read in windows of [`H5_WINDOW`] bytes (each with the overlap a config
    /// may need), so memory stays bounded for weights files of any size. Each byte is read from
    /// the file once: a window's overlap is kept and moved to the front of the next one.
    fn scan_h5(&mut self, src: &dyn ReadAt) -> Outcome {
        let size = src.size();
        let mut scan = crate::keras::H5Scan::default();
        let mut out = Outcome::new("keras-h5");
        let mut base = 0;
        let mut bytes: Vec<u8> = Vec::new();
        while base < size {
            if base > 0 && self.timed_out() {
                out.findings.push(timeout());
                break;
            }
            let own = H5_WINDOW.min(size - base);
            let len = (own + crate::keras::H5_OVERLAP).min(size - base);
            // `bytes` holds the file from `base` as far as the last window reached.
            // `len` fits in memory: it is at most H5_WINDOW + H5_OVERLAP.
            let have = bytes.len();
            bytes.resize(len as usize, 0);
            if let Err(e) = src.read_exact_at(&mut bytes[have..], base + have as u64) {
                return unreadable("HDF5 file", &e.to_string());
            }
            self.bytes_read += len - have as u64;
            scan.window(&bytes, base, own as usize);
            bytes.drain(..own as usize);
            base += own;
        }
        let (findings, notes) = scan.finish();
        if !notes.is_empty() {
            out.format = "hdf5";
        }
        out.findings.extend(findings);
        out.notes = notes;
        out
    }

    /// What a file that holds no pickle may still be: a SavedModel protobuf (no magic number:
    /// it is one when the whole file parses as one with graph nodes), or a YAML config whose
    /// loader builds objects (`crate::yaml`). The file is read once for both.
    fn not_pickle_view(&mut self, src: &dyn ReadAt) -> Option<Outcome> {
        let size = src.size();
        if size > 256 << 20 {
            return None;
        }
        let read;
        let bytes = match src.as_slice() {
            Some(b) => b,
            None => {
                read = self.read(src, 0, size).ok()?;
                &read
            }
        };
        if let Some(findings) = crate::tf::scan_saved_model(bytes) {
            let mut out = Outcome::new("tf-savedmodel");
            out.findings = findings;
            return Some(out);
        }
        if size <= crate::yaml::MAX_YAML {
            return crate::yaml::scan(bytes);
        }
        None
    }

    // ---------- compressed wrappers and 7z ----------

    /// The `kind`-compressed stream that starts at `at` in `src` (after a wrapper's header, if
    /// any), decompressed under the member cap and scanned.
    fn scan_compressed(
        &mut self,
        src: &dyn ReadAt,
        at: u64,
        kind: Compression,
        depth: u32,
    ) -> Outcome {
        let cap = self.scanner.limits.archive.max_member_bytes;
        let size = src.size();
        if size > cap {
            return unreadable(
                &kind.to_string(),
                "compressed file is larger than the member limit",
            );
        }
        let raw = match self.read(src, at, size.saturating_sub(at)) {
            Ok(r) => r,
            Err(e) => return unreadable(&kind.to_string(), &e.to_string()),
        };
        match decompress::decompress(kind, &raw, cap) {
            Ok(inner) => {
                let o = self.scan(&inner.as_slice(), depth + 1);
                let mut out = Outcome::new(compressed_format(kind));
                out.notes.push(format!("{kind}-compressed {}", o.format));
                out.absorb(o, Some(&format!("<{kind}>")));
                out
            }
            Err(e) => {
                let mut out = Outcome::new(compressed_format(kind));
                out.findings.push(Finding::new(
                    fr::UNREADABLE,
                    Verdict::Inconclusive,
                    format!("cannot decompress: {e}"),
                    Location::default(),
                ));
                out
            }
        }
    }

    /// A z-file of joblib before 0.10: a pickle compressed with zlib behind a 21-byte header.
    /// `joblib.load` still reads these (`load_compatibility`), and unpickles what they hold.
    fn scan_joblib_zfile(&mut self, src: &dyn ReadAt, data_at: u64, depth: u32) -> Outcome {
        let mut out = self.scan_compressed(src, data_at, Compression::Zlib, depth);
        out.format = "joblib-zfile";
        out.notes.insert(
            0,
            "joblib (< 0.10) z-file: a 21-byte header, then zlib".into(),
        );
        out
    }

    fn scan_7z(&mut self, src: &dyn ReadAt, depth: u32) -> Outcome {
        let mut out = Outcome::new("7z");
        let cap = self.scanner.limits.archive.max_member_bytes;
        if src.size() > cap {
            return unreadable("7z archive", "larger than the member limit");
        }
        let raw = match self.read(src, 0, src.size()) {
            Ok(r) => r,
            Err(e) => return unreadable("7z archive", &e.to_string()),
        };
        // The decoder's own memory limit bounds dictionaries; every entry's output is capped
        // here, and the total by the archive limit.
        let mut reader = match sevenz_rust2::ArchiveReader::new_with_memory_limit(
            std::io::Cursor::new(raw),
            sevenz_rust2::Password::empty(),
            256 * 1024,
        ) {
            Ok(r) => r,
            Err(e) => return unreadable("7z archive", &e.to_string()),
        };
        // One thread: the multi-threaded LZMA2 decoder would start threads (and a malloc arena
        // each) for every archive, inside a scan that is already parallel across files.
        reader.set_thread_count(1);
        let mut members: Vec<(String, Result<Vec<u8>, String>)> = Vec::new();
        let mut total = 0u64;
        let max_total = self.scanner.limits.archive.max_total_bytes;
        let max_entries = self.scanner.limits.archive.max_entries;
        let res = reader.for_each_entries(|entry, r| {
            if entry.is_directory || !entry.has_stream {
                return Ok(true);
            }
            if members.len() >= max_entries {
                return Ok(false);
            }
            let mut buf = Vec::new();
            let got = std::io::Read::read_to_end(&mut std::io::Read::take(r, cap + 1), &mut buf);
            total += buf.len() as u64;
            let item = match got {
                Err(e) => Err(e.to_string()),
                Ok(_) if buf.len() as u64 > cap => {
                    Err(format!("member decompresses to more than {cap} bytes"))
                }
                Ok(_) => Ok(buf),
            };
            members.push((entry.name.clone(), item));
            Ok(total <= max_total)
        });
        if let Err(e) = res {
            out.findings.push(Finding::new(
                fr::UNREADABLE,
                Verdict::Inconclusive,
                format!("cannot unpack 7z archive: {e}"),
                Location::default(),
            ));
        }
        if total > max_total {
            out.findings.push(Finding::new(
                fr::UNREADABLE,
                Verdict::Inconclusive,
                format!("7z archive decompresses to more than {max_total} bytes"),
                Location::default(),
            ));
        }
        for (name, item) in members {
            match item {
                Ok(bytes) => {
                    self.bytes_read += bytes.len() as u64;
                    if self.worth_reading(&bytes[..bytes.len().min(512)], &name) {
                        let inner = self.scan_member(&bytes, Context::default(), depth);
                        out.absorb(inner, Some(&name));
                    }
                }
                Err(e) => out.findings.push(unreadable_member(&name, &e)),
            }
        }
        out
    }
}

/// Read a zip member like torch does (CRC ignored), but report a CRC mismatch: Python's
/// `zipfile` refuses such a member while torch loads it (CVE-2025-10156).
fn read_checked<R: ReadAt>(
    zip: &ZipArchive<R>,
    entry: &tg_archive::Entry,
    out: &mut Outcome,
) -> Result<Vec<u8>, tg_archive::ZipError> {
    let m = zip.read_member(entry)?;
    if let Some(an) = m.crc_mismatch {
        out.findings.push(Finding::new(
            fr::HOSTILE_ARCHIVE,
            Verdict::Suspicious,
            format!("{an}: torch loads this member while zipfile-based tools refuse it"),
            Location::default().within(&entry.name),
        ));
    }
    Ok(m.data)
}

fn compressed_format(kind: Compression) -> &'static str {
    match kind {
        Compression::Zlib => "zlib",
        Compression::Gzip => "gzip",
        Compression::Bzip2 => "bzip2",
        Compression::Xz => "xz",
        Compression::Lzma => "lzma",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
        _ => "compressed",
    }
}

/// Element size of a legacy typed storage class (`torch.FloatStorage` → 4).
fn storage_element_size(name: &str) -> Option<u64> {
    Some(match name {
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
        "FloatStorage" | "IntStorage" | "QInt32Storage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "CharStorage" | "ByteStorage" | "BoolStorage" | "QUInt8Storage" | "QInt8Storage"
        | "QUInt4x2Storage" | "QUInt2x4Storage" => 1,
        "ComplexDoubleStorage" => 16,
        _ => return None,
    })
}

/// Where a pickle stream is read from.
enum Stream<'a> {
    /// Entirely in memory.
    Mem(&'a [u8]),
    /// A file read a growing prefix at a time, and what has been read of it.
    File(&'a dyn ReadAt, Prefix),
}

/// The first read of a pickle stream in a file, and the least read after a span left unread.
const FIRST_WINDOW: u64 = 64 << 10;

/// Data the machine only steps over, at least this long, is left unread unless the verdict
/// depends on it: the contents of a large `bytes` object (a pickled numpy array's raw data),
/// or the raw array data joblib's loader skips.
const UNREAD_CONTENTS: u64 = 64 << 10;

/// The most spans one pickle stream leaves unread. Each costs one more run of the stream's
/// opcodes up to it; past this many, contents are read like everything else.
const MAX_UNREAD_SPANS: usize = 32;

/// Bytes of a file read for its pickle streams: the first `len` bytes of `buf` hold the file
/// from `at` on, except the spans in `unread` (in order), each inside data the machine only
/// stepped over ([`UNREAD_CONTENTS`]), which hold whatever the buffer held before.
///
/// The buffer comes from the scanner's pool and goes back to it: memory a scan has touched
/// once costs no page fault the next time, and a span left unread costs nothing at all when
/// it lies past what the buffer ever reached.
#[derive(Default)]
struct Prefix {
    at: u64,
    buf: Vec<u8>,
    len: usize,
    unread: Vec<(usize, usize)>,
}

impl Drop for Prefix {
    fn drop(&mut self) {
        crate::give_back_buffer(std::mem::take(&mut self.buf));
    }
}

impl Prefix {
    /// Starts again, empty, at file offset `at`.
    fn reset(&mut self, at: u64) {
        if self.buf.capacity() == 0 {
            self.buf = crate::take_buffer();
        }
        self.at = at;
        self.len = 0;
        self.unread.clear();
    }

    /// What was read (with the spans left unread).
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Makes room for `len` bytes, keeping the first `self.len`. With a `gap` (a span that
    /// will be left unread) the buffer is sized for the `whole` stream at once, in fresh zeroed
    /// memory: its pages are only touched where something is read into them, and no later
    /// growth copies the spans left unread.
    fn grow(&mut self, len: usize, gap: bool, whole: usize) {
        if len > self.buf.len() {
            if gap && whole > self.buf.capacity() {
                let mut grown = vec![0u8; whole.max(len)];
                grown[..self.len].copy_from_slice(&self.buf[..self.len]);
                crate::give_back_buffer(std::mem::replace(&mut self.buf, grown));
            } else {
                // Grown in place where the allocator can (a large buffer is remapped, not
                // copied); the new part is read into at once.
                self.buf.resize(len, 0);
            }
        }
        self.len = self.len.max(len);
    }

    /// The file offset just past the last byte held.
    fn end(&self) -> u64 {
        self.at + self.len as u64
    }

    /// Whether anything read contents of `a`'s values that were left unread here, in `a` or
    /// in the pickles nested in it.
    fn read_unread(&self, a: &Analysis) -> bool {
        let hit = |r: std::ops::Range<usize>| {
            self.unread
                .iter()
                .any(|&(from, to)| from < r.end && r.start < to)
        };
        a.arena.input_read().is_some_and(hit) || a.nested.iter().any(|(_, n)| self.read_unread(n))
    }

    /// Whether a pickle starting at `pos` can be run from this prefix.
    fn covers(&self, pos: u64) -> bool {
        self.len > 0 && (self.at..self.end()).contains(&pos)
    }
}

/// Whether the first thing a stream does that reaches code is importing a module whose name no
/// installed module has: text read as a protocol-0 `GLOBAL` (a YAML config's
/// `checkpoint_dir: /data` names the module `heckpoint_dir: /data`). The loader's import raises
/// there, so nothing after it runs. Only a file with that odd name already on `sys.path`
/// could answer it, and the stream cannot put one there.
fn aborts_at_first_import(a: &Analysis) -> bool {
    let Some(Event::Import { id, .. }) = a.first_code_event() else {
        return false;
    };
    a.arena.global_name(*id).is_some_and(|(module, _)| {
        module.is_empty()
            || module
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, ':' | '/' | '\\' | '\0'))
    })
}

fn to_usize(n: u64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| "read too large".to_owned())
}

/// A view of `src` from `start` on.
struct Window<'a> {
    src: &'a dyn ReadAt,
    start: u64,
}

impl ReadAt for Window<'_> {
    fn size(&self) -> u64 {
        self.src.size().saturating_sub(self.start)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let at = self
            .start
            .checked_add(offset)
            .ok_or_else(|| std::io::Error::other("offset overflows"))?;
        self.src.read_exact_at(buf, at)
    }

    fn as_slice(&self) -> Option<&[u8]> {
        let start = usize::try_from(self.start).ok()?;
        self.src.as_slice()?.get(start..)
    }
}

fn unreadable(what: &str, why: &str) -> Outcome {
    let mut o = Outcome::new("unknown");
    o.findings.push(Finding::new(
        fr::UNREADABLE,
        Verdict::Inconclusive,
        format!("cannot read {what}: {why}"),
        Location::default(),
    ));
    o
}

/// A pickle stream that could not be fully analysed (a cap, an over-long stream).
fn limit(why: String, at: u64) -> Finding {
    Finding::new(
        judge::rules::LIMIT,
        Verdict::Inconclusive,
        why,
        Location::at(at),
    )
}

/// An archive member that could not be read.
fn unreadable_member(name: &str, e: &dyn std::fmt::Display) -> Finding {
    Finding::new(
        fr::UNREADABLE,
        Verdict::Inconclusive,
        format!("cannot read member: {e}"),
        Location::default().within(name),
    )
}

fn timeout() -> Finding {
    Finding::new(
        fr::TIMEOUT,
        Verdict::Inconclusive,
        "the per-file time budget ran out before the scan finished",
        Location::default(),
    )
}

fn bad_npy(why: &str) -> Finding {
    Finding::new(
        fr::BAD_NPY,
        Verdict::Inconclusive,
        format!("numpy header cannot be parsed: {why}"),
        Location::default(),
    )
}

/// Whether a `.npy` header's `descr` holds Python objects; `None` if the header is not the
/// dict literal numpy writes. numpy reads the header with `ast.literal_eval` and the descr with
/// `numpy.dtype(...)`, so escapes are decoded first and any descr that is not a plain numeric
/// type is treated as one that may hold objects (scanning plain bytes as a pickle is harmless).
fn descr_has_object(header: &str) -> Option<bool> {
    let lit = crate::literal::parse(header.trim_end_matches(['\n', ' ', '\0']))?;
    let descr = lit.dict_get("descr")?;
    Some(crate::literal::descr_may_hold_objects(descr))
}

/// The offset just past the next `torch.ops.` or `ops.` (how saved TorchScript code spells
/// operator calls, `python_print.cpp`), when `ops` starts a name.
fn find_ops(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = s[from..].find("ops.") {
        let at = from + p;
        let starts_name = s[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
        if starts_name || s[..at].ends_with("torch.") {
            return Some(at + 4);
        }
        from = at + 4;
    }
    None
}

fn scan_torchscript_code(name: &str, bytes: &[u8], out: &mut Outcome) {
    let text = String::from_utf8_lossy(bytes);
    const KNOWN_OPS: &[&str] = &[
        "aten",
        "prim",
        "quantized",
        "_quantized",
        "profiler",
        "_caffe2",
        "image",
        "torchvision",
        "sparse",
        "fbgemm",
        "mkldnn",
        "_c10d_functional",
        "c10d",
    ];
    for (i, line) in text.lines().enumerate() {
        for word in [
            "__import__",
            "exec(",
            "eval(",
            "os.system",
            "subprocess",
            "builtins.",
            "getattr(",
            "open(",
        ] {
            if line.contains(word) {
                out.findings.push(
                    Finding::new(
                        fr::TORCHSCRIPT_CODE,
                        Verdict::Malicious,
                        format!(
                            "TorchScript code line {} reaches Python through '{word}'",
                            i + 1
                        ),
                        Location::default().within(name),
                    )
                    .with_evidence(line.trim().chars().take(200).collect::<String>()),
                );
            }
        }
        let mut rest = line;
        while let Some(p) = find_ops(rest) {
            let after = &rest[p..];
            let ns: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !KNOWN_OPS.contains(&ns.as_str()) {
                out.findings.push(
                    Finding::new(fr::TORCHSCRIPT_CODE, Verdict::Suspicious, format!("TorchScript code line {} calls custom operator namespace torch.ops.{ns}, which needs native code loaded at run time", i + 1), Location::default().within(name))
                        .with_evidence(line.trim().chars().take(200).collect::<String>()),
                );
            }
            rest = after;
        }
    }
}

/// `module.name` of a global, so `joblib` + `numpy_pickle.X` equals `joblib.numpy_pickle` + `X`
/// (protocol 4 `find_class` walks dotted names).
fn full_name(arena: &Arena, id: Id) -> Option<String> {
    arena.global_name(id).map(|(m, n)| format!("{m}.{n}"))
}

/// A pickle int as i128 (legacy magic check).
fn int_value(arena: &Arena, id: Id) -> Option<i128> {
    match arena.get(id) {
        Value::Int(i) => Some(i128::from(*i)),
        Value::BigInt(b) if b.len() <= 16 => {
            let neg = b.last().is_some_and(|x| x & 0x80 != 0);
            let mut buf = if neg { [0xffu8; 16] } else { [0u8; 16] };
            buf[..b.len()].copy_from_slice(b);
            Some(i128::from_le_bytes(buf))
        }
        _ => None,
    }
}

/// joblib's `NumpyUnpickler`: after `BUILD` of a `NumpyArrayWrapper`, `read_array` reads the
/// array from the stream (`joblib/numpy_pickle.py`): an object array is a whole nested pickle,
/// anything else is `prod(shape) * itemsize` raw bytes, preceded by an alignment pad when the
/// wrapper has `numpy_array_alignment_bytes`. It judges by the wrapper's values alone and never
/// reads the input: `run_pickle` leaves the contents of large `bytes` objects unread.
#[derive(Debug, Default)]
struct JoblibHook;

impl Hook for JoblibHook {
    fn after_build(
        &mut self,
        arena: &Arena,
        _input: &[u8],
        target: Id,
    ) -> Result<AfterBuild, String> {
        let Some(Call {
            callee,
            state: Some(state),
            ..
        }) = arena.as_call(target)
        else {
            return Ok(AfterBuild::Continue);
        };
        if full_name(arena, *callee).as_deref() != Some("joblib.numpy_pickle.NumpyArrayWrapper") {
            return Ok(AfterBuild::Continue);
        }
        let Value::Dict(items) = arena.get(*state) else {
            return Err("NumpyArrayWrapper state is not a dict".into());
        };
        // A dict keeps the last value of a repeated key.
        let get = |key: &str| {
            items
                .iter()
                .rev()
                .find(|(k, _)| arena.as_str(*k) == Some(key))
                .map(|(_, v)| *v)
        };
        let dtype = get("dtype").ok_or("NumpyArrayWrapper has no dtype")?;
        let shape = get("shape").ok_or("NumpyArrayWrapper has no shape")?;
        let padded = get("numpy_array_alignment_bytes")
            .is_some_and(|v| !matches!(arena.get(v), Value::None));
        let itemsize = match dtype_itemsize(arena, dtype)? {
            None => return Ok(AfterBuild::NestedPickle),
            Some(n) => n,
        };
        let mut count: u64 = 1;
        for d in arena
            .as_tuple(shape)
            .ok_or("NumpyArrayWrapper shape is not a tuple")?
        {
            let d = arena
                .as_int(*d)
                .and_then(|d| u64::try_from(d).ok())
                .ok_or("NumpyArrayWrapper shape is not integers")?;
            count = count.checked_mul(d).ok_or("array size overflows")?;
        }
        let bytes = count.checked_mul(itemsize).ok_or("array size overflows")?;
        Ok(if padded {
            AfterBuild::SkipPadded(bytes)
        } else {
            AfterBuild::SkipBytes(bytes)
        })
    }
}

/// Item size of `numpy.dtype('f8', False, True)`; `None` for object dtypes.
fn dtype_itemsize(arena: &Arena, dtype: Id) -> Result<Option<u64>, String> {
    let Some(Call { callee, args, .. }) = arena.as_call(dtype) else {
        return Err("array dtype is not a numpy.dtype".into());
    };
    match full_name(arena, *callee).as_deref() {
        Some("numpy.dtype") => {}
        Some(n) if n.starts_with("numpy.dtypes.") => {}
        _ => return Err("array dtype is not a numpy.dtype".into()),
    }
    let spec = arena
        .as_tuple(*args)
        .and_then(|t| t.first())
        .and_then(|s| arena.as_str(*s))
        .ok_or("dtype spec is not a string")?;
    let spec = spec.trim_start_matches(['<', '>', '|', '=']);
    let (kind, digits) = spec.split_at(
        spec.find(|c: char| c.is_ascii_digit())
            .unwrap_or(spec.len()),
    );
    let n: u64 = if digits.is_empty() {
        0
    } else {
        digits
            .split('[')
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| format!("dtype '{spec}' has no size"))?
    };
    Ok(Some(match kind {
        "O" => return Ok(None),
        "b" | "i" | "u" | "f" | "c" | "S" | "V" | "a" if n > 0 => n,
        "M" | "m" => 8,
        "U" => n.checked_mul(4).ok_or("dtype size overflows")?,
        "?" => 1,
        _ => return Err(format!("dtype '{spec}' is not understood")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joblib_zfile_lengths_parse_as_python_int_base_16() {
        for (field, want) in [
            (&b"0x139              "[..], Some(0x139)),
            (b"  +0X_1_0 \t", Some(16)),
            (b"ff", Some(255)),
            (b"0x", None),
            (b"-0x1", None),
            (b"1__0", None),
            (b"_1", None),
            (b"1_", None),
            (b"0x1g", None),
            (b"   ", None),
        ] {
            assert_eq!(
                python_hex_int(field),
                want,
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        assert_eq!(joblib_zfile(b"ZF0x10               x\x9c"), Some(21));
        assert_eq!(joblib_zfile(b"ZF0x10                x\x9c"), Some(22));
        assert_eq!(joblib_zfile(b"ZFnot a length here x\x9c"), None);
        assert_eq!(joblib_zfile(b"ZF0x10"), None);
    }
}
