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

#[test]
fn mutated_pickles_never_panic_or_hang() {
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    let start = std::time::Instant::now();
    for round in 0..40_000 {
        let mut data = seeds[round % seeds.len()].clone();
        for _ in 0..rng.usize(1..=4) {
            if data.is_empty() {
                break;
            }
            let i = rng.usize(..data.len());
            match rng.u8(..4) {
                0 => data[i] = rng.u8(..),
                1 => data.insert(i, rng.u8(..)),
                2 => {
                    data.remove(i);
                }
                _ => {
                    let j = rng.usize(..data.len());
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
