//! `trainguard ledger`: the real binary on temporary ledgers, several processes at once, and
//! tampering done the way an insider would, with SQL on the database file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn trainguard(ledger: &Path, args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_trainguard"))
        .arg("--ledger")
        .arg(ledger)
        .args(args)
        .env_remove("TRAINGUARD_LEDGER")
        .env_remove("TRAINGUARD_LEDGER_KEY")
        .output()
        .unwrap();
    let dir = ledger.parent().unwrap().display().to_string();
    let clean = |b: &[u8]| String::from_utf8_lossy(b).replace(&dir, "[TMP]");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: clean(&out.stdout),
        stderr: clean(&out.stderr),
    }
}

fn append(ledger: &Path, i: u32) -> Run {
    let digest = format!("sha256={i:064x}");
    let path = format!("/ckpt/step-{i}/model.pt");
    trainguard(
        ledger,
        &[
            "ledger",
            "append",
            "--verb",
            "scan",
            "--path",
            &path,
            "--verdict",
            "clean",
            "--digest",
            &digest,
        ],
    )
}

fn filled(n: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    for i in 0..n {
        let run = append(&db, i);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    (dir, db)
}

fn sql(db: &Path, statement: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(statement)
        .unwrap();
}

/// Several processes append at once; every entry lands and the ledger verifies.
#[test]
fn concurrent_processes_lose_nothing() {
    const PROCESSES: u32 = 4;
    const EACH: u32 = 6;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    std::thread::scope(|s| {
        for p in 0..PROCESSES {
            let db = &db;
            s.spawn(move || {
                for i in 0..EACH {
                    let run = append(db, p * 100 + i);
                    assert_eq!(run.code, 0, "{}", run.stderr);
                }
            });
        }
    });
    let show = trainguard(&db, &["ledger", "show", "--format", "json"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    let mut paths: Vec<String> = show
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["path"].as_str().unwrap().to_owned()
        })
        .collect();
    paths.sort();
    let mut want: Vec<String> = (0..PROCESSES)
        .flat_map(|p| (0..EACH).map(move |i| format!("/ckpt/step-{}/model.pt", p * 100 + i)))
        .collect();
    want.sort();
    assert_eq!(paths, want);
    let verify = trainguard(&db, &["ledger", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.starts_with("valid: 24 entries"),
        "{}",
        verify.stdout
    );
}

#[test]
fn a_rewritten_verdict_is_named_and_exits_1() {
    let (_dir, db) = filled(5);
    assert_eq!(trainguard(&db, &["ledger", "verify"]).code, 0);
    sql(
        &db,
        "UPDATE entries SET verdict = 'malicious' WHERE idx = 3",
    );
    let run = trainguard(&db, &["ledger", "verify"]);
    assert_eq!(run.code, 1);
    insta::assert_snapshot!(run.stdout, @"tampered: entry 3 was rewritten: its leaf no longer matches signed tree head 4");
    let json = trainguard(&db, &["ledger", "verify", "--format", "json"]);
    assert_eq!(json.code, 1);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 1);
}

#[test]
fn deleted_and_swapped_rows_are_named() {
    let (_dir, db) = filled(6);
    sql(
        &db,
        "DELETE FROM entries WHERE idx = 1;
         UPDATE entries SET idx = 100 WHERE idx = 3;
         UPDATE entries SET idx = 3 WHERE idx = 4;
         UPDATE entries SET idx = 4 WHERE idx = 100;",
    );
    let run = trainguard(&db, &["ledger", "verify"]);
    assert_eq!(run.code, 1);
    insta::assert_snapshot!(run.stdout, @r"
    tampered: entry 1 was removed: signed tree head 2 covers it, but its row is gone
    tampered: entry 3 was reordered: it holds the content signed as entry 4
    tampered: entry 4 was reordered: it holds the content signed as entry 3
    ");
    // No proof is cut from a tampered ledger.
    let prove = trainguard(&db, &["ledger", "prove", "--entry", "0"]);
    assert_eq!(prove.code, 1);
    assert!(prove.stdout.is_empty());
    assert!(
        prove.stderr.contains("entry 1 was removed"),
        "{}",
        prove.stderr
    );
}

#[test]
fn proofs_are_printed_and_checked_with_the_public_key_alone() {
    let (dir, db) = filled(7);
    let public = trainguard(&db, &["ledger", "public-key"]);
    assert_eq!(public.code, 0, "{}", public.stderr);
    assert!(public.stdout.starts_with("-----BEGIN PUBLIC KEY-----"));
    let pub_path = dir.path().join("ledger.pub");
    fs_err::write(&pub_path, &public.stdout).unwrap();
    let pub_arg = pub_path.to_str().unwrap();

    let inclusion = trainguard(&db, &["ledger", "prove", "--entry", "4"]);
    assert_eq!(inclusion.code, 0, "{}", inclusion.stderr);
    let proof_path = dir.path().join("inclusion.json");
    fs_err::write(&proof_path, &inclusion.stdout).unwrap();
    let proof_arg = proof_path.to_str().unwrap();
    let check = trainguard(&db, &["ledger", "check-proof", proof_arg, "--key", pub_arg]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    insta::assert_snapshot!(check.stdout, @"valid: entry 4 is in tree head 7");

    let forged = inclusion.stdout.replace("\"clean\"", "\"malicious\"");
    fs_err::write(&proof_path, forged).unwrap();
    let check = trainguard(&db, &["ledger", "check-proof", proof_arg, "--key", pub_arg]);
    assert_eq!(check.code, 1);
    insta::assert_snapshot!(check.stdout, @"invalid: the leaf hash is not the hash of the entry the proof carries");

    let consistency = trainguard(&db, &["ledger", "prove", "--consistency", "3"]);
    assert_eq!(consistency.code, 0, "{}", consistency.stderr);
    fs_err::write(&proof_path, &consistency.stdout).unwrap();
    let check = trainguard(&db, &["ledger", "check-proof", proof_arg, "--key", pub_arg]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    insta::assert_snapshot!(check.stdout, @"valid: tree head 3 is a prefix of tree head 7");

    let out_of_range = trainguard(&db, &["ledger", "prove", "--entry", "7"]);
    assert_eq!(out_of_range.code, 2);
    insta::assert_snapshot!(out_of_range.stderr, @"error: entry 7 does not exist: the ledger has 7 entries");
}

/// Cutting off the newest entries and their heads is caught by a head kept elsewhere.
#[test]
fn a_truncation_is_caught_with_a_trusted_head() {
    let (dir, db) = filled(5);
    let head = trainguard(&db, &["ledger", "head"]);
    assert_eq!(head.code, 0, "{}", head.stderr);
    let head_path = dir.path().join("head.json");
    fs_err::write(&head_path, &head.stdout).unwrap();
    let head_arg = head_path.to_str().unwrap();
    sql(
        &db,
        "DELETE FROM entries WHERE idx >= 3; DELETE FROM tree_heads WHERE tree_size > 3;",
    );
    assert_eq!(trainguard(&db, &["ledger", "verify"]).code, 0);
    let run = trainguard(&db, &["ledger", "verify", "--trusted-head", head_arg]);
    assert_eq!(run.code, 1);
    insta::assert_snapshot!(run.stdout, @"tampered: the ledger was truncated: a signed tree head of size 5 was seen, the ledger now holds 3 entries");
}

#[test]
fn show_lists_the_newest_entries() {
    let (_dir, db) = filled(4);
    let run = trainguard(&db, &["ledger", "show", "--limit", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("2  "), "{}", lines[0]);
    assert!(
        lines[1].contains("  scan  clean  /ckpt/step-3/model.pt sha256="),
        "{}",
        lines[1]
    );
}

#[test]
fn errors_exit_2_and_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("absent.db");
    let run = trainguard(&db, &["ledger", "show"]);
    assert_eq!(run.code, 2);
    insta::assert_snapshot!(run.stderr, @"error: ledger [TMP]/absent.db does not exist");
    let run = trainguard(&db, &["ledger", "verify"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("cannot read the ledger key [TMP]/absent.db.key"),
        "{}",
        run.stderr
    );

    let out = Command::new(env!("CARGO_BIN_EXE_trainguard"))
        .args(["ledger", "verify"])
        .env_remove("TRAINGUARD_LEDGER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stderr), @"error: no ledger given: pass --ledger PATH or set TRAINGUARD_LEDGER");
}
