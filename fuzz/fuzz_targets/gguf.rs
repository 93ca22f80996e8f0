//! Fuzz the gguf reader: `cargo fuzz run gguf` from `fuzz/`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tg_scan::fuzz_gguf(data));
