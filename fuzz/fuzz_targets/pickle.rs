#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tg_pickle::fuzzing::exercise(data);
});
