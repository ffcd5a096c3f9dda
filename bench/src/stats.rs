//! Latency histograms (nanoseconds) and their summary.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds, 3 significant digits, up to 100 s.
pub struct Lat(pub Histogram<u64>);

impl Default for Lat {
    fn default() -> Self {
        Lat(Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds"))
    }
}

impl Lat {
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(ns);
    }

    pub fn merge(&mut self, other: &Lat) {
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` in microseconds.
    pub fn us(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1_000.0
    }

    pub fn p50(&self) -> f64 {
        self.us(0.5)
    }

    pub fn p99(&self) -> f64 {
        self.us(0.99)
    }

    pub fn p999(&self) -> f64 {
        self.us(0.999)
    }

    pub fn max_us(&self) -> f64 {
        self.0.max() as f64 / 1_000.0
    }

    /// `p50 / p99 / p999 µs (n)`.
    pub fn summary(&self) -> String {
        format!(
            "{} / {} / {} µs (n={})",
            fmt_us(self.p50()),
            fmt_us(self.p99()),
            fmt_us(self.p999()),
            self.count()
        )
    }
}

/// Microseconds with a precision that suits their size.
pub fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{:.0}", us)
    } else if us >= 10.0 {
        format!("{:.1}", us)
    } else {
        format!("{:.2}", us)
    }
}

/// A rate with a thousands suffix.
pub fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1_000_000.0 {
        format!("{:.2}M", per_s / 1_000_000.0)
    } else if per_s >= 1_000.0 {
        format!("{:.1}k", per_s / 1_000.0)
    } else {
        format!("{:.0}", per_s)
    }
}
