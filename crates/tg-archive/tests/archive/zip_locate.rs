use tg_archive::{Limits, ZipArchive};

use crate::support::{Member, ZipBuilder};

fn archive(names: &[&str]) -> Vec<u8> {
    ZipBuilder::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Member::stored(n, &[i as u8]))
            .collect(),
    )
    .build()
}

/// Which central index `locate` resolves `query` to.
fn resolve(names: &[&str], query: &str) -> Option<usize> {
    let bytes = archive(names);
    let zip = ZipArchive::open(bytes.as_slice(), Limits::default()).unwrap();
    let e = zip.locate(query)?;
    // The data byte is the central index, so the read proves the entry is the right one.
    assert_eq!(zip.read(e).unwrap(), vec![e.index as u8]);
    Some(e.index)
}

#[test]
fn lookup_is_ascii_case_insensitive_like_miniz_flags_0() {
    let names = ["archive/data.pkl", "archive/version", "archive/data/0"];
    assert_eq!(resolve(&names, "archive/data.pkl"), Some(0));
    assert_eq!(resolve(&names, "ARCHIVE/DATA.PKL"), Some(0));
    assert_eq!(resolve(&names, "Archive/Version"), Some(1));
    assert_eq!(resolve(&names, "archive/data"), None);
    assert_eq!(resolve(&names, "archive/data.pkl/"), None);
    // Only ASCII folds: MZ_TOLOWER leaves other bytes alone.
    assert_eq!(resolve(&["a/\u{c9}"], "a/\u{e9}"), None);
    // A C string stops at NUL.
    assert_eq!(resolve(&names, "archive/version\0junk"), Some(1));
}

#[test]
fn duplicate_winner_follows_the_miniz_heap_sort() {
    // Expected indices were checked against miniz 3.0.2's mz_zip_reader_locate_file(.., 0)
    // compiled from source (see tests/miniz_crosscheck/).
    // Neither "first wins" nor "last wins": the heap sort decides.
    assert_eq!(
        resolve(&["a/data.pkl", "a/data.pkl"], "a/data.pkl"),
        Some(1)
    );
    assert_eq!(
        resolve(&["a/data.pkl", "a/DATA.pkl"], "a/data.pkl"),
        Some(1)
    );
    assert_eq!(
        resolve(&["a/data.pkl", "a/x", "a/data.pkl"], "a/data.pkl"),
        Some(2)
    );
    assert_eq!(
        resolve(
            &["a/version", "a/data.pkl", "a/z", "a/data.pkl", "a/data.pkl"],
            "a/data.pkl"
        ),
        Some(3)
    );
}

#[test]
fn many_names_all_resolve() {
    let names: Vec<String> = (0..200).map(|i| format!("archive/data/{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let bytes = ZipBuilder::new(refs.iter().map(|n| Member::stored(n, b"x")).collect()).build();
    let zip = ZipArchive::open(bytes.as_slice(), Limits::default()).unwrap();
    for (i, n) in names.iter().enumerate() {
        assert_eq!(zip.locate(n).map(|e| e.index), Some(i), "{n}");
        assert_eq!(
            zip.locate(&n.to_uppercase()).map(|e| e.index),
            Some(i),
            "{n}"
        );
    }
    assert!(zip.locate("archive/data/200").is_none());
}

/// About 300 lookups over random archives with duplicate and case-duplicate names, recorded from
/// miniz 3.0.2 itself by `tests/miniz_crosscheck/gen.py`.
#[test]
fn matches_miniz_on_recorded_lookups() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/miniz_locate.tsv"
    );
    let text = fs_err::read_to_string(path).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (names, query, expected) = (
            cols.next().unwrap(),
            cols.next().unwrap(),
            cols.next().unwrap(),
        );
        let names: Vec<&str> = names.split('|').collect();
        let expected: i64 = expected.parse().unwrap();
        let got = resolve(&names, query).map_or(-1, |i| i as i64);
        assert_eq!(got, expected, "{names:?} / {query}");
        checked += 1;
    }
    assert!(checked >= 250, "{checked}");
}
