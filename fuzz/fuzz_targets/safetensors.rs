//! Fuzz the safetensors reader: `cargo fuzz run safetensors` from `fuzz/`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tg_scan::fuzz_safetensors(data));
