//! The floor for `bench/formats.py`: a native process that reads exactly the bytes trainguard
//! said it needed from each file, and nothing else. Each line on stdin is `PATH<TAB>RANGES`,
//! where RANGES is `OFFSET:LENGTH` pairs separated by commas: one positioned read per range
//! (more only where a range is larger than the buffer). Built by the benchmark with plain
//! `rustc -O`, so it pays the same process start as the scan.

use std::io::BufRead;
use std::os::unix::fs::FileExt;

fn main() {
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let (path, ranges) = line.split_once('\t').expect("PATH<TAB>RANGES");
        let file = std::fs::File::open(path).expect("open");
        for range in ranges.split(',').filter(|r| !r.is_empty()) {
            let (offset, length) = range.split_once(':').expect("OFFSET:LENGTH");
            let mut off: u64 = offset.parse().expect("offset");
            let mut left: u64 = length.parse().expect("length");
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let got = file.read_at(&mut buf[..want], off).expect("read");
                if got == 0 {
                    break;
                }
                left -= got as u64;
                off += got as u64;
                total += got as u64;
            }
        }
    }
    println!("{total}");
}
