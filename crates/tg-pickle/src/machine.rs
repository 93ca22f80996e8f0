//! The symbolic pickle machine: CPython's unpickler loop with every side effect replaced by a
//! symbol and an [`Event`].
//!
//! Stack, mark stack (with its fence), memo and `MEMOIZE` numbering follow `Modules/_pickle.c`
//! exactly, because every scanner that approximated them (nearest-string heuristics, a memo
//! keyed by write order, ignoring `MEMOIZE`'s implicit index) was bypassed through the gap.

use std::collections::HashMap;

use crate::op::Opcode;
use crate::value::{Arena, Bytes, Call, GlobalName, Id, Value};

/// Resource caps. Exhausting one ends the analysis with [`End::Limit`], which scanners report
/// as inconclusive.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Opcodes executed.
    pub max_ops: u64,
    /// Values on the stack at once.
    pub max_stack: usize,
    /// Nested `MARK`s at once.
    pub max_marks: usize,
    /// Memo entries.
    pub max_memo: usize,
    /// Values created in total.
    pub max_values: usize,
    /// Bytes of decoded (copied) strings in total.
    pub max_owned_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ops: 50_000_000,
            max_stack: 1_000_000,
            max_marks: 100_000,
            max_memo: 5_000_000,
            max_values: 20_000_000,
            max_owned_bytes: 256 << 20,
        }
    }
}

/// Something the loader would have done that matters to a policy.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// `find_class(module, name)`: imports `module` and walks `name`.
    Import {
        /// The resulting value.
        id: Id,
        /// Where the opcode sits.
        offset: u64,
        /// `GLOBAL`, `STACK_GLOBAL` or `INST`.
        opcode: Opcode,
    },
    /// A callable was called.
    Call {
        /// The `Call` value (its callee and arguments).
        id: Id,
        /// Where the opcode sits.
        offset: u64,
    },
    /// `BUILD` applied `state` to `target` (`__setstate__`, or a `__dict__`/slots update).
    Build {
        /// The object built.
        target: Id,
        /// The state.
        state: Id,
        /// Where the opcode sits.
        offset: u64,
    },
    /// `SETITEM(S)`, `APPEND(S)` or `ADDITEMS` on something that is not a plain container
    /// built by the pickle itself: runs the target's own `__setitem__`/`append`/`add`.
    Mutate {
        /// The target.
        target: Id,
        /// Where the opcode sits.
        offset: u64,
        /// The opcode.
        opcode: Opcode,
    },
    /// `persistent_load(pid)`.
    Persistent {
        /// The persistent id.
        pid: Id,
        /// Where the opcode sits.
        offset: u64,
    },
    /// `EXT1/2/4`: a global taken from the copyreg extension registry by number.
    Extension {
        /// The registry code.
        code: i64,
        /// The value pushed.
        id: Id,
        /// Where the opcode sits.
        offset: u64,
    },
    /// `STACK_GLOBAL` whose operands are not constant strings.
    DynamicGlobal {
        /// The value pushed.
        id: Id,
        /// Where the opcode sits.
        offset: u64,
    },
    /// An opcode straddles the end of the enclosing `FRAME`: a bytes-based parser and the
    /// file-based C unpickler disagree about what follows.
    FrameOverrun {
        /// The opcode's offset.
        offset: u64,
        /// Where the frame said it ends.
        frame_end: u64,
    },
    /// An opcode ran (for opcode-subset policies such as weights-only).
    Opcode {
        /// The opcode.
        opcode: Opcode,
        /// Where it sits.
        offset: u64,
    },
}

/// How the analysis ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// `STOP` at `offset`; the stream consumed `[start, offset + 1)`.
    Stop {
        /// The offset of the `STOP` opcode.
        offset: u64,
        /// The unpickled value.
        value: Id,
    },
    /// The loader would raise here: nothing after this offset runs.
    Error {
        /// Offset of the failing opcode.
        offset: u64,
        /// What CPython would complain about.
        message: String,
    },
    /// The buffer ended before `STOP` and the caller said more input exists.
    NeedMore,
    /// A resource cap was hit.
    Limit {
        /// Offset of the opcode being executed.
        offset: u64,
        /// Which cap.
        which: &'static str,
    },
}

/// What a [`Hook`] asks the machine to do after a `BUILD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBuild {
    /// Nothing: keep reading opcodes.
    Continue,
    /// The loader reads this many raw bytes from the stream here (joblib array data).
    SkipBytes(u64),
    /// The loader reads one byte `n`, skips `n` padding bytes, then reads this many raw bytes
    /// (joblib ≥ 1.2 aligns array data).
    SkipPadded(u64),
    /// The loader calls `pickle.load` on the stream here (joblib object arrays): a whole
    /// nested pickle follows, then the outer stream continues.
    NestedPickle,
}

/// Format-specific knowledge of loaders that read raw data from the middle of a pickle stream.
pub trait Hook {
    /// Called after every `BUILD` with the built object.
    fn after_build(
        &mut self,
        arena: &Arena,
        input: &[u8],
        target: Id,
    ) -> Result<AfterBuild, String>;
}

/// A [`Hook`] for plain `pickle.load`, which reads nothing out of band.
#[derive(Debug, Default)]
pub struct NoHook;

impl Hook for NoHook {
    fn after_build(&mut self, _: &Arena, _: &[u8], _: Id) -> Result<AfterBuild, String> {
        Ok(AfterBuild::Continue)
    }
}

/// Options for one analysis.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Resource caps.
    pub limits: Limits,
    /// Whether the buffer holds the whole stream (else hitting its end is [`End::NeedMore`]).
    pub complete: bool,
    /// Record an [`Event::Opcode`] for every opcode outside torch's weights-only subset.
    pub record_opcodes: bool,
    /// Push one shared [`Value::ElidedFloat`] for every float instead of its value. A scanner
    /// never judges by float values, and a pickled list of a million floats (scikit-learn
    /// thresholds, plain-Python weights) would otherwise cost 32 bytes and a page-fault share
    /// each; floats are immutable, so sharing one value is not observable to anything else.
    pub elide_floats: bool,
}

/// The result of running one pickle stream symbolically.
#[derive(Debug)]
pub struct Analysis {
    /// Every value created.
    pub arena: Arena,
    /// Events in stream order.
    pub events: Vec<Event>,
    /// How it ended.
    pub end: End,
    /// The protocol announced by `PROTO` (0 if none).
    pub proto: u8,
    /// Opcodes executed.
    pub ops: u64,
    /// Offset just past the last byte consumed (after `STOP`, or where it failed).
    pub consumed: u64,
    /// Byte ranges the hook told the machine to skip (raw data read by the loader).
    pub skipped: Vec<(u64, u64)>,
    /// Nested pickles read from the stream at a hook's request: (offset, analysis).
    pub nested: Vec<(u64, Analysis)>,
    /// What more input the machine wanted, when it ended with [`End::NeedMore`].
    pub need: Need,
}

/// The input an analysis that ended with [`End::NeedMore`] was missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// The offset the input must reach for the current opcode (0: not known, as for a
    /// newline-terminated argument).
    pub end: u64,
    /// Where bytes the machine steps over without reading start, when those bytes (up to
    /// `end`) are all that is missing: the contents of a `bytes` or `bytearray` object, whose
    /// span it records ([`crate::Bytes::Input`]), or raw data a [`Hook`] skipped. A caller may
    /// hand it a buffer in which they were left unread, as long as nothing reads that span
    /// afterwards (a hook, a judge rendering or following the value, or another analysis that
    /// reads them as opcodes).
    pub contents: Option<u64>,
}

impl Analysis {
    /// Whether the stream reached `STOP`.
    pub fn stopped(&self) -> bool {
        matches!(self.end, End::Stop { .. })
    }

    /// Whether any opcode that resolves or runs code was seen (a stream that errors before
    /// any of these cannot have executed anything).
    pub fn touched_code(&self) -> bool {
        self.first_code_event().is_some() || self.nested.iter().any(|(_, n)| n.touched_code())
    }

    /// The first event of this stream that resolves or runs code: an import, an extension
    /// lookup, a dynamic global or a call. Nested streams come after the call that unpickles
    /// them, so they are never first.
    pub fn first_code_event(&self) -> Option<&Event> {
        self.events.iter().find(|e| {
            matches!(
                e,
                Event::Import { .. }
                    | Event::Extension { .. }
                    | Event::DynamicGlobal { .. }
                    | Event::Call { .. }
            )
        })
    }
}

/// Run the pickle stream starting at `start` in `input`.
pub fn analyze(input: &[u8], start: usize, opts: &Options, hook: &mut dyn Hook) -> Analysis {
    analyze_depth(input, start, opts, hook, 0)
}

fn analyze_depth(
    input: &[u8],
    start: usize,
    opts: &Options,
    hook: &mut dyn Hook,
    depth: u32,
) -> Analysis {
    let mut m = Machine {
        input,
        pos: start,
        opts,
        arena: Arena::default(),
        events: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Memo::default(),
        proto: 0,
        ops: 0,
        owned: 0,
        frame_end: None,
        skipped: Vec::new(),
        nested: Vec::new(),
        depth,
        op_end: None,
        elided_float: None,
        need: Need::default(),
    };
    let end = m.run(hook);
    Analysis {
        consumed: m.pos as u64,
        arena: m.arena,
        events: m.events,
        end,
        proto: m.proto,
        ops: m.ops,
        skipped: m.skipped,
        nested: m.nested,
        need: m.need,
    }
}

/// Most memo slots kept in a plain array, indexed directly: (8 bytes each, at most 2 MiB)
/// pickles number their memo densely from 0, so this covers every real one; higher indices
/// (only a hand-made pickle uses them) go to a hash map.
const DENSE_MEMO: u64 = 1 << 18;

/// The unpickler's memo: index -> value, and how many slots are filled (`MEMOIZE` numbers the
/// next one by that count, like CPython's `memo_len`).
#[derive(Default)]
struct Memo {
    dense: Vec<Option<Id>>,
    sparse: HashMap<u64, Id>,
    filled: usize,
}

impl Memo {
    fn get(&self, idx: u64) -> Option<Id> {
        if idx < DENSE_MEMO {
            self.dense.get(idx as usize).copied().flatten()
        } else {
            self.sparse.get(&idx).copied()
        }
    }

    fn insert(&mut self, idx: u64, id: Id) {
        let fresh = if idx < DENSE_MEMO {
            let i = idx as usize;
            if i >= self.dense.len() {
                self.dense.resize(i + 1, None);
            }
            self.dense[i].replace(id).is_none()
        } else {
            self.sparse.insert(idx, id).is_none()
        };
        self.filled += usize::from(fresh);
    }

    fn len(&self) -> usize {
        self.filled
    }
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    opts: &'a Options,
    arena: Arena,
    events: Vec<Event>,
    stack: Vec<Id>,
    /// Stack lengths saved by `MARK`; the last one is the fence.
    marks: Vec<usize>,
    memo: Memo,
    proto: u8,
    ops: u64,
    owned: usize,
    frame_end: Option<usize>,
    skipped: Vec<(u64, u64)>,
    nested: Vec<(u64, Analysis)>,
    depth: u32,
    /// The one value every float shares under [`Options::elide_floats`].
    elided_float: Option<Id>,
    /// Where the current opcode's own bytes end, when a hook then skipped raw data.
    op_end: Option<usize>,
    /// What the input lacked when reading stopped with [`Halt::NeedMore`].
    need: Need,
}

/// Why one step stopped the loop.
enum Halt {
    Stop(Id),
    Error(String),
    NeedMore,
    Limit(&'static str),
}

type Step<T> = Result<T, Halt>;

fn err<T>(msg: impl Into<String>) -> Step<T> {
    Err(Halt::Error(msg.into()))
}

impl<'a> Machine<'a> {
    fn run(&mut self, hook: &mut dyn Hook) -> End {
        loop {
            let offset = self.pos;
            match self.step(hook) {
                Ok(()) => {}
                Err(h) => {
                    return match h {
                        Halt::Stop(value) => End::Stop {
                            offset: offset as u64,
                            value,
                        },
                        Halt::Error(message) => End::Error {
                            offset: offset as u64,
                            message,
                        },
                        Halt::NeedMore => End::NeedMore,
                        Halt::Limit(which) => End::Limit {
                            offset: offset as u64,
                            which,
                        },
                    };
                }
            }
        }
    }

    // ---- reading ----

    fn eof(&self) -> Halt {
        if self.opts.complete {
            Halt::Error("pickle data was truncated".into())
        } else {
            Halt::NeedMore
        }
    }

    fn take(&mut self, n: usize) -> Step<(usize, &'a [u8])> {
        let start = self.pos;
        let end = start.checked_add(n).ok_or_else(|| self.eof())?;
        let Some(bytes) = self.input.get(start..end) else {
            self.need.end = end as u64;
            return Err(self.eof());
        };
        self.pos = end;
        Ok((start, bytes))
    }

    /// Steps over `n` bytes the machine never reads (a bytes object's contents, raw data a hook
    /// skips) and returns where they start. Missing, they are what [`Need::contents`] names.
    fn skip(&mut self, n: usize) -> Step<usize> {
        let start = self.pos;
        self.take(n)
            .map(|(start, _)| start)
            .inspect_err(|_| self.need.contents = Some(start as u64))
    }

    fn take_len(&mut self, width: usize) -> Step<u64> {
        let (_, b) = self.take(width)?;
        let mut buf = [0u8; 8];
        buf[..width].copy_from_slice(b);
        Ok(u64::from_le_bytes(buf))
    }

    fn line(&mut self) -> Step<&'a [u8]> {
        let rest = self.input.get(self.pos..).unwrap_or(&[]);
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(self.eof()),
        }
    }

    // ---- the value stack, as Pdata in _pickle.c ----

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, id: Id) -> Step<()> {
        if self.stack.len() >= self.opts.limits.max_stack {
            return Err(Halt::Limit("stack depth"));
        }
        self.stack.push(id);
        Ok(())
    }

    // Every pushed constant goes through here. Left to itself the compiler keeps this an
    // out-of-line call that copies the value twice (about 10% more instructions on a pickle of
    // 60k floats, measured with callgrind).
    #[inline(always)]
    fn alloc(&mut self, v: Value) -> Step<Id> {
        if self.arena.len() >= self.opts.limits.max_values {
            return Err(Halt::Limit("values"));
        }
        Ok(self.arena.push(v))
    }

    fn push_new(&mut self, v: Value) -> Step<()> {
        let id = self.alloc(v)?;
        self.push(id)
    }

    /// Under [`Options::elide_floats`], right after a `BINFLOAT`: take the run of `BINFLOAT`s
    /// that follows at once (a pickled list of floats is little else). Each pushes the shared
    /// value and counts as an opcode, as its own `step` would; the run stops before anything a
    /// `step` treats specially: a float that would cross the frame's end or the input's, the
    /// opcode cap, the stack cap (BINFLOAT is in the weights-only subset, so no opcode event is
    /// due).
    fn elided_float_run(&mut self) -> Step<()> {
        let Some(id) = self.elided_float else {
            return Ok(());
        };
        let end = self
            .frame_end
            .map_or(self.input.len(), |e| e.min(self.input.len()));
        let ops_left = self.opts.limits.max_ops.saturating_sub(self.ops);
        let room = usize::try_from(ops_left)
            .unwrap_or(usize::MAX)
            .min(self.opts.limits.max_stack.saturating_sub(self.stack.len()));
        let floats = self
            .input
            .get(self.pos..end)
            .unwrap_or_default()
            .chunks_exact(9)
            .take(room)
            .take_while(|op| op[0] == Opcode::BinFloat as u8)
            .count();
        // One fill instead of a push per float: the run is most of a float list's pickle.
        self.stack.resize(self.stack.len() + floats, id);
        self.ops += floats as u64;
        self.pos += 9 * floats;
        Ok(())
    }

    fn push_float(&mut self, f: f64) -> Step<()> {
        if !self.opts.elide_floats {
            return self.push_new(Value::Float(f));
        }
        let id = match self.elided_float {
            Some(id) => id,
            None => {
                let id = self.alloc(Value::ElidedFloat)?;
                self.elided_float = Some(id);
                id
            }
        };
        self.push(id)
    }

    fn pop(&mut self) -> Step<Id> {
        if self.stack.len() <= self.fence() {
            return err("unpickling stack underflow");
        }
        Ok(self.stack.pop().unwrap_or(Id(0)))
    }

    fn top(&self) -> Step<Id> {
        if self.stack.len() <= self.fence() {
            return err("unpickling stack underflow");
        }
        Ok(*self.stack.last().unwrap_or(&Id(0)))
    }

    /// Pop the last mark (`marker()`) and return where the items above it start; the caller
    /// reads `stack[at..]` and truncates, so consuming them allocates nothing.
    fn pop_mark_at(&mut self) -> Step<usize> {
        let Some(mark) = self.marks.pop() else {
            return err("could not find MARK");
        };
        Ok(mark.min(self.stack.len()))
    }

    /// Pop everything above the last mark, and the mark (`marker()` + `Pdata_poptuple`).
    fn pop_mark(&mut self) -> Step<Vec<Id>> {
        let at = self.pop_mark_at()?;
        Ok(self.stack.split_off(at))
    }

    /// The top of the stack once `stack[at..]` is gone (`Pdata` after `pop_mark`): the target
    /// of `APPENDS`, `SETITEMS`, `ADDITEMS`.
    fn below(&self, at: usize) -> Step<Id> {
        if at <= self.fence() {
            return err("unpickling stack underflow");
        }
        Ok(self.stack[at - 1])
    }

    fn owned(&mut self, n: usize) -> Step<()> {
        self.owned = self.owned.saturating_add(n);
        if self.owned > self.opts.limits.max_owned_bytes {
            return Err(Halt::Limit("decoded string bytes"));
        }
        Ok(())
    }

    fn str_value(&mut self, bytes: &[u8]) -> Step<()> {
        self.owned(bytes.len())?;
        let s = std::string::String::from_utf8_lossy(bytes).into_owned();
        self.push_new(Value::Str(s))
    }

    fn latin1_value(&mut self, bytes: &[u8]) -> Step<()> {
        self.owned(bytes.len())?;
        let s: String = bytes.iter().map(|&b| b as char).collect();
        self.push_new(Value::Str(s))
    }

    fn bytes_value(&mut self, start: usize, len: usize, mutable: bool) -> Step<()> {
        self.push_new(Value::Bytes {
            bytes: Bytes::Input { start, len },
            mutable,
        })
    }

    fn memo_put(&mut self, idx: u64, id: Id) -> Step<()> {
        if self.memo.get(idx).is_none() && self.memo.len() >= self.opts.limits.max_memo {
            return Err(Halt::Limit("memo entries"));
        }
        self.memo.insert(idx, id);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Step<()> {
        match self.memo.get(idx) {
            Some(id) => self.push(id),
            None => err(format!("memo value not found at index {idx}")),
        }
    }

    fn import(&mut self, module: String, name: String, offset: usize, opcode: Opcode) -> Step<Id> {
        self.owned(module.len() + name.len())?;
        let id = self.alloc(Value::Global(Box::new(GlobalName { module, name })))?;
        self.events.push(Event::Import {
            id,
            offset: offset as u64,
            opcode,
        });
        Ok(id)
    }

    fn call(
        &mut self,
        callee: Id,
        args: Id,
        kwargs: Option<Id>,
        opcode: Opcode,
        offset: usize,
    ) -> Step<Id> {
        let id = self.alloc(Value::Call(Box::new(Call {
            callee,
            args,
            kwargs,
            opcode,
            state: None,
            items: Vec::new(),
            appended: Vec::new(),
        })))?;
        self.events.push(Event::Call {
            id,
            offset: offset as u64,
        });
        Ok(id)
    }

    /// `APPEND(S)` and `ADDITEMS`: add `stack[at..]` to the object just below them, then pop
    /// them. The items are read in place, so no opcode allocates a temporary list.
    fn append_from(&mut self, at: usize, offset: usize, op: Opcode) -> Step<()> {
        let target = self.below(at)?;
        let Machine {
            arena,
            stack,
            events,
            ..
        } = self;
        let new = &stack[at..];
        if !new.is_empty() || op == Opcode::AddItems {
            let mutated = match arena.get_mut(target) {
                Value::List(l) if op != Opcode::AddItems => {
                    l.extend_from_slice(new);
                    false
                }
                Value::Set(l) | Value::FrozenSet(l) if op == Opcode::AddItems => {
                    l.extend_from_slice(new);
                    false
                }
                Value::Call(c) => {
                    c.appended.extend_from_slice(new);
                    true
                }
                Value::Global(_) | Value::UnknownGlobal { .. } | Value::Persistent(_) => true,
                // CPython raises for other constants; going on only ever shows more.
                _ => false,
            };
            if mutated {
                events.push(mutate_event(target, offset, op));
            }
        }
        stack.truncate(at);
        Ok(())
    }

    /// `SETITEM(S)`: add the key/value pairs in `stack[at..]` to the object just below them,
    /// then pop them, reading them in place like [`Self::append_from`].
    fn set_from(&mut self, at: usize, offset: usize, op: Opcode) -> Step<()> {
        let target = self.below(at)?;
        let Machine {
            arena,
            stack,
            events,
            ..
        } = self;
        let kv = &stack[at..];
        if !kv.is_empty() {
            let pairs = kv.chunks_exact(2).map(|c| (c[0], c[1]));
            let mutated = match arena.get_mut(target) {
                Value::Dict(d) => {
                    d.extend(pairs);
                    false
                }
                Value::Call(c) => {
                    c.items.extend(pairs);
                    true
                }
                Value::Global(_) | Value::UnknownGlobal { .. } | Value::Persistent(_) => true,
                // list[i] = v and bytearray[i] = v work in CPython; other constants raise
                // there. Going on past a point where CPython stops only ever shows more.
                _ => false,
            };
            if mutated {
                events.push(mutate_event(target, offset, op));
            }
        }
        stack.truncate(at);
        Ok(())
    }

    // ---- the interpreter loop ----

    fn step(&mut self, hook: &mut dyn Hook) -> Step<()> {
        let offset = self.pos;
        let (_, b) = self.take(1)?;
        let Some(op) = Opcode::from_byte(b[0]) else {
            return err(format!("invalid load key, '\\x{:02x}'", b[0]));
        };
        self.ops += 1;
        if self.ops > self.opts.limits.max_ops {
            return Err(Halt::Limit("opcodes"));
        }
        if self.opts.record_opcodes && !op.weights_only_ok() {
            self.events.push(Event::Opcode {
                opcode: op,
                offset: offset as u64,
            });
        }
        self.op_end = None;
        self.exec(op, offset, hook)?;
        if let Some(end) = self.frame_end {
            // Raw bytes a hook skipped (joblib array data) are not part of the opcode.
            let op_end = self.op_end.unwrap_or(self.pos);
            if offset < end && op_end > end {
                self.events.push(Event::FrameOverrun {
                    offset: offset as u64,
                    frame_end: end as u64,
                });
            }
            if self.pos >= end {
                self.frame_end = None;
            }
        }
        Ok(())
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one arm per opcode reads best as one match"
    )]
    fn exec(&mut self, op: Opcode, offset: usize, hook: &mut dyn Hook) -> Step<()> {
        use Opcode::*;
        match op {
            Proto => {
                let (_, b) = self.take(1)?;
                if b[0] > 5 {
                    return err(format!("unsupported pickle protocol: {}", b[0]));
                }
                self.proto = b[0];
            }
            Frame => {
                let len = self.take_len(8)?;
                let len = usize::try_from(len)
                    .map_err(|_| Halt::Error("FRAME length exceeds system's maximum".into()))?;
                let end = self
                    .pos
                    .checked_add(len)
                    .ok_or(Halt::Error("FRAME length overflows".into()))?;
                if end > self.input.len() && !self.opts.complete {
                    self.need.end = end as u64;
                    return Err(Halt::NeedMore);
                }
                if end > self.input.len() {
                    // The C unpickler reads the whole frame up front and fails if it is short,
                    // but pickle._Unpickler (used by dill and other pure-Python loaders) reads
                    // what there is and goes on: keep going, and say the frame lies.
                    self.events.push(Event::FrameOverrun {
                        offset: offset as u64,
                        frame_end: end as u64,
                    });
                }
                self.frame_end = Some(end);
            }
            Stop => {
                let v = self.pop()?;
                return Err(Halt::Stop(v));
            }
            Mark => {
                if self.marks.len() >= self.opts.limits.max_marks {
                    return Err(Halt::Limit("marks"));
                }
                self.marks.push(self.stack.len());
            }
            Pop => {
                // _pickle.c load_pop: a mark sitting exactly at the top is popped instead.
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            PopMark => {
                let at = self.pop_mark_at()?;
                self.stack.truncate(at);
            }
            Dup => {
                let t = self.top()?;
                self.push(t)?;
            }
            None => self.push_new(Value::None)?,
            NewTrue => self.push_new(Value::Bool(true))?,
            NewFalse => self.push_new(Value::Bool(false))?,
            Int => {
                let line = self.line()?;
                let v = match line {
                    b"00" => Value::Bool(false),
                    b"01" => Value::Bool(true),
                    _ => parse_int(line)
                        .ok_or_else(|| Halt::Error("invalid literal for int()".into()))?,
                };
                self.push_new(v)?;
            }
            Long => {
                let mut line = self.line()?;
                if line.last() == Some(&b'L') {
                    line = &line[..line.len() - 1];
                }
                let v = parse_int(line)
                    .ok_or_else(|| Halt::Error("invalid literal for int()".into()))?;
                self.push_new(v)?;
            }
            BinInt => {
                let (_, b) = self.take(4)?;
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.push_new(Value::Int(i64::from(v)))?;
            }
            BinInt1 => {
                let (_, b) = self.take(1)?;
                self.push_new(Value::Int(i64::from(b[0])))?;
            }
            BinInt2 => {
                let (_, b) = self.take(2)?;
                self.push_new(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))))?;
            }
            Long1 | Long4 => {
                let n = if op == Long1 {
                    self.take_len(1)?
                } else {
                    let (_, b) = self.take(4)?;
                    let n = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if n < 0 {
                        return err("LONG pickle has negative byte count");
                    }
                    n as u64
                };
                let n = usize::try_from(n).map_err(|_| self.eof())?;
                let (_, b) = self.take(n)?;
                self.owned(b.len())?;
                self.push_new(long_from_le(b))?;
            }
            Float => {
                let line = self.line()?;
                let s = std::str::from_utf8(line)
                    .map_err(|_| Halt::Error("could not convert string to float".into()))?;
                let f: f64 = s
                    .trim()
                    .parse()
                    .map_err(|_| Halt::Error("could not convert string to float".into()))?;
                self.push_float(f)?;
            }
            BinFloat => {
                let (_, b) = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                self.push_float(f64::from_be_bytes(a))?;
                self.elided_float_run()?;
            }
            String => {
                let line = self.line()?;
                let n = line.len();
                if n < 2 || line[0] != line[n - 1] || (line[0] != b'\'' && line[0] != b'"') {
                    return err("the STRING opcode argument must be quoted");
                }
                let decoded = unescape_bytes(&line[1..n - 1]);
                self.latin1_value(&decoded)?;
            }
            BinString | ShortBinString => {
                let n = if op == ShortBinString {
                    self.take_len(1)?
                } else {
                    let (_, b) = self.take(4)?;
                    let n = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if n < 0 {
                        return err("BINSTRING pickle has negative byte count");
                    }
                    n as u64
                };
                let n = usize::try_from(n).map_err(|_| self.eof())?;
                let (_, b) = self.take(n)?;
                self.latin1_value(b)?;
            }
            Unicode => {
                let line = self.line()?;
                let s = raw_unicode_escape(line);
                self.owned(s.len())?;
                self.push_new(Value::Str(s))?;
            }
            BinUnicode | ShortBinUnicode | BinUnicode8 => {
                let width = match op {
                    ShortBinUnicode => 1,
                    BinUnicode => 4,
                    _ => 8,
                };
                let n = self.take_len(width)?;
                let n = usize::try_from(n).map_err(|_| self.eof())?;
                let (_, b) = self.take(n)?;
                self.str_value(b)?;
            }
            BinBytes | ShortBinBytes | BinBytes8 | ByteArray8 => {
                let width = match op {
                    ShortBinBytes => 1,
                    BinBytes => 4,
                    _ => 8,
                };
                let n = self.take_len(width)?;
                let n = usize::try_from(n).map_err(|_| self.eof())?;
                let start = self.skip(n)?;
                self.bytes_value(start, n, op == ByteArray8)?;
            }
            NextBuffer => {
                // pickle.load/torch.load pass no `buffers`: CPython raises here.
                return err(
                    "pickle stream refers to out-of-band data but no buffers argument was given",
                );
            }
            ReadonlyBuffer => {
                self.top()?;
            }
            EmptyTuple => self.push_new(Value::Tuple(Vec::new()))?,
            EmptyList => self.push_new(Value::List(Vec::new()))?,
            EmptyDict => self.push_new(Value::Dict(Vec::new()))?,
            EmptySet => self.push_new(Value::Set(Vec::new()))?,
            Tuple1 | Tuple2 | Tuple3 => {
                let n = match op {
                    Tuple1 => 1,
                    Tuple2 => 2,
                    _ => 3,
                };
                if self.stack.len() < self.fence() + n {
                    return err("unpickling stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_new(Value::Tuple(items))?;
            }
            Tuple => {
                let items = self.pop_mark()?;
                self.push_new(Value::Tuple(items))?;
            }
            List => {
                let items = self.pop_mark()?;
                self.push_new(Value::List(items))?;
            }
            FrozenSet => {
                let items = self.pop_mark()?;
                self.push_new(Value::FrozenSet(items))?;
            }
            Dict => {
                let at = self.pop_mark_at()?;
                let items = &self.stack[at..];
                if !items.len().is_multiple_of(2) {
                    return err("odd number of items for DICT");
                }
                let pairs = items.chunks_exact(2).map(|c| (c[0], c[1])).collect();
                self.stack.truncate(at);
                self.push_new(Value::Dict(pairs))?;
            }
            // `load_append` is `do_append(self, len - 1)` and `load_setitem` is
            // `do_setitems(self, len - 2)`: the same as their MARK forms, without the mark. A
            // stack too short for that saturates to 0, never above the fence: an underflow.
            Append => {
                let at = self.stack.len().saturating_sub(1);
                self.append_from(at, offset, op)?;
            }
            Appends | AddItems => {
                let at = self.pop_mark_at()?;
                self.append_from(at, offset, op)?;
            }
            SetItem => {
                let at = self.stack.len().saturating_sub(2);
                self.set_from(at, offset, op)?;
            }
            SetItems => {
                let at = self.pop_mark_at()?;
                if !(self.stack.len() - at).is_multiple_of(2) {
                    return err("odd number of items for SETITEMS");
                }
                self.set_from(at, offset, op)?;
            }
            Get => {
                let line = self.line()?;
                let idx =
                    parse_index(line).ok_or_else(|| Halt::Error("invalid GET index".into()))?;
                self.memo_get(idx)?;
            }
            BinGet => {
                let idx = self.take_len(1)?;
                self.memo_get(idx)?;
            }
            LongBinGet => {
                let idx = self.take_len(4)?;
                self.memo_get(idx)?;
            }
            Put => {
                let line = self.line()?;
                let idx =
                    parse_index(line).ok_or_else(|| Halt::Error("invalid PUT index".into()))?;
                let t = self.top()?;
                self.memo_put(idx, t)?;
            }
            BinPut => {
                let idx = self.take_len(1)?;
                let t = self.top()?;
                self.memo_put(idx, t)?;
            }
            LongBinPut => {
                let idx = self.take_len(4)?;
                let t = self.top()?;
                self.memo_put(idx, t)?;
            }
            Memoize => {
                // _Unpickler_MemoPut(self, self->memo_len, value): the index is the number of
                // filled slots, not the highest index plus one.
                let t = self.top()?;
                let idx = self.memo.len() as u64;
                self.memo_put(idx, t)?;
            }
            Global => {
                let module = utf8_name(self.line()?)?;
                let name = utf8_name(self.line()?)?;
                let id = self.import(module, name, offset, op)?;
                self.push(id)?;
            }
            StackGlobal => {
                let name = self.pop()?;
                let module = self.pop()?;
                // Copy only the two names, never a container that was passed instead.
                let names = match (self.arena.get(module), self.arena.get(name)) {
                    (Value::Str(m), Value::Str(n)) => Some((m.clone(), n.clone())),
                    (m, n) if is_computed(m) || is_computed(n) => Option::None,
                    _ => return err("STACK_GLOBAL requires str"),
                };
                match names {
                    Some((m, n)) => {
                        let id = self.import(m, n, offset, op)?;
                        self.push(id)?;
                    }
                    Option::None => {
                        let id = self.alloc(Value::UnknownGlobal {
                            why: "STACK_GLOBAL operands computed at load time".into(),
                        })?;
                        self.events.push(Event::DynamicGlobal {
                            id,
                            offset: offset as u64,
                        });
                        self.push(id)?;
                    }
                }
            }
            Ext1 | Ext2 | Ext4 => {
                let code = match op {
                    Ext1 => self.take_len(1)? as i64,
                    Ext2 => self.take_len(2)? as i64,
                    _ => {
                        let (_, b) = self.take(4)?;
                        i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    }
                };
                let id = self.alloc(Value::UnknownGlobal {
                    why: format!("copyreg extension code {code}"),
                })?;
                self.events.push(Event::Extension {
                    code,
                    id,
                    offset: offset as u64,
                });
                self.push(id)?;
            }
            Reduce => {
                let args = self.pop()?;
                let callee = self.top()?;
                if is_constant_non_tuple(self.arena.get(args)) {
                    return err("argument list must be a tuple");
                }
                self.stack.pop();
                let id = self.call(callee, args, Option::None, op, offset)?;
                self.push(id)?;
            }
            NewObj => {
                let args = self.pop()?;
                let cls = self.pop()?;
                if is_constant_non_tuple(self.arena.get(args)) {
                    return err("NEWOBJ expected an arg tuple");
                }
                if is_constant(self.arena.get(cls)) {
                    return err("NEWOBJ class argument isn't a type object");
                }
                let id = self.call(cls, args, Option::None, op, offset)?;
                self.push(id)?;
            }
            NewObjEx => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                if is_constant(self.arena.get(cls)) {
                    return err("NEWOBJ_EX class argument isn't a type object");
                }
                let id = self.call(cls, args, Some(kwargs), op, offset)?;
                self.push(id)?;
            }
            Inst => {
                let module = utf8_name(self.line()?)?;
                let name = utf8_name(self.line()?)?;
                let items = self.pop_mark()?;
                let cls = self.import(module, name, offset, op)?;
                let args = self.alloc(Value::Tuple(items))?;
                let id = self.call(cls, args, Option::None, op, offset)?;
                self.push(id)?;
            }
            Obj => {
                let at = self.pop_mark_at()?;
                let Some((&cls, items)) = self.stack[at..].split_first() else {
                    return err("unpickling stack underflow");
                };
                let items = items.to_vec();
                self.stack.truncate(at);
                let args = self.alloc(Value::Tuple(items))?;
                let id = self.call(cls, args, Option::None, op, offset)?;
                self.push(id)?;
            }
            Build => {
                let state = self.pop()?;
                let target = self.top()?;
                if let Value::Call(c) = self.arena.get_mut(target) {
                    c.state = Some(state);
                }
                self.events.push(Event::Build {
                    target,
                    state,
                    offset: offset as u64,
                });
                self.op_end = Some(self.pos);
                match hook
                    .after_build(&self.arena, self.input, target)
                    .map_err(Halt::Error)?
                {
                    AfterBuild::Continue => {}
                    AfterBuild::SkipBytes(n) => {
                        let n = usize::try_from(n).map_err(|_| self.eof())?;
                        let start = self.skip(n)?;
                        self.skipped.push((start as u64, n as u64));
                    }
                    AfterBuild::SkipPadded(n) => {
                        let pad = self.take_len(1)?;
                        let total = n
                            .checked_add(pad)
                            .ok_or(Halt::Error("array size overflows".into()))?;
                        let total = usize::try_from(total).map_err(|_| self.eof())?;
                        let start = self.skip(total)?;
                        self.skipped.push((start as u64, total as u64));
                    }
                    AfterBuild::NestedPickle => {
                        if self.depth >= 8 {
                            return Err(Halt::Limit("nested pickle depth"));
                        }
                        let at = self.pos;
                        let inner = analyze_depth(self.input, at, self.opts, hook, self.depth + 1);
                        let ok = inner.stopped();
                        let need_more = inner.end == End::NeedMore;
                        self.need = inner.need;
                        self.pos = usize::try_from(inner.consumed).unwrap_or(usize::MAX);
                        self.nested.push((at as u64, inner));
                        if need_more {
                            return Err(Halt::NeedMore);
                        }
                        if !ok {
                            return err("nested pickle in the stream did not complete");
                        }
                    }
                }
            }
            PersId => {
                let line = self.line()?;
                let pid = self.alloc(Value::Str(
                    std::string::String::from_utf8_lossy(line).into_owned(),
                ))?;
                self.events.push(Event::Persistent {
                    pid,
                    offset: offset as u64,
                });
                self.push_new(Value::Persistent(pid))?;
            }
            BinPersId => {
                let pid = self.pop()?;
                self.events.push(Event::Persistent {
                    pid,
                    offset: offset as u64,
                });
                self.push_new(Value::Persistent(pid))?;
            }
        }
        Ok(())
    }
}

/// `op` ran a container method of `target` (not a plain container the pickle built itself).
fn mutate_event(target: Id, offset: usize, op: Opcode) -> Event {
    Event::Mutate {
        target,
        offset: offset as u64,
        opcode: op,
    }
}

/// `GLOBAL`/`INST` operands: `PyUnicode_DecodeUTF8(..., "strict")` in `load_global`, so invalid
/// UTF-8 raises before anything is imported.
fn utf8_name(line: &[u8]) -> Step<std::string::String> {
    std::str::from_utf8(line)
        .map(str::to_owned)
        .map_err(|_| Halt::Error("'utf-8' codec can't decode the GLOBAL operand".into()))
}

/// Values produced at load time whose type is not known statically.
fn is_computed(v: &Value) -> bool {
    matches!(
        v,
        Value::Call(_) | Value::Global(_) | Value::UnknownGlobal { .. } | Value::Persistent(_)
    )
}

/// A constant the pickle built itself, whose type is certain.
fn is_constant(v: &Value) -> bool {
    !is_computed(v) && !matches!(v, Value::Buffer)
}

fn is_constant_non_tuple(v: &Value) -> bool {
    is_constant(v) && !matches!(v, Value::Tuple(_))
}

/// `int(s, 0)` as `PyLong_FromString(s, NULL, 0)` reads a protocol-0 operand.
fn parse_int(line: &[u8]) -> Option<Value> {
    let s = std::str::from_utf8(line).ok()?.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let clean: std::string::String = body.chars().filter(|&c| c != '_').collect();
    let (radix, digits) = if let Some(r) = clean
        .strip_prefix("0x")
        .or_else(|| clean.strip_prefix("0X"))
    {
        (16, r)
    } else if let Some(r) = clean
        .strip_prefix("0o")
        .or_else(|| clean.strip_prefix("0O"))
    {
        (8, r)
    } else if let Some(r) = clean
        .strip_prefix("0b")
        .or_else(|| clean.strip_prefix("0B"))
    {
        (2, r)
    } else {
        (10, clean.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Option::None;
    }
    match i128::from_str_radix(digits, radix) {
        Ok(v) => {
            let v = if neg { -v } else { v };
            Some(
                i64::try_from(v)
                    .map_or_else(|_| Value::BigInt(v.to_le_bytes().to_vec()), Value::Int),
            )
        }
        Err(_) => Some(Value::BigInt(digits.as_bytes().to_vec())),
    }
}

/// A text `GET`/`PUT` index as `PyLong_FromString(s, NULL, 10)` reads it: surrounding
/// whitespace, an optional sign, and single underscores between digits are all accepted.
fn parse_index(line: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(line).ok()?.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('_') || s.ends_with('_') || s.contains("__") {
        return Option::None;
    }
    let digits: std::string::String = s.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Option::None;
    }
    digits.parse().ok()
}

fn long_from_le(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
        buf[..b.len()].copy_from_slice(b);
        return Value::Int(i64::from_le_bytes(buf));
    }
    Value::BigInt(b.to_vec())
}

/// `PyBytes_DecodeEscape`: Python 2 string-literal escapes.
fn unescape_bytes(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c != b'\\' || i + 1 >= s.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = s[i + 1];
        i += 2;
        match e {
            b'\n' => {}
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'x' => {
                let hex = s
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Option::None => out.extend_from_slice(b"\\x"),
                }
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 && i < s.len() && (b'0'..=b'7').contains(&s[i]) {
                    v = v * 8 + u32::from(s[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    out
}

/// `raw-unicode-escape` decoding: `\uXXXX` and `\UXXXXXXXX`, every other byte is latin-1.
fn raw_unicode_escape(s: &[u8]) -> std::string::String {
    let mut out = std::string::String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() && (s[i + 1] == b'u' || s[i + 1] == b'U') {
            let n = if s[i + 1] == b'u' { 4 } else { 8 };
            if let Some(c) = s
                .get(i + 2..i + 2 + n)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32)
            {
                out.push(c);
                i += 2 + n;
                continue;
            }
        }
        out.push(s[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Analysis {
        let opts = Options {
            complete: true,
            ..Options::default()
        };
        analyze(bytes, 0, &opts, &mut NoHook)
    }

    fn imports(a: &Analysis) -> Vec<String> {
        a.events
            .iter()
            .filter_map(|e| match e {
                Event::Import { id, .. } => {
                    a.arena.global_name(*id).map(|(m, n)| format!("{m}.{n}"))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn elided_floats_share_one_value_and_keep_the_structure() {
        // [1.5, 2.5, ... 1000 floats] built with BINFLOAT + APPENDS, then one text FLOAT.
        let mut p = b"\x80\x02](".to_vec();
        for i in 0..1000u32 {
            p.push(b'G');
            p.extend_from_slice(&(f64::from(i) + 0.5).to_be_bytes());
        }
        p.extend_from_slice(b"eF2.5\na.");
        let kept = run(&p);
        let opts = Options {
            complete: true,
            elide_floats: true,
            ..Options::default()
        };
        let elided = analyze(&p, 0, &opts, &mut NoHook);
        for a in [&kept, &elided] {
            let End::Stop { value, .. } = a.end else {
                unreachable!("{:?}", a.end)
            };
            let Value::List(items) = a.arena.get(value) else {
                unreachable!()
            };
            assert_eq!(items.len(), 1001);
        }
        assert!(kept.arena.len() > 1000);
        assert_eq!(elided.arena.len(), 2, "the list and one shared float");
        let End::Stop { value, .. } = elided.end else {
            unreachable!()
        };
        assert!(
            elided
                .arena
                .render(value, &p)
                .starts_with("[<float>, <float>")
        );
        assert!(kept.arena.render(value, &p).starts_with("[0.5, 1.5"));
    }

    #[test]
    fn a_run_of_elided_floats_keeps_the_caps_and_frames_of_single_steps() {
        // 100 BINFLOATs in a list, with an opcode cap, a stack cap, and a frame that ends
        // inside the 50th float: the run and the one-step-at-a-time machine must agree.
        let mut body = b"](".to_vec();
        for i in 0..100u32 {
            body.push(b'G');
            body.extend_from_slice(&f64::from(i).to_be_bytes());
        }
        body.extend_from_slice(b"e.");
        let mut framed = b"\x80\x04\x95".to_vec();
        framed.extend_from_slice(&(2u64 + 9 * 49 + 4).to_le_bytes());
        framed.extend_from_slice(&body);
        let mut plain = b"\x80\x02".to_vec();
        plain.extend_from_slice(&body);
        for input in [&plain, &framed] {
            for (max_ops, max_stack) in [(1_000, 1_000), (40, 1_000), (1_000, 30)] {
                let opts = |elide_floats| Options {
                    complete: true,
                    elide_floats,
                    limits: Limits {
                        max_ops,
                        max_stack,
                        ..Limits::default()
                    },
                    ..Options::default()
                };
                let kept = analyze(input, 0, &opts(false), &mut NoHook);
                let elided = analyze(input, 0, &opts(true), &mut NoHook);
                assert_eq!(
                    format!("{:?}", kept.end).replace("Id(1)", "Id(_)"),
                    format!("{:?}", elided.end).replace("Id(1)", "Id(_)")
                );
                assert_eq!(kept.ops, elided.ops);
                assert_eq!(kept.consumed, elided.consumed);
                assert_eq!(format!("{:?}", kept.events), format!("{:?}", elided.events));
            }
        }
    }

    #[test]
    fn text_memo_indexes_read_like_pylong_from_string() {
        // PUT " +1_0" then GET "10": CPython resolves the same slot.
        let a = run(b"Vos\np +1_0\n0Vsystem\np2\n0g10\ng2\n\x93.");
        assert_eq!(imports(&a), vec!["os.system"]);
        assert!(a.stopped());
        assert_eq!(parse_index(b"1__0"), None);
    }

    #[test]
    fn memoize_numbers_by_filled_slots() {
        // BINPUT 5 fills one slot, so MEMOIZE writes slot 1, not 6.
        let a = run(b"\x80\x04\x8c\x05decoyq\x05\x8c\x02os\x94\x8c\x06system\x94h\x01h\x02\x93.");
        assert_eq!(imports(&a), vec!["os.system"]);
    }

    #[test]
    fn memo_slots_far_apart_count_once_each() {
        // LONG_BINPUT 2**31 twice (one slot), then MEMOIZE twice: slots 1 and 2, not 2**31+1.
        let a = run(
            b"\x80\x04\x8c\x05decoyr\x00\x00\x00\x80r\x00\x00\x00\x80\x8c\x02os\x94\x8c\x06system\x94h\x01h\x02\x93j\x00\x00\x00\x80.",
        );
        assert_eq!(imports(&a), vec!["os.system"]);
        assert!(a.stopped());
    }

    #[test]
    fn pop_removes_a_mark_sitting_on_top() {
        // MARK POP leaves the stack as it was: the GLOBAL is still reached.
        let a = run(b"(0cos\nsystem\n.");
        assert_eq!(imports(&a), vec!["os.system"]);
        assert!(a.stopped());
    }

    #[test]
    fn obj_call_hidden_by_pop_is_still_a_call() {
        let a = run(b"(cos\nsystem\nVid\no0N.");
        assert!(a.events.iter().any(|e| matches!(e, Event::Call { .. })));
    }

    #[test]
    fn container_opcodes_on_a_call_extend_it_and_are_reported() {
        // builtins.list() then APPEND, APPENDS, SETITEM, SETITEMS applied to the result.
        let a = run(b"cbuiltins\nlist\n)RK\x01a(K\x02K\x03eK\x04K\x05s(K\x06K\x07u.");
        assert!(a.stopped());
        let End::Stop { value, .. } = a.end else {
            unreachable!()
        };
        let call = a.arena.as_call(value).unwrap();
        let ints = |ids: &[Id]| ids.iter().map(|&i| a.arena.as_int(i)).collect::<Vec<_>>();
        assert_eq!(ints(&call.appended), [Some(1), Some(2), Some(3)]);
        let (keys, values): (Vec<Id>, Vec<Id>) = call.items.iter().copied().unzip();
        assert_eq!(ints(&keys), [Some(4), Some(6)]);
        assert_eq!(ints(&values), [Some(5), Some(7)]);
        let mutations = a
            .events
            .iter()
            .filter(|e| matches!(e, Event::Mutate { .. }));
        assert_eq!(mutations.count(), 4);
    }

    #[test]
    fn append_and_setitem_underflow_at_the_mark_like_cpython() {
        // The only items above the mark leave no target below them.
        for p in [
            &b"(K\x01a."[..],
            b"N(K\x01K\x02s.",
            b"((e.",
            b"]((K\x01K\x02u.",
        ] {
            let a = run(p);
            assert_eq!(
                a.end,
                End::Error {
                    offset: p.len() as u64 - 2,
                    message: "unpickling stack underflow".into()
                },
                "{p:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_global_raises_before_importing() {
        let a = run(b"cmod\n\xf8\n.");
        assert!(imports(&a).is_empty());
        assert!(matches!(a.end, End::Error { .. }));
    }

    #[test]
    fn frame_shorter_than_its_opcodes_is_reported() {
        // FRAME says 2 bytes, the GLOBAL that follows is longer.
        let mut p = b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00".to_vec();
        p.extend_from_slice(b"cos\nsystem\n.");
        let a = run(&p);
        assert!(
            a.events
                .iter()
                .any(|e| matches!(e, Event::FrameOverrun { .. }))
        );
        assert_eq!(imports(&a), vec!["os.system"]);
    }

    #[test]
    fn limits_end_the_run_as_a_limit() {
        let opts = Options {
            complete: true,
            limits: Limits {
                max_stack: 10,
                ..Limits::default()
            },
            ..Options::default()
        };
        let a = analyze(&[b'N'; 20], 0, &opts, &mut NoHook);
        assert!(matches!(
            a.end,
            End::Limit {
                which: "stack depth",
                ..
            }
        ));
    }
}
