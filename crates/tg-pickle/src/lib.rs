//! A pickle opcode reader and symbolic machine that never imports or calls anything.
//!
//! [`analyze`] runs a pickle stream the way CPython's C unpickler (`Modules/_pickle.c`) does —
//! same opcode table, same stack/mark/fence discipline, same memo numbering for `MEMOIZE`,
//! same frame handling — but every import becomes a [`Value::Global`] symbol and every call a
//! [`Value::Call`] symbol, each announced as an [`Event`] with the byte offset of its opcode.
//! Policies (what is allowed to be imported or called) live in `tg-scan`; this crate only says,
//! exactly and without heuristics, what a loader would have done.
//!
//! The main design decision is to track the real stack and memo instead of scanning for
//! strings near `STACK_GLOBAL`: memo confusion, decoy strings, `STACK_GLOBAL` fed through the
//! memo and `OBJ`+`POP` call hiding all become ordinary data flow.

#[doc(hidden)]
pub mod fuzzing;
mod machine;
pub mod names;
mod op;
mod value;

pub use machine::{AfterBuild, Analysis, End, Event, Hook, Limits, Need, NoHook, Options, analyze};
pub use op::Opcode;
pub use value::{Arena, Bytes, Call, GlobalName, Id, Value};
