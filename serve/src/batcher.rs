//! The request queue and the batch worker: one thread that takes the oldest waiting request and
//! every other waiting request with identical sampling options (cfg scale and interval,
//! temperature, top-k, top-p) until the batch holds `max_batch` labels, and runs them as one
//! generation. Every row samples from its own request's seed and its index within that request
//! (`RunOptions::row_seeds`), so a request's tokens do not depend on what it was batched with.
//! Requests whose options differ wait for a later batch (the sampler takes one set of options
//! per batch).
//!
//! A request whose client went away is cancelled: skipped while it waits, and a running batch
//! stops within one step once all its requests are gone (a batch shared with live requests runs
//! on, and the gone request's rows are not decoded).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use llamagen_runtime::image::to_u8_pixels;
use llamagen_runtime::{GenerateRequest, Observer, Pipeline, RowSeed, RunOptions, RuntimeError};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// What a finished request gets back.
#[derive(Debug)]
pub struct JobOutput {
    pub tokens: Vec<Vec<u32>>,
    /// RGB bytes per label (`size * size * 3`), when PNGs were asked for.
    pub rgb: Option<Vec<Vec<u8>>>,
    pub size: usize,
}

/// Why a request got no output.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Every request of its batch was gone, and the batch stopped.
    #[error("cancelled")]
    Cancelled,
    /// The generation returned an error.
    #[error("the generation failed: {0}")]
    Failed(String),
    /// The generation panicked (the server keeps running).
    #[error("the generation failed: {0}")]
    Panicked(String),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Closed,
}

/// One queued request.
pub struct Job {
    pub req: GenerateRequest,
    pub want_images: bool,
    /// Set when the client is gone.
    pub cancel: Arc<AtomicBool>,
    pub reply: oneshot::Sender<Result<JobOutput, JobError>>,
}

/// Why a request could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_queue` requests wait already.
    Full {
        max_queue: usize,
    },
    Closed,
}

struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The waiting requests, shared by the HTTP handlers and the worker.
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    max_queue: usize,
}

impl Queue {
    pub fn new(max_queue: usize) -> Self {
        Queue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            max_queue,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`, or says why not (the job comes back so its reply can be sent).
    pub fn push(&self, job: Job) -> Result<(), (Job, Refused)> {
        let mut s = self.lock();
        if s.closed {
            return Err((job, Refused::Closed));
        }
        if s.jobs.len() >= self.max_queue {
            return Err((
                job,
                Refused::Full {
                    max_queue: self.max_queue,
                },
            ));
        }
        s.jobs.push_back(job);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.lock().jobs.len()
    }

    /// No more requests: the worker finishes what waits, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next batch: blocks until a request waits (None once closed and empty), then waits
    /// up to `window` for more, then takes the oldest live request and the live requests with
    /// its sampling options, oldest first, while the labels fit `max_batch` (the first request
    /// always runs, whatever its size). Cancelled requests are dropped on the way.
    fn next_batch(&self, max_batch: usize, window: Duration) -> Option<Vec<Job>> {
        let mut s = self.lock();
        loop {
            s.jobs.retain(|j| !j.cancel.load(Ordering::Relaxed));
            if !s.jobs.is_empty() {
                break;
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if !window.is_zero() && !s.closed {
            let until = Instant::now() + window;
            while s.jobs.iter().map(|j| j.req.labels.len()).sum::<usize>() < max_batch {
                let now = Instant::now();
                if now >= until || s.closed {
                    break;
                }
                s = self
                    .ready
                    .wait_timeout(s, until - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let first = s.jobs.pop_front()?;
        let key = options_key(&first.req);
        let mut rows = first.req.labels.len();
        let mut batch = vec![first];
        let mut i = 0;
        while i < s.jobs.len() && rows < max_batch {
            let j = &s.jobs[i];
            let n = j.req.labels.len();
            if options_key(&j.req) == key && rows + n <= max_batch {
                rows += n;
                batch.extend(s.jobs.remove(i));
            } else {
                i += 1;
            }
        }
        Some(batch)
    }
}

/// The sampling options as comparable bits: requests batch together only when these agree.
fn options_key(r: &GenerateRequest) -> [u64; 5] {
    let s = &r.sampling;
    [
        u64::from(r.cfg_scale.to_bits()),
        u64::from(r.cfg_interval.to_bits()),
        u64::from(s.temperature.to_bits()),
        s.top_k as u64,
        u64::from(s.top_p.to_bits()),
    ]
}

/// Stops the batch once every request in it is gone.
struct BatchObserver<'a> {
    cancels: &'a [Arc<AtomicBool>],
}

impl Observer for BatchObserver<'_> {
    fn wants_logits(&self) -> bool {
        false
    }
    fn should_stop(&mut self) -> bool {
        self.cancels.iter().all(|c| c.load(Ordering::Relaxed))
    }
}

/// The worker loop: runs batches until the queue is closed and empty.
pub fn run_worker(
    pipeline: Arc<Pipeline>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    window: Duration,
) {
    while let Some(batch) = queue.next_batch(max_batch, window) {
        run_batch(&pipeline, &metrics, batch);
    }
    tracing::info!("batch worker finished");
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn run_batch(pipeline: &Pipeline, metrics: &Metrics, batch: Vec<Job>) {
    let mut merged = batch[0].req.clone();
    merged.labels.clear();
    let mut row_seeds = Vec::new();
    for j in &batch {
        merged.labels.extend(&j.req.labels);
        row_seeds.extend(RowSeed::of_request(&j.req));
    }
    let rows = merged.labels.len();
    let _span = tracing::info_span!("batch", requests = batch.len(), rows).entered();
    let cancels: Vec<Arc<AtomicBool>> = batch.iter().map(|j| j.cancel.clone()).collect();
    let run = RunOptions {
        row_seeds,
        deadline: None,
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let out = pipeline.generate_tokens_with(
            &merged,
            &run,
            &mut BatchObserver { cancels: &cancels },
        )?;
        // Decode the rows of live requests that want images, in one VQ batch.
        let mut decode_rows = Vec::new();
        let mut offset = 0;
        for j in &batch {
            let n = j.req.labels.len();
            if j.want_images && !j.cancel.load(Ordering::Relaxed) {
                decode_rows.extend(offset..offset + n);
            }
            offset += n;
        }
        let tokens_to_decode: Vec<Vec<u32>> =
            decode_rows.iter().map(|&r| out.tokens[r].clone()).collect();
        let images = if tokens_to_decode.is_empty() {
            None
        } else {
            Some(pipeline.decode_images(&tokens_to_decode)?)
        };
        Ok::<_, RuntimeError>((out.tokens, decode_rows, images))
    }));
    let (tokens, decode_rows, images) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "batch failed");
            for j in batch {
                let err = match &e {
                    RuntimeError::Cancelled { .. } => JobError::Cancelled,
                    e => JobError::Failed(e.to_string()),
                };
                let _ = j.reply.send(Err(err));
            }
            return;
        }
        Err(p) => {
            let msg = panic_message(p.as_ref());
            tracing::error!(panic = %msg, "batch panicked");
            for j in batch {
                let _ = j.reply.send(Err(JobError::Panicked(msg.clone())));
            }
            return;
        }
    };
    let per = tokens.first().map_or(0, Vec::len);
    metrics.batch_done(rows, rows * per);
    let size = images.as_ref().map_or(0, |i| i.size);
    let mut rgb: Vec<Option<Vec<u8>>> = vec![None; rows];
    if let Some(images) = images {
        for (&r, chw) in decode_rows.iter().zip(&images.pixels) {
            rgb[r] = Some(to_u8_pixels(chw, 3, size, size));
        }
    }
    let mut offset = 0;
    for j in batch {
        let n = j.req.labels.len();
        let range = offset..offset + n;
        offset += n;
        if j.cancel.load(Ordering::Relaxed) {
            continue;
        }
        let out = JobOutput {
            tokens: tokens[range.clone()].to_vec(),
            rgb: j
                .want_images
                .then(|| rgb[range].iter_mut().filter_map(Option::take).collect()),
            size,
        };
        let _ = j.reply.send(Ok(out));
    }
}
