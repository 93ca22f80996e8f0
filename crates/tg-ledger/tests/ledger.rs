//! The ledger on real SQLite files: appends, proofs, concurrent writers and tampering.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use tg_ledger::{
    ConsistencyProof, Digest, Entry, InclusionProof, Ledger, LedgerError, Problem, Reader,
    SigningKey, TamperReport, VerifiedLedger, Writer, default_key_path, load_verifying_key,
};

struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    key: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let key = default_key_path(&db);
    Fixture { _dir: dir, db, key }
}

fn entry(i: u64) -> Entry {
    Entry {
        time_ms: 1_780_000_000_000 + i,
        user: "alice".into(),
        uid: Some(1000),
        host: "gpu-node-07".into(),
        verb: "scan".into(),
        path: format!("/ckpt/step-{i}/model.pt"),
        digests: vec![Digest {
            name: "sha256".into(),
            hex: format!("{i:064x}"),
        }],
        verdict: "clean".into(),
    }
}

fn filled(n: u64) -> Fixture {
    let f = fixture();
    let mut ledger = Ledger::<Writer>::open(&f.db, &f.key).unwrap();
    for i in 0..n {
        let receipt = ledger.append(&entry(i)).unwrap();
        assert_eq!(receipt.index, i);
        assert_eq!(receipt.tree_head.tree_size, i + 1);
        assert_eq!(receipt.leaf_hash, entry(i).leaf_hash());
    }
    f
}

fn verify(f: &Fixture) -> Result<VerifiedLedger, TamperReport> {
    let key = load_verifying_key(&f.key).unwrap();
    Ledger::<Reader>::open(&f.db, key)
        .unwrap()
        .verify()
        .unwrap()
}

fn tampered(f: &Fixture) -> Vec<String> {
    let report = verify(f).expect_err("tampering must be detected");
    report.problems.iter().map(ToString::to_string).collect()
}

fn sql(db: &Path, statement: &str) {
    Connection::open(db)
        .unwrap()
        .execute_batch(statement)
        .unwrap();
}

#[test]
fn an_untouched_ledger_verifies_and_proves() {
    let f = filled(11);
    let verified = verify(&f).unwrap();
    assert_eq!(verified.size(), 11);
    assert_eq!(verified.heads().len(), 11);
    assert_eq!(verified.entries()[4], entry(4));
    let key = load_verifying_key(&f.key).unwrap();
    for i in 0..11 {
        let proof = verified.inclusion_proof(i).unwrap();
        let json = serde_json::to_vec(&proof).unwrap();
        let back = InclusionProof::from_json(&json).unwrap();
        back.verify(&key).unwrap();
        let mut forged = back.clone();
        forged.entry.verdict = "malicious".into();
        assert!(forged.verify(&key).is_err());
        forged.leaf_hash = forged.entry.leaf_hash();
        assert!(
            forged.verify(&key).is_err(),
            "a forged entry has no audit path"
        );
    }
    for old in 1..=11 {
        let proof = verified.consistency_proof(old).unwrap();
        let json = serde_json::to_vec(&proof).unwrap();
        ConsistencyProof::from_json(&json)
            .unwrap()
            .verify(&key)
            .unwrap();
    }
    assert!(matches!(
        verified.inclusion_proof(11),
        Err(LedgerError::OutOfRange { size: 11, .. })
    ));
    assert!(verified.consistency_proof(0).is_err());
    assert!(verified.consistency_proof(12).is_err());
}

#[test]
fn an_empty_ledger_verifies() {
    let f = fixture();
    drop(Ledger::<Writer>::open(&f.db, &f.key).unwrap());
    let verified = verify(&f).unwrap();
    assert_eq!(verified.size(), 0);
    assert!(verified.newest_head().is_none());
}

#[test]
fn a_rewritten_verdict_is_named() {
    let f = filled(20);
    sql(
        &f.db,
        "UPDATE entries SET verdict = 'clean ' WHERE idx = 16",
    );
    assert_eq!(
        tampered(&f),
        ["entry 16 was rewritten: its leaf no longer matches signed tree head 17"]
    );
}

#[test]
fn a_removed_entry_is_named() {
    let f = filled(10);
    sql(&f.db, "DELETE FROM entries WHERE idx = 3");
    assert_eq!(
        tampered(&f),
        ["entry 3 was removed: signed tree head 4 covers it, but its row is gone"]
    );
}

#[test]
fn a_removed_and_renumbered_entry_is_named() {
    let f = filled(6);
    sql(
        &f.db,
        "DELETE FROM entries WHERE idx = 2; UPDATE entries SET idx = idx - 1 WHERE idx > 2;",
    );
    let problems = tampered(&f);
    assert_eq!(
        problems[0],
        "entry 2 was reordered: it holds the content signed as entry 3"
    );
    assert_eq!(
        problems.last().unwrap(),
        "entry 5 was removed: signed tree head 6 covers it, but its row is gone"
    );
}

#[test]
fn swapped_entries_are_named_as_reordered() {
    let f = filled(10);
    let columns = "time_ms, user, uid, host, verb, path, digests, verdict";
    sql(
        &f.db,
        &format!(
            "CREATE TEMP TABLE a AS SELECT {columns} FROM entries WHERE idx = 2;
             CREATE TEMP TABLE b AS SELECT {columns} FROM entries WHERE idx = 7;
             DELETE FROM entries WHERE idx IN (2, 7);
             INSERT INTO entries (idx, {columns}) SELECT 2, * FROM b;
             INSERT INTO entries (idx, {columns}) SELECT 7, * FROM a;"
        ),
    );
    assert_eq!(
        tampered(&f),
        [
            "entry 2 was reordered: it holds the content signed as entry 7",
            "entry 7 was reordered: it holds the content signed as entry 2",
        ]
    );
}

#[test]
fn an_inserted_row_and_a_malformed_row_are_named() {
    let f = filled(4);
    sql(
        &f.db,
        "INSERT INTO entries (idx, time_ms, user, uid, host, verb, path, digests, verdict)
         SELECT 4, time_ms, user, uid, host, verb, path, digests, verdict FROM entries
         WHERE idx = 0;
         UPDATE entries SET time_ms = 'yesterday' WHERE idx = 1;",
    );
    assert_eq!(
        tampered(&f),
        [
            "entry 1 was rewritten: its leaf no longer matches signed tree head 2 \
             (its row is malformed: time_ms is not an integer)",
            "entry 4 was inserted: no signed tree head covers it",
        ]
    );
}

#[test]
fn removed_and_forged_heads_are_named() {
    let f = filled(5);
    sql(
        &f.db,
        "DELETE FROM tree_heads WHERE tree_size = 2;
         UPDATE tree_heads SET root_hash = zeroblob(32) WHERE tree_size = 4;",
    );
    assert_eq!(
        tampered(&f),
        [
            "signed tree head 4 is forged or damaged: its signature does not verify",
            "signed tree head 2 was removed",
        ]
    );
}

/// Cutting the newest entries off together with their heads leaves a valid shorter log; a
/// head kept elsewhere is what catches it.
#[test]
fn a_truncation_is_caught_by_a_head_kept_elsewhere() {
    let f = filled(8);
    let kept = verify(&f).unwrap().newest_head().unwrap().clone();
    let early = verify(&f).unwrap().heads()[2].clone();
    sql(
        &f.db,
        "DELETE FROM entries WHERE idx >= 6; DELETE FROM tree_heads WHERE tree_size > 6;",
    );
    let verified = verify(&f).unwrap();
    assert_eq!(
        verified.check_trusted_head(&kept),
        Err(Problem::Truncated { seen: 8, now: 6 })
    );
    assert_eq!(verified.check_trusted_head(&early), Ok(()));
    let mut forged = early.clone();
    forged.root_hash[0] ^= 1;
    assert!(matches!(
        verified.check_trusted_head(&forged),
        Err(Problem::Forked { tree_size: 3, .. })
    ));
}

#[test]
fn verifying_with_another_key_says_so() {
    let f = filled(3);
    let other = SigningKey::random(&mut rand_core::OsRng);
    let report = Ledger::<Reader>::open(&f.db, *other.verifying_key())
        .unwrap()
        .verify()
        .unwrap()
        .unwrap_err();
    assert_eq!(report.problems, [Problem::WrongKey]);
}

#[test]
fn appending_refuses_a_rewritten_state_and_a_swapped_or_lost_key() {
    let f = filled(3);
    sql(&f.db, "UPDATE state SET frontier = zeroblob(64)");
    let mut ledger = Ledger::<Writer>::open(&f.db, &f.key).unwrap();
    let err = ledger.append(&entry(3)).unwrap_err();
    assert!(
        err.to_string()
            .contains("the stored frontier does not match signed tree head 3"),
        "{err}"
    );

    let other_key = f.db.with_extension("other.key");
    tg_ledger::load_or_create_signing_key(&other_key).unwrap();
    assert!(matches!(
        Ledger::<Writer>::open(&f.db, &other_key),
        Err(LedgerError::KeyMismatch { .. })
    ));
    fs_err::remove_file(&f.key).unwrap();
    assert!(matches!(
        Ledger::<Writer>::open(&f.db, &f.key),
        Err(LedgerError::KeyMissing { .. })
    ));
}

#[test]
fn readers_never_create_a_ledger() {
    let f = fixture();
    let key = SigningKey::random(&mut rand_core::OsRng);
    assert!(matches!(
        Ledger::<Reader>::open(&f.db, *key.verifying_key()),
        Err(LedgerError::NotFound { .. })
    ));
    assert!(!f.db.exists());
    Connection::open(&f.db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(matches!(
        Ledger::<Reader>::open(&f.db, *key.verifying_key()),
        Err(LedgerError::NotALedger { .. })
    ));
}

/// Several writers, each with its own connection, append at the same time: nothing is lost
/// and the result verifies.
#[test]
fn concurrent_writers_lose_nothing() {
    const WRITERS: u64 = 4;
    const EACH: u64 = 25;
    let f = fixture();
    // The first writer creates the key; the others race it on purpose (no warm-up).
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (db, key) = (&f.db, &f.key);
            s.spawn(move || {
                let mut ledger = Ledger::<Writer>::open(db, key).unwrap();
                for i in 0..EACH {
                    ledger.append(&entry(w * 1000 + i)).unwrap();
                }
            });
        }
    });
    let verified = verify(&f).unwrap();
    assert_eq!(verified.size(), WRITERS * EACH);
    let mut times: Vec<u64> = verified.entries().iter().map(|e| e.time_ms).collect();
    times.sort_unstable();
    let mut want: Vec<u64> = (0..WRITERS)
        .flat_map(|w| (0..EACH).map(move |i| entry(w * 1000 + i).time_ms))
        .collect();
    want.sort_unstable();
    assert_eq!(times, want);
}

/// Fuzz-style: mutated proof documents never panic the parser or the verifier, and a mutation
/// that still verifies must be one that does not change what the proof says.
#[test]
fn mutated_proof_documents_never_panic() {
    let f = filled(7);
    let verified = verify(&f).unwrap();
    let key = load_verifying_key(&f.key).unwrap();
    let inclusion = serde_json::to_vec(&verified.inclusion_proof(3).unwrap()).unwrap();
    let consistency = serde_json::to_vec(&verified.consistency_proof(3).unwrap()).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"0123456789abcdef\"{}[],:-e. ";
    for round in 0..3000 {
        let base = if round % 2 == 0 {
            &inclusion
        } else {
            &consistency
        };
        let mut doc = base.clone();
        for _ in 0..=next() % 3 {
            let i = (next() % doc.len() as u64) as usize;
            doc[i] = alphabet[(next() % alphabet.len() as u64) as usize];
        }
        if let Ok(p) = InclusionProof::from_json(&doc)
            && p.verify(&key).is_ok()
        {
            assert_eq!(serde_json::to_vec(&p).unwrap(), inclusion);
        }
        if let Ok(p) = ConsistencyProof::from_json(&doc)
            && p.verify(&key).is_ok()
        {
            assert_eq!(serde_json::to_vec(&p).unwrap(), consistency);
        }
    }
    for junk in [
        &b""[..],
        b"null",
        b"[]",
        b"{\"leaf_index\":1e999}",
        &[0xff; 64],
    ] {
        assert!(InclusionProof::from_json(junk).is_err());
        assert!(ConsistencyProof::from_json(junk).is_err());
    }
}

/// With the head that signed an entry's leaf gone, the rewrite still shows: the next head's
/// root no longer matches, and only that first divergent head is named.
#[test]
fn a_rewrite_behind_a_removed_head_is_caught_by_the_next_root() {
    let f = filled(6);
    sql(
        &f.db,
        "DELETE FROM tree_heads WHERE tree_size = 3;
         UPDATE entries SET user = 'mallory' WHERE idx = 2;",
    );
    assert_eq!(
        tampered(&f),
        [
            "signed tree head 3 was removed",
            "signed tree head 4 does not match the tree rebuilt from the entries",
        ]
    );
}

#[test]
fn a_batch_is_signed_entry_by_entry_and_an_invalid_one_writes_nothing() {
    let f = filled(2);
    let mut ledger = Ledger::<Writer>::open(&f.db, &f.key).unwrap();
    let batch: Vec<Entry> = (2..12).map(entry).collect();
    let receipts = ledger.append_all(&batch).unwrap();
    assert_eq!(
        receipts.iter().map(|r| r.index).collect::<Vec<_>>(),
        (2..12).collect::<Vec<_>>()
    );
    let mut bad = batch.clone();
    bad[3].time_ms = u64::MAX;
    assert!(matches!(
        ledger.append_all(&bad),
        Err(LedgerError::InvalidEntry { .. })
    ));
    let verified = verify(&f).unwrap();
    assert_eq!(verified.size(), 12);
    assert_eq!(verified.heads().len(), 12);
    sql(&f.db, "UPDATE entries SET host = 'elsewhere' WHERE idx = 7");
    assert_eq!(
        tampered(&f),
        ["entry 7 was rewritten: its leaf no longer matches signed tree head 8"]
    );
}
