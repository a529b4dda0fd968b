//! llamagen-serve: a loaded [`Pipeline`] behind an HTTP API (tokio + axum), with request
//! batching (see [`batcher`]), backpressure and Prometheus metrics. What `llamagen serve` runs.
//!
//! - `POST /v1/generate`: [`api::GenerateBody`] -> [`api::GenerateResponse`]; 400 with the
//!   message for malformed JSON or an invalid request, 429 when `max_queue` requests wait,
//!   503 while shutting down, 500 when a generation fails (the server keeps running).
//! - `GET /healthz`, `GET /metrics` (Prometheus text), `GET /openapi.json`.
//!
//! A client that disconnects cancels its request ([`llamagen_runtime::Observer::should_stop`]).
//! Shutdown (the future given to [`serve`]) stops accepting connections, answers every request
//! already received, then ends the batch worker.

pub mod api;
pub mod batcher;
pub mod client;
pub mod metrics;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use llamagen_runtime::{Pipeline, RuntimeError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use api::{ErrorBody, GenerateBody, GenerateResponse, ResponseFormat};
use batcher::{Job, JobError, JobOutput, Queue, Refused};
use metrics::{Metrics, Outcome};

/// How the server batches and queues.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Most labels (images) in one batch (default 16). A single request over it runs alone.
    pub max_batch: usize,
    /// Most requests waiting; one more is answered 429 (default 256).
    pub max_queue: usize,
    /// How long the worker waits for more requests after the first before it starts a batch
    /// that is not full (default 0: requests that arrive while a batch runs join the next).
    pub batch_window: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_batch: 16,
            max_queue: 256,
            batch_window: Duration::ZERO,
        }
    }
}

/// Errors that end the server (never a request's).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid option {name} = {value}: {reason}")]
    Option {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("serving on {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the batch worker panicked")]
    Worker,
}

struct AppState {
    pipeline: Arc<Pipeline>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
}

/// Serves `pipeline` on `listener` until `shutdown` completes, then drains: requests already
/// received are answered, and the batch worker finishes before this returns.
pub async fn serve(
    pipeline: Arc<Pipeline>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if opts.max_batch == 0 {
        return Err(ServeError::Option {
            name: "max_batch",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    if opts.max_queue == 0 {
        return Err(ServeError::Option {
            name: "max_queue",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let queue = Arc::new(Queue::new(opts.max_queue));
    let metrics = Arc::new(Metrics::default());
    let worker = {
        let (p, q, m) = (pipeline.clone(), queue.clone(), metrics.clone());
        let (max_batch, window) = (opts.max_batch, opts.batch_window);
        std::thread::Builder::new()
            .name("llamagen-batcher".into())
            .spawn(move || batcher::run_worker(p, q, m, max_batch, window))
            .map_err(|source| ServeError::Io {
                addr: addr.clone(),
                source,
            })?
    };
    let state = Arc::new(AppState {
        pipeline,
        queue: queue.clone(),
        metrics,
    });
    tracing::info!(%addr, max_batch = opts.max_batch, max_queue = opts.max_queue, "serving");
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("draining");
    queue.close();
    let joined = tokio::task::spawn_blocking(move || worker.join())
        .await
        .map_err(|_| ServeError::Worker)?;
    served.map_err(|source| ServeError::Io {
        addr: addr.clone(),
        source,
    })?;
    joined.map_err(|_| ServeError::Worker)
}

/// [`serve`] on a new tokio runtime, bound to `addr`, until SIGTERM or Ctrl-C; `on_listening`
/// gets the bound address (port 0 picks a free one).
pub fn run_blocking(
    pipeline: Arc<Pipeline>,
    addr: &str,
    opts: ServeOptions,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let io = |source| ServeError::Io {
        addr: addr.to_string(),
        source,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    rt.block_on(async {
        let listener = TcpListener::bind(addr).await.map_err(io)?;
        on_listening(listener.local_addr().map_err(io)?);
        serve(pipeline, listener, opts, shutdown_signal()).await
    })
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/generate", post(generate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(|| async { Json(api::openapi()) }))
        .with_state(state)
}

async fn metrics_text(State(app): State<Arc<AppState>>) -> Response {
    let body = app.metrics.render(app.queue.depth());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Sets the request's cancel flag when dropped armed: axum drops the handler's future when the
/// client disconnects.
struct CancelOnDrop {
    cancel: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.cancel.store(true, Ordering::Relaxed);
            self.metrics.count(Outcome::Cancelled);
            tracing::info!("client gone: request cancelled");
        }
    }
}

async fn generate(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let arrived = Instant::now();
    let bad = |m: &Metrics, msg: String| {
        m.count(Outcome::BadRequest);
        error(StatusCode::BAD_REQUEST, msg)
    };
    let parsed: GenerateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad(&app.metrics, format!("malformed request: {e}")),
    };
    let req = parsed.request();
    if let Err(e) = app.pipeline.validate(&req) {
        return bad(&app.metrics, e.to_string());
    }
    let want_images = parsed.response_format == ResponseFormat::Png;
    let cancel = Arc::new(AtomicBool::new(false));
    let (reply, answer) = oneshot::channel();
    let job = Job {
        req,
        want_images,
        cancel: cancel.clone(),
        reply,
    };
    if let Err((_, why)) = app.queue.push(job) {
        return match why {
            Refused::Full { max_queue } => {
                app.metrics.count(Outcome::Rejected);
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("the queue is full ({max_queue} requests wait); retry later"),
                )
            }
            Refused::Closed => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        };
    }
    let mut guard = CancelOnDrop {
        cancel,
        metrics: app.metrics.clone(),
        armed: true,
    };
    let result = answer.await;
    guard.armed = false;
    let out = match result {
        Ok(Ok(out)) => out,
        Ok(Err(JobError::Closed)) | Err(_) => {
            app.metrics.count(Outcome::Failed);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                JobError::Closed.to_string(),
            );
        }
        Ok(Err(e)) => {
            app.metrics.count(Outcome::Failed);
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    let encoded = tokio::task::spawn_blocking(move || encode(out)).await;
    match encoded {
        Ok(Ok(resp)) => {
            app.metrics.request_done(arrived.elapsed());
            Json(resp).into_response()
        }
        Ok(Err(e)) => {
            app.metrics.count(Outcome::Failed);
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => {
            app.metrics.count(Outcome::Failed);
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// The answer: tokens, and each image as a base64 PNG.
fn encode(out: JobOutput) -> Result<GenerateResponse, RuntimeError> {
    let images = match &out.rgb {
        None => Vec::new(),
        Some(rgb) => rgb
            .iter()
            .map(|img| png_bytes(img, out.size).map(|b| base64::prelude::BASE64_STANDARD.encode(b)))
            .collect::<Result<_, _>>()?,
    };
    Ok(GenerateResponse {
        images,
        tokens: out.tokens,
    })
}

/// An 8-bit RGB PNG of `size` x `size` pixels in memory.
pub fn png_bytes(rgb: &[u8], size: usize) -> Result<Vec<u8>, RuntimeError> {
    let err = |e: png::EncodingError| RuntimeError::InvalidRequest {
        field: "image",
        value: format!("{size}x{size}"),
        reason: format!("PNG encoding failed: {e}"),
    };
    let side = u32::try_from(size).map_err(|_| RuntimeError::InvalidRequest {
        field: "image",
        value: size.to_string(),
        reason: "too large for a PNG".into(),
    })?;
    let mut buf = Vec::new();
    let mut enc = png::Encoder::new(&mut buf, side, side);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(err)?;
    w.write_image_data(rgb).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(buf)
}
