//! The body of the pickle fuzz target, shared with the stable mutation test so CI exercises
//! the same code without a nightly toolchain.

use crate::{Analysis, Limits, NoHook, Options, analyze};

/// Small caps so a fuzzer explores structure rather than size.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_ops: 100_000,
        max_stack: 10_000,
        max_marks: 1_000,
        max_memo: 10_000,
        max_values: 200_000,
        max_owned_bytes: 1 << 20,
    }
}

/// Run `data` through the machine both as a complete and as a partial buffer, and render every
/// value an event refers to. Returns a number so the work cannot be optimised away.
pub fn exercise(data: &[u8]) -> usize {
    let mut n = 0;
    for complete in [true, false] {
        let opts = Options {
            limits: fuzz_limits(),
            complete,
            record_opcodes: true,
            elide_floats: complete,
        };
        let a = analyze(data, 0, &opts, &mut NoHook);
        n += touch(&a, data);
    }
    n
}

fn touch(a: &Analysis, data: &[u8]) -> usize {
    let mut n = a.events.len();
    for e in &a.events {
        if let crate::Event::Import { id, .. } | crate::Event::Call { id, .. } = e {
            n += a.arena.render(*id, data).len();
        }
    }
    if let crate::End::Stop { value, .. } = a.end {
        n += a.arena.render(value, data).len();
    }
    n
}
