//! Fuzz the onnx reader: `cargo fuzz run onnx` from `fuzz/`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tg_scan::fuzz_onnx(data));
