//! Fuzz the whole scanner: format detection and every format reader (pickle streams, torch
//! zip/legacy/tar, npy, joblib, HDF5, SavedModel, wrappers) on arbitrary bytes.
#![no_main]
use std::sync::OnceLock;

fn scanner() -> &'static tg_scan::Scanner {
    static S: OnceLock<tg_scan::Scanner> = OnceLock::new();
    S.get_or_init(|| {
        let mut limits = tg_scan::Limits::default();
        limits.pickle = tg_pickle::fuzzing::fuzz_limits();
        limits.archive.max_member_bytes = 1 << 20;
        limits.archive.max_total_bytes = 4 << 20;
        tg_scan::Scanner::new(tg_scan::Policy::default(), limits)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let r = scanner().scan_bytes("fuzz", data);
    assert!(r.findings.iter().all(|f| f.verdict <= r.verdict));
});
