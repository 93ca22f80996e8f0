//! Seal and verify real directories: clean, tampered, wrong key, wrong directory, cache.

use std::path::Path;

use tg_seal::{
    Bundle, Curve, DEFAULT_SIGNATURE_NAME, Error, Options, SigningKey, manifest, sign, verify,
};

fn write(dir: &Path, name: &str, data: &[u8]) {
    let p = dir.join(name);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(p, data).unwrap();
}

/// A small model directory: nested files, an empty file, git files at the root.
fn model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.json", b"{\"layers\": 2}");
    write(dir.path(), "weights/00001.safetensors", &vec![7u8; 3 << 20]);
    write(dir.path(), "weights/00002.safetensors", b"second shard");
    write(dir.path(), "tokenizer/empty.txt", b"");
    write(dir.path(), ".git/HEAD", b"ref: refs/heads/main");
    write(dir.path(), ".gitattributes", b"*.safetensors filter=lfs");
    dir
}

fn seal(dir: &Path, key: &SigningKey) -> (Bundle, Options) {
    let sig = dir.join(DEFAULT_SIGNATURE_NAME);
    let mut opts = Options::default();
    opts.ignore_signature(dir, &sig).unwrap();
    let m = manifest(dir, &opts).unwrap();
    let bundle = sign(&m, key).unwrap();
    bundle.write(&sig).unwrap();
    (Bundle::read(&sig).unwrap(), opts)
}

#[test]
fn untouched_directory_verifies_clean_on_every_curve() {
    for curve in [Curve::P256, Curve::P384, Curve::P521] {
        let dir = model();
        let key = SigningKey::generate(curve);
        let (bundle, opts) = seal(dir.path(), &key);
        let report = verify(dir.path(), &bundle, &key.verifying_key(), &opts).unwrap();
        assert!(report.is_valid(), "{curve}: {report:?}");
        // Git files and the signature itself are not in the manifest; everything else is.
        assert_eq!(report.signed_files, 4, "{curve}");
        assert_eq!(report.stats.bytes, 13 + (3 << 20) + 12, "{curve}");
    }
}

#[test]
fn one_changed_byte_is_named() {
    let dir = model();
    let key = SigningKey::generate(Curve::P256);
    let (bundle, opts) = seal(dir.path(), &key);
    let path = dir.path().join("weights/00001.safetensors");
    let mut data = fs_err::read(&path).unwrap();
    data[2 << 20] ^= 1;
    fs_err::write(&path, data).unwrap();
    let report = verify(dir.path(), &bundle, &key.verifying_key(), &opts).unwrap();
    assert!(!report.is_valid());
    let names: Vec<_> = report.changed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["weights/00001.safetensors"]);
    assert!(report.missing.is_empty() && report.extra.is_empty());
    assert_ne!(report.changed[0].expected, report.changed[0].actual);
}

#[test]
fn added_file_is_named() {
    let dir = model();
    let key = SigningKey::generate(Curve::P256);
    let (bundle, opts) = seal(dir.path(), &key);
    write(dir.path(), "weights/evil.pkl", b"cos\nsystem\n");
    let report = verify(dir.path(), &bundle, &key.verifying_key(), &opts).unwrap();
    assert_eq!(report.extra, ["weights/evil.pkl"]);
    assert!(report.missing.is_empty() && report.changed.is_empty());
}

#[test]
fn removed_file_is_named_even_when_empty() {
    let dir = model();
    let key = SigningKey::generate(Curve::P256);
    let (bundle, opts) = seal(dir.path(), &key);
    fs_err::remove_file(dir.path().join("tokenizer/empty.txt")).unwrap();
    fs_err::remove_file(dir.path().join("config.json")).unwrap();
    let report = verify(dir.path(), &bundle, &key.verifying_key(), &opts).unwrap();
    assert_eq!(report.missing, ["config.json", "tokenizer/empty.txt"]);
    assert!(report.extra.is_empty() && report.changed.is_empty());
}

#[test]
fn git_paths_are_ignored_only_at_the_root() {
    let dir = model();
    let key = SigningKey::generate(Curve::P256);
    let (bundle, opts) = seal(dir.path(), &key);
    write(dir.path(), ".git/objects/xx", b"anything");
    write(dir.path(), ".github/workflows/ci.yml", b"on: push");
    assert!(
        verify(dir.path(), &bundle, &key.verifying_key(), &opts)
            .unwrap()
            .is_valid()
    );
    write(
        dir.path(),
        "weights/.git/hook",
        b"nested git dirs are model files",
    );
    let report = verify(dir.path(), &bundle, &key.verifying_key(), &opts).unwrap();
    assert_eq!(report.extra, ["weights/.git/hook"]);
}

#[test]
fn wrong_key_fails_with_and_without_hint() {
    let dir = model();
    let key = SigningKey::generate(Curve::P256);
    let other = SigningKey::generate(Curve::P256).verifying_key();
    let (bundle, opts) = seal(dir.path(), &key);
    let err = verify(dir.path(), &bundle, &other, &opts).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
    assert!(err.is_verification_failure());

    // Without the hint, the ECDSA check itself must fail.
    let sig = dir.path().join(DEFAULT_SIGNATURE_NAME);
    let mut json: serde_json::Value = serde_json::from_slice(&fs_err::read(&sig).unwrap()).unwrap();
    json["verificationMaterial"]["publicKey"] = serde_json::json!({});
    fs_err::write(&sig, json.to_string()).unwrap();
    let bundle = Bundle::read(&sig).unwrap();
    let err = verify(dir.path(), &bundle, &other, &opts).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    // ... and the right key still verifies a hint-less bundle.
    assert!(
        verify(dir.path(), &bundle, &key.verifying_key(), &opts)
            .unwrap()
            .is_valid()
    );
}

#[test]
fn edited_payload_fails_the_signature() {
    let dir = model();
    let key = SigningKey::generate(Curve::P384);
    let (bundle, opts) = seal(dir.path(), &key);
    // An attacker rewrites the signed digest of a file they changed.
    let text = String::from_utf8(bundle.payload().to_vec()).unwrap();
    let forged = text.replacen("\"config.json\"", "\"config.jsom\"", 1);
    assert_ne!(text, forged);
    let sig = dir.path().join(DEFAULT_SIGNATURE_NAME);
    let mut json: serde_json::Value = serde_json::from_slice(&fs_err::read(&sig).unwrap()).unwrap();
    use base64::Engine as _;
    json["dsseEnvelope"]["payload"] = base64::engine::general_purpose::STANDARD
        .encode(forged)
        .into();
    let forged_bundle = Bundle::from_json(json.to_string().as_bytes(), "forged").unwrap();
    let err = verify(dir.path(), &forged_bundle, &key.verifying_key(), &opts).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn signature_of_another_directory_fails() {
    let a = model();
    let b = tempfile::tempdir().unwrap();
    write(b.path(), "config.json", b"{\"layers\": 3}");
    write(b.path(), "other.bin", b"x");
    let key = SigningKey::generate(Curve::P256);
    let (bundle_b, opts) = seal(b.path(), &key);
    let report = verify(a.path(), &bundle_b, &key.verifying_key(), &opts).unwrap();
    assert!(!report.is_valid());
    assert_eq!(report.missing, ["other.bin"]);
    assert_eq!(
        report
            .changed
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["config.json"]
    );
    assert_eq!(report.extra.len(), 3);
}

#[test]
fn symlinks_and_non_directories_are_refused() {
    let dir = model();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
    let err = manifest(dir.path(), &Options::default()).unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
    assert!(err.to_string().contains("link"), "{err}");
    let err = manifest(&dir.path().join("config.json"), &Options::default()).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
}

#[test]
fn manifest_is_sorted_component_wise_and_root_digest_is_over_raw_digests() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.txt", "a-b", "a/b"] {
        write(dir.path(), name, name.as_bytes());
    }
    let m = manifest(dir.path(), &Options::default()).unwrap();
    let names: Vec<_> = m.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a/b", "a-b", "a.txt"]);
    let mut concat = Vec::new();
    for r in &m.resources {
        assert_eq!(r.digest, tg_seal::Digest::of_bytes(r.name.as_bytes()));
        concat.extend_from_slice(&r.digest.0);
    }
    assert_eq!(m.root_digest(), tg_seal::Digest::of_bytes(&concat));
    assert_eq!(
        m.ignore_paths,
        [".git", ".gitattributes", ".github", ".gitignore"]
    );
}

#[test]
fn cache_reuses_settled_files_and_never_hides_a_change() {
    let dir = model();
    let cache_dir = tempfile::tempdir().unwrap();
    let mut opts = Options::default();
    opts.cache = Some(cache_dir.path().join("digests.json"));

    // Files written just now are "racy": hashed, recorded, but not trusted yet.
    let first = manifest(dir.path(), &opts).unwrap();
    assert_eq!(first.stats.cache_hits, 0);
    let second = manifest(dir.path(), &opts).unwrap();
    assert_eq!(
        second.stats.cache_hits, 0,
        "racily clean entries must not be trusted"
    );

    // Once the files are older than the margin, the cache answers.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let third = manifest(dir.path(), &opts).unwrap();
    let fourth = manifest(dir.path(), &opts).unwrap();
    assert_eq!(third.stats.cache_hits, 0);
    assert_eq!(fourth.stats.cache_hits, 4);
    assert_eq!(fourth.root_digest(), first.root_digest());

    // Same size, mtime put back: ctime still moves, so the change is seen.
    let path = dir.path().join("weights/00002.safetensors");
    let mtime = fs_err::metadata(&path).unwrap().modified().unwrap();
    fs_err::write(&path, b"SECOND shard").unwrap();
    let f = fs_err::OpenOptions::new().write(true).open(&path).unwrap();
    f.file().set_modified(mtime).unwrap();
    drop(f);
    let after = manifest(dir.path(), &opts).unwrap();
    assert_eq!(after.stats.cache_hits, 3);
    let got = after
        .resources
        .iter()
        .find(|r| r.name == "weights/00002.safetensors")
        .unwrap();
    assert_eq!(got.digest, tg_seal::Digest::of_bytes(b"SECOND shard"));
}
