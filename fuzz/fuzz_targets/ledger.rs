//! Fuzz the ledger's parsers: leaf entries and proof documents (untrusted until verified).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(e) = tg_ledger::Entry::from_leaf_bytes(data) {
        assert_eq!(e.leaf_bytes(), data, "a parsed entry must re-encode to the same leaf bytes");
    }
    let _ = tg_ledger::InclusionProof::from_json(data);
    let _ = tg_ledger::ConsistencyProof::from_json(data);
});
