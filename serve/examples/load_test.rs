//! Load test of a running `llamagen serve`: `--clients` concurrent clients, each sending one
//! request after the other for `--seconds`, then a report: requests, errors (any answer but
//! 200), latency p50/p99, images/s, and the server's RSS (from /proc/PID/statm) at the start and
//! the end. Driven by scripts/load_test.sh.
//!
//! `cargo run --release -p llamagen-serve --example load_test -- --addr 127.0.0.1:8080
//!  [--clients 64] [--seconds 60] [--labels-per-request 1] [--top-k 2000] [--server-pid PID]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use llamagen_serve::client::post;

struct Args {
    addr: SocketAddr,
    clients: usize,
    seconds: f64,
    labels: usize,
    top_k: usize,
    pid: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?,
        clients: 64,
        seconds: 60.0,
        labels: 1,
        top_k: 2000,
        pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        match flag.as_str() {
            "--addr" => a.addr = v.parse().map_err(|e| bad(&e))?,
            "--clients" => a.clients = v.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = v.parse().map_err(|e| bad(&e))?,
            "--labels-per-request" => a.labels = v.parse().map_err(|e| bad(&e))?,
            "--top-k" => a.top_k = v.parse().map_err(|e| bad(&e))?,
            "--server-pid" => a.pid = Some(v.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// Resident set size of `pid` in MiB (Linux), from /proc/PID/statm and a 4 KiB page.
fn rss_mib(pid: Option<u32>) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{}/statm", pid?)).ok()?;
    let pages: f64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let a = parse_args()?;
    let rss_start = rss_mib(a.pid);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(a.seconds);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (addr, labels, top_k) = (a.addr, a.labels, a.top_k);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut seed = c as u64 * 1_000_000;
            while Instant::now() < until {
                let body = serde_json::json!({
                    "labels": vec![(c * 7 + seed as usize) % 1000; labels],
                    "seed": seed, "top_k": top_k, "response_format": "png"
                })
                .to_string();
                seed += 1;
                let t0 = Instant::now();
                match post(addr, "/v1/generate", &body).await {
                    Ok(r) if r.status == 200 => latencies.push(t0.elapsed().as_secs_f64()),
                    Ok(r) => errors.push(format!("{}: {}", r.status, r.body)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        errors.extend(e);
    }
    let wall = start.elapsed().as_secs_f64();
    let rss_end = rss_mib(a.pid);
    latencies.sort_by(f64::total_cmp);
    let images = latencies.len() * a.labels;
    let mib = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.0} MiB"));
    println!(
        "clients {} | seconds {wall:.1} | requests {} | errors {} | p50 {:.0} ms | p99 {:.0} ms | \
         images/s {:.2} | server RSS start {} end {}",
        a.clients,
        latencies.len(),
        errors.len(),
        percentile(&latencies, 0.5) * 1e3,
        percentile(&latencies, 0.99) * 1e3,
        images as f64 / wall,
        mib(rss_start),
        mib(rss_end),
    );
    if let Some(e) = errors.first() {
        eprintln!("first error: {e}");
        return Err(format!("{} errors", errors.len()));
    }
    Ok(())
}
