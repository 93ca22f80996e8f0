//! Fuzz the archive readers: zip (open, read every member, render every anomaly), tar, and the
//! bounded decompressors. Run with `cargo fuzz run zip` from `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tg_archive::fuzzing::exercise(data);
});
