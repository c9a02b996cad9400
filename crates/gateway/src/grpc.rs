//! gRPC over HTTP/2 details the proxy needs: error responses,
//! `grpc-timeout`, and a response body that reports the call's final
//! status when its trailers go by.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Code;
use tonic::body::Body;

/// A trailers-only gRPC error response.
pub fn error(status: tonic::Status) -> Response<Body> {
    status.into_http()
}

/// An error with extra metadata (e.g. `retry-after`).
pub fn error_with(status: tonic::Status, extra: &[(&'static str, String)]) -> Response<Body> {
    let mut resp = status.into_http::<Body>();
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            resp.headers_mut().insert(*k, v);
        }
    }
    resp
}

/// `grpc-status` in a header map (trailers, or headers of a trailers-only
/// response).
pub fn status_of(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// A status code's name, for metric labels (no allocation per call): the
/// one spelling every metric uses, gRPC's own (`NOT_FOUND`), from the kit.
pub fn code_name(code: Code) -> &'static str {
    discovery_kit::server::code_name(code as i32)
}

/// Parses `grpc-timeout` (`1-8 digits` + `H M S m u n`).
pub fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a `grpc-timeout` value (at most 8 digits, finest unit that fits).
pub fn encode_timeout(d: Duration) -> HeaderValue {
    let us = d.as_micros();
    let text = if us < 100_000_000 {
        format!("{us}u")
    } else if d.as_millis() < 100_000_000 {
        format!("{}m", d.as_millis())
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).expect("digits and a unit are a valid header")
}

/// Called once with the call's final status (`Code::Unknown` when the
/// stream ended without one, e.g. the upstream connection broke).
pub type OnEnd = Box<dyn FnOnce(Code) + Send + Sync>;

/// Runs `f` with the call's final status: now for a trailers-only answer
/// (refusals, upstream errors), else when the body's trailers go by (or
/// the body is dropped: CANCELLED). Each layer with work for the end of a
/// call (a slot to release, a verdict to record) wraps the body this way.
pub fn on_end(
    resp: Response<Body>,
    f: impl FnOnce(Code) + Send + Sync + 'static,
) -> Response<Body> {
    if let Some(code) = status_of(resp.headers()) {
        f(code);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::new(Observed::new(body, Box::new(f))))
}

/// A response body that watches for the trailers (and can keep a copy of
/// the data, up to a limit).
pub struct Observed {
    inner: Body,
    /// The upstream broke off and we answered with our own trailers.
    cut: bool,
    on_end: Option<OnEnd>,
    capture: Option<(
        std::sync::Arc<parking_lot::Mutex<Option<bytes::BytesMut>>>,
        usize,
    )>,
}

impl Observed {
    /// Wraps `inner`; `on_end` runs when the status is known.
    pub fn new(inner: Body, on_end: OnEnd) -> Self {
        Self {
            inner,
            cut: false,
            on_end: Some(on_end),
            capture: None,
        }
    }

    /// Also copies data frames into `buf` (dropped past `limit` bytes).
    pub fn capturing(
        mut self,
        buf: std::sync::Arc<parking_lot::Mutex<Option<bytes::BytesMut>>>,
        limit: usize,
    ) -> Self {
        self.capture = Some((buf, limit));
        self
    }

    fn finish(&mut self, code: Code) {
        if let Some(f) = self.on_end.take() {
            f(code);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // The client went away before the end: the call was cancelled.
        self.finish(Code::Cancelled);
    }
}

impl HttpBody for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((buf, limit))) = (frame.data_ref(), &self.capture) {
                    let mut b = buf.lock();
                    if let Some(bytes) = b.as_mut() {
                        if bytes.len() + data.len() <= *limit {
                            bytes.extend_from_slice(data);
                        } else {
                            *b = None;
                        }
                    }
                }
                if let Some(t) = frame.trailers_ref() {
                    let code = status_of(t).unwrap_or(Code::Unknown);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // The upstream connection broke after its headers were
                // forwarded: end the call with a status the client can act
                // on (and retry) instead of resetting the stream, which
                // clients report as INTERNAL.
                tracing::debug!(error = %e, "upstream answer cut off");
                self.finish(Code::Unavailable);
                self.cut = true;
                let mut t = http::HeaderMap::new();
                let _ =
                    tonic::Status::unavailable("the upstream replica went away mid-answer; retry")
                        .add_header(&mut t);
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            Poll::Ready(None) => self.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why the gateway stopped reading a caller's request body. Set by
/// [`CallerBody`]; when set, the call's end says nothing about the
/// upstream (no breaker or replica penalty) and the caller gets this.
pub type CallerFault = std::sync::Arc<std::sync::OnceLock<tonic::Status>>;

/// A caller's request body, bounded: at most `limit` bytes in all, and a
/// frame at least every `idle` (a slow-loris sender holding a stream and an
/// in-flight slot is cut). Crossing either ends the body with an error and
/// records the reason in `fault`.
pub struct CallerBody {
    inner: Body,
    method: &'static str,
    limit: Option<usize>,
    read: usize,
    idle: Duration,
    /// Armed only when the caller keeps us waiting: a body already here
    /// (most unary calls) registers no timer, which costs a timer-wheel
    /// entry and, on a quiet worker, a wake-up of its driver (an eventfd
    /// write) per call.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the caller's next frame is due. The clock runs only while we
    /// wait on the caller: not while the upstream is not asking for more
    /// (flow control) between polls.
    due: Option<tokio::time::Instant>,
    fault: CallerFault,
}

impl CallerBody {
    /// Wraps `inner`.
    pub fn new(
        inner: Body,
        method: &'static str,
        limit: Option<usize>,
        idle: Duration,
        fault: CallerFault,
    ) -> Self {
        Self {
            inner,
            method,
            limit,
            read: 0,
            idle,
            timer: None,
            due: None,
            fault,
        }
    }

    fn fail(
        &mut self,
        status: tonic::Status,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>> {
        let _ = self.fault.set(status.clone());
        Poll::Ready(Some(Err(status)))
    }
}

/// The status for a body over its route's limit.
pub fn too_large(method: &str, limit: usize) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "{method} requests are limited to {limit} bytes; send less"
    ))
}

/// The status for a body that stopped arriving.
pub fn too_slow(method: &str, idle: Duration) -> tonic::Status {
    tonic::Status::cancelled(format!(
        "the {method} request body stalled: not received within the gateway's read timeout of {} s",
        idle.as_secs_f64()
    ))
}

impl HttpBody for CallerBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.fault.get().is_some() {
            return Poll::Ready(None);
        }
        let idle = self.idle;
        let due = *self
            .due
            .get_or_insert_with(|| tokio::time::Instant::now() + idle);
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.read += d.len();
                    if let Some(limit) = self.limit
                        && self.read > limit
                    {
                        let status = too_large(self.method, limit);
                        return self.fail(status);
                    }
                }
                self.due = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let status = tonic::Status::cancelled(format!(
                    "the {} request body could not be read: {e}",
                    self.method
                ));
                self.fail(status)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timer = match &mut self.timer {
                    Some(timer) => {
                        if timer.deadline() != due {
                            timer.as_mut().reset(due);
                        }
                        timer
                    }
                    none => none.insert(Box::pin(tokio::time::sleep_until(due))),
                };
                if timer.as_mut().poll(cx).is_ready() {
                    let status = too_slow(self.method, self.idle);
                    return self.fail(status);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_spells_a_status_code_one_way() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            assert_eq!(code_name(code), discovery_kit::server::code_name(n));
        }
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_body_is_cut_when_too_large_or_too_slow() {
        use http_body_util::BodyExt;
        let fault = CallerFault::default();
        let big = Body::new(http_body_util::Full::new(bytes::Bytes::from(vec![
            0u8;
            100
        ])));
        let mut b = CallerBody::new(big, "M", Some(99), Duration::from_secs(5), fault.clone());
        let e = b
            .frame()
            .await
            .expect("a frame")
            .expect_err("over the limit");
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert_eq!(fault.get().map(|s| s.code()), Some(Code::ResourceExhausted));

        let fault = CallerFault::default();
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, tonic::Status>>(1);
        let stalled = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let mut b = CallerBody::new(stalled, "M", None, Duration::from_secs(5), fault.clone());
        let e = b.frame().await.expect("a frame").expect_err("stalled");
        assert_eq!(e.code(), Code::Cancelled);
        assert!(e.message().contains("stalled"), "{}", e.message());

        // Frames 4 s apart under a 5 s idle limit flow; time the upstream
        // spends not asking (no poll) does not count against the caller.
        let fault = CallerFault::default();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, tonic::Status>>(1);
        let slow = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let mut b = CallerBody::new(slow, "M", None, Duration::from_secs(5), fault.clone());
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let frame = Frame::data(bytes::Bytes::from_static(b"x"));
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
        });
        for _ in 0..3 {
            assert!(b.frame().await.expect("a frame").is_ok());
        }
        assert!(fault.get().is_none());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(b.frame().await.is_none(), "the sender finished, not cut");
        assert!(fault.get().is_none());
    }

    #[tokio::test]
    async fn an_upstream_cut_off_mid_answer_ends_in_unavailable_trailers() {
        use http_body_util::BodyExt;
        let broken = http_body_util::StreamBody::new(futures::stream::iter(vec![Err::<
            Frame<bytes::Bytes>,
            _,
        >(
            tonic::Status::internal("connection reset"),
        )]));
        let seen = std::sync::Arc::new(parking_lot::Mutex::new(None));
        let s = seen.clone();
        let mut body = Observed::new(Body::new(broken), Box::new(move |c| *s.lock() = Some(c)));
        let frame = body.frame().await.expect("a frame").expect("not an error");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(status_of(&trailers), Some(Code::Unavailable));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(*seen.lock(), Some(Code::Unavailable));
    }

    #[test]
    fn grpc_timeout_round_trips() {
        for (text, d) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("100u", Duration::from_micros(100)),
            ("2H", Duration::from_secs(7200)),
        ] {
            assert_eq!(parse_timeout(&HeaderValue::from_static(text)), Some(d));
            assert_eq!(parse_timeout(&encode_timeout(d)), Some(d));
        }
        for bad in ["", "5", "S", "123456789S", "5x", "-1S"] {
            assert_eq!(
                parse_timeout(&HeaderValue::from_str(bad).unwrap()),
                None,
                "{bad}"
            );
        }
        let long = Duration::from_secs(10 * 24 * 3600);
        assert_eq!(parse_timeout(&encode_timeout(long)), Some(long));
    }

    #[test]
    fn errors_are_trailers_only_with_metadata() {
        let r = error_with(
            tonic::Status::resource_exhausted("slow down"),
            &[("retry-after", "3".into())],
        );
        assert_eq!(status_of(r.headers()), Some(Code::ResourceExhausted));
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(r.headers()["content-type"], "application/grpc");
    }
}
