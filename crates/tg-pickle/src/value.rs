//! The values the symbolic machine pushes: constants, containers, and symbols for everything
//! that would have been produced by running code (imports, calls, persistent loads).
//!
//! Values live in an [`Arena`] and refer to each other by [`Id`], so sharing through the memo
//! or `DUP` costs nothing and a "billion laughs" memo expansion stays linear in the input.

use std::fmt::Write as _;

use crate::op::Opcode;

/// An index into the [`Arena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u32);

/// A byte string: either a slice of the input (no copy) or decoded bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Bytes {
    /// `len` bytes at `start` in the analysed buffer.
    Input {
        /// Offset in the buffer.
        start: usize,
        /// Length in bytes.
        len: usize,
    },
    /// Bytes that had to be decoded (escape sequences, `_codecs.encode` results).
    Owned(Vec<u8>),
}

/// One symbolic value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A larger integer: its two's-complement little-endian bytes.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A float whose value was not kept ([`crate::Options::elide_floats`]).
    ElidedFloat,
    /// A text string (decoded; protocol 0–2 byte strings are decoded as latin-1, the way the
    /// unpickler's default `encoding="ASCII"` turns them into `str` for every ASCII name).
    Str(String),
    /// A `bytes` object (`bytearray` when `mutable`).
    Bytes {
        /// The contents.
        bytes: Bytes,
        /// Whether this is a `bytearray` (`BYTEARRAY8`).
        mutable: bool,
    },
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict, in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A set.
    Set(Vec<Id>),
    /// A frozenset.
    FrozenSet(Vec<Id>),
    /// The object a `GLOBAL`, `STACK_GLOBAL` or `INST` resolved: `module.name` after
    /// `find_class`. Boxed, like [`Value::Call`]: imports and calls are few, while every value
    /// would pay inline for the largest variant.
    Global(Box<GlobalName>),
    /// A global whose name could not be resolved statically (`STACK_GLOBAL` fed by computed
    /// values, or `EXT*` codes from the copyreg registry).
    UnknownGlobal {
        /// Why it could not be resolved.
        why: String,
    },
    /// What calling a callable returned (`REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST`, `OBJ`), plus
    /// whatever `BUILD`, `SETITEM(S)`, `APPEND(S)` later applied to it. Boxed, like
    /// [`Value::Global`].
    Call(Box<Call>),
    /// What the loader's `persistent_load(pid)` returned.
    Persistent(Id),
    /// An out-of-band buffer (protocol 5).
    Buffer,
}

// Every constant a pickle pushes (61k `BINFLOAT`s in one list, say) is a `Value` written to
// memory touched for the first time, so in a short-lived scanner process its size is paid in
// page faults: keep it at four words (`Vec`'s three plus the tag).
const _: () = assert!(size_of::<Value>() <= 32);

/// `module.name` of a [`Value::Global`], as written in the pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalName {
    /// The module.
    pub module: String,
    /// The attribute path; may be dotted (attribute walk).
    pub name: String,
}

/// A [`Value::Call`]: the callable, its arguments, and what was applied to the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The callable.
    pub callee: Id,
    /// The positional arguments (a tuple).
    pub args: Id,
    /// Keyword arguments (`NEWOBJ_EX` only).
    pub kwargs: Option<Id>,
    /// The opcode that made the call.
    pub opcode: Opcode,
    /// State applied by `BUILD`.
    pub state: Option<Id>,
    /// Items added by `SETITEM(S)`.
    pub items: Vec<(Id, Id)>,
    /// Items added by `APPEND(S)` / `ADDITEMS`.
    pub appended: Vec<Id>,
}

/// Storage for every value of one analysis.
///
/// Values live in chunks that never move: chunk `k` holds `FIRST_CHUNK << k` values, so an id's
/// chunk is one leading-zeros count away, and growing allocates a new chunk instead of copying
/// (or, for a large vector, `mremap`-ing) the ones before it. In a short-lived scanner process
/// on a multi-core virtual machine, remapping a large vector while other threads run costs a
/// TLB shoot-down on every core, and copying one faults in fresh pages: both cost more than
/// running the pickle. Dropped chunks go back to a small pool, emptied, and the next analysis
/// on any thread starts from them.
#[derive(Debug, Default)]
pub struct Arena {
    chunks: Vec<Vec<Value>>,
    len: usize,
    /// The span of the input covering every `Bytes::Input` contents read so far through
    /// [`Arena::as_bytes`].
    read: std::cell::Cell<Option<(usize, usize)>>,
}

/// Values in an arena's first chunk (8 KiB); each further chunk doubles.
const FIRST_CHUNK: usize = 1 << 8;

/// Chunk sizes the pool keeps, as chunk numbers `0..POOLED_CHUNKS` (the largest 16 MiB):
/// bigger chunks go back to the system.
const POOLED_CHUNKS: usize = 12;

/// How many chunks of each size the pool keeps (threads times nested pickles).
const SPARE_CHUNKS: usize = 8;

/// The chunk holding value `id`, and the index in it.
fn locate(id: usize) -> (usize, usize) {
    let j = id + FIRST_CHUNK;
    let k = (j.ilog2() - FIRST_CHUNK.ilog2()) as usize;
    (k, j - (FIRST_CHUNK << k))
}

/// Emptied chunks by chunk number, shared by every thread: a scan's threads come and go, and
/// memory one of them faulted in serves the next analysis on any of them (a pool per thread
/// would also be unmapped at each thread's exit, while its caller waits to join it).
static SPARE: std::sync::Mutex<[Vec<Vec<Value>>; POOLED_CHUNKS]> =
    std::sync::Mutex::new([const { Vec::new() }; POOLED_CHUNKS]);

/// The pool, whatever a panicking thread left in it (only emptied chunks go in).
fn spare() -> std::sync::MutexGuard<'static, [Vec<Vec<Value>>; POOLED_CHUNKS]> {
    SPARE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An empty chunk for chunk number `k`: a pooled one, or a new one.
fn take_chunk(k: usize) -> Vec<Value> {
    let pooled = if k < POOLED_CHUNKS {
        spare()[k].pop()
    } else {
        None
    };
    pooled.unwrap_or_else(|| Vec::with_capacity(FIRST_CHUNK << k))
}

impl Arena {
    /// The value at `id`.
    pub fn get(&self, id: Id) -> &Value {
        let (k, i) = locate(id.0 as usize);
        &self.chunks[k][i]
    }

    pub(crate) fn get_mut(&mut self, id: Id) -> &mut Value {
        let (k, i) = locate(id.0 as usize);
        &mut self.chunks[k][i]
    }

    pub(crate) fn push(&mut self, v: Value) -> Id {
        let id = Id(u32::try_from(self.len).unwrap_or(u32::MAX));
        let full = match self.chunks.last() {
            Some(last) => last.len() == FIRST_CHUNK << (self.chunks.len() - 1),
            None => true,
        };
        if full {
            self.chunks.push(take_chunk(self.chunks.len()));
        }
        let last = self.chunks.len() - 1;
        self.chunks[last].push(v);
        self.len += 1;
        id
    }

    /// How many values were created.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no value was created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The smallest span of the analysed buffer that covers the contents of every `bytes`
    /// value read through [`Arena::as_bytes`] (rendering, judging); `None` if none was. The
    /// machine itself never reads those contents, so a caller that left them unread can tell
    /// whether anything depended on them.
    pub fn input_read(&self) -> Option<std::ops::Range<usize>> {
        self.read.get().map(|(lo, hi)| lo..hi)
    }

    /// The text of a `Str` value.
    pub fn as_str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes of a `Bytes` value, resolved against the analysed buffer. Every span of the
    /// buffer resolved this way is remembered ([`Arena::input_read`]).
    pub fn as_bytes<'a>(&'a self, id: Id, input: &'a [u8]) -> Option<&'a [u8]> {
        match self.get(id) {
            Value::Bytes {
                bytes: Bytes::Input { start, len },
                ..
            } => {
                let end = start.checked_add(*len)?;
                let span = match self.read.get() {
                    Some((lo, hi)) => (lo.min(*start), hi.max(end)),
                    None => (*start, end),
                };
                self.read.set(Some(span));
                input.get(*start..end)
            }
            Value::Bytes {
                bytes: Bytes::Owned(b),
                ..
            } => Some(b),
            _ => None,
        }
    }

    /// The integer value of an `Int`.
    pub fn as_int(&self, id: Id) -> Option<i64> {
        match self.get(id) {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The elements of a tuple.
    pub fn as_tuple(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Value::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// The call a `Call` value records.
    pub fn as_call(&self, id: Id) -> Option<&Call> {
        match self.get(id) {
            Value::Call(c) => Some(c),
            _ => None,
        }
    }

    /// `module.name` of a global.
    pub fn global_name(&self, id: Id) -> Option<(&str, &str)> {
        match self.get(id) {
            Value::Global(g) => Some((&g.module, &g.name)),
            _ => None,
        }
    }

    /// A short Python-like rendering for evidence: bounded in depth and length, so a hostile
    /// self-referencing structure renders in constant space.
    pub fn render(&self, id: Id, input: &[u8]) -> String {
        let mut out = String::new();
        self.render_into(id, input, 0, &mut out);
        if out.len() > MAX_RENDER {
            let mut cut = MAX_RENDER;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
        }
        out
    }

    fn render_into(&self, id: Id, input: &[u8], depth: usize, out: &mut String) {
        if out.len() > MAX_RENDER {
            return;
        }
        if depth > 8 {
            out.push('…');
            return;
        }
        let seq = |arena: &Self, items: &[Id], open: &str, close: &str, out: &mut String| {
            out.push_str(open);
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if i >= 16 || out.len() > MAX_RENDER {
                    out.push('…');
                    break;
                }
                arena.render_into(*it, input, depth + 1, out);
            }
            out.push_str(close);
        };
        match self.get(id) {
            Value::None => out.push_str("None"),
            Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::BigInt(b) => {
                let _ = write!(out, "<int of {} bytes>", b.len());
            }
            Value::Float(f) => {
                let _ = write!(out, "{f:?}");
            }
            Value::ElidedFloat => out.push_str("<float>"),
            Value::Str(s) => py_repr(truncate(s, 160), out),
            Value::Bytes { .. } => {
                let b = self.as_bytes(id, input).unwrap_or(&[]);
                out.push_str("b'");
                for &c in b.iter().take(64) {
                    if c.is_ascii_graphic() && c != b'\'' && c != b'\\' || c == b' ' {
                        out.push(c as char);
                    } else {
                        let _ = write!(out, "\\x{c:02x}");
                    }
                }
                if b.len() > 64 {
                    let _ = write!(out, "…({} bytes)", b.len());
                }
                out.push('\'');
            }
            Value::Tuple(t) => {
                if t.len() == 1 {
                    out.push('(');
                    self.render_into(t[0], input, depth + 1, out);
                    out.push_str(",)");
                } else {
                    seq(self, t, "(", ")", out);
                }
            }
            Value::List(l) => seq(self, l, "[", "]", out),
            Value::Set(l) => seq(self, l, "{", "}", out),
            Value::FrozenSet(l) => seq(self, l, "frozenset({", "})", out),
            Value::Dict(d) => {
                out.push('{');
                for (i, (k, v)) in d.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    if i >= 16 || out.len() > MAX_RENDER {
                        out.push('…');
                        break;
                    }
                    self.render_into(*k, input, depth + 1, out);
                    out.push_str(": ");
                    self.render_into(*v, input, depth + 1, out);
                }
                out.push('}');
            }
            Value::Global(g) => {
                let _ = write!(out, "{}.{}", g.module, g.name);
            }
            Value::UnknownGlobal { why } => {
                let _ = write!(out, "<unresolved global: {why}>");
            }
            Value::Call(c) => {
                let Call {
                    callee,
                    args,
                    kwargs,
                    ..
                } = &**c;
                self.render_into(*callee, input, depth + 1, out);
                match self.get(*args) {
                    Value::Tuple(t) => seq(self, t, "(", ")", out),
                    _ => {
                        out.push_str("(*");
                        self.render_into(*args, input, depth + 1, out);
                        out.push(')');
                    }
                }
                if let Some(k) = kwargs {
                    out.push_str("(**");
                    self.render_into(*k, input, depth + 1, out);
                    out.push(')');
                }
            }
            Value::Persistent(pid) => {
                out.push_str("persistent_load(");
                self.render_into(*pid, input, depth + 1, out);
                out.push(')');
            }
            Value::Buffer => out.push_str("<out-of-band buffer>"),
        }
    }
}

const MAX_RENDER: usize = 400;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Python's `repr` of a `str`, single-quoted.
fn py_repr(s: &str, out: &mut String) {
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
}

impl Drop for Arena {
    fn drop(&mut self) {
        let mut chunks = std::mem::take(&mut self.chunks);
        chunks.truncate(POOLED_CHUNKS);
        for chunk in &mut chunks {
            chunk.clear();
        }
        let mut spare = spare();
        for (k, chunk) in chunks.into_iter().enumerate() {
            if spare[k].len() < SPARE_CHUNKS {
                spare[k].push(chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_start_where_the_previous_one_ends() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(FIRST_CHUNK - 1), (0, FIRST_CHUNK - 1));
        assert_eq!(locate(FIRST_CHUNK), (1, 0));
        assert_eq!(locate(3 * FIRST_CHUNK - 1), (1, 2 * FIRST_CHUNK - 1));
        assert_eq!(locate(3 * FIRST_CHUNK), (2, 0));
        assert_eq!(locate(u32::MAX as usize).0, 24);
    }

    #[test]
    fn every_value_comes_back_across_chunks_and_reuse() {
        for round in 0..3 {
            let mut arena = Arena::default();
            let n = 40_000 + round * 7;
            let ids: Vec<Id> = (0..n).map(|i| arena.push(Value::Int(i as i64))).collect();
            assert_eq!(arena.len(), n);
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(id.0 as usize, i);
                assert_eq!(arena.get(*id), &Value::Int(i as i64));
            }
            *arena.get_mut(ids[n - 1]) = Value::None;
            assert_eq!(arena.get(ids[n - 1]), &Value::None);
        }
    }
}
