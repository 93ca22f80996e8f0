//! Differential test against the real miniz 3.0.2: the same mutated archives go through
//! `tests/miniz_crosscheck/extract.c` and through `ZipArchive`, and whether each archive opens,
//! and for each member miniz supports whether it reads and to which length and CRC, must agree.
//!
//! Build the harness (see `tests/miniz_crosscheck/README.md`) and run
//! `TG_MINIZ_EXTRACT=/path/to/extract cargo test -p tg-archive -- --ignored miniz`.

use std::fmt::Write;

use tg_archive::{Limits, ZipArchive};

use crate::mutation::mutate;
use crate::support::{Member, PICKLE, ZipBuilder};

/// Our side, in the harness's output format.
fn describe(bytes: &[u8]) -> String {
    let mut out = String::new();
    let Ok(zip) = ZipArchive::open(bytes, Limits::default()) else {
        return "ERR\n".to_owned();
    };
    writeln!(out, "OK {}", zip.entries().len()).unwrap();
    for e in zip.entries() {
        let i = e.index;
        if !e.metadata_ok() {
            writeln!(out, "{i} statfail").unwrap();
        } else if e.refused_by_miniz() {
            writeln!(out, "{i} skip").unwrap();
        } else if e.is_directory() || e.compressed_size == 0 {
            writeln!(out, "{i} empty").unwrap();
        } else {
            match zip.read(e) {
                Ok(d) => writeln!(out, "{i} ok {} {:08x}", d.len(), crate::support::crc32(&d)),
                Err(_) => writeln!(out, "{i} fail"),
            }
            .unwrap();
        }
    }
    out
}

#[test]
#[ignore = "needs TG_MINIZ_EXTRACT, a miniz 3.0.2 harness built from tests/miniz_crosscheck"]
fn agrees_with_miniz_on_mutated_archives() {
    let harness = std::env::var("TG_MINIZ_EXTRACT").expect("set TG_MINIZ_EXTRACT");
    let members = vec![
        Member::stored("archive/data.pkl", PICKLE),
        Member::deflated("archive/data/0", &[5u8; 3000]),
        Member::stored("archive/version", b"3\n"),
    ];
    let mut z64 = ZipBuilder::new(members.clone());
    z64.zip64 = true;
    let seeds = [ZipBuilder::new(members).build(), z64.build()];
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x6d69_6e69_7a21);
    let mut paths = Vec::new();
    let mut ours = String::new();
    for i in 0..2000 {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        let path = dir.path().join(format!("c{i:04}.zip"));
        fs_err::write(&path, &input).unwrap();
        write!(ours, "== {}\n{}", path.display(), describe(&input)).unwrap();
        paths.push(path);
    }
    let out = std::process::Command::new(harness)
        .args(&paths)
        .output()
        .unwrap();
    let theirs = String::from_utf8(out.stdout).unwrap();
    let (ours, theirs): (Vec<&str>, Vec<&str>) =
        (ours.split("== ").collect(), theirs.split("== ").collect());
    assert_eq!(ours.len(), theirs.len());
    let opened = ours.iter().filter(|b| b.contains("\nOK ")).count();
    assert!(opened > 200, "{opened}");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b);
    }
}
