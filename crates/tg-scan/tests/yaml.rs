//! The YAML config fixtures (`tests/yaml_fixtures/`, written by `make_yaml_fixtures.py` with
//! PyYAML and OmegaConf): every row of `expected.csv` gets exactly its verdict and its format;
//! and text that merely reads as a protocol-0 import is judged as text. Their mutations run in
//! `tests/formats.rs` with the other formats' fixtures.

use std::path::PathBuf;

use tg_report::Verdict;
use tg_scan::Scanner;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/yaml_fixtures")
}

fn rows() -> Vec<(String, Verdict, String)> {
    let text = fs_err::read_to_string(dir().join("expected.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let mut cols = line.splitn(4, ',');
            let file = cols.next().unwrap().to_string();
            let verdict = match cols.next().unwrap() {
                "clean" => Verdict::Clean,
                "suspicious" => Verdict::Suspicious,
                "malicious" => Verdict::Malicious,
                other => panic!("{file}: unknown verdict {other}"),
            };
            (file, verdict, cols.next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn every_fixture_gets_its_verdict_and_format() {
    let rows = rows();
    assert!(rows.len() >= 12, "{} rows", rows.len());
    let scanner = Scanner::default();
    let mut wrong = Vec::new();
    for (file, verdict, format) in &rows {
        let r = scanner.scan_path(&dir().join(file));
        if r.verdict != *verdict || r.format != *format {
            wrong.push(format!(
                "{file}: {} ({}), expected {verdict} ({format}): {:?}",
                r.verdict, r.format, r.findings
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Both kinds of attack and both verdicts are covered.
    for needle in ["malicious", "clean"] {
        assert!(
            rows.iter()
                .any(|(f, v, _)| f.starts_with("nemo_") && v.as_str() == needle)
        );
    }
}

/// A config that starts with `c` reads as a protocol-0 `GLOBAL` of a module no file can have:
/// the import fails, nothing runs, and the text is judged as what it is.
#[test]
fn text_that_reads_as_an_impossible_import_is_not_a_pickle() {
    let scanner = Scanner::default();
    let plain = scanner.scan_bytes("config.yaml", b"checkpoint_dir: /data/x\nlr: 0.1\n");
    assert_eq!(
        (plain.verdict, plain.format.as_str()),
        (Verdict::Clean, "not-a-model")
    );
    let tagged = scanner.scan_bytes(
        "hparams.yaml",
        b"callback: !!python/object/apply:posix.system\n- id\n",
    );
    assert_eq!(
        (tagged.verdict, tagged.format.as_str()),
        (Verdict::Malicious, "yaml")
    );
    // A real protocol-0 import is still a pickle: `os` is a module name.
    let pickle = scanner.scan_bytes("x.pkl", b"cos\nsystem\n(S'id'\ntR.");
    assert_eq!(pickle.verdict, Verdict::Malicious);
}
