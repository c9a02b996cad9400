//! HTTP as a shop's tools send it: `curl` as a process (so the request is
//! what curl puts on the wire, not what a Rust client would).
use std::io::Write;
use std::process::{Command, Stdio};

/// An answer: status, lower-cased head, body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status (0 when curl got none: its error is in `body`).
    pub status: u16,
    /// The response head, lower-cased.
    pub head: String,
    /// The body as text.
    pub body: String,
    /// The body's bytes.
    pub raw: Vec<u8>,
}

impl Reply {
    /// The body as JSON, or the text as a JSON string.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::String(self.body.clone()))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::trim)
    }
}

/// Runs `curl -sS -D - --max-time 60 <args> <url>`, the body (if any) sent
/// from stdin (`--data-binary @-`: no argument-length limit), and reads
/// the final answer (interim `100 Continue` heads skipped).
pub fn curl(args: &[&str], url: &str, body: Option<&[u8]>) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-D", "-", "--max-time", "60"]).args(args);
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Reply {
                status: 0,
                head: String::new(),
                body: format!("curl did not run: {e}"),
                raw: Vec::new(),
            };
        }
    };
    if let (Some(b), Some(mut stdin)) = (body, child.stdin.take()) {
        // curl may stop reading when the server answers early: not an error.
        let _ = stdin.write_all(b);
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => {
            return Reply {
                status: 0,
                head: String::new(),
                body: format!("curl: {e}"),
                raw: Vec::new(),
            };
        }
    };
    if out.stdout.is_empty() {
        return Reply {
            status: 0,
            head: String::new(),
            body: format!("curl: {}", String::from_utf8_lossy(&out.stderr)),
            raw: Vec::new(),
        };
    }
    let split = |b: &[u8]| -> (String, Vec<u8>) {
        match b.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => (
                String::from_utf8_lossy(&b[..i]).to_string(),
                b[i + 4..].to_vec(),
            ),
            None => (String::from_utf8_lossy(b).to_string(), Vec::new()),
        }
    };
    let (mut head, mut rest) = split(&out.stdout);
    while head
        .split_whitespace()
        .nth(1)
        .is_some_and(|s| s.starts_with('1'))
    {
        (head, rest) = split(&rest);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: if status == 0 {
            // No final answer: what curl said about it.
            format!(
                "curl: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&rest)
            )
        } else {
            String::from_utf8_lossy(&rest).to_string()
        },
        raw: rest,
    }
}

/// A webhook receiver on loopback, as a chat service or paging endpoint:
/// records each request's body and answers 200. HTTP/1.1, one request per
/// connection is enough for what posts to it (bounded: 1 MiB a body).
pub struct Hook {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Hook {
    /// Starts it on the current tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let got: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
        let g = got.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let g = g.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let body = loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 || buf.len() > 1 << 20 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf[end + 4..end + 4 + len].to_vec();
                        }
                    };
                    g.lock().unwrap_or_else(|p| p.into_inner()).push(body);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Ok(Self { url, got })
    }

    /// The bodies received so far, as JSON where they are.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|b| {
                serde_json::from_slice(b).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(b).into())
                })
            })
            .collect()
    }
}
