//! Interoperability with the real `model-signing` package from PyPI (pinned in
//! requirements-test.txt): bundles we write verify with `model_signing verify key`, and bundles
//! `model_signing sign key` writes verify with us. Run through `scripts/test`, which installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tg_seal::{
    Bundle, Curve, DEFAULT_SIGNATURE_NAME, Options, SigningKey, VerifyingKey, manifest, sign,
    verify,
};

/// `$TRAINGUARD_TEST_PYTHON`, else `<workspace>/.venv/bin/python`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAINGUARD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "no Python for the model-signing interoperability tests: run scripts/test (it installs \
         .venv from requirements-test.txt), or set TRAINGUARD_TEST_PYTHON"
    );
}

fn model_signing(args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(python())
        .arg("-m")
        .arg("model_signing")
        .args(args)
        .output()
        .expect("run python");
    if String::from_utf8_lossy(&out.stderr).contains("No module named model_signing") {
        panic!(
            "model_signing is not installed in {}: run scripts/test",
            python().display()
        );
    }
    out
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    let p = dir.join(name);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(p, data).unwrap();
}

fn model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.json", b"{\"layers\": 2}");
    write(dir.path(), "weights/00001.safetensors", &vec![3u8; 1 << 20]);
    write(dir.path(), "a-b", b"dash");
    write(dir.path(), "a.txt", b"dot");
    write(dir.path(), "a/b", b"nested");
    write(dir.path(), "empty", b"");
    write(dir.path(), ".gitignore", b"*.tmp");
    dir
}

fn py_verify(dir: &Path, sig: &Path, public: &Path) -> Output {
    model_signing(&[
        "verify".as_ref(),
        "key".as_ref(),
        "--signature".as_ref(),
        sig.as_os_str(),
        "--public_key".as_ref(),
        public.as_os_str(),
        dir.as_os_str(),
    ])
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout {}\nstderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn model_signing_verifies_what_we_sign_and_catches_tampering() {
    for curve in [Curve::P256, Curve::P384, Curve::P521] {
        let dir = model();
        let keys = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(curve);
        let public = keys.path().join("pub.pem");
        fs_err::write(&public, key.verifying_key().to_pem()).unwrap();
        let sig = dir.path().join(DEFAULT_SIGNATURE_NAME);
        let mut opts = Options::default();
        opts.ignore_signature(dir.path(), &sig).unwrap();
        sign(&manifest(dir.path(), &opts).unwrap(), &key)
            .unwrap()
            .write(&sig)
            .unwrap();

        let out = py_verify(dir.path(), &sig, &public);
        assert!(out.status.success(), "{curve}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Verification succeeded"),
            "{}",
            show(&out)
        );

        if curve == Curve::P256 {
            write(dir.path(), "a/b", b"nesteD");
            let out = py_verify(dir.path(), &sig, &public);
            assert_eq!(out.status.code(), Some(1), "{}", show(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("a/b"),
                "{}",
                show(&out)
            );
        }
    }
}

/// Keys written by Python `cryptography` in both PEM flavours, and their public halves.
fn python_keys(dir: &Path) {
    let script = r#"
import sys, pathlib
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec
d = pathlib.Path(sys.argv[1])
for name, curve, fmt in [("p256", ec.SECP256R1(), s.PrivateFormat.PKCS8),
                         ("p384", ec.SECP384R1(), s.PrivateFormat.TraditionalOpenSSL)]:
    k = ec.generate_private_key(curve)
    (d / f"{name}.key").write_bytes(k.private_bytes(s.Encoding.PEM, fmt, s.NoEncryption()))
    (d / f"{name}.pub").write_bytes(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn we_verify_what_model_signing_signs_and_name_tampering() {
    let keys = tempfile::tempdir().unwrap();
    python_keys(keys.path());
    for name in ["p256", "p384"] {
        let dir = model();
        write(dir.path(), "notes/skip-me.md", b"ignored by the signer");
        let sig = dir.path().join(DEFAULT_SIGNATURE_NAME);
        let key_path = keys.path().join(format!("{name}.key"));
        let out = model_signing(&[
            "sign".as_ref(),
            "key".as_ref(),
            "--private_key".as_ref(),
            key_path.as_os_str(),
            "--signature".as_ref(),
            sig.as_os_str(),
            "--ignore-paths".as_ref(),
            dir.path().join("notes").as_os_str(),
            dir.path().as_os_str(),
        ]);
        assert!(out.status.success(), "{name}: {}", show(&out));

        // Our key parsing and hint agree with cryptography's.
        let ours = SigningKey::read_pem_file(&key_path)
            .unwrap()
            .verifying_key();
        let theirs = VerifyingKey::read_pem_file(&keys.path().join(format!("{name}.pub"))).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(
            ours.to_pem(),
            fs_err::read_to_string(keys.path().join(format!("{name}.pub"))).unwrap()
        );
        let bundle = Bundle::read(&sig).unwrap();
        assert_eq!(bundle.key_hint(), Some(theirs.hint().as_str()));

        // The same directory hashes to the same manifest (order, names, ignores).
        let signed = bundle.verify_signature(&theirs).unwrap();
        let mut opts = Options::default();
        opts.ignore_signature(dir.path(), &sig).unwrap();
        let report = verify(dir.path(), &bundle, &theirs, &opts).unwrap();
        assert!(report.is_valid(), "{name}: {report:?}");
        assert!(
            signed.ignore_paths.iter().any(|p| p == "notes"),
            "{:?}",
            signed.ignore_paths
        );
        opts.ignore_paths.push("notes".into());
        let ours = manifest(dir.path(), &opts).unwrap();
        assert_eq!(ours.resources, signed.resources);
        assert_eq!(ours.root_digest(), signed.root_digest);

        // Tampering is named.
        write(dir.path(), "weights/00001.safetensors", &vec![4u8; 1 << 20]);
        write(dir.path(), "weights/backdoor.pkl", b"c");
        fs_err::remove_file(dir.path().join("a.txt")).unwrap();
        let opts = {
            let mut o = Options::default();
            o.ignore_signature(dir.path(), &sig).unwrap();
            o
        };
        let report = verify(dir.path(), &bundle, &theirs, &opts).unwrap();
        assert_eq!(
            report
                .changed
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["weights/00001.safetensors"]
        );
        assert_eq!(report.extra, ["weights/backdoor.pkl"]);
        assert_eq!(report.missing, ["a.txt"]);
    }
}
