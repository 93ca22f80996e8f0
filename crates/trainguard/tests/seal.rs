//! `trainguard keygen`, `seal` and `verify` run as a user would: exit codes, stdout, stderr.

use std::path::Path;
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn trainguard(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_trainguard"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TRAINGUARD_LEDGER")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

const FILTERS: &[(&str, &str)] = &[(r"[0-9a-f]{64}", "[SHA256]")];

fn write(dir: &Path, name: &str, data: &[u8]) {
    let p = dir.join(name);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(p, data).unwrap();
}

/// A temp dir with a key pair `k` and a sealed model directory `ckpt`.
fn sealed() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let run = trainguard(tmp.path(), &["keygen", "--out", "k"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    write(tmp.path(), "ckpt/config.json", b"{}");
    write(
        tmp.path(),
        "ckpt/weights/model.safetensors",
        &vec![1u8; 70_000],
    );
    write(tmp.path(), "ckpt/optimizer.pt", b"opt");
    let run = trainguard(tmp.path(), &["seal", "ckpt", "--private-key", "k.key.pem"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = "sealed 3 files (68.4 KiB) of ckpt into ckpt/model.sig\nroot sha256:";
    assert!(run.stdout.starts_with(expected), "{}", run.stdout);
    tmp
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_reads_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trainguard(tmp.path(), &["keygen", "--out", "k", "--curve", "p521"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    insta::with_settings!({filters => FILTERS.to_vec()}, {
        insta::assert_snapshot!(run.stdout, @r"
        private key: k.key.pem
        public key: k.pub.pem
        curve: p521, hint: [SHA256]
        ");
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = fs_err::metadata(tmp.path().join("k.key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
    let before = fs_err::read(tmp.path().join("k.key.pem")).unwrap();
    let run = trainguard(tmp.path(), &["keygen", "--out", "k"]);
    assert_eq!(run.code, 2);
    insta::assert_snapshot!(run.stderr, @"error: not overwriting k.pub.pem: it already exists");
    assert_eq!(fs_err::read(tmp.path().join("k.key.pem")).unwrap(), before);
}

#[test]
fn untouched_directory_is_valid() {
    let tmp = sealed();
    let run = trainguard(tmp.path(), &["verify", "ckpt", "--public-key", "k.pub.pem"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    insta::with_settings!({filters => FILTERS.to_vec()}, {
        insta::assert_snapshot!(run.stdout, @"valid: 3 files of ckpt match ckpt/model.sig (root sha256:[SHA256])");
    });
    assert_eq!(run.stderr, "");
}

#[test]
fn tampering_is_named_and_exits_1() {
    let tmp = sealed();
    let w = tmp.path().join("ckpt/weights/model.safetensors");
    let mut data = fs_err::read(&w).unwrap();
    data[12_345] = 0;
    fs_err::write(&w, data).unwrap();
    fs_err::remove_file(tmp.path().join("ckpt/optimizer.pt")).unwrap();
    write(tmp.path(), "ckpt/weights/extra.pkl", b"x");
    let run = trainguard(tmp.path(), &["verify", "ckpt", "--public-key", "k.pub.pem"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    insta::assert_snapshot!(run.stdout, @r"
    changed: weights/model.safetensors
    missing: optimizer.pt
    extra: weights/extra.pkl
    invalid: 1 changed, 1 missing, 1 extra against 3 signed files in ckpt/model.sig
    ");

    let run = trainguard(
        tmp.path(),
        &[
            "verify",
            "ckpt",
            "--public-key",
            "k.pub.pem",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["changed"][0]["name"], "weights/model.safetensors");
    assert_ne!(v["changed"][0]["expected"], v["changed"][0]["actual"]);
    assert_eq!(v["missing"], serde_json::json!(["optimizer.pt"]));
    assert_eq!(v["extra"], serde_json::json!(["weights/extra.pkl"]));
}

#[test]
fn wrong_key_exits_1_and_missing_signature_exits_2() {
    let tmp = sealed();
    assert_eq!(
        trainguard(tmp.path(), &["keygen", "--out", "other"]).code,
        0
    );
    let run = trainguard(
        tmp.path(),
        &["verify", "ckpt", "--public-key", "other.pub.pem"],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    insta::with_settings!({filters => FILTERS.to_vec()}, {
        insta::assert_snapshot!(run.stdout, @"invalid: signature was made with a different key: bundle key hint [SHA256], given key [SHA256]");
    });

    let run = trainguard(
        tmp.path(),
        &[
            "verify",
            "ckpt",
            "--public-key",
            "k.pub.pem",
            "--signature",
            "none.sig",
        ],
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with("error: cannot access none.sig"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");

    let run = trainguard(tmp.path(), &["seal", "ckpt", "--private-key", "k.pub.pem"]);
    assert_eq!(run.code, 2);
    insta::assert_snapshot!(run.stderr, @"error: invalid key k.pub.pem: this is a public key; signing needs the private key");
}

#[test]
fn signature_outside_the_directory_and_cache_round_trip() {
    let tmp = sealed();
    let cache = tmp.path().join("cache.json");
    let cache = cache.to_str().unwrap();
    let seal = [
        "seal",
        "ckpt",
        "--private-key",
        "k.key.pem",
        "--signature",
        "out.sig",
        "--cache-file",
        cache,
        "--format",
        "json",
    ];
    let run = trainguard(tmp.path(), &seal);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    // The old ckpt/model.sig is now an ordinary file of the directory.
    assert_eq!(v["files"], 4);
    let verify = [
        "verify",
        "ckpt",
        "--public-key",
        "k.pub.pem",
        "--signature",
        "out.sig",
        "--cache-file",
        cache,
    ];
    let run = trainguard(tmp.path(), &verify);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    write(tmp.path(), "ckpt/config.json", b"[]");
    let run = trainguard(tmp.path(), &verify);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.starts_with("changed: config.json\n"),
        "{}",
        run.stdout
    );
}
