//! The server's Prometheus metrics, kept by hand (a few counters and two histograms) and
//! rendered in the text exposition format 0.0.4.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the request latency histogram.
const LATENCY_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds (rows) of the batch size histogram.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// The window of the images/tokens per second gauges.
const RATE_WINDOW: Duration = Duration::from_secs(10);

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

struct Inner {
    latency: Histogram,
    batch_rows: Histogram,
    /// (when, images, tokens) of the batches finished within [`RATE_WINDOW`].
    recent: VecDeque<(Instant, u64, u64)>,
}

/// Everything `/metrics` reports.
pub struct Metrics {
    inner: Mutex<Inner>,
    images: AtomicU64,
    tokens: AtomicU64,
    /// Answers by status class.
    ok: AtomicU64,
    bad_request: AtomicU64,
    rejected: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
}

/// How a request ended, for the `llamagen_requests_total` counter.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Ok,
    BadRequest,
    /// 429: the queue was full.
    Rejected,
    /// The client went away before its answer.
    Cancelled,
    Failed,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                latency: Histogram::new(&LATENCY_BUCKETS),
                batch_rows: Histogram::new(&BATCH_BUCKETS),
                recent: VecDeque::new(),
            }),
            images: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            bad_request: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request answered 200 after `latency`.
    pub fn request_done(&self, latency: Duration) {
        self.inner().latency.observe(latency.as_secs_f64());
        self.count(Outcome::Ok);
    }

    pub fn count(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::BadRequest => &self.bad_request,
            Outcome::Rejected => &self.rejected,
            Outcome::Cancelled => &self.cancelled,
            Outcome::Failed => &self.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch of `rows` labels finished, `tokens` tokens in all.
    pub fn batch_done(&self, rows: usize, tokens: usize) {
        self.images.fetch_add(rows as u64, Ordering::Relaxed);
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        let mut inner = self.inner();
        inner.batch_rows.observe(rows as f64);
        let now = Instant::now();
        inner.recent.push_back((now, rows as u64, tokens as u64));
        while inner
            .recent
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            inner.recent.pop_front();
        }
    }

    /// The Prometheus text of every metric; `queue_depth` is sampled by the caller.
    pub fn render(&self, queue_depth: usize) -> String {
        let mut out = String::new();
        let inner = self.inner();
        inner.latency.render(
            &mut out,
            "llamagen_request_duration_seconds",
            "Time from arrival to answer of successful generate requests.",
        );
        inner.batch_rows.render(
            &mut out,
            "llamagen_batch_rows",
            "Labels (images) per generation batch.",
        );
        let now = Instant::now();
        let (images, tokens) = inner
            .recent
            .iter()
            .filter(|(t, _, _)| now.duration_since(*t) <= RATE_WINDOW)
            .fold((0, 0), |(i, t), &(_, bi, bt)| (i + bi, t + bt));
        drop(inner);
        let secs = RATE_WINDOW.as_secs_f64();
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "llamagen_queue_depth",
            "Requests waiting for a batch.",
            queue_depth as f64,
        );
        gauge(
            &mut out,
            "llamagen_images_per_second",
            "Images generated per second over the last 10 s.",
            images as f64 / secs,
        );
        gauge(
            &mut out,
            "llamagen_tokens_per_second",
            "Image tokens generated per second over the last 10 s.",
            tokens as f64 / secs,
        );
        counter(
            &mut out,
            "llamagen_images_total",
            "Images (labels) generated.",
            self.images.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "llamagen_tokens_total",
            "Image tokens generated.",
            self.tokens.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP llamagen_requests_total Generate requests by outcome.\n\
             # TYPE llamagen_requests_total counter"
        );
        for (label, c) in [
            ("ok", &self.ok),
            ("bad_request", &self.bad_request),
            ("rejected", &self.rejected),
            ("cancelled", &self.cancelled),
            ("failed", &self.failed),
        ] {
            let _ = writeln!(
                out,
                "llamagen_requests_total{{outcome=\"{label}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::default();
        m.batch_done(3, 48);
        m.batch_done(1, 16);
        m.request_done(Duration::from_millis(30));
        let text = m.render(2);
        assert!(
            text.contains("llamagen_batch_rows_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("llamagen_batch_rows_bucket{le=\"4\"} 2"),
            "{text}"
        );
        assert!(text.contains("llamagen_batch_rows_sum 4"), "{text}");
        assert!(text.contains("llamagen_request_duration_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("llamagen_request_duration_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("llamagen_queue_depth 2"), "{text}");
        assert!(text.contains("llamagen_tokens_total 64"), "{text}");
        assert!(
            text.contains("llamagen_requests_total{outcome=\"ok\"} 1"),
            "{text}"
        );
    }
}
