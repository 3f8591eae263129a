//! Order statistics and the one line format every figure is printed in.

use std::time::Duration;

/// p50, p90 and max of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    /// Nearest-rank percentiles of `v` (any unit; the figures use ms).
    pub fn of(mut v: Vec<f64>) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        Stats {
            n: v.len(),
            p50: at(0.5),
            p90: at(0.9),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }

    pub fn of_durations(v: &[Duration]) -> Stats {
        Stats::of(v.iter().map(|d| ms(*d)).collect())
    }

    /// `  label   p50 … ms  p90 … ms  max … ms  (n=…)`
    pub fn line(&self, label: &str) -> String {
        format!(
            "  {label:<34} p50 {:9.3} ms  p90 {:9.3} ms  max {:9.3} ms  (n={})",
            self.p50, self.p90, self.max, self.n
        )
    }

    /// Like [`Stats::line`] with the mean added (for ms-quantized stages,
    /// whose median is meaningless but whose mean is not).
    pub fn line_mean(&self, label: &str) -> String {
        format!(
            "  {label:<38} mean {:8.3} ms  p50 {:8.3} ms  p90 {:8.3} ms  max {:8.3} ms",
            self.mean, self.p50, self.p90, self.max
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a / b`, or NaN when `b` is zero.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Stats::of((1..=11).map(f64::from).collect());
        assert_eq!((s.p50, s.p90, s.max, s.n), (6.0, 10.0, 11.0, 11));
        assert_eq!(s.mean, 6.0);
        assert_eq!(Stats::of(vec![]).n, 0);
    }
}
