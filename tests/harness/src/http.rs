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
