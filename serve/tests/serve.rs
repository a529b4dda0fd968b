//! The server in process on a random loopback port, over a tiny random-weights bundle (8 px,
//! 16 tokens): endpoints, batching that leaves every request's tokens as they are alone,
//! 400 / 429 answers that leave the server running, a disconnect that cancels its request, and
//! a shutdown that drains. Levels: tokens identical (no numeric tolerance involved).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llamagen_compiler::compile::{compile, CompileOptions, Weights};
use llamagen_runtime::{Pipeline, PipelineOptions};
use llamagen_serve::api::GenerateResponse;
use llamagen_serve::client::{get, post, request_bytes, Answer};
use llamagen_serve::{serve, ServeOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn compile_tiny(tmp: &Path) -> PathBuf {
    let fixture = |n: &str| llamagen_test_support::fixture(n).display().to_string();
    let out = tmp.join("bundle");
    let opts = CompileOptions {
        gpt_model: fixture("tiny-gpt.yaml"),
        vq_model: fixture("tiny-vq.yaml"),
        weights: Weights::Random { seed: 3 },
        image_size: 8,
        downsample_size: Some(2),
        codebook_size: 512,
        codebook_embed_dim: 8,
        num_classes: 10,
        out: out.clone(),
        ..CompileOptions::default()
    };
    compile(&opts, &mut |_| {}).expect("compile tiny bundle");
    out
}

struct Server {
    addr: SocketAddr,
    pipeline: Arc<Pipeline>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), llamagen_serve::ServeError>>,
    _tmp: tempfile::TempDir,
}

async fn start(opts: ServeOptions) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compile_tiny(tmp.path());
    let popts = PipelineOptions {
        max_labels: 8,
        ..PipelineOptions::default()
    };
    let pipeline = Arc::new(Pipeline::load(&dir, &popts).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(pipeline.clone(), listener, opts, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        pipeline,
        stop: Some(stop),
        task,
        _tmp: tmp,
    }
}

impl Server {
    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap().unwrap();
    }

    async fn metrics(&self) -> String {
        get(self.addr, "/metrics").await.unwrap().body
    }
}

fn body(labels: &[usize], seed: u64, format: &str) -> String {
    serde_json::json!({
        "labels": labels, "seed": seed, "top_k": 100, "top_p": 0.95,
        "temperature": 1.0, "cfg_scale": 4.0, "response_format": format
    })
    .to_string()
}

fn parse(a: &Answer) -> GenerateResponse {
    assert_eq!(a.status, 200, "{}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

/// The tokens the pipeline gives `labels` with `seed` alone (what `llamagen generate` runs).
fn alone(p: &Pipeline, labels: &[usize], seed: u64) -> Vec<Vec<u32>> {
    let b: llamagen_serve::api::GenerateBody =
        serde_json::from_str(&body(labels, seed, "tokens")).unwrap();
    p.generate_tokens(&b.request(), &mut |_, _| {})
        .unwrap()
        .tokens
}

/// The value of the metric line that starts with `name ` (or `name{...} `).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer() {
    let s = start(ServeOptions::default()).await;
    let health = get(s.addr, "/healthz").await.unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let api = get(s.addr, "/openapi.json").await.unwrap();
    assert_eq!(api.status, 200);
    let api: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert!(api["paths"]["/v1/generate"]["post"].is_object(), "{api}");

    let r = parse(
        &post(s.addr, "/v1/generate", &body(&[1, 2], 7, "png"))
            .await
            .unwrap(),
    );
    assert_eq!(r.tokens, alone(&s.pipeline, &[1, 2], 7));
    assert_eq!(r.images.len(), 2);
    use base64::Engine as _;
    for img in &r.images {
        let png = base64::prelude::BASE64_STANDARD.decode(img).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
    let r = parse(
        &post(s.addr, "/v1/generate", &body(&[3], 7, "tokens"))
            .await
            .unwrap(),
    );
    assert!(r.images.is_empty());
    assert_eq!(r.tokens.len(), 1);
    // Defaults for the rest (top_k 2000 is over the tiny vocabulary of 512).
    let r = parse(
        &post(s.addr, "/v1/generate", r#"{"labels":[4],"top_k":0}"#)
            .await
            .unwrap(),
    );
    assert_eq!(r.tokens[0].len(), 16);

    let m = s.metrics().await;
    for name in [
        "llamagen_request_duration_seconds_bucket",
        "llamagen_queue_depth",
        "llamagen_batch_rows_bucket",
        "llamagen_images_per_second",
        "llamagen_tokens_per_second",
    ] {
        assert!(m.contains(name), "{name} missing in\n{m}");
    }
    assert_eq!(metric(&m, "llamagen_images_total"), 4.0);
    assert_eq!(metric(&m, "llamagen_tokens_total"), 64.0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_requests_get_the_tokens_they_get_alone() {
    // The window holds the first request until the others arrive: one batch of 6 labels.
    let s = start(ServeOptions {
        max_batch: 6,
        batch_window: Duration::from_secs(2),
        ..ServeOptions::default()
    })
    .await;
    let cases: Vec<(Vec<usize>, u64)> = vec![(vec![1, 2], 5), (vec![3], 9), (vec![2, 2, 7], 11)];
    let sent: Vec<_> = cases
        .iter()
        .map(|(labels, seed)| {
            let (addr, b) = (s.addr, body(labels, *seed, "tokens"));
            tokio::spawn(async move { post(addr, "/v1/generate", &b).await.unwrap() })
        })
        .collect();
    for ((labels, seed), task) in cases.iter().zip(sent) {
        let r = parse(&task.await.unwrap());
        assert_eq!(
            r.tokens,
            alone(&s.pipeline, labels, *seed),
            "{labels:?} seed {seed}"
        );
    }
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "llamagen_batch_rows_count"),
        1.0,
        "one batch:\n{m}"
    );
    assert_eq!(metric(&m, "llamagen_batch_rows_sum"), 6.0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_with_the_message_and_the_server_stays_up() {
    let s = start(ServeOptions::default()).await;
    let cases = [
        ("{not json", "malformed request"),
        (r#"{"labels":[10],"top_k":0}"#, "num_classes"),
        (r#"{"labels":[],"top_k":0}"#, "at least one label"),
        (r#"{"labels":[1],"top_k":0,"top_p":0}"#, "top_p"),
        (r#"{"labels":[1]}"#, "top_k = 2000"),
        (r#"{"labels":[1],"colour":"red"}"#, "unknown field"),
        (
            r#"{"labels":[1,1,1,1,1,1,1,1,1],"top_k":0}"#,
            "too many labels",
        ),
        (r#"{"labels":[-1]}"#, "malformed request"),
        (
            r#"{"labels":[1],"response_format":"gif"}"#,
            "unknown variant",
        ),
    ];
    for (json, needle) in cases {
        let a = post(s.addr, "/v1/generate", json).await.unwrap();
        assert_eq!(a.status, 400, "{json}: {}", a.body);
        let err: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        let msg = err["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{json}: {msg}");
    }
    let a = post(s.addr, "/v1/generate", &body(&[1], 0, "tokens"))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let m = s.metrics().await;
    assert!(m.contains(&format!(
        "llamagen_requests_total{{outcome=\"bad_request\"}} {}",
        cases.len()
    )));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429() {
    // The first request waits in the queue for the window: the second finds it full.
    let s = start(ServeOptions {
        max_queue: 1,
        batch_window: Duration::from_secs(2),
        ..ServeOptions::default()
    })
    .await;
    let addr = s.addr;
    let first = tokio::spawn(async move {
        post(addr, "/v1/generate", &body(&[1], 0, "tokens"))
            .await
            .unwrap()
    });
    wait_for_queue(&s, 1).await;
    let second = post(s.addr, "/v1/generate", &body(&[2], 0, "tokens"))
        .await
        .unwrap();
    assert_eq!(second.status, 429, "{}", second.body);
    assert!(second.body.contains("queue is full"), "{}", second.body);
    assert_eq!(first.await.unwrap().status, 200);
    // Once drained, requests are served again.
    let third = post(s.addr, "/v1/generate", &body(&[2], 0, "tokens"))
        .await
        .unwrap();
    assert_eq!(third.status, 200, "{}", third.body);
    s.shutdown().await;
}

async fn wait_for_queue(s: &Server, depth: usize) {
    let t0 = Instant::now();
    while metric(&s.metrics().await, "llamagen_queue_depth") != depth as f64 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "queue never reached {depth}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_request() {
    let s = start(ServeOptions {
        batch_window: Duration::from_secs(1),
        ..ServeOptions::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let json = body(&[1], 0, "png");
    stream
        .write_all(&request_bytes("POST", "/v1/generate", Some(&json)))
        .await
        .unwrap();
    wait_for_queue(&s, 1).await;
    drop(stream);
    let t0 = Instant::now();
    loop {
        let m = s.metrics().await;
        if m.contains("llamagen_requests_total{outcome=\"cancelled\"} 1") {
            // Dropped before it ran: no batch, no image.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let m = s.metrics().await;
            assert_eq!(metric(&m, "llamagen_batch_rows_count"), 0.0, "{m}");
            assert_eq!(metric(&m, "llamagen_queue_depth"), 0.0, "{m}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never cancelled:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_already_received() {
    let s = start(ServeOptions {
        batch_window: Duration::from_millis(500),
        ..ServeOptions::default()
    })
    .await;
    let addr = s.addr;
    let inflight = tokio::spawn(async move {
        post(addr, "/v1/generate", &body(&[1, 2], 3, "png"))
            .await
            .unwrap()
    });
    wait_for_queue(&s, 1).await;
    let pipeline = s.pipeline.clone();
    s.shutdown().await;
    let r = parse(&inflight.await.unwrap());
    assert_eq!(r.tokens, alone(&pipeline, &[1, 2], 3));
    // The listener is gone.
    assert!(get(addr, "/healthz").await.is_err());
}
