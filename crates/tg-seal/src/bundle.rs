//! The OMS signature file: a Sigstore bundle v0.3 (JSON) holding a DSSE envelope whose payload
//! is an in-toto Statement v1 with the `https://model_signing/signature/v1.0` predicate.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::keys::{SigningKey, VerifyingKey};
use crate::manifest::{Manifest, Resource, root_digest};

/// `mediaType` of the bundles model_signing writes and (exactly) expects.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// DSSE `payloadType`.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// OMS v1.0 `predicateType`.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// Largest signature file read (a manifest of millions of files stays far below it).
const MAX_BUNDLE_FILE: u64 = 512 << 20;

// ---- JSON shapes -----------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleJson {
    media_type: String,
    verification_material: VerificationMaterial,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dsse_envelope: Option<Envelope>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<PublicKeyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x509_certificate_chain: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate: Option<serde_json::Value>,
    #[serde(default)]
    tlog_entries: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct PublicKeyId {
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeSignature {
    sig: String,
    #[serde(default)]
    keyid: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    type_: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Serialize, Deserialize)]
struct Subject {
    name: String,
    digest: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct Predicate {
    serialization: Serialization,
    resources: Vec<ResourceJson>,
}

#[derive(Serialize, Deserialize)]
struct Serialization {
    method: String,
    hash_type: String,
    allow_symlinks: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ignore_paths: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ResourceJson {
    name: String,
    algorithm: String,
    digest: String,
}

// ---- public types ----------------------------------------------------------------------------

/// A parsed (not yet verified) OMS signature bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    origin: String,
    key_hint: Option<String>,
    payload_type: String,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// The content of a bundle whose signature verified: the signed file list.
#[derive(Debug, Clone)]
pub struct SignedManifest {
    /// Informational model name from the statement's subject.
    pub model_name: String,
    /// Signed files in bundle order.
    pub resources: Vec<Resource>,
    /// Paths the signer left out; a verifier leaves them out too.
    pub ignore_paths: Vec<String>,
    /// The statement's subject digest (checked against the resources).
    pub root_digest: Digest,
}

/// DSSE pre-authentication encoding (DSSE v1.0 protocol): the bytes that are actually signed.
pub(crate) fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Signs `manifest` with `key` into an OMS bundle (file-level SHA-256, the form the
/// `model_signing verify key` CLI accepts).
pub fn sign(manifest: &Manifest, key: &SigningKey) -> Result<Bundle> {
    let statement = Statement {
        type_: STATEMENT_TYPE.to_owned(),
        subject: vec![Subject {
            name: manifest.model_name.clone(),
            digest: BTreeMap::from([("sha256".to_owned(), manifest.root_digest().to_hex())]),
        }],
        predicate_type: PREDICATE_TYPE.to_owned(),
        predicate: Predicate {
            serialization: Serialization {
                method: "files".to_owned(),
                hash_type: "sha256".to_owned(),
                allow_symlinks: serde_json::Value::Bool(false),
                ignore_paths: manifest.ignore_paths.clone(),
            },
            resources: manifest
                .resources
                .iter()
                .map(|r| ResourceJson {
                    name: r.name.clone(),
                    algorithm: "sha256".to_owned(),
                    digest: r.digest.to_hex(),
                })
                .collect(),
        },
    };
    let payload = serde_json::to_vec_pretty(&statement).expect("statement always serializes");
    let signature = key.sign_der(&pae(PAYLOAD_TYPE, &payload));
    Ok(Bundle {
        origin: "<bundle>".to_owned(),
        key_hint: Some(key.verifying_key().hint()),
        payload_type: PAYLOAD_TYPE.to_owned(),
        payload,
        signature,
    })
}

impl Bundle {
    /// Parses bundle JSON. `origin` names it in error messages (a path, usually).
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        let malformed = |reason: String| Error::MalformedBundle {
            origin: origin.to_owned(),
            reason,
        };
        let unsupported = |reason: String| Error::Unsupported {
            origin: origin.to_owned(),
            reason,
        };
        let json: BundleJson =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        if json.media_type != BUNDLE_MEDIA_TYPE {
            return Err(unsupported(format!(
                "media type {:?}, expected {BUNDLE_MEDIA_TYPE:?}",
                json.media_type
            )));
        }
        let vm = json.verification_material;
        if vm.public_key.is_none()
            && (vm.x509_certificate_chain.is_some() || vm.certificate.is_some())
        {
            return Err(unsupported(
                "certificate and Sigstore keyless bundles are not supported; only key bundles"
                    .to_owned(),
            ));
        }
        let Some(env) = json.dsse_envelope else {
            return Err(malformed("no dsseEnvelope".to_owned()));
        };
        let payload = B64
            .decode(env.payload.as_bytes())
            .map_err(|e| malformed(format!("payload is not base64: {e}")))?;
        let Some(first) = env.signatures.first() else {
            return Err(malformed("the envelope has no signature".to_owned()));
        };
        let signature = B64
            .decode(first.sig.as_bytes())
            .map_err(|e| malformed(format!("signature is not base64: {e}")))?;
        Ok(Bundle {
            origin: origin.to_owned(),
            key_hint: vm.public_key.and_then(|k| k.hint).filter(|h| !h.is_empty()),
            payload_type: env.payload_type,
            payload,
            signature,
        })
    }

    /// Reads and parses a bundle file.
    pub fn read(path: &Path) -> Result<Self> {
        let len = fs_err::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let origin = path.display().to_string();
        if len > MAX_BUNDLE_FILE {
            return Err(Error::MalformedBundle {
                origin,
                reason: format!("{len} bytes is larger than any signature"),
            });
        }
        let bytes = fs_err::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&bytes, &origin)
    }

    /// The bundle as pretty JSON (what `write` stores).
    pub fn to_json(&self) -> String {
        let json = BundleJson {
            media_type: BUNDLE_MEDIA_TYPE.to_owned(),
            verification_material: VerificationMaterial {
                public_key: Some(PublicKeyId {
                    hint: self.key_hint.clone(),
                }),
                x509_certificate_chain: None,
                certificate: None,
                tlog_entries: Vec::new(),
            },
            dsse_envelope: Some(Envelope {
                payload: B64.encode(&self.payload),
                payload_type: self.payload_type.clone(),
                signatures: vec![EnvelopeSignature {
                    sig: B64.encode(&self.signature),
                    keyid: Some(String::new()),
                }],
            }),
        };
        let mut s = serde_json::to_string_pretty(&json).expect("bundle always serializes");
        s.push('\n');
        s
    }

    /// Writes the bundle to `path` (replacing it).
    pub fn write(&self, path: &Path) -> Result<()> {
        fs_err::write(path, self.to_json()).map_err(|e| Error::io(path, e))
    }

    /// `verificationMaterial.publicKey.hint`, if the bundle has one.
    pub fn key_hint(&self) -> Option<&str> {
        self.key_hint.as_deref()
    }

    /// The signed statement bytes (in-toto JSON).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Checks the key hint and the ECDSA signature over the DSSE envelope, then parses and
    /// checks the statement (types, one subject, root digest, resource fields). Only signed
    /// content is parsed.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<SignedManifest> {
        if let Some(hint) = &self.key_hint {
            let key_hint = key.hint();
            if !hint.eq_ignore_ascii_case(&key_hint) {
                return Err(Error::KeyMismatch {
                    bundle_hint: hint.clone(),
                    key_hint,
                });
            }
        }
        if !key.verify_der(&pae(&self.payload_type, &self.payload), &self.signature) {
            return Err(Error::BadSignature {
                origin: self.origin.clone(),
            });
        }
        self.parse_statement()
    }

    fn parse_statement(&self) -> Result<SignedManifest> {
        let invalid = |reason: String| Error::InvalidStatement {
            origin: self.origin.clone(),
            reason,
        };
        let unsupported = |reason: String| Error::Unsupported {
            origin: self.origin.clone(),
            reason,
        };
        if self.payload_type != PAYLOAD_TYPE {
            return Err(invalid(format!(
                "payload type {:?}, expected {PAYLOAD_TYPE:?}",
                self.payload_type
            )));
        }
        let value: serde_json::Value = serde_json::from_slice(&self.payload)
            .map_err(|e| invalid(format!("payload is not JSON: {e}")))?;
        let field = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        if field("_type") != STATEMENT_TYPE {
            return Err(invalid(format!(
                "statement type {:?}, expected {STATEMENT_TYPE:?}",
                field("_type")
            )));
        }
        let predicate_type = field("predicateType");
        if predicate_type != PREDICATE_TYPE {
            return Err(unsupported(format!(
                "predicate type {predicate_type:?}, only {PREDICATE_TYPE:?} is supported"
            )));
        }
        let st: Statement = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        let ser = &st.predicate.serialization;
        if ser.method != "files" || ser.hash_type != "sha256" {
            return Err(unsupported(format!(
                "serialization method {:?} with hash {:?}; only \"files\" with \"sha256\" is supported",
                ser.method, ser.hash_type
            )));
        }
        let [subject] = st.subject.as_slice() else {
            return Err(invalid(format!(
                "{} subjects, expected exactly one",
                st.subject.len()
            )));
        };
        let Some(root) = subject
            .digest
            .get("sha256")
            .and_then(|h| Digest::from_hex(h))
        else {
            return Err(invalid("subject has no sha256 digest".to_owned()));
        };
        let mut names = HashSet::new();
        let mut resources = Vec::with_capacity(st.predicate.resources.len());
        for r in &st.predicate.resources {
            if r.algorithm != "sha256" {
                return Err(unsupported(format!(
                    "resource {:?} uses algorithm {:?}",
                    r.name, r.algorithm
                )));
            }
            let Some(digest) = Digest::from_hex(&r.digest) else {
                return Err(invalid(format!(
                    "resource {:?} has a malformed digest",
                    r.name
                )));
            };
            if !names.insert(r.name.as_str()) {
                return Err(invalid(format!("resource {:?} is listed twice", r.name)));
            }
            resources.push(Resource {
                name: r.name.clone(),
                digest,
            });
        }
        let actual = root_digest(&resources);
        if actual != root {
            return Err(invalid(format!(
                "root digest is {root} but the resources hash to {actual}"
            )));
        }
        Ok(SignedManifest {
            model_name: subject.name.clone(),
            resources,
            ignore_paths: ser.ignore_paths.clone(),
            root_digest: root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Curve;

    /// A bundle whose signature is valid over `statement`, whatever it says.
    fn signed(statement: &serde_json::Value, key: &SigningKey) -> Bundle {
        let payload = serde_json::to_vec(statement).unwrap();
        Bundle {
            origin: "test".to_owned(),
            key_hint: Some(key.verifying_key().hint()),
            payload_type: PAYLOAD_TYPE.to_owned(),
            signature: key.sign_der(&pae(PAYLOAD_TYPE, &payload)),
            payload,
        }
    }

    fn statement(resources: serde_json::Value, root: &str) -> serde_json::Value {
        serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "m", "digest": {"sha256": root}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false},
                "resources": resources,
                "future_field": {"ignored": true},
            }
        })
    }

    #[test]
    fn pae_matches_the_dsse_spec() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn bundle_json_round_trip() {
        let key = SigningKey::generate(Curve::P256);
        let b = signed(
            &statement(serde_json::json!([]), &root_digest(&[]).to_hex()),
            &key,
        );
        let back = Bundle::from_json(b.to_json().as_bytes(), "x").unwrap();
        assert_eq!(back.payload(), b.payload());
        assert_eq!(back.key_hint(), b.key_hint());
        let m = back.verify_signature(&key.verifying_key()).unwrap();
        assert!(m.resources.is_empty());
    }

    #[test]
    fn signed_but_inconsistent_statements_are_invalid() {
        let key = SigningKey::generate(Curve::P256);
        let vk = key.verifying_key();
        let d = Digest::of_bytes(b"a").to_hex();
        let one = serde_json::json!([{"name": "a", "algorithm": "sha256", "digest": d}]);
        let root = root_digest(&[Resource {
            name: "a".into(),
            digest: Digest::of_bytes(b"a"),
        }])
        .to_hex();
        assert!(
            signed(&statement(one.clone(), &root), &key)
                .verify_signature(&vk)
                .is_ok()
        );

        let wrong_root = signed(
            &statement(one.clone(), &Digest::of_bytes(b"").to_hex()),
            &key,
        );
        let err = wrong_root.verify_signature(&vk).unwrap_err();
        assert!(
            matches!(err, Error::InvalidStatement { .. }) && err.is_verification_failure(),
            "{err}"
        );

        let twice = serde_json::json!([
            {"name": "a", "algorithm": "sha256", "digest": d},
            {"name": "a", "algorithm": "sha256", "digest": d},
        ]);
        let r2 = root_digest(&[
            Resource {
                name: "a".into(),
                digest: Digest::of_bytes(b"a"),
            },
            Resource {
                name: "a".into(),
                digest: Digest::of_bytes(b"a"),
            },
        ]);
        let err = signed(&statement(twice, &r2.to_hex()), &key)
            .verify_signature(&vk)
            .unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");

        let mut two_subjects = statement(one.clone(), &root);
        two_subjects["subject"] = serde_json::json!([{"name": "m", "digest": {"sha256": root}}, {"name": "n", "digest": {}}]);
        let err = signed(&two_subjects, &key)
            .verify_signature(&vk)
            .unwrap_err();
        assert!(err.to_string().contains("2 subjects"), "{err}");

        let bad_digest = statement(
            serde_json::json!([{"name": "a", "algorithm": "sha256", "digest": "zz"}]),
            &root,
        );
        let err = signed(&bad_digest, &key).verify_signature(&vk).unwrap_err();
        assert!(err.to_string().contains("malformed digest"), "{err}");
    }

    #[test]
    fn shards_and_other_predicates_are_unsupported_not_valid() {
        let key = SigningKey::generate(Curve::P384);
        let vk = key.verifying_key();
        let mut shards = statement(serde_json::json!([]), &root_digest(&[]).to_hex());
        shards["predicate"]["serialization"]["method"] = "shards".into();
        let err = signed(&shards, &key).verify_signature(&vk).unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { .. }) && !err.is_verification_failure(),
            "{err}"
        );
        let mut legacy = statement(serde_json::json!([]), &root_digest(&[]).to_hex());
        legacy["predicateType"] = "https://model_signing/Digests/v0.1".into();
        assert!(matches!(
            signed(&legacy, &key).verify_signature(&vk),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn malformed_bundles_are_refused_before_any_crypto() {
        for (json, want) in [
            ("not json", "malformed"),
            (
                r#"{"mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2", "verificationMaterial": {}}"#,
                "unsupported",
            ),
            (
                r#"{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {"publicKey": {}}}"#,
                "no dsseEnvelope",
            ),
            (
                r#"{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {"certificate": {"rawBytes": ""}}, "dsseEnvelope": {"payload": "", "payloadType": "", "signatures": []}}"#,
                "certificate",
            ),
            (
                r#"{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {"publicKey": {}}, "dsseEnvelope": {"payload": "!!", "payloadType": "", "signatures": [{"sig": ""}]}}"#,
                "base64",
            ),
            (
                r#"{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {"publicKey": {}}, "dsseEnvelope": {"payload": "", "payloadType": "", "signatures": []}}"#,
                "no signature",
            ),
        ] {
            let err = Bundle::from_json(json.as_bytes(), "b").unwrap_err();
            assert!(err.to_string().contains(want), "{json}: {err}");
        }
    }
}
