//! The fuzz target's body over deterministic mutations of real pickles (the scanner's attack
//! fixtures and the public corpus), so stable CI exercises what `cargo fuzz run pickle` does.

use std::path::PathBuf;

fn seeds() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tg-scan/tests/fixtures");
    let mut out = Vec::new();
    for e in fs_err::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "pkl" || x == "bin") {
            out.push(fs_err::read(&p).unwrap());
        }
    }
    assert!(
        out.len() >= 10,
        "expected pickle fixtures in {}",
        dir.display()
    );
    out
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_pickles_never_panic_or_hang() {
    let seeds = seeds();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let start = std::time::Instant::now();
    for round in 0..40_000 {
        let mut data = seeds[round % seeds.len()].clone();
        for _ in 0..(1 + rng.next() % 4) {
            if data.is_empty() {
                break;
            }
            let i = (rng.next() as usize) % data.len();
            match rng.next() % 4 {
                0 => data[i] = rng.next() as u8,
                1 => data.insert(i, rng.next() as u8),
                2 => {
                    data.remove(i);
                }
                _ => {
                    let j = (rng.next() as usize) % data.len();
                    let b = data[j];
                    data.insert(i, b);
                }
            }
        }
        tg_pickle::fuzzing::exercise(&data);
    }
    assert!(
        start.elapsed().as_secs() < 60,
        "mutation run took {:?}",
        start.elapsed()
    );
}
