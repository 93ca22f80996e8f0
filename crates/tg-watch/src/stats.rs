//! Small robust statistics over bounded windows.

use std::collections::VecDeque;

/// `1 / Φ⁻¹(3/4)`: scales a median absolute deviation to a normal standard deviation.
pub(crate) const MAD_TO_SIGMA: f64 = 1.4826;

/// A bounded window of the most recent values.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    values: VecDeque<f64>,
    cap: usize,
}

impl Window {
    pub(crate) fn new(cap: usize) -> Self {
        // Grows on demand: a rank that only heartbeats costs no window memory.
        Window {
            values: VecDeque::new(),
            cap,
        }
    }

    pub(crate) fn push(&mut self, v: f64) {
        if self.values.len() == self.cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        self.values.iter().copied()
    }

    /// The values, oldest first, as one slice.
    pub(crate) fn as_slice(&mut self) -> &[f64] {
        self.values.make_contiguous()
    }
}

/// Quantile `q` by the nearest-rank method and the maximum (NaN sorts last, as in a sort by
/// `total_cmp`) of values in any order; NaN when empty. One selection instead of a sort: the
/// collector runs this every few steps of every rank, under its lock.
pub(crate) fn quantile_max(values: &[f64], q: f64) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut copy = values.to_vec();
    let idx = ((q * copy.len() as f64).ceil() as usize).clamp(1, copy.len()) - 1;
    let (_, at, above) = copy.select_nth_unstable_by(idx, f64::total_cmp);
    let at = *at;
    let max = above
        .iter()
        .copied()
        .fold(at, |m, v| if v.total_cmp(&m).is_gt() { v } else { m });
    (at, max)
}

/// Median of unsorted values (reorders them); NaN when empty.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let len = values.len();
    let mid = len / 2;
    let (lo, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if len % 2 == 1 {
        m
    } else {
        let below = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (below + m) / 2.0
    }
}

/// Median and median absolute deviation of values in any order (two selections, no sort).
pub(crate) fn median_mad(values: &[f64]) -> (f64, f64) {
    let mut copy = values.to_vec();
    let med = median(&mut copy);
    for v in &mut copy {
        *v = (*v - med).abs();
    }
    (med, median(&mut copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn quantile_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        v.reverse();
        v.swap(3, 70);
        assert_eq!(quantile_max(&v, 0.5), (50.0, 100.0));
        assert_eq!(quantile_max(&v, 0.99), (99.0, 100.0));
        assert_eq!(quantile_max(&v, 1.0), (100.0, 100.0));
        assert_eq!(quantile_max(&[2.0, 1.0], 0.01), (1.0, 2.0));
        assert!(quantile_max(&[], 0.5).0.is_nan());
    }

    #[test]
    fn window_drops_oldest() {
        let mut w = Window::new(3);
        for v in [1.0, 2.0, 3.0, 4.0] {
            w.push(v);
        }
        assert_eq!(w.as_slice(), [2.0, 3.0, 4.0]);
        assert_eq!(median_mad(w.as_slice()), (3.0, 1.0));
        assert_eq!(median_mad(&[4.0, 1.0, 3.0, 2.0, 10.0]), (3.0, 1.0));
    }
}
