//! The SDK's client metrics for Python (`lockbroker.enable_metrics()`, `lockbroker.metrics()`):
//! a process-wide `metrics` recorder that keeps counters and histograms (count, sum, buckets)
//! in atomics, read as plain samples that a Python exporter — `prometheus_client`, statsd,
//! logs — forwards. The names are the Rust SDK's (`lockbroker_sdk::metrics`).
//!
//! A recording is a read-locked map lookup and a few atomic adds; a metric seen for the first
//! time takes the write lock once. Counters and histograms survive `fork()` as memory does
//! (a child starts with the parent's totals).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::RwLock;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Upper bounds (seconds) of the histogram buckets: the SDK's histograms are waits and hold
/// times, from sub-millisecond grants to minute-long holds.
const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    30.0, 300.0,
];

/// One metric's values.
struct Cell {
    histogram: bool,
    /// Counter total, or histogram observation count.
    count: AtomicU64,
    /// Histogram sum (f64 bits).
    sum: AtomicU64,
    /// Observations at or under each bound (not cumulative; the last is the overflow).
    buckets: [AtomicU64; BOUNDS.len() + 1],
}

impl Cell {
    fn new(histogram: bool) -> Cell {
        Cell {
            histogram,
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl metrics::CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.count.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.count.fetch_max(value, Ordering::Relaxed);
    }
}

impl metrics::HistogramFn for Cell {
    fn record(&self, value: f64) {
        let i = BOUNDS.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// The recorder: every metric by key.
#[derive(Default)]
struct Recorder {
    cells: RwLock<HashMap<Key, Arc<Cell>>>,
}

impl Recorder {
    fn cell(&self, key: &Key, histogram: bool) -> Arc<Cell> {
        if let Some(c) = self.cells.read().get(key) {
            return c.clone();
        }
        self.cells
            .write()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Cell::new(histogram)))
            .clone()
    }
}

/// The installed recorder (a `'static` reference, as `metrics` wants one).
struct Installed(&'static Recorder);

impl metrics::Recorder for Installed {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.cell(key, false))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        // The SDK records no gauges.
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.0.cell(key, true))
    }
}

static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();

/// Starts recording the SDK's metrics in this process (idempotent).
#[pyfunction]
pub fn enable_metrics() -> PyResult<()> {
    let mut result = Ok(());
    RECORDER.get_or_init(|| {
        let recorder: &'static Recorder = Box::leak(Box::default());
        if let Err(e) = metrics::set_global_recorder(Installed(recorder)) {
            result = Err(PyRuntimeError::new_err(format!(
                "another metrics recorder is installed in this process: {e}"
            )));
        }
        recorder
    });
    result
}

/// Every metric recorded so far, as dicts: `name`, `labels` (dict), `type` ("counter" or
/// "histogram"), and `value` (counter) or `count`, `sum`, `buckets` (a list of
/// `(upper bound, cumulative count)`, the last bound `inf`). Empty before `enable_metrics()`.
#[pyfunction]
pub fn metrics_snapshot(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let Some(recorder) = RECORDER.get() else {
        return Ok(Vec::new());
    };
    let cells: Vec<(Key, Arc<Cell>)> = recorder
        .cells
        .read()
        .iter()
        .map(|(k, c)| (k.clone(), c.clone()))
        .collect();
    let mut out = Vec::with_capacity(cells.len());
    for (key, cell) in cells {
        let d = PyDict::new(py);
        d.set_item("name", key.name())?;
        let labels = PyDict::new(py);
        for l in key.labels() {
            labels.set_item(l.key(), l.value())?;
        }
        d.set_item("labels", labels)?;
        let count = cell.count.load(Ordering::Relaxed);
        if cell.histogram {
            d.set_item("type", "histogram")?;
            d.set_item("count", count)?;
            d.set_item("sum", f64::from_bits(cell.sum.load(Ordering::Relaxed)))?;
            let mut cumulative = 0;
            let buckets: Vec<(f64, u64)> = BOUNDS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(&cell.buckets)
                .map(|(bound, n)| {
                    cumulative += n.load(Ordering::Relaxed);
                    (bound, cumulative)
                })
                .collect();
            d.set_item("buckets", buckets)?;
        } else {
            d.set_item("type", "counter")?;
            d.set_item("value", count)?;
        }
        out.push(d);
    }
    Ok(out)
}
