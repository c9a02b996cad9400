//! Unary gRPC calls over raw HTTP/2 with pre-encoded request frames.
//!
//! The load tool's own cost per call has to stay a few microseconds, or the
//! figures are the client's: requests are encoded once at set-up (or once
//! per call where they must differ, such as photos), sent on a few shared
//! HTTP/2 connections, and answers are read frame by frame without
//! decoding unless the caller asks for the message. Every answer's
//! `grpc-status` is checked (HTTP 200 alone says nothing for gRPC).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;

/// Why the load tool cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The target URL is not `http://host:port`.
    #[error("{0:?} is not a target URL (expected http://host:port)")]
    BadUrl(String),
    /// The target is not on this machine.
    #[error(
        "refusing to load {target}: it resolves to {addr}, which is not a loopback address; the load tool only targets this machine"
    )]
    NotLoopback {
        /// The URL.
        target: String,
        /// The address it resolved to.
        addr: SocketAddr,
    },
    /// Resolving or connecting failed.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The URL.
        target: String,
        /// What failed.
        reason: String,
    },
    /// A set-up call (warm-up, product ids) failed.
    #[error("set-up call {method} failed: {reason}")]
    Call {
        /// The method.
        method: &'static str,
        /// What it answered.
        reason: String,
    },
    /// Something else in the set-up, such as an unreadable photo.
    #[error("{0}")]
    Other(String),
}

/// What one call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The server answered with a non-OK gRPC status.
    Status(i32, String),
    /// No gRPC answer: connection refused or reset, HTTP error, timeout.
    Transport(String),
}

impl CallError {
    /// The label errors are counted under: a gRPC code name, `TRANSPORT`
    /// or `TIMEOUT`.
    pub fn label(&self) -> &'static str {
        match self {
            CallError::Status(code, _) => discovery_kit::server::code_name(*code),
            CallError::Transport(m) if m == TIMEOUT => "TIMEOUT",
            CallError::Transport(_) => "TRANSPORT",
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status(code, m) => {
                write!(f, "{}: {m}", discovery_kit::server::code_name(*code))
            }
            CallError::Transport(m) => write!(f, "transport: {m}"),
        }
    }
}

const TIMEOUT: &str = "no answer within the call timeout";

/// A gRPC message in its length-prefixed frame, ready to send.
pub fn frame<M: prost::Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut b);
    b.freeze()
}

/// One HTTP/2 connection, reconnected on demand after it fails.
struct Conn {
    addr: SocketAddr,
    send: Mutex<Option<SendRequest<Full<Bytes>>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Conn {
    fn current(&self) -> Option<SendRequest<Full<Bytes>>> {
        self.send
            .lock()
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// Drops the connection (it refused a call): the next call reconnects.
    fn forget(&self) {
        *self.send.lock() = None;
    }

    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _one = self.connecting.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let tcp = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| format!("connecting to {} timed out", self.addr))?
        .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(discovery_kit::client::STREAM_WINDOW)
            .initial_connection_window_size(discovery_kit::client::CONNECTION_WINDOW)
            .max_concurrent_reset_streams(10_000)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {}: {e}", self.addr))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *self.send.lock() = Some(send.clone());
        Ok(send)
    }
}

/// The gateway (or any gRPC server) under load: a few HTTP/2 connections
/// used in turn, and the API key every call carries.
pub struct Target {
    url: String,
    authority: http::uri::Authority,
    api_key: Option<HeaderValue>,
    conns: Vec<Conn>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Target {
    /// Resolves `url` (loopback addresses only; several URLs,
    /// comma-separated, for a system with several gateways), opens
    /// `connections` HTTP/2 connections spread over the addresses in turn
    /// and checks that they answer.
    pub async fn connect(
        url: &str,
        api_key: Option<&str>,
        connections: usize,
        timeout: Duration,
    ) -> Result<Target, SetupError> {
        let mut authority = None;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for one in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let uri: Uri = one
                .parse()
                .map_err(|_| SetupError::BadUrl(one.to_string()))?;
            if uri.scheme_str() != Some("http") {
                return Err(SetupError::BadUrl(one.to_string()));
            }
            let a = uri
                .authority()
                .cloned()
                .ok_or_else(|| SetupError::BadUrl(one.to_string()))?;
            let port = a.port_u16().unwrap_or(80);
            let found: Vec<SocketAddr> = tokio::net::lookup_host((a.host(), port))
                .await
                .map_err(|e| SetupError::Connect {
                    target: one.to_string(),
                    reason: e.to_string(),
                })?
                .collect();
            let first = *found.first().ok_or_else(|| SetupError::Connect {
                target: one.to_string(),
                reason: "the name resolves to no address".into(),
            })?;
            if let Some(bad) = found.iter().find(|a| !a.ip().is_loopback()) {
                return Err(SetupError::NotLoopback {
                    target: one.to_string(),
                    addr: *bad,
                });
            }
            addrs.push(first);
            authority.get_or_insert(a);
        }
        let authority = authority.ok_or_else(|| SetupError::BadUrl(url.to_string()))?;
        let api_key = api_key
            .map(|k| {
                HeaderValue::from_str(k).map_err(|_| {
                    SetupError::Other("the API key is not a valid header value".into())
                })
            })
            .transpose()?;
        let conns: Vec<Conn> = (0..connections.max(addrs.len()))
            .map(|i| Conn {
                addr: addrs[i % addrs.len()],
                send: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        for c in &conns {
            c.sender().await.map_err(|reason| SetupError::Connect {
                target: url.to_string(),
                reason,
            })?;
        }
        Ok(Target {
            url: url.to_string(),
            authority,
            api_key,
            conns,
            next: AtomicUsize::new(0),
            timeout,
        })
    }

    /// The URL it was made from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One unary call: `path` is `/package.Service/Method`, `body` a
    /// [`frame`]. With `keep` the answer's message bytes are returned
    /// (without the frame prefix); otherwise only their length is counted.
    pub async fn call(
        &self,
        path: &'static str,
        body: Bytes,
        keep: bool,
    ) -> Result<Answer, CallError> {
        match tokio::time::timeout(self.timeout, self.call_inner(path, body, keep, &[])).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Transport(TIMEOUT.into())),
        }
    }

    /// Like [`Target::call`], to any path and with extra request headers
    /// (tests that play a hostile caller: odd paths, deadlines, identity
    /// headers).
    pub async fn call_with(
        &self,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<Answer, CallError> {
        let mut extra = Vec::with_capacity(headers.len());
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| CallError::Transport(format!("header {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| CallError::Transport(format!("header {k:?}: {e}")))?;
            extra.push((name, value));
        }
        match tokio::time::timeout(self.timeout, self.call_inner(path, body, true, &extra)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Transport(TIMEOUT.into())),
        }
    }

    async fn call_inner(
        &self,
        path: &str,
        body: Bytes,
        keep: bool,
        extra: &[(http::HeaderName, HeaderValue)],
    ) -> Result<Answer, CallError> {
        let conn = &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()];
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let make = || {
            let mut req = Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers")
                .body(Full::new(body.clone()))
                .map_err(|e| CallError::Transport(e.to_string()))?;
            if let Some(k) = &self.api_key {
                req.headers_mut().insert("x-api-key", k.clone());
            }
            for (k, v) in extra {
                req.headers_mut().insert(k.clone(), v.clone());
            }
            Ok::<_, CallError>(req)
        };
        // gRPC's transparent retry: a call the server never saw (no
        // connection, a connection closed or gone away with GOAWAY before
        // the call was sent on it, a stream the server refused or left
        // above its GOAWAY's last stream: `never_sent`) goes
        // once more on a new connection, as gRPC clients do. A call the
        // server may have seen is never resent.
        let mut retried = false;
        let resp = loop {
            let unseen = match conn.sender().await {
                Err(e) => e,
                Ok(mut send) => match send.ready().await {
                    Err(e) => e.to_string(),
                    Ok(()) => match send.try_send_request(make()?).await {
                        Ok(resp) => break resp,
                        Err(e)
                            if e.message().is_some()
                                || discovery_kit::client::never_sent(e.error()) =>
                        {
                            e.into_error().to_string()
                        }
                        Err(e) => {
                            conn.forget();
                            return Err(CallError::Transport(format!(
                                "sent, no answer: {}",
                                chain(&e.into_error())
                            )));
                        }
                    },
                },
            };
            conn.forget();
            if retried {
                return Err(CallError::Transport(unseen));
            }
            retried = true;
        };
        if resp.status() != http::StatusCode::OK {
            return Err(CallError::Transport(format!("HTTP {}", resp.status())));
        }
        // Trailers-only answers carry the status in the headers.
        if let Some(status) = grpc_status(resp.headers()) {
            return Err(status);
        }
        let mut body = resp.into_body();
        let mut kept = BytesMut::new();
        let mut bytes = 0usize;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| CallError::Transport(format!("answer cut: {}", chain(&e))))?;
            match frame.into_data() {
                Ok(data) => {
                    bytes += data.len();
                    if keep {
                        kept.extend_from_slice(&data);
                    }
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        if let Some(status) = grpc_status(trailers) {
                            return Err(status);
                        }
                        let message = if keep && kept.len() >= 5 {
                            kept.split_off(5).freeze()
                        } else {
                            Bytes::new()
                        };
                        return Ok(Answer { bytes, message });
                    }
                }
            }
        }
        Err(CallError::Transport(
            "the answer ended without gRPC trailers".into(),
        ))
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Body bytes received (frames included).
    pub bytes: usize,
    /// The message, when asked for.
    pub message: Bytes,
}

/// `e` and its sources, as one line ("connection error: Connection reset
/// by peer (os error 104)"): hyper's own message names only the kind.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut at = e.source();
    while let Some(err) = at {
        line.push_str(": ");
        line.push_str(&err.to_string());
        at = err.source();
    }
    line
}

/// `Some(error)` when the headers carry a non-zero `grpc-status`.
fn grpc_status(h: &http::HeaderMap) -> Option<CallError> {
    let code: i32 = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    if code == 0 {
        return None;
    }
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        // grpc-message is percent-encoded.
        .map(|m| String::from_utf8_lossy(&urlencoding::decode_binary(m.as_bytes())).into_owned())
        .unwrap_or_default();
    Some(CallError::Status(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_length_prefix() {
        let f = frame(&discovery_proto::v1::GetProductRequest { id: "frm-1".into() });
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
    }

    #[test]
    fn statuses_are_read_and_decoded() {
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("8"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("limit%20reached%3A%2020%2Fmin"),
        );
        let e = grpc_status(&h).unwrap();
        assert_eq!(e, CallError::Status(8, "limit reached: 20/min".into()));
        assert_eq!(e.label(), "RESOURCE_EXHAUSTED");
        assert_eq!(CallError::Transport(TIMEOUT.into()).label(), "TIMEOUT");
    }

    #[tokio::test]
    async fn only_loopback_targets_are_loaded() {
        let e = Target::connect("http://192.0.2.1:50051", None, 1, Duration::from_secs(1))
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, SetupError::NotLoopback { .. }), "{e}");
        assert!(matches!(
            Target::connect("https://127.0.0.1:1", None, 1, Duration::from_secs(1)).await,
            Err(SetupError::BadUrl(_))
        ));
    }
}
