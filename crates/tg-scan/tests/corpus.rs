//! The public corpus (`../shared/corpus/manifest.csv`): every malicious row flagged, every
//! benign row not flagged, every unknown row scanned without a crash.

use std::path::PathBuf;

use tg_report::Verdict;
use tg_scan::Scanner;

fn corpus_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TRAINGUARD_CORPUS") {
        return PathBuf::from(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(
        dir.join("manifest.csv").exists(),
        "the public corpus is missing at {}: set TRAINGUARD_CORPUS to its folder",
        dir.display()
    );
    dir
}

/// `path,expected,format,...` rows; fields may be quoted.
fn manifest(dir: &std::path::Path) -> Vec<(String, String, String)> {
    let text = fs_err::read_to_string(dir.join("manifest.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(4, ',');
            let path = f.next().unwrap().to_owned();
            let expected = f.next().unwrap().to_owned();
            let format = f.next().unwrap().to_owned();
            (path, expected, format)
        })
        .collect()
}

#[test]
fn every_corpus_row_gets_its_expected_verdict() {
    let dir = corpus_dir();
    let scanner = Scanner::default();
    let rows = manifest(&dir);
    assert!(rows.len() > 150, "manifest has {} rows", rows.len());
    let mut failures = Vec::new();
    for (path, expected, format) in &rows {
        let report = scanner.scan_path(&dir.join(path));
        let flagged = report.verdict >= Verdict::Suspicious;
        let ok = match expected.as_str() {
            "malicious" => flagged,
            "benign" => !flagged,
            _ => true,
        };
        if !ok {
            failures.push(format!(
                "{path} ({format}): expected {expected}, got {} as {}: {:?}",
                report.verdict,
                report.format,
                report
                    .findings
                    .iter()
                    .map(|f| format!(
                        "{} {} {}",
                        f.rule,
                        f.message,
                        f.evidence.clone().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
