//! Large `bytes` contents in a pickle file are left unread unless the verdict depends on them:
//! the scan must read less, and judge exactly as if it had read everything.

use std::path::Path;

use tg_report::{FileReport, Verdict};
use tg_scan::Scanner;

const PAYLOAD: usize = 600 << 10;

/// `BINBYTES` of `n` bytes of `fill`.
fn binbytes(n: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![b'B'];
    p.extend_from_slice(&(n as u32).to_le_bytes());
    p.resize(p.len() + n, fill);
    p
}

/// `SHORT_BINUNICODE s`.
fn short_str(s: &str) -> Vec<u8> {
    let mut p = vec![0x8c, s.len() as u8];
    p.extend_from_slice(s.as_bytes());
    p
}

/// `module name STACK_GLOBAL`.
fn global(module: &str, name: &str) -> Vec<u8> {
    [short_str(module), short_str(name), vec![0x93]].concat()
}

/// A protocol 4 pickle of `body`, then `STOP`.
fn pickle(body: &[u8]) -> Vec<u8> {
    [&[0x80, 4][..], body, b"."].concat()
}

/// `{'weights': <PAYLOAD bytes>, 'name': 'model'}`: data only.
fn data_only() -> Vec<u8> {
    pickle(
        &[
            vec![b'}', b'('],
            short_str("weights"),
            binbytes(PAYLOAD, 0x3f),
            short_str("name"),
            short_str("model"),
            vec![b'u'],
        ]
        .concat(),
    )
}

/// A pickle whose only dangerous part is inside a large bytes object passed to `pickle.loads`.
fn nested_in_large_bytes() -> Vec<u8> {
    let inner = pickle(
        &[
            global("os", "system"),
            short_str("echo pwned"),
            vec![0x85, b'R'],
        ]
        .concat(),
    );
    // The inner pickle, then padding the loader never reads (it stops at STOP).
    let mut contents = inner;
    contents.resize(PAYLOAD, 0);
    let mut arg = vec![b'B'];
    arg.extend_from_slice(&(contents.len() as u32).to_le_bytes());
    arg.extend_from_slice(&contents);
    pickle(&[global("pickle", "loads"), arg, vec![0x85, b'R']].concat())
}

fn scan_file(dir: &Path, name: &str, bytes: &[u8]) -> FileReport {
    let path = dir.join(name);
    fs_err::write(&path, bytes).unwrap();
    Scanner::default().scan_path(&path)
}

/// The same bytes scanned from memory (read whole).
fn whole_read(r: &FileReport, bytes: &[u8]) -> FileReport {
    Scanner::default().scan_bytes(&r.path, bytes)
}

/// `r`, scanned from a file, has the findings and notes of a whole read of `bytes`.
fn assert_as_whole_read(r: &FileReport, bytes: &[u8], what: &str) {
    let whole = whole_read(r, bytes);
    assert_eq!(whole.findings, r.findings, "{what}");
    assert_eq!(whole.notes, r.notes, "{what}");
}

fn describe(r: &FileReport) -> String {
    format!("{:?} {:?} {:?}", r.verdict, r.findings, r.notes)
}

#[test]
fn large_bytes_contents_are_not_read_for_a_clean_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data_only();
    let r = scan_file(dir.path(), "model.pkl", &bytes);
    assert_eq!(r.verdict, Verdict::Clean, "{}", describe(&r));
    assert!(r.findings.is_empty(), "{}", describe(&r));
    assert_eq!(r.size, bytes.len() as u64);
    assert!(
        r.bytes_read < (bytes.len() - PAYLOAD / 2) as u64,
        "read {} of {} bytes",
        r.bytes_read,
        bytes.len()
    );
    // The same bytes judged from memory (read whole) give the same report.
    assert_eq!(whole_read(&r, &bytes).verdict, r.verdict);
    assert_as_whole_read(&r, &bytes, "whole read");
}

#[test]
fn a_pickle_inside_large_bytes_passed_to_a_loader_is_still_followed() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = nested_in_large_bytes();
    let r = scan_file(dir.path(), "nested.pkl", &bytes);
    assert_eq!(r.verdict, Verdict::Malicious, "{}", describe(&r));
    let inner = r.findings.iter().any(|f| {
        f.location
            .member
            .as_deref()
            .is_some_and(|m| m.contains("nested pickle"))
            && f.evidence
                .as_deref()
                .is_some_and(|e| e.contains("os.system") && e.contains("echo pwned"))
    });
    assert!(inner, "{}", describe(&r));
    assert_as_whole_read(&r, &bytes, "whole read");
}

#[test]
fn a_pickle_stacked_after_large_bytes_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let evil = pickle(&[global("os", "system"), short_str("id"), vec![0x85, b'R']].concat());
    let bytes = [data_only(), evil].concat();
    let r = scan_file(dir.path(), "stacked.pkl", &bytes);
    assert_eq!(r.verdict, Verdict::Malicious, "{}", describe(&r));
    assert_as_whole_read(&r, &bytes, "whole read");
}

#[test]
fn a_lying_bytes_length_is_not_skipped_past_the_end() {
    // A BINBYTES that claims more than the file holds: truncated, as the loader finds it,
    // after importing something — never clean.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = [
        vec![0x80, 4],
        global("os", "system"),
        vec![b'B'],
        (u32::MAX).to_le_bytes().to_vec(),
    ]
    .concat();
    bytes.resize(PAYLOAD, 0x41);
    let r = scan_file(dir.path(), "lying.pkl", &bytes);
    assert_ne!(r.verdict, Verdict::Clean, "{}", describe(&r));
    let whole = whole_read(&r, &bytes);
    assert_eq!(whole.verdict, r.verdict);
    assert_eq!(whole.findings, r.findings);
}

#[test]
fn a_finding_that_does_not_show_large_bytes_does_not_read_them() {
    // `__main__.Net()` with the bytes as its BUILD state: suspicious (a class outside the
    // policy), and the evidence shows the call, not the state.
    let dir = tempfile::tempdir().unwrap();
    let bytes = pickle(
        &[
            global("__main__", "Net"),
            vec![b')', 0x81],
            binbytes(PAYLOAD, 0x3f),
            vec![b'b'],
        ]
        .concat(),
    );
    let r = scan_file(dir.path(), "net.pkl", &bytes);
    assert_eq!(r.verdict, Verdict::Suspicious, "{}", describe(&r));
    assert!(r.bytes_read < (PAYLOAD / 2) as u64, "read {}", r.bytes_read);
    assert_as_whole_read(&r, &bytes, "whole read");
}

#[test]
fn many_large_bytes_objects_are_judged_like_a_whole_read() {
    // Past the cap on spans left unread, contents are read like everything else; the verdict
    // and the report are the same either way, with a dangerous call at the very end.
    let dir = tempfile::tempdir().unwrap();
    let mut body = vec![b'}', b'('];
    for i in 0..40 {
        body.extend(short_str(&format!("w{i}")));
        body.extend(binbytes(200 << 10, i as u8));
    }
    body.push(b'u');
    body.extend(global("os", "system"));
    body.extend(short_str("id"));
    body.extend([0x85, b'R', 0x86]);
    let bytes = pickle(&body);
    let r = scan_file(dir.path(), "many.pkl", &bytes);
    assert_eq!(r.verdict, Verdict::Malicious, "{}", describe(&r));
    assert!(r.bytes_read < bytes.len() as u64, "read {}", r.bytes_read);
    assert_as_whole_read(&r, &bytes, "whole read");
}

#[test]
fn a_gigabyte_of_array_data_costs_only_its_opcodes() {
    // A sparse file: a 1 GiB bytes object (an array's raw data, as pickled numpy arrays hold
    // it) between a few opcodes. Nothing of it is read, and no memory is touched for it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.pkl");
    let n: u64 = 1 << 30;
    let mut head = [vec![0x80, 4, b'}', b'('], short_str("weights"), vec![0x8e]].concat();
    head.extend_from_slice(&n.to_le_bytes());
    let tail = [short_str("name"), short_str("model"), vec![b'u', b'.']].concat();
    let file = fs_err::File::create(&path).unwrap();
    use fs_err::os::unix::fs::FileExt;
    file.write_all_at(&head, 0).unwrap();
    file.write_all_at(&tail, head.len() as u64 + n).unwrap();
    drop(file);
    let r = Scanner::default().scan_path(&path);
    assert_eq!(r.verdict, Verdict::Clean, "{}", describe(&r));
    assert!(r.findings.is_empty(), "{}", describe(&r));
    assert!(r.bytes_read < 1 << 20, "read {}", r.bytes_read);
}

/// `joblib_payload_after_array.joblib` with its 4-element array made `n` elements long: a
/// joblib file whose raw array data joblib's loader skips (`pad` alignment bytes, then the
/// data, every byte `fill`), then `os.system`.
fn joblib_with_array(n: u32, pad: u8, fill: u8) -> Vec<u8> {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/joblib_payload_after_array.joblib");
    let d = fs_err::read(fixture).unwrap();
    // 90: BININT1 4 (the shape); 222: the pad length, one pad byte, 4 float64s.
    assert_eq!(&d[90..92], b"K\x04");
    assert_eq!(d[222], 1);
    let mut out = d[..90].to_vec();
    out.push(b'J');
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&d[92..222]);
    out.push(pad);
    out.resize(out.len() + usize::from(pad) + 8 * n as usize, fill);
    out.extend_from_slice(&d[224 + 32..]);
    out
}

#[test]
fn joblib_array_data_is_not_read_and_the_payload_after_it_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = joblib_with_array(100_000, 1, 0x40);
    let r = scan_file(dir.path(), "model.joblib", &bytes);
    assert_eq!(r.verdict, Verdict::Malicious, "{}", describe(&r));
    assert!(
        r.findings.iter().any(|f| f
            .evidence
            .as_deref()
            .is_some_and(|e| e.contains("os.system"))),
        "{}",
        describe(&r)
    );
    assert!(
        r.bytes_read < 300 << 10,
        "read {} of {}",
        r.bytes_read,
        bytes.len()
    );
    assert_as_whole_read(&r, &bytes, "whole read");
}

#[test]
fn array_data_that_plain_pickle_load_reads_as_opcodes_is_read_for_that_view() {
    // Array data of NONE opcodes: pickle.load (no joblib) runs through it, so that view reaches
    // what joblib's view left unread, and it must be read then.
    let dir = tempfile::tempdir().unwrap();
    let bytes = joblib_with_array(20_000, b'N', b'N');
    let r = scan_file(dir.path(), "nones.joblib", &bytes);
    assert_eq!(
        whole_read(&r, &bytes).verdict,
        r.verdict,
        "{}",
        describe(&r)
    );
    assert_as_whole_read(&r, &bytes, "whole read");
    // Everything, once: the first window, the rest when pickle.load's view got there.
    assert_eq!(
        r.bytes_read,
        bytes.len() as u64 + 512 + 65_557,
        "{}",
        describe(&r)
    );
}

#[test]
fn mutated_files_are_judged_exactly_as_a_whole_read() {
    // Differential: random byte changes to pickles with large skipped data (in the opcodes, the
    // lengths, the data), scanned from a file (read in a prefix, data left unread) and from
    // memory (read whole) must give the same verdict, findings and notes.
    let dir = tempfile::tempdir().unwrap();
    let seeds = [
        data_only(),
        nested_in_large_bytes(),
        [data_only(), nested_in_large_bytes()].concat(),
        joblib_with_array(30_000, 1, 0x40),
        joblib_with_array(20_000, b'N', b'N'),
    ];
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    for round in 0..100 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..rng.usize(1..=4) {
            // Mostly near the opcodes (the first and last few hundred bytes), sometimes anywhere.
            let at = match rng.u8(..3) {
                0 => rng.usize(..bytes.len().min(400)),
                1 => bytes.len() - 1 - rng.usize(..bytes.len().min(300)),
                _ => rng.usize(..bytes.len()),
            };
            bytes[at] = rng.u8(..);
        }
        let r = scan_file(dir.path(), &format!("m{round}.pkl"), &bytes);
        let whole = whole_read(&r, &bytes);
        assert_eq!(whole.verdict, r.verdict, "round {round}: {}", describe(&r));
        assert_as_whole_read(&r, &bytes, &format!("round {round}"));
    }
}
