//! Fuzz the YAML config reader: `cargo fuzz run yaml` from `fuzz/`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tg_scan::fuzz_yaml(data));
