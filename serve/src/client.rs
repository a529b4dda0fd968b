//! A minimal HTTP/1.1 client for the server's tests and load test on the loopback address:
//! one request per connection (`Connection: close`), the whole answer read to the end.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A status code and body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// The request bytes of `method path` with an optional JSON body.
pub fn request_bytes(method: &str, path: &str, json: Option<&str>) -> Vec<u8> {
    let body = json.unwrap_or("");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if json.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Sends `method path` (with a JSON body) to `addr` and reads the answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&request_bytes(method, path, json)).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse(&raw)
}

/// `POST path` with a JSON body.
pub async fn post(addr: SocketAddr, path: &str, json: &str) -> std::io::Result<Answer> {
    send(addr, "POST", path, Some(json)).await
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    send(addr, "GET", path, None).await
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Status and body of a whole HTTP/1.1 answer (identity or chunked body).
pub fn parse(raw: &[u8]) -> std::io::Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(format!("no header end in {} bytes", raw.len())))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("no status in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut s: &str) -> std::io::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s
            .split_once("\r\n")
            .ok_or_else(|| bad("truncated chunk".into()))?;
        let n = usize::from_str_radix(size.trim(), 16)
            .map_err(|e| bad(format!("chunk size {size:?}: {e}")))?;
        if n == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..n).ok_or_else(|| bad("truncated chunk".into()))?;
        out.push_str(chunk);
        s = rest.get(n + 2..).unwrap_or("");
    }
}
