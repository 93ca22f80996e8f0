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

    /// The values, sorted (NaN last).
    pub(crate) fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.values.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// Quantile `q` of sorted values by the nearest-rank method; NaN when empty.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
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

/// Median and median absolute deviation of sorted values.
pub(crate) fn median_mad(sorted: &[f64]) -> (f64, f64) {
    let mut copy = sorted.to_vec();
    let med = median(&mut copy);
    let mut dev: Vec<f64> = sorted.iter().map(|v| (v - med).abs()).collect();
    (med, median(&mut dev))
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
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
    }

    #[test]
    fn window_drops_oldest() {
        let mut w = Window::new(3);
        for v in [1.0, 2.0, 3.0, 4.0] {
            w.push(v);
        }
        assert_eq!(w.sorted(), vec![2.0, 3.0, 4.0]);
        let (m, mad) = median_mad(&w.sorted());
        assert_eq!((m, mad), (3.0, 1.0));
    }
}
