//! `trainguard convert` over the public corpus's PyTorch rows: every benign checkpoint converts
//! and reads back identical (`trainguard diff`), every malicious one is refused with nothing
//! written. (Corpus files are never given to a real loader; bit-exactness against torch itself
//! is proven on generated checkpoints in `convert.rs`.)

use std::path::PathBuf;
use std::process::Command;

fn corpus() -> PathBuf {
    if let Ok(dir) = std::env::var("TRAINGUARD_CORPUS") {
        return PathBuf::from(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(
        dir.join("manifest.csv").exists(),
        "the public corpus is missing at {}: set TRAINGUARD_CORPUS",
        dir.display()
    );
    dir
}

#[test]
fn corpus_checkpoints_convert_or_are_refused() {
    let dir = corpus();
    let text = fs_err::read_to_string(dir.join("manifest.csv")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = (0, 0);
    let mut failures = Vec::new();
    for line in text.lines().skip(1) {
        let mut f = line.splitn(4, ',');
        let (path, expected, format) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        if format != "pytorch-zip" && format != "pytorch-legacy" {
            continue;
        }
        let input = dir.join(path);
        let out = tmp
            .path()
            .join(format!("{}.safetensors", path.replace('/', "_")));
        let run = Command::new(env!("CARGO_BIN_EXE_trainguard"))
            .arg("convert")
            .arg(&input)
            .arg(&out)
            .output()
            .unwrap();
        let code = run.status.code();
        match expected {
            "benign" => {
                seen.0 += 1;
                // A zip without <name>/data.pkl is refused by torch's own reader too.
                if code == Some(2)
                    && String::from_utf8_lossy(&run.stderr).contains("without <name>/data.pkl")
                {
                    continue;
                }
                if code != Some(0) {
                    failures.push(format!(
                        "{path}: exit {code:?}: {}",
                        String::from_utf8_lossy(&run.stderr)
                    ));
                    continue;
                }
                let diff = Command::new(env!("CARGO_BIN_EXE_trainguard"))
                    .arg("diff")
                    .arg(&input)
                    .arg(&out)
                    .output()
                    .unwrap();
                if diff.status.code() != Some(0) {
                    failures.push(format!(
                        "{path}: converted file differs: {}",
                        String::from_utf8_lossy(&diff.stdout)
                    ));
                }
            }
            "malicious" => {
                seen.1 += 1;
                if code != Some(1) || out.exists() {
                    failures.push(format!(
                        "{path}: malicious, but exit {code:?} (output written: {})",
                        out.exists()
                    ));
                }
            }
            _ => {}
        }
    }
    assert!(seen.0 >= 10 && seen.1 >= 3, "corpus rows seen: {seen:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
