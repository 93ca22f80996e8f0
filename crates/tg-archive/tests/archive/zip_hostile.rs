use tg_archive::{Anomaly, Limits, ZipArchive, ZipError};

use crate::support::{Member, PICKLE, ZipBuilder, deflate};

fn open(bytes: &[u8]) -> ZipArchive<&[u8]> {
    ZipArchive::open(bytes, Limits::default()).expect("archive opens")
}

fn torch_zip() -> ZipBuilder {
    ZipBuilder::new(vec![
        Member::stored("archive/data.pkl", PICKLE),
        Member::stored("archive/byteorder", b"little"),
        Member::deflated("archive/data/0", &[7u8; 4096]),
        Member::stored("archive/version", b"3\n"),
    ])
}

#[test]
fn well_formed_torch_zip_has_no_anomalies_and_reads_back() {
    let bytes = torch_zip().build();
    let zip = open(&bytes);
    assert_eq!(zip.anomalies(), &[] as &[Anomaly]);
    assert_eq!(zip.torch_prefix(), Some("archive"));
    assert_eq!(zip.entries().len(), 4);
    let pkl = zip.torch_record("data.pkl").expect("data.pkl");
    assert_eq!(zip.read(pkl).unwrap(), PICKLE);
    let storage = zip.locate("archive/data/0").unwrap();
    assert_eq!(storage.method, 8);
    assert_eq!(zip.read(storage).unwrap(), vec![7u8; 4096]);
    assert_eq!(zip.read_prefix(storage, 10).unwrap(), vec![7u8; 10]);
    assert_eq!(zip.read_prefix(pkl, 2).unwrap(), &PICKLE[..2]);
    assert!(zip.read_member(pkl).unwrap().crc_mismatch.is_none());
    assert!(!zip.is_hostile());
}

#[test]
fn exact_duplicate_names_are_hostile() {
    let mut b = torch_zip();
    b.members
        .push(Member::stored("archive/data.pkl", b"\x80\x02K\x02."));
    let bytes = b.build();
    let zip = open(&bytes);
    assert!(zip.anomalies().contains(&Anomaly::DuplicateName {
        name: "archive/data.pkl".into(),
        case_insensitive: false
    }));
    assert!(zip.is_hostile());
}

#[test]
fn case_insensitive_duplicates_are_hostile() {
    let mut b = torch_zip();
    b.members
        .push(Member::stored("archive/DATA.pkl", b"\x80\x02K\x02."));
    let bytes = b.build();
    let zip = open(&bytes);
    let dup = zip
        .anomalies()
        .iter()
        .find(|a| matches!(a, Anomaly::DuplicateName { .. }))
        .expect("duplicate reported");
    assert!(
        matches!(
            dup,
            Anomaly::DuplicateName {
                case_insensitive: true,
                ..
            }
        ),
        "{dup:?}"
    );
    assert!(dup.is_hostile());
    assert!(dup.to_string().contains("letter case"), "{dup}");
}

#[test]
fn local_central_name_mismatch_is_hostile_and_locate_uses_the_central_name() {
    let mut pkl = Member::stored("archive/data.pkl", PICKLE);
    pkl.local_name = Some(b"archive/datap.kl".to_vec());
    let bytes = ZipBuilder::new(vec![pkl, Member::stored("archive/version", b"3\n")]).build();
    let zip = open(&bytes);
    assert!(zip.anomalies().contains(&Anomaly::LocalNameMismatch {
        central: "archive/data.pkl".into(),
        local: "archive/datap.kl".into()
    }));
    // torch looks names up in the central directory only.
    let e = zip
        .locate("archive/data.pkl")
        .expect("central name resolves");
    assert_eq!(zip.read(e).unwrap(), PICKLE);
    assert!(zip.locate("archive/datap.kl").is_none());
}

#[test]
fn bad_crc_is_still_read_and_reported() {
    let mut pkl = Member::stored("archive/data.pkl", PICKLE);
    pkl.crc ^= 0xdead_beef;
    let bytes = ZipBuilder::new(vec![pkl]).build();
    let zip = open(&bytes);
    let e = &zip.entries()[0];
    let m = zip.read_member(e).unwrap();
    assert_eq!(m.data, PICKLE);
    let a = m.crc_mismatch.expect("crc mismatch reported");
    assert!(matches!(a, Anomaly::CrcMismatch { ref name, .. } if name == "archive/data.pkl"));
    assert!(a.is_hostile());
    // Not an open-time anomaly: only members actually read are checked.
    assert!(zip.anomalies().is_empty());
}

#[test]
fn flag_bits_are_notes_and_members_are_still_read() {
    for flag in [0x1u16, 0x20, 0x40, 0x8, 0x800] {
        let mut pkl = Member::stored("archive/data.pkl", PICKLE);
        pkl.flags = flag;
        let bytes = ZipBuilder::new(vec![pkl]).build();
        let zip = open(&bytes);
        let e = &zip.entries()[0];
        assert_eq!(zip.read(e).unwrap(), PICKLE, "flag {flag:#x}");
        assert!(!zip.is_hostile(), "flag {flag:#x}: {:?}", zip.anomalies());
        let refused = flag & 0x61 != 0;
        assert_eq!(e.refused_by_miniz(), refused);
        assert_eq!(e.encrypted(), flag & 0x41 != 0);
        assert_eq!(
            zip.anomalies()
                .iter()
                .any(|a| matches!(a, Anomaly::EncryptedFlag { .. })),
            refused,
            "flag {flag:#x}"
        );
    }
}

#[test]
fn overlapping_entries_are_hostile() {
    // Two central entries pointing at the same local header.
    let mut twin = Member::stored("archive/other.pkl", PICKLE);
    twin.local_offset_override = Some(0);
    twin.skip_local = true;
    let bytes = ZipBuilder::new(vec![Member::stored("archive/data.pkl", PICKLE), twin]).build();
    let zip = open(&bytes);
    assert!(
        zip.anomalies()
            .iter()
            .any(|a| matches!(a, Anomaly::Overlap { .. })),
        "{:?}",
        zip.anomalies()
    );
    assert!(zip.is_hostile());
}

#[test]
fn trailing_and_leading_data_are_hostile() {
    let mut b = torch_zip();
    b.trailing = b"hidden".to_vec();
    let bytes = b.build();
    let zip = open(&bytes);
    assert!(
        zip.anomalies()
            .contains(&Anomaly::TrailingData { bytes: 6 })
    );

    // Prepended bytes: miniz 3.0.2 keeps offsets absolute, so a zip whose offsets account for
    // the prefix opens and reports it.
    let mut b = torch_zip();
    b.leading = b"\x80\x02cos\nsystem\n".to_vec();
    let bytes = b.build();
    let zip = open(&bytes);
    assert!(
        zip.anomalies()
            .contains(&Anomaly::LeadingData { bytes: 13 })
    );
    assert!(zip.is_hostile());
}

#[test]
fn comment_is_a_note_not_trailing_data() {
    let mut b = torch_zip();
    b.comment = b"made by hand".to_vec();
    let bytes = b.build();
    let zip = open(&bytes);
    assert_eq!(zip.anomalies(), &[Anomaly::CommentPresent { bytes: 12 }]);
    assert!(!zip.is_hostile());
}

#[test]
fn hidden_central_directory_bytes_and_gaps_are_hostile() {
    let mut b = torch_zip();
    b.hidden_cdir = vec![0x50, 0x4b, 0x01, 0x02, 0, 0];
    let bytes = b.build();
    assert!(
        open(&bytes)
            .anomalies()
            .contains(&Anomaly::HiddenDirectoryBytes { bytes: 6 })
    );

    let mut b = torch_zip();
    b.gap_before_eocd = vec![0; 10];
    let bytes = b.build();
    let zip = open(&bytes);
    assert!(
        zip.anomalies()
            .iter()
            .any(|a| matches!(a, Anomaly::DirectoryOffsetMismatch { .. })),
        "{:?}",
        zip.anomalies()
    );
}

#[test]
fn several_top_level_folders_are_hostile() {
    let mut b = torch_zip();
    b.members.push(Member::stored("other/data.pkl", PICKLE));
    let bytes = b.build();
    let zip = open(&bytes);
    assert_eq!(
        zip.top_level_prefixes(),
        vec!["archive".to_owned(), "other".to_owned()]
    );
    assert!(zip.anomalies().contains(&Anomaly::MultipleTopLevel {
        prefixes: vec!["archive".into(), "other".into()]
    }));
    // A flat zip (npz, keras) has no torch prefix and no such anomaly.
    let flat = ZipBuilder::new(vec![
        Member::stored("a.npy", b"x"),
        Member::stored("b.npy", b"y"),
    ])
    .build();
    let zip = open(&flat);
    assert_eq!(zip.torch_prefix(), None);
    assert!(zip.anomalies().is_empty());
}

#[test]
fn local_size_and_method_mismatch_are_hostile() {
    let mut m = Member::stored("archive/data.pkl", PICKLE);
    m.local_sizes = Some((1, 1));
    let bytes = ZipBuilder::new(vec![m]).build();
    let zip = open(&bytes);
    assert!(
        zip.anomalies()
            .iter()
            .any(|a| matches!(a, Anomaly::LocalSizeMismatch { .. }))
    );
    // The central sizes decide what is read, like miniz.
    assert_eq!(zip.read(&zip.entries()[0]).unwrap(), PICKLE);

    // A data descriptor legitimately zeroes the local sizes (torch writes that).
    let mut m = Member::stored("archive/data.pkl", PICKLE);
    m.flags = 0x8;
    m.local_sizes = Some((0, 0));
    let bytes = ZipBuilder::new(vec![m]).build();
    assert!(open(&bytes).anomalies().is_empty());

    let mut m = Member::deflated("archive/data.pkl", PICKLE);
    m.local_method = Some(0);
    let bytes = ZipBuilder::new(vec![m]).build();
    assert!(
        open(&bytes)
            .anomalies()
            .iter()
            .any(|a| matches!(a, Anomaly::LocalMethodMismatch { .. }))
    );
}

#[test]
fn folder_entry_with_data_is_hostile() {
    let mut m = Member::stored("archive/data.pkl", PICKLE);
    m.external_attributes = 0x10;
    let bytes = ZipBuilder::new(vec![m]).build();
    let zip = open(&bytes);
    assert!(zip.entries()[0].is_directory());
    assert!(zip.anomalies().contains(&Anomaly::DirectoryWithData {
        name: "archive/data.pkl".into()
    }));
}

#[test]
fn zip64_archive_opens_and_reads() {
    let mut b = torch_zip();
    b.zip64 = true;
    let bytes = b.build();
    let zip = open(&bytes);
    assert!(zip.is_zip64());
    assert_eq!(zip.anomalies(), &[] as &[Anomaly]);
    let e = zip.torch_record("data/0").unwrap();
    assert_eq!(e.uncompressed_size, 4096);
    assert_eq!(zip.read(e).unwrap(), vec![7u8; 4096]);
    assert_eq!(
        zip.read(zip.torch_record("data.pkl").unwrap()).unwrap(),
        PICKLE
    );
}

#[test]
fn truncated_archives_fail_cleanly() {
    let bytes = torch_zip().build();
    let eocd = bytes.len() - 22;
    // Cut inside the central directory, and keep a valid-looking EOCD at the end: miniz 3.0.2
    // may still parse a directory that runs into the EOCD; then it is reported as hostile.
    for cut in [1usize, 10, 46, 60, 100] {
        let mut t = bytes[..eocd - cut].to_vec();
        t.extend_from_slice(&bytes[eocd..]);
        match ZipArchive::open(t.as_slice(), Limits::default()) {
            Err(_) => {}
            Ok(zip) => assert!(
                zip.anomalies()
                    .iter()
                    .any(|a| matches!(a, Anomaly::DirectoryOffsetMismatch { .. })),
                "cut {cut}: {:?}",
                zip.anomalies()
            ),
        }
    }
    let mut t = bytes[..eocd - 100].to_vec();
    t.extend_from_slice(&bytes[eocd..]);
    assert!(ZipArchive::open(t.as_slice(), Limits::default()).is_err());
    // Cut anywhere: never a panic, usually NotAZip.
    for n in 0..bytes.len() {
        let _ = ZipArchive::open(&bytes[..n], Limits::default());
    }
    assert!(matches!(
        ZipArchive::open(&bytes[..10], Limits::default()),
        Err(ZipError::NotAZip)
    ));
}

#[test]
fn absurd_sizes_do_not_allocate() {
    // A stored member claiming 4 GiB - 2 (well past the data): miniz's open-time bound check.
    let mut m = Member::stored("archive/data.pkl", PICKLE);
    m.uncompressed_size = u64::from(u32::MAX) - 1;
    let bytes = ZipBuilder::new(vec![m]).build();
    assert!(ZipArchive::open(bytes.as_slice(), Limits::default()).is_err());

    // A deflated member claiming 3 GiB: the member cap refuses before allocating.
    let mut m = Member::deflated("archive/data.pkl", PICKLE);
    m.uncompressed_size = 3 << 30;
    let bytes = ZipBuilder::new(vec![m]).build();
    let zip = open(&bytes);
    let err = zip.read(&zip.entries()[0]).unwrap_err();
    assert!(matches!(err, ZipError::MemberTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("archive/data.pkl"));

    // A zip64 EOCD declaring 2^32 entries is refused before any allocation.
    let mut b = torch_zip();
    b.zip64 = true;
    let mut bytes = b.build();
    let n = bytes.len();
    let eocd64 = n - 22 - 20 - 56;
    bytes[eocd64 + 24..eocd64 + 40].copy_from_slice(&[0xff; 16]);
    assert!(ZipArchive::open(bytes.as_slice(), Limits::default()).is_err());
}

#[test]
fn deflate_bomb_is_stopped_by_the_caps() {
    let payload = vec![0u8; 8 << 20];
    let mut m = Member::deflated("archive/data.pkl", &payload);
    let compressed = match &m.data {
        crate::support::Data::Bytes(b) => b.len(),
        crate::support::Data::Zeros(_) => unreachable!(),
    };
    assert!(compressed < 20_000, "{compressed}");
    let bytes = ZipBuilder::new(vec![m.clone()]).build();
    // Ratio cap (default 200:1).
    let zip = open(&bytes);
    let err = zip.read(&zip.entries()[0]).unwrap_err();
    assert!(matches!(err, ZipError::RatioExceeded { .. }), "{err}");
    // Member cap.
    let limits = Limits {
        max_ratio: u64::MAX,
        max_member_bytes: 1 << 20,
        ..Limits::default()
    };
    let zip = ZipArchive::open(bytes.as_slice(), limits).unwrap();
    assert!(matches!(
        zip.read(&zip.entries()[0]),
        Err(ZipError::MemberTooLarge { .. })
    ));
    // A lying size: declares 1 MiB, inflates to 8 MiB: stops after one byte over.
    m.uncompressed_size = 1 << 20;
    let bytes = ZipBuilder::new(vec![m]).build();
    let limits = Limits {
        max_ratio: u64::MAX,
        ..Limits::default()
    };
    let zip = ZipArchive::open(bytes.as_slice(), limits).unwrap();
    let err = zip.read(&zip.entries()[0]).unwrap_err();
    assert!(
        matches!(err, ZipError::SizeMismatch { more: true, .. }),
        "{err}"
    );
    // The prefix read still works on it.
    assert_eq!(zip.read_prefix(&zip.entries()[0], 4).unwrap(), vec![0u8; 4]);
}

#[test]
fn total_budget_is_enforced_across_reads() {
    let bytes = ZipBuilder::new(vec![
        Member::stored("a/x", &[1u8; 600]),
        Member::stored("a/y", &[2u8; 600]),
    ])
    .build();
    let limits = Limits {
        max_total_bytes: 1000,
        ..Limits::default()
    };
    let zip = ZipArchive::open(bytes.as_slice(), limits).unwrap();
    assert!(zip.read(&zip.entries()[0]).is_ok());
    assert!(matches!(
        zip.read(&zip.entries()[1]),
        Err(ZipError::BudgetExceeded { .. })
    ));
    assert_eq!(zip.bytes_read(), 600);
}

#[test]
fn unsupported_method_is_a_note_and_unreadable() {
    let mut m = Member::stored("archive/data.pkl", PICKLE);
    m.method = 12;
    let bytes = ZipBuilder::new(vec![m]).build();
    let zip = open(&bytes);
    assert!(!zip.is_hostile());
    assert!(matches!(
        zip.read(&zip.entries()[0]),
        Err(ZipError::UnsupportedMethod { method: 12, .. })
    ));
}

#[test]
fn stored_size_mismatch_reads_the_uncompressed_size_like_miniz() {
    // miniz's open check reads method+time as one u32; a nonzero time lets this through.
    let mut m = Member::stored("archive/data.pkl", b"\x80\x02K\x01.EXTRA");
    m.uncompressed_size = 5;
    let mut bytes = ZipBuilder::new(vec![m]).build();
    // Set the central time field (offset 12 in the central header) to nonzero.
    let cdh = bytes
        .windows(4)
        .position(|w| w == [0x50, 0x4b, 0x01, 0x02])
        .unwrap();
    bytes[cdh + 12] = 1;
    let zip = open(&bytes);
    assert!(
        zip.anomalies()
            .iter()
            .any(|a| matches!(a, Anomaly::StoredSizeMismatch { .. }))
    );
    assert_eq!(zip.read(&zip.entries()[0]).unwrap(), PICKLE);
    // With a zero time miniz refuses the archive, and so do we.
    bytes[cdh + 12] = 0;
    assert!(ZipArchive::open(bytes.as_slice(), Limits::default()).is_err());
}

#[test]
fn bad_local_header_is_reported_and_unreadable() {
    let bytes = torch_zip().build();
    let mut bad = bytes.clone();
    bad[0] = b'X';
    let zip = open(&bad);
    assert!(
        zip.anomalies()
            .iter()
            .any(|a| matches!(a, Anomaly::LocalHeaderInvalid { .. }))
    );
    assert!(matches!(
        zip.read(&zip.entries()[0]),
        Err(ZipError::BadLocalHeader { .. })
    ));
}

#[test]
fn ten_gigabyte_checkpoint_reads_only_directory_and_pickle() {
    let mut b = ZipBuilder::new(vec![
        Member::stored("archive/data.pkl", PICKLE),
        Member::zeros("archive/data/0", 10 << 30),
        Member::stored("archive/version", b"3\n"),
    ]);
    b.zip64 = true;
    let sparse = b.build_sparse();
    assert!(sparse.size > 10 << 30);
    let start = std::time::Instant::now();
    let zip = ZipArchive::open(&sparse, Limits::default()).unwrap();
    assert_eq!(zip.anomalies(), &[] as &[Anomaly]);
    let pkl = zip.torch_record("data.pkl").unwrap();
    assert_eq!(zip.read(pkl).unwrap(), PICKLE);
    let big = zip.torch_record("data/0").unwrap();
    assert_eq!(big.uncompressed_size, 10 << 30);
    assert!(matches!(
        zip.read(big),
        Err(ZipError::MemberTooLarge { .. })
    ));
    let elapsed = start.elapsed();
    let read = sparse.bytes_read.load(std::sync::atomic::Ordering::Relaxed);
    assert!(read < 64 * 1024, "read {read} bytes");
    assert!(
        elapsed < std::time::Duration::from_millis(100),
        "{elapsed:?}"
    );
}

#[test]
fn deflated_member_with_truncated_stream_fails_cleanly() {
    let data = vec![3u8; 100_000];
    let mut m = Member::deflated("a/x", &data);
    let full = deflate(&data);
    m.data = crate::support::Data::Bytes(full[..full.len() / 2].to_vec());
    let bytes = ZipBuilder::new(vec![m]).build();
    let limits = Limits {
        max_ratio: u64::MAX,
        ..Limits::default()
    };
    let zip = ZipArchive::open(bytes.as_slice(), limits).unwrap();
    let err = zip.read(&zip.entries()[0]).unwrap_err();
    assert!(matches!(err, ZipError::Inflate { .. }), "{err}");
}

/// A fixed-Huffman deflate block whose first symbol copies 3 bytes from distance 1, before the
/// start of the output. zlib and miniz's tinfl (non-wrapping buffer, as PyTorch reads) reject
/// it; a wrapping-window inflater would return three zero bytes instead.
fn deflate_with_distance_before_start() -> Vec<u8> {
    let mut bits: Vec<bool> = vec![true, true, false]; // BFINAL, BTYPE=01 (LSB first)
    let mut code = |value: u32, len: u32| {
        for i in (0..len).rev() {
            bits.push(value >> i & 1 == 1);
        }
    };
    code(0b000_0001, 7); // length symbol 257: length 3
    code(0, 5); // distance symbol 0: distance 1
    code(0, 7); // end of block
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        if *b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

#[test]
fn back_reference_before_the_output_start_is_refused_like_tinfl() {
    let mut m = Member::deflated("archive/data.pkl", &[0, 0, 0]);
    m.data = crate::support::Data::Bytes(deflate_with_distance_before_start());
    let bytes = ZipBuilder::new(vec![m]).build();
    let zip = open(&bytes);
    let err = zip.read(&zip.entries()[0]).unwrap_err();
    assert!(matches!(err, ZipError::Inflate { .. }), "{err}");
    // The same block after one literal is valid: "a" then copy 3 from distance 1.
    let good = {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, b"aaaa").unwrap();
        e.finish().unwrap()
    };
    let mut m = Member::deflated("archive/data.pkl", b"aaaa");
    m.data = crate::support::Data::Bytes(good);
    let bytes = ZipBuilder::new(vec![m]).build();
    let zip = open(&bytes);
    assert_eq!(zip.read(&zip.entries()[0]).unwrap(), b"aaaa");
}

/// Counts the positioned reads made through it.
struct CountReads<'a>(&'a [u8], std::sync::atomic::AtomicUsize);

impl tg_archive::ReadAt for CountReads<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.read_exact_at(buf, offset)
    }
}

#[test]
fn each_local_header_takes_one_read() {
    // Like a PyTorch checkpoint: storages whose data is padded to 64 bytes by the local extra.
    let members: Vec<Member> = (0..50)
        .map(|i| {
            let mut m = Member::stored(&format!("archive/data/{i}"), &[1u8; 100]);
            m.local_padding = 40 + i % 24;
            m
        })
        .collect();
    let bytes = ZipBuilder::new(members).build();
    let src = CountReads(&bytes, Default::default());
    let zip = ZipArchive::open(&src, Limits::default()).expect("archive opens");
    assert_eq!(zip.anomalies(), &[] as &[Anomaly]);
    let reads = src.1.load(std::sync::atomic::Ordering::Relaxed);
    // The end records and the central directory, then one read per member.
    assert!(reads <= 50 + 4, "{reads} reads for 50 members");
    let last = zip.locate("archive/data/49").unwrap();
    assert_eq!(zip.read(last).unwrap(), vec![1u8; 100]);
}

#[test]
fn a_local_header_longer_than_the_first_read_is_read_whole() {
    let mut padded = Member::stored("archive/data/0", b"payload");
    padded.local_padding = 1000;
    let mut renamed = Member::stored("archive/data/1", b"other");
    let long = format!("archive/data/{}", "x".repeat(300));
    renamed.local_name = Some(long.clone().into_bytes());
    let bytes = ZipBuilder::new(vec![padded, renamed]).build();
    let zip = open(&bytes);
    assert_eq!(
        zip.anomalies(),
        &[Anomaly::LocalNameMismatch {
            central: "archive/data/1".into(),
            local: long
        }]
    );
    let first = zip.locate("archive/data/0").unwrap();
    assert_eq!(zip.read(first).unwrap(), b"payload");
    let second = zip.locate("archive/data/1").unwrap();
    assert_eq!(zip.read(second).unwrap(), b"other");
}

/// A zip whose local headers are not in the page cache is asked for them all at once before
/// they are checked (`prefetch_local_headers`); what it opens to must not change: the same
/// members, the same anomaly in the middle, the same data.
#[cfg(target_os = "linux")]
#[test]
fn a_cold_file_opens_as_a_cached_one() {
    let members: Vec<Member> = (0..60)
        .map(|i| {
            let mut m = Member::stored(&format!("archive/data/{i}"), &[i as u8; 5000]);
            m.local_padding = 40 + i % 24;
            if i == 30 {
                m.local_name = Some(b"archive/data.pkl".to_vec());
            }
            m
        })
        .collect();
    let bytes = ZipBuilder::new(members).build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cold.pt");
    fs_err::write(&path, &bytes).unwrap();
    let cached = ZipArchive::open(&bytes[..], Limits::default()).expect("archive opens");
    let file = fs_err::File::open(&path).unwrap();
    file.sync_all().unwrap();
    // Dropped from the page cache where the file system allows it (not on tmpfs).
    rustix::fs::fadvise(file.file(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let cold = ZipArchive::open(tg_archive::SizedFile::new(file).unwrap(), Limits::default())
        .expect("archive opens");
    assert_eq!(cold.anomalies(), cached.anomalies());
    assert_eq!(
        cold.anomalies(),
        &[Anomaly::LocalNameMismatch {
            central: "archive/data/30".into(),
            local: "archive/data.pkl".into()
        }]
    );
    assert_eq!(cold.entries().len(), 60);
    for i in [0, 29, 59] {
        let name = format!("archive/data/{i}");
        let entry = cold.locate(&name).unwrap();
        assert_eq!(cold.read(entry).unwrap(), vec![i as u8; 5000], "{name}");
    }
}
