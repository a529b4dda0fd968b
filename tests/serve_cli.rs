//! `llamagen serve` as a user runs it, on a tiny random-weights bundle (8 px, 16 tokens): requests
//! batched together answer exactly the tokens `llamagen generate` writes for the same flags, and
//! SIGTERM drains the request in flight and exits 0.
//! Levels: tokens identical (no numeric tolerance involved).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use llamagen_compiler::compile::{compile, Weights};
use llamagen_runtime::npy::read_npy_i64;
use llamagen_serve::api::GenerateResponse;
use llamagen_serve::client::{parse, request_bytes, Answer};
use support::golden::tiny_options;

const LLAMAGEN: &str = env!("CARGO_BIN_EXE_llamagen");

fn post(addr: SocketAddr, json: &str) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&request_bytes("POST", "/v1/generate", Some(json)))
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse(&raw).unwrap()
}

/// Starts `llamagen serve` on a free port; returns the child and its address.
fn start(bundle: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(LLAMAGEN)
        .args(["serve", "--bundle", &bundle.display().to_string()])
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .env_remove("LLAMAGEN_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start llamagen serve");
    let mut line = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

fn generate_tokens(bundle: &Path, out: &Path, labels: &str, seed: u64) -> Vec<Vec<u32>> {
    let status = Command::new(LLAMAGEN)
        .args(["generate", "--bundle", &bundle.display().to_string()])
        .args(["--labels", labels, "--seed", &seed.to_string()])
        .args(["--top-k", "100", "--top-p", "0.95", "--cfg-scale", "4.0"])
        .args(["--out", &out.display().to_string()])
        .env_remove("LLAMAGEN_LOG")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (shape, flat) = read_npy_i64(&out.join("tokens.npy")).unwrap();
    flat.chunks(shape[1])
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect()
}

#[test]
fn batched_serve_answers_equal_generate_and_sigterm_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    compile(
        &tiny_options(&bundle, Weights::Random { seed: 2 }),
        &mut |_| {},
    )
    .unwrap();
    // A window long enough that the three requests share one batch.
    let (mut child, addr) = start(&bundle, &["--max-batch", "8", "--batch-window-ms", "1500"]);
    let cases = [("1,2", 5u64), ("3", 9), ("2,2,7", 11)];
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(labels, seed)| {
                let labels: Vec<usize> = labels.split(',').map(|l| l.parse().unwrap()).collect();
                let json = serde_json::json!({
                    "labels": labels, "seed": seed, "top_k": 100, "top_p": 0.95,
                    "cfg_scale": 4.0, "response_format": "tokens"
                })
                .to_string();
                s.spawn(move || post(addr, &json))
            })
            .collect();
        // SIGTERM while the three wait in the batch window: they are still answered.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status} after SIGTERM");
    let mut rest = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert!(rest.contains("drained"), "{rest}");
    for ((labels, seed), a) in cases.iter().zip(&answers) {
        assert_eq!(a.status, 200, "{}", a.body);
        let r: GenerateResponse = serde_json::from_str(&a.body).unwrap();
        let want = generate_tokens(
            &bundle,
            &tmp.path().join(format!("out-{seed}")),
            labels,
            *seed,
        );
        assert_eq!(
            r.tokens, want,
            "labels {labels} seed {seed}: serve vs generate"
        );
    }
}
