//! One HTTP/2 connection to a replica, driven with `h2` directly.
//!
//! Why not hyper's client (used until issue 20): hyper sends every request
//! body through a spawned pipe task that waits for send capacity a new
//! stream does not have yet, so a unary call left in two writes (HEADERS,
//! then DATA) and woke the connection task twice. A unary call's body is
//! already read whole ([`crate::layers::Buffered`]), so here it is queued
//! with its headers and leaves in one write, with no task spawned. Only a
//! streaming body (IngestCatalog) gets a pipe task, which waits for
//! capacity as hyper's does.
//!
//! What hyper did for us and this module keeps:
//! - keep-alive pings every 20 s, idle or not; no answer within 10 s closes
//!   the connection ([`KeepAlive`]);
//! - a response body that releases flow-control capacity as it is read,
//!   and resets the stream (CANCEL) when dropped before its end: the
//!   deadline layer relies on that to stop the upstream's work;
//! - errors `discovery_kit::client::never_sent` can read: anything before
//!   the request is queued is a [`tonic::ConnectError`]; after it, h2's own
//!   errors (REFUSED_STREAM, a remote GOAWAY) say whether it was taken.
//!   Connection-specific headers are stripped earlier, by the balancer.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use discovery_kit::CancellationToken;
use discovery_kit::server::BoxError;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio_util::sync::DropGuard;
use tonic::body::Body;

use crate::layers::Buffered;

/// Keep-alive ping period and how long a ping may go unanswered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepAlive {
    pub every: Duration,
    pub timeout: Duration,
}

impl Default for KeepAlive {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(20),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A live connection: its request handle and whether its task ended.
#[derive(Debug, Clone)]
struct Live {
    send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// One HTTP/2 connection to a replica, (re)connected on demand.
#[derive(Debug)]
pub(crate) struct Conn {
    host_port: String,
    keep_alive: KeepAlive,
    live: Mutex<Option<Live>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Conn {
    pub(crate) fn new(host_port: String, keep_alive: KeepAlive) -> Self {
        Self {
            host_port,
            keep_alive,
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<h2::client::SendRequest<Bytes>> {
        self.live
            .lock()
            .as_ref()
            .filter(|l| !l.closed.load(Ordering::Acquire))
            .map(|l| l.send.clone())
    }

    /// Open now (a test's view).
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.current().is_some()
    }

    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, BoxError> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let tcp = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&self.host_port),
        )
        .await
        .map_err(|_| format!("connecting to {} timed out", self.host_port))??;
        tcp.set_nodelay(true)?;
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(discovery_kit::client::STREAM_WINDOW)
            .initial_connection_window_size(discovery_kit::client::CONNECTION_WINDOW)
            .enable_push(false)
            // hyper's defaults, kept: 1 MiB buffered per stream before
            // `poll_capacity` waits, 16 KiB of response headers.
            .max_send_buffer_size(1 << 20)
            .max_header_list_size(16 << 10)
            .handshake::<_, Bytes>(tcp)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = conn.ping_pong();
        let (host_port, keep_alive, ended) =
            (self.host_port.clone(), self.keep_alive, closed.clone());
        tokio::spawn(async move {
            let why = tokio::select! {
                r = conn => r.err().map(|e| e.to_string()),
                why = keep_pinging(pings, keep_alive) => Some(why),
            };
            ended.store(true, Ordering::Release);
            if let Some(why) = why {
                tracing::debug!(upstream = %host_port, error = %why, "upstream connection closed");
            }
        });
        *self.live.lock() = Some(Live {
            send: send.clone(),
            closed,
        });
        Ok(send)
    }

    /// Sends `req`: a unary body ([`Buffered`]) goes with its headers, a
    /// streaming one through a pipe task.
    pub(crate) async fn call(&self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        // Failures before the request is queued (no connection, or one that
        // closed first) are connect errors, which `never_sent` recognises:
        // the caller may send the call elsewhere even if it is not
        // idempotent.
        let before_sending = |e: BoxError| -> BoxError { Box::new(tonic::ConnectError(e)) };
        let send = self.sender().await.map_err(before_sending)?;
        let mut send = send.ready().await.map_err(|e| before_sending(e.into()))?;
        let (parts, body) = req.into_parts();
        let buffered = parts.extensions.get::<Buffered>().map(|b| b.0.clone());
        let head = Request::from_parts(parts, ());
        let cancel = CancellationToken::new();
        let guard = cancel.clone().drop_guard();
        let response = match buffered {
            Some(bytes) => {
                let end = bytes.is_empty();
                let (response, mut stream) = send
                    .send_request(head, end)
                    .map_err(|e| before_sending(e.into()))?;
                if !end {
                    // Queued without reserved capacity: h2 sends it as the
                    // windows allow, in the same flush as the headers.
                    stream.send_data(bytes, true)?;
                }
                response
            }
            None if body.is_end_stream() => {
                send.send_request(head, true)
                    .map_err(|e| before_sending(e.into()))?
                    .0
            }
            None => {
                let (response, stream) = send
                    .send_request(head, false)
                    .map_err(|e| before_sending(e.into()))?;
                tokio::spawn(pipe(body, stream, cancel));
                response
            }
        };
        let resp = response.await?;
        Ok(resp.map(|recv| Body::new(Recv::new(recv, guard))))
    }
}

/// Pings every `every`; returns why the connection should close when a
/// ping goes unanswered for `timeout` (or pings cannot be sent).
async fn keep_pinging(pings: Option<h2::PingPong>, keep_alive: KeepAlive) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(keep_alive.every).await;
        match tokio::time::timeout(keep_alive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keep-alive ping failed: {e}"),
            Err(_) => {
                return format!("keep-alive ping unanswered for {:?}", keep_alive.timeout);
            }
        }
    }
}

/// Copies a streaming request body to the upstream, waiting for send
/// capacity frame by frame; stops (and resets the stream) when the call is
/// given up ([`Recv`] or the call's future dropped) or the body fails.
async fn pipe(mut body: Body, mut tx: h2::SendStream<Bytes>, cancel: CancellationToken) {
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return tx.send_reset(h2::Reason::CANCEL),
            f = body.frame() => f,
        };
        let frame = match frame {
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body failed; resetting the upstream stream");
                return tx.send_reset(h2::Reason::CANCEL);
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                    return;
                }
                continue;
            }
        };
        while !data.is_empty() {
            tx.reserve_capacity(data.len());
            let capacity = tokio::select! {
                _ = cancel.cancelled() => return tx.send_reset(h2::Reason::CANCEL),
                c = std::future::poll_fn(|cx| tx.poll_capacity(cx)) => c,
            };
            match capacity {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let chunk = data.split_to(n.min(data.len()));
                    if tx.send_data(chunk, false).is_err() {
                        return;
                    }
                }
                // The stream was reset or the connection closed: the
                // response says why.
                Some(Err(_)) | None => return,
            }
        }
    }
}

/// A response body over h2's receive half.
struct Recv {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
    /// Stops a request body pipe when the answer is dropped.
    _pipe: DropGuard,
}

impl Recv {
    fn new(recv: h2::RecvStream, pipe: DropGuard) -> Self {
        Self {
            recv,
            data_done: false,
            done: false,
            _pipe: pipe,
        }
    }
}

impl HttpBody for Recv {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read: the upstream may send as much again.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => self.data_done = true,
            }
        }
        let trailers = ready!(self.recv.poll_trailers(cx));
        self.done = true;
        Poll::Ready(match trailers {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

impl std::fmt::Debug for Recv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recv").field("done", &self.done).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    type ServerConn = h2::server::Connection<tokio::net::TcpStream, Bytes>;

    /// A raw HTTP/2 upstream that takes one connection and does `then` with it.
    async fn upstream<F, Fut>(then: F) -> SocketAddr
    where
        F: FnOnce(ServerConn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let conn = h2::server::handshake(socket).await.unwrap();
            then(conn).await;
        });
        addr
    }

    /// Keeps serving the connection (pings, resets) after the test's streams.
    fn keep_serving(mut conn: ServerConn) {
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
    }

    fn request(addr: SocketAddr, body: Body) -> Request<Body> {
        Request::post(format!("http://{addr}/discovery.v1.T/Call"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap()
    }

    fn unary(addr: SocketAddr, bytes: &'static [u8]) -> Request<Body> {
        let bytes = Bytes::from_static(bytes);
        let mut req = request(addr, Body::new(http_body_util::Full::new(bytes.clone())));
        req.extensions_mut().insert(Buffered(bytes));
        req
    }

    fn ok_trailers() -> http::HeaderMap {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t
    }

    async fn read_all(mut recv: h2::RecvStream) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        got
    }

    #[tokio::test]
    async fn a_unary_call_sends_its_body_whole_and_reads_data_then_trailers() {
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let addr = upstream(|mut conn| async move {
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let (parts, recv) = req.into_parts();
            let mut body = (parts.uri.path().to_string(), Vec::new());
            tokio::spawn(async move {
                body.1 = read_all(recv).await;
                let mut send = respond.send_response(Response::new(()), false).unwrap();
                send.send_data(Bytes::from_static(b"answer"), false)
                    .unwrap();
                send.send_trailers(ok_trailers()).unwrap();
                let _ = seen_tx.send(body);
            });
            keep_serving(conn);
        })
        .await;
        let conn = Conn::new(addr.to_string(), KeepAlive::default());
        let resp = conn.call(unary(addr, b"question")).await.unwrap();
        let mut body = resp.into_body();
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"answer");
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(body.frame().await.is_none());
        let (path, got) = seen_rx.await.unwrap();
        assert_eq!(path, "/discovery.v1.T/Call");
        assert_eq!(got, b"question");
    }

    #[tokio::test]
    async fn a_streaming_body_larger_than_the_upstreams_window_arrives_whole() {
        // h2's server window is 64 KiB: the pipe must wait for capacity.
        let chunks: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 40_000])).collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let addr = upstream(|mut conn| async move {
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move {
                let got = read_all(req.into_body()).await;
                let _ = seen_tx.send(got);
                let mut send = respond.send_response(Response::new(()), false).unwrap();
                send.send_trailers(ok_trailers()).unwrap();
            });
            keep_serving(conn);
        })
        .await;
        let frames = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c))),
        );
        let body = Body::new(http_body_util::StreamBody::new(frames));
        let conn = Conn::new(addr.to_string(), KeepAlive::default());
        let resp = conn.call(request(addr, body)).await.unwrap();
        let trailers = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .trailers()
            .cloned();
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert!(seen_rx.await.unwrap() == expected, "the body arrived whole");
    }

    #[tokio::test]
    async fn dropping_the_answer_resets_the_upstream_stream() {
        let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
        let addr = upstream(|mut conn| async move {
            let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move {
                let mut send = respond.send_response(Response::new(()), false).unwrap();
                send.send_data(Bytes::from_static(b"first"), false).unwrap();
                let reason = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
                let _ = reset_tx.send(reason.ok());
            });
            keep_serving(conn);
        })
        .await;
        let conn = Conn::new(addr.to_string(), KeepAlive::default());
        let mut body = conn.call(unary(addr, b"q")).await.unwrap().into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        drop(body); // a deadline, or the caller went away
        assert_eq!(reset_rx.await.unwrap(), Some(h2::Reason::CANCEL));
    }

    #[tokio::test]
    async fn dropping_a_call_stops_its_streaming_body() {
        let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
        let addr = upstream(|mut conn| async move {
            let (req, _respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move {
                let mut recv = req.into_body();
                // Data until the stream is reset; no answer ever.
                let err = loop {
                    match recv.data().await {
                        Some(Ok(d)) => {
                            let _ = recv.flow_control().release_capacity(d.len());
                        }
                        Some(Err(e)) => break e.reason(),
                        None => break None,
                    }
                };
                let _ = reset_tx.send(err);
                drop(_respond);
            });
            keep_serving(conn);
        })
        .await;
        // A caller that sends one frame, then nothing, forever.
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"header"))))
            .await
            .unwrap();
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let conn = Conn::new(addr.to_string(), KeepAlive::default());
        let call = conn.call(request(addr, body));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), call)
                .await
                .is_err(),
            "no answer"
        );
        assert_eq!(reset_rx.await.unwrap(), Some(h2::Reason::CANCEL));
        drop(tx);
    }

    /// The error of a call the upstream resets with `reason` on arrival.
    async fn reset_with(reason: h2::Reason) -> BoxError {
        let addr = upstream(move |mut conn| async move {
            let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
            respond.send_reset(reason);
            keep_serving(conn);
        })
        .await;
        Conn::new(addr.to_string(), KeepAlive::default())
            .call(unary(addr, b"q"))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn failures_before_and_after_sending_say_whether_the_call_was_taken() {
        // Nobody listening: never sent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = Conn::new(addr.to_string(), KeepAlive::default())
            .call(unary(addr, b"q"))
            .await
            .unwrap_err();
        assert!(discovery_kit::client::never_sent(&*e), "refused: {e}");
        // The upstream refuses the stream: never sent.
        let e = reset_with(h2::Reason::REFUSED_STREAM).await;
        assert!(
            discovery_kit::client::never_sent(&*e),
            "REFUSED_STREAM: {e}"
        );
        // The upstream took it and broke off: it may have run.
        let e = reset_with(h2::Reason::INTERNAL_ERROR).await;
        assert!(!discovery_kit::client::never_sent(&*e), "taken: {e}");
    }

    #[tokio::test]
    async fn a_connection_whose_pings_go_unanswered_is_closed() {
        let keep_alive = KeepAlive {
            every: Duration::from_millis(50),
            timeout: Duration::from_millis(100),
        };
        // An upstream that answers pings stays open.
        let addr = upstream(|conn| async move { keep_serving(conn) }).await;
        let alive = Conn::new(addr.to_string(), keep_alive);
        alive.sender().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(alive.is_open(), "pings answered");
        // One that hangs (never reads again) is given up on.
        let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<ServerConn>();
        let addr = upstream(|conn| async move {
            let _ = hold_tx.send(conn);
        })
        .await;
        let hung = Conn::new(addr.to_string(), keep_alive);
        hung.sender().await.unwrap();
        let _held = hold_rx.await.unwrap();
        let mut waited = Duration::ZERO;
        while hung.is_open() && waited < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        assert!(!hung.is_open(), "an unanswered ping closes the connection");
    }
}
