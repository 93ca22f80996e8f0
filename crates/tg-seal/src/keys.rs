//! ECDSA keys for the three curves OMS allows (P-256, P-384, P-521), read and written as PEM.
//!
//! The hash is tied to the curve as in model_signing's `get_ec_key_hash`: P-256 signs SHA-256,
//! P-384 SHA-384, P-521 SHA-512. Signatures are ASN.1 DER, as OMS bundles carry them.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
    LineEnding,
};
use rand_core::OsRng;

use crate::error::{Error, Result};
use crate::hash::Digest;

/// Largest key file read, far above any PEM EC key; a bigger file is refused before reading.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// An elliptic curve allowed by the OpenSSF Model Signing spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Curve {
    /// NIST P-256 (secp256r1) with SHA-256.
    P256,
    /// NIST P-384 (secp384r1) with SHA-384.
    P384,
    /// NIST P-521 (secp521r1) with SHA-512.
    P521,
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Curve::P256 => "p256",
            Curve::P384 => "p384",
            Curve::P521 => "p521",
        })
    }
}

impl FromStr for Curve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "p256" | "secp256r1" | "prime256v1" => Ok(Curve::P256),
            "p384" | "secp384r1" => Ok(Curve::P384),
            "p521" | "secp521r1" => Ok(Curve::P521),
            _ => Err(format!("unknown curve {s:?} (expected p256, p384 or p521)")),
        }
    }
}

#[derive(Clone)]
enum Secret {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    P521(p521::SecretKey),
}

#[derive(Clone, PartialEq, Eq)]
enum Public {
    P256(p256::PublicKey),
    P384(p384::PublicKey),
    P521(p521::PublicKey),
}

/// A private key that signs bundles.
#[derive(Clone)]
pub struct SigningKey(Secret);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey({}, hint {})",
            self.curve(),
            self.verifying_key().hint()
        )
    }
}

/// A public key that verifies bundles.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey(Public);

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({}, hint {})", self.curve(), self.hint())
    }
}

fn invalid(origin: &str, reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        origin: origin.to_owned(),
        reason: reason.into(),
    }
}

/// The PEM block labelled `label` inside `text` (text around it, such as an OpenSSL preamble or
/// an `EC PARAMETERS` block, is skipped).
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

fn read_key_file(path: &Path) -> Result<String> {
    let len = fs_err::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_KEY_FILE {
        return Err(invalid(
            &path.display().to_string(),
            format!("file is {len} bytes, larger than any PEM key"),
        ));
    }
    fs_err::read_to_string(path).map_err(|e| Error::io(path, e))
}

impl SigningKey {
    /// A fresh random key on `curve` (operating-system randomness).
    pub fn generate(curve: Curve) -> Self {
        SigningKey(match curve {
            Curve::P256 => Secret::P256(p256::SecretKey::random(&mut OsRng)),
            Curve::P384 => Secret::P384(p384::SecretKey::random(&mut OsRng)),
            Curve::P521 => Secret::P521(p521::SecretKey::random(&mut OsRng)),
        })
    }

    /// Reads an unencrypted EC private key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`, what
    /// `cryptography` and `openssl genpkey` write) or SEC1 (`BEGIN EC PRIVATE KEY`, what
    /// `openssl ecparam -genkey` writes).
    pub fn from_pem(pem: &str) -> Result<Self> {
        Self::from_pem_named(pem, "<pem>")
    }

    /// Reads a PEM private key file (see [`SigningKey::from_pem`]).
    pub fn read_pem_file(path: &Path) -> Result<Self> {
        Self::from_pem_named(&read_key_file(path)?, &path.display().to_string())
    }

    fn from_pem_named(text: &str, origin: &str) -> Result<Self> {
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(invalid(
                origin,
                "encrypted private keys are not supported; decrypt it with `openssl pkcs8`",
            ));
        }
        if let Some(block) = pem_block(text, "PRIVATE KEY") {
            if let Ok(k) = p256::SecretKey::from_pkcs8_pem(block) {
                return Ok(SigningKey(Secret::P256(k)));
            }
            if let Ok(k) = p384::SecretKey::from_pkcs8_pem(block) {
                return Ok(SigningKey(Secret::P384(k)));
            }
            if let Ok(k) = p521::SecretKey::from_pkcs8_pem(block) {
                return Ok(SigningKey(Secret::P521(k)));
            }
            return Err(invalid(
                origin,
                "not a PKCS#8 EC private key on P-256, P-384 or P-521",
            ));
        }
        if let Some(block) = pem_block(text, "EC PRIVATE KEY") {
            // SEC1 keys differ in length per curve (32, 48, 66 bytes), so at most one parses.
            if let Ok(k) = p256::SecretKey::from_sec1_pem(block) {
                return Ok(SigningKey(Secret::P256(k)));
            }
            if let Ok(k) = p384::SecretKey::from_sec1_pem(block) {
                return Ok(SigningKey(Secret::P384(k)));
            }
            if let Ok(k) = p521::SecretKey::from_sec1_pem(block) {
                return Ok(SigningKey(Secret::P521(k)));
            }
            return Err(invalid(
                origin,
                "not a SEC1 EC private key on P-256, P-384 or P-521",
            ));
        }
        if text.contains("-----BEGIN PUBLIC KEY-----") {
            return Err(invalid(
                origin,
                "this is a public key; signing needs the private key",
            ));
        }
        Err(invalid(
            origin,
            "no `BEGIN PRIVATE KEY` or `BEGIN EC PRIVATE KEY` PEM block",
        ))
    }

    /// The private key as unencrypted PKCS#8 PEM with LF line endings.
    pub fn to_pkcs8_pem(&self) -> String {
        let pem = match &self.0 {
            Secret::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Secret::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
            Secret::P521(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        pem.expect("a valid in-memory key always encodes")
            .to_string()
    }

    /// The curve of this key.
    pub fn curve(&self) -> Curve {
        match &self.0 {
            Secret::P256(_) => Curve::P256,
            Secret::P384(_) => Curve::P384,
            Secret::P521(_) => Curve::P521,
        }
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(match &self.0 {
            Secret::P256(k) => Public::P256(k.public_key()),
            Secret::P384(k) => Public::P384(k.public_key()),
            Secret::P521(k) => Public::P521(k.public_key()),
        })
    }

    /// ECDSA over `msg` with the curve's hash; ASN.1 DER.
    pub(crate) fn sign_der(&self, msg: &[u8]) -> Vec<u8> {
        match &self.0 {
            Secret::P256(k) => {
                let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k).sign(msg);
                sig.to_der().as_bytes().to_vec()
            }
            Secret::P384(k) => {
                let sig: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(k).sign(msg);
                sig.to_der().as_bytes().to_vec()
            }
            Secret::P521(k) => {
                let signer = p521::ecdsa::SigningKey::from_bytes(&k.to_bytes())
                    .expect("a valid P-521 secret key is a valid signing key");
                let sig: p521::ecdsa::Signature = signer.sign(msg);
                sig.to_der().as_bytes().to_vec()
            }
        }
    }
}

impl VerifyingKey {
    /// Reads a `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo) PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        Self::from_pem_named(pem, "<pem>")
    }

    /// Reads a public key PEM file (see [`VerifyingKey::from_pem`]).
    pub fn read_pem_file(path: &Path) -> Result<Self> {
        Self::from_pem_named(&read_key_file(path)?, &path.display().to_string())
    }

    fn from_pem_named(text: &str, origin: &str) -> Result<Self> {
        let Some(block) = pem_block(text, "PUBLIC KEY") else {
            if text.contains("PRIVATE KEY-----") {
                return Err(invalid(
                    origin,
                    "this is a private key; pass the public key (`BEGIN PUBLIC KEY`)",
                ));
            }
            return Err(invalid(origin, "no `BEGIN PUBLIC KEY` PEM block"));
        };
        if let Ok(k) = p256::PublicKey::from_public_key_pem(block) {
            return Ok(VerifyingKey(Public::P256(k)));
        }
        if let Ok(k) = p384::PublicKey::from_public_key_pem(block) {
            return Ok(VerifyingKey(Public::P384(k)));
        }
        if let Ok(k) = p521::PublicKey::from_public_key_pem(block) {
            return Ok(VerifyingKey(Public::P521(k)));
        }
        Err(invalid(
            origin,
            "not an EC public key on P-256, P-384 or P-521",
        ))
    }

    /// The curve of this key.
    pub fn curve(&self) -> Curve {
        match &self.0 {
            Public::P256(_) => Curve::P256,
            Public::P384(_) => Curve::P384,
            Public::P521(_) => Curve::P521,
        }
    }

    /// SubjectPublicKeyInfo PEM exactly as Python `cryptography` writes it: 64-column base64,
    /// LF line endings, a trailing LF. The key hint is computed over these bytes.
    pub fn to_pem(&self) -> String {
        let pem = match &self.0 {
            Public::P256(k) => k.to_public_key_pem(LineEnding::LF),
            Public::P384(k) => k.to_public_key_pem(LineEnding::LF),
            Public::P521(k) => k.to_public_key_pem(LineEnding::LF),
        };
        pem.expect("a valid in-memory key always encodes")
    }

    /// `verificationMaterial.publicKey.hint`: lowercase hex SHA-256 of [`VerifyingKey::to_pem`].
    pub fn hint(&self) -> String {
        Digest::of_bytes(self.to_pem().as_bytes()).to_hex()
    }

    /// Whether `der` is a valid ECDSA signature of `msg` under this key.
    pub(crate) fn verify_der(&self, msg: &[u8], der: &[u8]) -> bool {
        match &self.0 {
            Public::P256(k) => p256::ecdsa::Signature::from_der(der)
                .is_ok_and(|sig| p256::ecdsa::VerifyingKey::from(k).verify(msg, &sig).is_ok()),
            Public::P384(k) => p384::ecdsa::Signature::from_der(der)
                .is_ok_and(|sig| p384::ecdsa::VerifyingKey::from(k).verify(msg, &sig).is_ok()),
            Public::P521(k) => p521::ecdsa::Signature::from_der(der).is_ok_and(|sig| {
                p521::ecdsa::VerifyingKey::from_affine(*k.as_affine())
                    .is_ok_and(|vk| vk.verify(msg, &sig).is_ok())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip_on_every_curve() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let sk = SigningKey::generate(curve);
            let pem = sk.to_pkcs8_pem();
            let sk2 = SigningKey::from_pem(&pem).unwrap();
            assert_eq!(sk2.curve(), curve);
            let vk = VerifyingKey::from_pem(&sk.verifying_key().to_pem()).unwrap();
            assert_eq!(vk, sk.verifying_key());
            let sig = sk2.sign_der(b"message");
            assert!(vk.verify_der(b"message", &sig), "{curve}");
            assert!(!vk.verify_der(b"messagf", &sig), "{curve}");
            let other = SigningKey::generate(curve).verifying_key();
            assert!(!other.verify_der(b"message", &sig), "{curve}");
        }
    }

    #[test]
    fn reads_sec1_key_after_ec_parameters_and_preamble() {
        let sk = SigningKey::generate(Curve::P384);
        let Secret::P384(inner) = &sk.0 else {
            unreachable!()
        };
        let sec1 = inner.to_sec1_pem(LineEnding::LF).unwrap();
        let text = format!(
            "some preamble\n-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n{}",
            sec1.as_str()
        );
        let back = SigningKey::from_pem(&text).unwrap();
        assert_eq!(back.verifying_key(), sk.verifying_key());
    }

    #[test]
    fn refuses_private_key_as_public_and_garbage() {
        let sk = SigningKey::generate(Curve::P256);
        let err = VerifyingKey::from_pem(&sk.to_pkcs8_pem()).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        assert!(SigningKey::from_pem("hello").is_err());
        let err = SigningKey::from_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----\n").unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
    }

    #[test]
    fn public_pem_layout_matches_cryptography() {
        let pem = SigningKey::generate(Curve::P521).verifying_key().to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.ends_with("\n-----END PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert!(!pem.contains('\r'));
    }

    #[test]
    fn curve_names_parse() {
        assert_eq!("P-384".parse::<Curve>(), Ok(Curve::P384));
        assert_eq!("prime256v1".parse::<Curve>(), Ok(Curve::P256));
        assert!("ed25519".parse::<Curve>().is_err());
    }
}
