use std::path::{Path, PathBuf};

use tg_archive::{Anomaly, Limits, ZipArchive};

const CORPUS: &str = "/work/shared/corpus";

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs_err::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn corpus_zips() -> Option<Vec<PathBuf>> {
    let root = Path::new(CORPUS);
    if !root.is_dir() {
        return None;
    }
    let mut all = Vec::new();
    files(root, &mut all);
    let zips = all
        .into_iter()
        .filter(|p| {
            let mut head = [0u8; 4];
            fs_err::File::open(p)
                .and_then(|f| tg_archive::ReadAt::read_exact_at(&f, &mut head, 0))
                .is_ok()
                && head == *b"PK\x03\x04"
        })
        .collect();
    Some(zips)
}

#[test]
fn every_corpus_zip_opens_or_fails_cleanly() {
    // The shared corpus is not part of the repository; without it there is nothing to check.
    let Some(zips) = corpus_zips() else { return };
    assert!(zips.len() >= 20, "found only {} zips", zips.len());
    let mut failed = Vec::new();
    for path in &zips {
        let file = fs_err::File::open(path).unwrap();
        match ZipArchive::open(file, Limits::default()) {
            Ok(zip) => {
                for e in zip.entries() {
                    let _ = zip.read_member(e);
                }
                for a in zip.anomalies() {
                    let _ = a.to_string();
                }
            }
            Err(e) => failed.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        failed.is_empty(),
        "every corpus zip is a valid zip: {failed:?}"
    );
}

#[test]
fn torch_written_corpus_files_are_clean_and_resolve_data_pkl() {
    let root = Path::new(CORPUS);
    if !root.is_dir() {
        return;
    }
    for rel in [
        "peers/picklescan/tests/data/new_pytorch_model.bin",
        "peers/modelaudit/history-32215f53/local_test_models/pytorch_state_dict.pth",
        "peers/modelaudit/history-32215f53/local_test_models/pytorch_checkpoint.ckpt",
    ] {
        let bytes = fs_err::read(root.join(rel)).unwrap();
        let zip = ZipArchive::open(bytes.as_slice(), Limits::default()).unwrap();
        let hostile: Vec<&Anomaly> = zip.anomalies().iter().filter(|a| a.is_hostile()).collect();
        assert!(hostile.is_empty(), "{rel}: {hostile:?}");
        assert!(zip.torch_prefix().is_some(), "{rel}");
        let pkl = zip
            .torch_record("data.pkl")
            .unwrap_or_else(|| panic!("{rel}: no data.pkl"));
        let m = zip.read_member(pkl).unwrap();
        assert_eq!(m.data.first(), Some(&0x80), "{rel}");
        assert!(m.crc_mismatch.is_none(), "{rel}");
    }
}

/// The picklescan bypass samples: each must yield its pickle bytes, with the trick reported.
#[test]
fn picklescan_bypass_samples_yield_their_pickles() {
    let base = Path::new(CORPUS).join("peers/picklescan/tests");
    if !base.is_dir() {
        return;
    }
    type Case = (&'static str, &'static str, fn(&Anomaly) -> bool);
    let cases: [Case; 6] = [
        ("data/malicious1_0x1.zip", "model/config.pkl", |a| {
            matches!(a, Anomaly::EncryptedFlag { flags: 0x1, .. })
        }),
        ("data/malicious1_0x20.zip", "model/config.pkl", |a| {
            matches!(a, Anomaly::EncryptedFlag { flags: 0x20, .. })
        }),
        ("data/malicious1_0x40.zip", "model/config.pkl", |a| {
            matches!(a, Anomaly::EncryptedFlag { flags: 0x40, .. })
        }),
        (
            "data/malicious1_central_directory.zip",
            "data.pkl",
            |a| matches!(a, Anomaly::LocalNameMismatch { local, .. } if local == "datap.kl"),
        ),
        ("data2/malicious1_crc.zip", "data.pkl", |a| {
            matches!(a, Anomaly::CrcMismatch { .. })
        }),
        ("data/malicious1_wrong_ext.zip", "data.txt", |_| false),
    ];
    for (rel, member, expect) in cases {
        let bytes = fs_err::read(base.join(rel)).unwrap();
        let zip = ZipArchive::open(bytes.as_slice(), Limits::default()).unwrap();
        let e = zip
            .locate(member)
            .unwrap_or_else(|| panic!("{rel}: no {member}"));
        let m = zip.read_member(e).unwrap();
        assert_eq!(m.data.first(), Some(&0x80), "{rel}");
        assert_eq!(m.data.len(), 51, "{rel}");
        let mut anomalies: Vec<Anomaly> = zip.anomalies().to_vec();
        anomalies.extend(m.crc_mismatch);
        if rel.ends_with("wrong_ext.zip") {
            // Nothing structural: only the scanner's content sniffing catches this one.
            assert!(anomalies.is_empty(), "{rel}: {anomalies:?}");
        } else {
            assert!(anomalies.iter().any(expect), "{rel}: {anomalies:?}");
        }
    }
}
