use tg_archive::{Limits, TarAnomaly, TarArchive, TarEntryKind, TarError};

use crate::support::{PICKLE, tar, tar_header};

fn legacy() -> Vec<u8> {
    tar(&[
        (b"sys_info", PICKLE),
        (b"pickle", PICKLE),
        (b"storages", &[9u8; 700]),
        (b"tensors", PICKLE),
    ])
}

#[test]
fn legacy_torch_tar_lists_and_reads() {
    let bytes = legacy();
    let t = TarArchive::open(bytes.as_slice(), Limits::default()).unwrap();
    let names: Vec<&str> = t.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["sys_info", "pickle", "storages", "tensors"]);
    assert!(t.anomalies().is_empty(), "{:?}", t.anomalies());
    let storages = t.locate("storages").unwrap();
    assert_eq!(storages.kind, TarEntryKind::Regular);
    assert_eq!(storages.data_offset % 512, 0);
    assert_eq!(t.read(storages).unwrap(), vec![9u8; 700]);
    assert_eq!(t.read(t.locate("pickle").unwrap()).unwrap(), PICKLE);
    assert_eq!(t.read_prefix(storages, 3).unwrap(), vec![9u8; 3]);
}

#[test]
fn duplicate_names_are_hostile_and_the_last_one_wins() {
    let bytes = tar(&[(b"pickle", PICKLE), (b"pickle", b"\x80\x02K\x02.")]);
    let t = TarArchive::open(bytes.as_slice(), Limits::default()).unwrap();
    assert_eq!(
        t.anomalies(),
        &[TarAnomaly::DuplicateName {
            name: "pickle".into()
        }]
    );
    assert!(t.is_hostile());
    // tarfile.getmember returns the last match.
    assert_eq!(
        t.read(t.locate("pickle").unwrap()).unwrap(),
        b"\x80\x02K\x02."
    );
}

#[test]
fn member_past_the_end_is_hostile_and_unreadable() {
    let mut bytes = tar_header(b"pickle", 10_000, b'0').to_vec();
    bytes.extend_from_slice(PICKLE);
    let t = TarArchive::open(bytes.as_slice(), Limits::default()).unwrap();
    assert_eq!(
        t.anomalies(),
        &[TarAnomaly::EntryPastEnd {
            name: "pickle".into()
        }]
    );
    assert!(matches!(
        t.read(&t.entries()[0]),
        Err(TarError::OutOfBounds { .. })
    ));
}

#[test]
fn data_after_the_end_marker_is_hostile() {
    let mut bytes = legacy();
    bytes.extend_from_slice(&tar_header(b"pickle", 5, b'0'));
    bytes.extend_from_slice(PICKLE);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let t = TarArchive::open(bytes.as_slice(), Limits::default()).unwrap();
    assert_eq!(t.entries().len(), 4);
    assert!(
        t.anomalies()
            .iter()
            .any(|a| matches!(a, TarAnomaly::TrailingData { .. }))
    );
}

#[test]
fn gnu_long_names_pax_paths_and_ustar_prefixes() {
    let long = "d/".repeat(80) + "pickle";
    let mut bytes = tar_header(b"././@LongLink", long.len() as u64 + 1, b'L').to_vec();
    bytes.extend_from_slice(long.as_bytes());
    bytes.push(0);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes.extend_from_slice(&tar_header(b"short", 5, b'0'));
    bytes.extend_from_slice(PICKLE);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let record = b"18 path=paxed.pkl\n";
    bytes.extend_from_slice(&tar_header(b"PaxHeader", record.len() as u64, b'x'));
    bytes.extend_from_slice(record);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes.extend_from_slice(&tar_header(b"ignored", 5, b'0'));
    bytes.extend_from_slice(PICKLE);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    // A directory does not skip its (bogus) size in tarfile.
    bytes.extend_from_slice(&tar_header(b"dir/", 0, b'5'));
    bytes.extend_from_slice(&[0u8; 1024]);
    let t = TarArchive::open(bytes.as_slice(), Limits::default()).unwrap();
    let names: Vec<&str> = t.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, [long.as_str(), "paxed.pkl", "dir"]);
    assert_eq!(t.read(&t.entries()[1]).unwrap(), PICKLE);
    assert_eq!(t.entries()[2].kind, TarEntryKind::Directory);
}

#[test]
fn invalid_inputs_fail_cleanly() {
    assert!(matches!(
        TarArchive::open(&[][..], Limits::default()),
        Err(TarError::NotATar { .. })
    ));
    assert!(TarArchive::open(&[0x42u8; 512][..], Limits::default()).is_err());
    let mut bad = legacy();
    bad[148] = b'7'; // checksum of the first header
    assert!(matches!(
        TarArchive::open(bad.as_slice(), Limits::default()),
        Err(TarError::NotATar { .. })
    ));
    // A bad second header ends the archive early, like tarfile.
    let mut bad = legacy();
    bad[1024 + 148] = b'7';
    let t = TarArchive::open(bad.as_slice(), Limits::default()).unwrap();
    assert_eq!(t.entries().len(), 1);
    assert!(
        t.anomalies()
            .contains(&TarAnomaly::InvalidHeader { offset: 1024 })
    );
    // A huge GNU long name is refused before allocating.
    let bytes = tar_header(b"././@LongLink", (1 << 33) - 1, b'L');
    let limits = Limits {
        max_directory_bytes: 1 << 20,
        ..Limits::default()
    };
    assert!(matches!(
        TarArchive::open(&bytes[..], limits),
        Err(TarError::RecordTooLarge { .. })
    ));
    // A member over the cap is refused.
    let bytes = legacy();
    let limits = Limits {
        max_member_bytes: 100,
        ..Limits::default()
    };
    let t = TarArchive::open(bytes.as_slice(), limits).unwrap();
    assert!(matches!(
        t.read(t.locate("storages").unwrap()),
        Err(TarError::MemberTooLarge { .. })
    ));
}

/// Tars written by CPython's tarfile, with the names and sizes tarfile reads back, recorded by
/// `tests/tarfile_crosscheck/gen.py`.
#[test]
fn matches_python_tarfile_on_recorded_archives() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    for label in ["pax", "gnu", "ustar"] {
        let bytes = fs_err::read(format!("{dir}/tarfile_{label}.tar")).unwrap();
        let expected = fs_err::read_to_string(format!("{dir}/tarfile_{label}.names")).unwrap();
        let t = TarArchive::open(bytes.as_slice(), Limits::default()).unwrap();
        let got: Vec<String> = t
            .entries()
            .iter()
            .map(|e| format!("{}\t{}", e.name, e.size))
            .collect();
        let want: Vec<&str> = expected.lines().collect();
        assert_eq!(got, want, "{label}");
        assert!(t.anomalies().is_empty(), "{label}: {:?}", t.anomalies());
        for (i, e) in t.entries().iter().enumerate() {
            let data = t.read(e).unwrap();
            assert_eq!(data.len() as u64, e.size);
            // The generator fills member i with byte i; ustar skips unrepresentable names.
            assert!(data.iter().all(|&b| b == data[0]), "{label} member {i}");
        }
    }
}

#[test]
fn malformed_pax_records_fail_cleanly() {
    for record in [
        &b"1 x"[..],
        b"0 path=x\n",
        b"99 path=x\n",
        b"5 pathx\n",
        b"x path=y\n",
    ] {
        let mut bytes = tar_header(b"PaxHeader", record.len() as u64, b'x').to_vec();
        bytes.extend_from_slice(record);
        bytes.resize(1024, 0);
        bytes.extend_from_slice(&tar_header(b"pickle", 5, b'0'));
        bytes.extend_from_slice(PICKLE);
        bytes.resize(2048 + 1024, 0);
        let r = TarArchive::open(bytes.as_slice(), Limits::default());
        assert!(
            matches!(r, Err(TarError::Corrupt { .. })),
            "{record:?}: {r:?}"
        );
    }
}
