//! Fuzz the OpenSSF Model Signing bundle parser, then check a signature over whatever parsed.
#![no_main]
use std::sync::OnceLock;

fn key() -> &'static tg_seal::VerifyingKey {
    static KEY: OnceLock<tg_seal::VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| tg_seal::SigningKey::generate(tg_seal::Curve::P256).verifying_key())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(b) = tg_seal::Bundle::from_json(data, "fuzz") {
        let _ = b.payload();
        let _ = b.verify_signature(key());
    }
});
