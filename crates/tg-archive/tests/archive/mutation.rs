use std::io::Write;

use tg_archive::fuzzing::exercise;

use crate::support::{Member, PICKLE, ZipBuilder, tar, tar_header};

fn seeds() -> Vec<Vec<u8>> {
    let members = vec![
        Member::stored("archive/data.pkl", PICKLE),
        Member::deflated("archive/data/0", &[5u8; 3000]),
        Member::stored("archive/version", b"3\n"),
    ];
    let mut z64 = ZipBuilder::new(members.clone());
    z64.zip64 = true;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(PICKLE).unwrap();
    // A tar with a GNU long name and a pax record, to reach those parsers.
    let mut ext = tar_header(b"././@LongLink", 7, b'L').to_vec();
    ext.extend_from_slice(b"pickle\0");
    ext.resize(1024, 0);
    ext.extend_from_slice(&tar_header(b"p", 5, b'0'));
    ext.extend_from_slice(PICKLE);
    ext.resize(2048, 0);
    let record = b"16 path=pax.pkl\n10 size=5\n";
    ext.extend_from_slice(&tar_header(b"PaxHeader", record.len() as u64, b'x'));
    ext.extend_from_slice(record);
    ext.resize(3072, 0);
    ext.extend_from_slice(&tar_header(b"q", 5, b'0'));
    ext.extend_from_slice(PICKLE);
    ext.resize(4096 + 1024, 0);
    vec![
        ext,
        ZipBuilder::new(members).build(),
        z64.build(),
        tar(&[(b"pickle", PICKLE), (b"storages", &[1u8; 600])]),
        gz.finish().unwrap(),
    ]
}

/// One to four random edits of `seed` (never empty: every seed is, and the loop stops when an
/// edit empties it).
pub(crate) fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = v.len();
        match rng.u8(..6) {
            0 => {
                let i = rng.usize(..len);
                v[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let i = rng.usize(..len);
                v[i] = [0x00, 0xff, 0x7f, 0x80][rng.usize(..4)];
            }
            2 if len >= 4 => {
                let i = rng.usize(..len - 3);
                let word: u32 =
                    [0, u32::MAX, u32::MAX - 1, 0x8000_0000, len as u32][rng.usize(..5)];
                v[i..i + 4].copy_from_slice(&word.to_le_bytes());
            }
            3 => v.truncate(rng.usize(..len)),
            4 => {
                let i = rng.usize(..len);
                let n = rng.usize(..64);
                v.splice(i..i, std::iter::repeat_n(rng.u8(..), n));
            }
            _ => {
                let i = rng.usize(..len);
                let n = rng.usize(..32).min(len - i);
                v.drain(i..i + n);
            }
        }
        if v.is_empty() {
            break;
        }
    }
    v
}

#[test]
fn unmutated_seeds_read_every_member() {
    let read: Vec<usize> = seeds().iter().map(|s| exercise(s)).collect();
    assert_eq!(read, vec![2, 3, 3, 2, 0]);
}

#[test]
fn thousands_of_mutations_never_panic() {
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(0x7472_6169_6e67_7561);
    let mut read_any = 0usize;
    for i in 0..3000 {
        let seed = &seeds[i % seeds.len()];
        let input = mutate(&mut rng, seed);
        read_any += exercise(&input);
    }
    // Many mutations leave the archives readable; all of them must simply not panic.
    assert!(read_any > 1000, "{read_any}");
}
