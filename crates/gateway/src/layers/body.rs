//! The caller's request body, bounded before it costs anything scarce: a
//! unary body is read whole (at most its route's limit, within the body
//! timeout, four times that for a photo) *before* the call takes an
//! in-flight slot, so a slow sender holds no slot others need; the bytes
//! go inward as [`Buffered`] (a retry sends them again). A stream's body is
//! watched instead ([`grpc::CallerBody`]): over its limit or idle too long,
//! it is cut and the [`CallerFault`] handed inward records why.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tonic::body::Body;
use tower::Layer;

use super::{Buffered, CallerFault, Inner, Reply, always_ready, answer, answered, ready, route_of};
use crate::grpc;
use crate::routes::{self, Route};

/// Bounds request bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyLayer {
    unary_within: Duration,
    stream_idle: Duration,
}

impl BodyLayer {
    /// A unary body must arrive within `unary_within`; a stream must send
    /// a frame at least every `stream_idle`.
    pub fn new(unary_within: Duration, stream_idle: Duration) -> Self {
        Self {
            unary_within,
            stream_idle,
        }
    }
}

impl<S> Layer<S> for BodyLayer {
    type Service = BoundedBody<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BoundedBody {
            inner,
            limits: *self,
        }
    }
}

/// See [`BodyLayer`].
#[derive(Debug, Clone)]
pub struct BoundedBody<S> {
    inner: S,
    limits: BodyLayer,
}

impl<S: Inner> BoundedBody<S> {
    fn serve(&mut self, req: Request<Body>) -> Reply {
        let Some(route) = route_of(&req) else {
            return ready(super::unrouted());
        };
        let (mut parts, body) = req.into_parts();
        if route.streaming {
            let fault = CallerFault::default();
            let watched = grpc::CallerBody::new(
                body,
                route.method,
                route.max_body,
                self.limits.stream_idle,
                fault.clone(),
            );
            parts.extensions.insert(fault);
            return super::pass(
                &mut self.inner,
                Request::from_parts(parts, Body::new(watched)),
            );
        }
        let (inner, within) = (self.inner.clone(), self.limits.unary_within);
        Box::pin(async move {
            Ok(match read_unary(body, route, within).await {
                Ok(bytes) => {
                    parts.extensions.insert(Buffered(bytes.clone()));
                    let body = Body::new(http_body_util::Full::new(bytes));
                    answer(inner, Request::from_parts(parts, body)).await
                }
                Err(status) => answered("caller_body", grpc::error(status)),
            })
        })
    }
}

always_ready!(BoundedBody);

/// Reads a unary call's body whole: at most the route's limit, within
/// `within` (four times that for a photo).
async fn read_unary(
    body: Body,
    route: &'static Route,
    within: Duration,
) -> Result<bytes::Bytes, tonic::Status> {
    let limit = route.max_body.unwrap_or(routes::SMALL_BODY);
    let within = if route.max_body == Some(routes::PHOTO_BODY) {
        within * 4
    } else {
        within
    };
    let fault = CallerFault::default();
    let read = grpc::CallerBody::new(body, route.method, Some(limit), within, fault).collect();
    match tokio::time::timeout(within, read).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(grpc::too_slow(route.method, within)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{answering, ok_answer, routed, send};
    use bytes::Bytes;
    use http::HeaderValue;
    use http_body::Frame;
    use tonic::Code;

    /// Answers OK and says whether the body came buffered.
    fn reporter() -> super::super::Next {
        answering(|req| {
            let mut resp = ok_answer(b"ok");
            if let Some(b) = req.extensions().get::<Buffered>() {
                resp.headers_mut()
                    .insert("x-buffered", HeaderValue::from(b.0.len()));
            }
            if req.extensions().get::<CallerFault>().is_some() {
                resp.headers_mut()
                    .insert("x-watched", HeaderValue::from_static("yes"));
            }
            resp
        })
    }

    fn with_body(method: &str, body: Body) -> Request<Body> {
        let (parts, _) = routed(method).into_parts();
        Request::from_parts(parts, body)
    }

    #[tokio::test(start_paused = true)]
    async fn unary_bodies_arrive_whole_and_bounded_streams_are_watched() {
        let idle = Duration::from_secs(10);
        let mut svc = BodyLayer::new(idle, idle).layer(reporter());
        let (code, resp, _) = send(&mut svc, routed("GetProduct")).await;
        assert_eq!(code, Code::Ok);
        assert_eq!(resp.headers()["x-buffered"], "7");

        // Over the route's limit (1 MiB for everything but a photo).
        let big = Body::new(http_body_util::Full::new(Bytes::from(vec![
            0u8;
            routes::SMALL_BODY
                + 1
        ])));
        let (code, resp, _) = send(&mut svc, with_body("GetProduct", big)).await;
        assert_eq!(code, Code::ResourceExhausted);
        assert!(resp.headers().get("x-buffered").is_none(), "refused here");

        // A sender that stops half way is cut after the timeout.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, tonic::Status>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"\0\0\0"))))
            .await
            .unwrap();
        let slow = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let (code, resp, _) = send(&mut svc, with_body("GetProduct", slow)).await;
        assert_eq!(code, Code::Cancelled);
        assert_eq!(
            resp.extensions().get(),
            Some(&super::super::AnsweredBy("caller_body"))
        );
        drop(tx);

        // A stream goes on unread, watched.
        let (code, resp, _) = send(&mut svc, routed("IngestCatalog")).await;
        assert_eq!(code, Code::Ok);
        assert!(resp.headers().get("x-buffered").is_none());
        assert_eq!(resp.headers()["x-watched"], "yes");
    }
}
