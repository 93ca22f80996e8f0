//! The floor for `bench/formats.py`: a native process that reads exactly the bytes trainguard
//! said it needed from each file (a list of `SIZE<TAB>PATH` lines on stdin), and nothing else.
//! Built by the benchmark with plain `rustc -O`, so it pays the same process start as the scan.

use std::io::BufRead;
use std::os::unix::fs::FileExt;

fn main() {
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let (n, path) = line.split_once('\t').expect("SIZE<TAB>PATH");
        let mut left: u64 = n.parse().expect("size");
        let file = std::fs::File::open(path).expect("open");
        let mut off = 0u64;
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
    println!("{total}");
}
