use std::io::Write;

use tg_archive::decompress::{Compression, DecompressError, decompress, sniff};

fn payload() -> Vec<u8> {
    let mut v = PICKLE_HEAD.to_vec();
    v.extend((0..5000u32).map(|i| (i % 251) as u8));
    v
}

const PICKLE_HEAD: &[u8] = b"\x80\x02K\x01.";

fn compressed(kind: Compression, data: &[u8]) -> Vec<u8> {
    match kind {
        Compression::Zlib => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Xz => {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut std::io::Cursor::new(data), &mut out).unwrap();
            out
        }
        Compression::Lzma => {
            let mut out = Vec::new();
            lzma_rs::lzma_compress(&mut std::io::Cursor::new(data), &mut out).unwrap();
            out
        }
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
        other => panic!("no encoder for {other}"),
    }
}

const ALL: [Compression; 7] = [
    Compression::Zlib,
    Compression::Gzip,
    Compression::Bzip2,
    Compression::Xz,
    Compression::Lzma,
    Compression::Lz4,
    Compression::Zstd,
];

#[test]
fn every_format_round_trips_and_is_sniffed() {
    let data = payload();
    for kind in ALL {
        let c = compressed(kind, &data);
        assert_eq!(sniff(&c), Some(kind), "{kind}");
        assert_eq!(decompress(kind, &c, 1 << 20).unwrap(), data, "{kind}");
        assert_eq!(
            decompress(kind, &c, data.len() as u64).unwrap(),
            data,
            "{kind} at exact cap"
        );
    }
    assert_eq!(sniff(PICKLE_HEAD), None);
    assert_eq!(sniff(b"PK\x03\x04"), None);
    assert_eq!(sniff(b""), None);
}

#[test]
fn output_cap_is_a_distinct_error() {
    let bomb = vec![0u8; 4 << 20];
    for kind in ALL {
        let c = compressed(kind, &bomb);
        let err = decompress(kind, &c, 1000).unwrap_err();
        assert!(
            matches!(err, DecompressError::TooLarge { max_out: 1000, .. }),
            "{kind}: {err}"
        );
    }
}

#[test]
fn garbage_and_truncation_are_corrupt_not_panics() {
    let data = payload();
    for kind in ALL {
        let c = compressed(kind, &data);
        let err = decompress(kind, &c[..c.len() / 2], 1 << 20).unwrap_err();
        assert!(
            matches!(err, DecompressError::Corrupt { .. }),
            "{kind}: {err}"
        );
        assert!(
            decompress(kind, b"definitely not compressed", 1 << 20).is_err(),
            "{kind}"
        );
    }
}
