//! Deadlines, in two places.
//!
//! [`DeadlineLayer`] (once per call, before the breaker): the caller's
//! `grpc-timeout`, or the route's default, capped at the gateway's
//! maximum, becomes the call's [`CallDeadline`]. A caller deadline below
//! the floor is answered DEADLINE_EXCEEDED at once: no useful answer fits
//! in it, and it must cost no upstream anything. Whose deadline it is
//! matters: a DEADLINE_EXCEEDED under the caller's own (shorter) deadline
//! says nothing about the upstream's health ([`super::breaker`]).
//!
//! [`AttemptLayer`] (per attempt, inside the retries): an attempt gets what
//! is left of the deadline, in its `grpc-timeout` and as a timer on its
//! answer's headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tower::{Layer, Service};

use super::{CallDeadline, Inner, Reply, always_ready, answered, pass, ready, route_of};
use crate::grpc;

/// Sets each call's deadline.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    min: Duration,
    max: Duration,
}

impl DeadlineLayer {
    /// Caller deadlines below `min` are refused; none is longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            bounds: *self,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    bounds: DeadlineLayer,
}

/// A DEADLINE_EXCEEDED the caller's own deadline caused: marked so that it
/// is not counted as a server fault (`kit::server::CallerDeadline`).
pub(crate) fn exceeded(status: tonic::Status, callers: bool) -> Response<Body> {
    let mut resp = grpc::error(status);
    if callers {
        resp.extensions_mut()
            .insert(discovery_kit::server::CallerDeadline);
    }
    resp
}

impl<S: Inner> Deadline<S> {
    fn serve(&mut self, mut req: Request<Body>) -> Reply {
        let Some(route) = route_of(&req) else {
            return ready(super::unrouted());
        };
        let DeadlineLayer { min, max } = self.bounds;
        let callers = req
            .headers()
            .get("grpc-timeout")
            .and_then(grpc::parse_timeout);
        if let Some(d) = callers
            && d < min
        {
            let status = tonic::Status::deadline_exceeded(format!(
                "grpc-timeout of {d:?} is below this gateway's floor of {min:?}; give the call at least that long"
            ));
            return ready(answered("deadline_floor", exceeded(status, true)));
        }
        let within = callers.or(route.default_deadline).map(|d| d.min(max));
        let deadline = CallDeadline {
            at: within.map(|d| Instant::now() + d),
            within,
            callers: match (callers, route.default_deadline) {
                (Some(c), Some(own)) => c < own.min(max),
                (Some(_), None) => true,
                (None, _) => false,
            },
        };
        req.extensions_mut().insert(deadline);
        pass(&mut self.inner, req)
    }
}

always_ready!(Deadline);

/// Gives each attempt what is left of the call's deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptLayer;

impl<S> Layer<S> for AttemptLayer {
    type Service = Attempt<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Attempt { inner }
    }
}

/// See [`AttemptLayer`]. Passes the inner service's errors through (the
/// retry layer judges them).
#[derive(Debug, Clone)]
pub struct Attempt<S> {
    inner: S,
}

impl<S, E> Service<Request<Body>> for Attempt<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = E>,
    S::Future: Send + 'static,
    E: Send + 'static,
{
    type Response = Response<Body>;
    type Error = E;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(deadline) = req.extensions().get::<CallDeadline>().copied() else {
            return Box::pin(self.inner.call(req));
        };
        let Some(at) = deadline.at else {
            return Box::pin(self.inner.call(req));
        };
        let Some(route) = route_of(&req) else {
            return Box::pin(std::future::ready(Ok(super::unrouted())));
        };
        let within = deadline.within.unwrap_or_default();
        let out_of_time = move || {
            let status = tonic::Status::deadline_exceeded(format!(
                "{} did not answer within {within:?} (upstream {})",
                route.method,
                route.upstream.name()
            ));
            answered("deadline", exceeded(status, deadline.callers))
        };
        let now = Instant::now();
        if at <= now {
            return Box::pin(std::future::ready(Ok(out_of_time())));
        }
        req.headers_mut()
            .insert("grpc-timeout", grpc::encode_timeout(at - now));
        let answer = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(at, answer).await {
                Ok(r) => r,
                Err(_) => Ok(out_of_time()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{answering, ok_answer, routed, send};
    use std::convert::Infallible;
    use tonic::Code;

    /// Answers after `delay`, echoing the `grpc-timeout` it was sent.
    fn slow(delay: Duration) -> super::super::Next {
        tower::util::BoxCloneSyncService::new(tower::service_fn(
            move |req: Request<Body>| async move {
                tokio::time::sleep(delay).await;
                let mut resp = ok_answer(b"ok");
                if let Some(t) = req.headers().get("grpc-timeout") {
                    resp.headers_mut().insert("x-sent-timeout", t.clone());
                }
                if let Some(d) = req.extensions().get::<CallDeadline>() {
                    resp.headers_mut().insert(
                        "x-callers",
                        http::HeaderValue::from_static(if d.callers { "yes" } else { "no" }),
                    );
                }
                Ok::<_, Infallible>(resp)
            },
        ))
    }

    fn with_timeout(method: &str, t: &'static str) -> Request<Body> {
        let mut req = routed(method);
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static(t));
        req
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_the_callers_or_the_routes_and_a_tiny_one_costs_nothing() {
        let layer = DeadlineLayer::new(Duration::from_millis(5), Duration::from_secs(60));
        let mut svc = layer.layer(AttemptLayer.layer(slow(Duration::from_millis(100))));
        // The route's default (2 s for GetProduct): not the caller's.
        let (code, resp, _) = send(&mut svc, routed("GetProduct")).await;
        assert_eq!(code, Code::Ok);
        assert_eq!(resp.headers()["x-sent-timeout"], "2000000u");
        assert_eq!(resp.headers()["x-callers"], "no");
        // A shorter caller deadline is the caller's own.
        let (code, resp, _) = send(&mut svc, with_timeout("GetProduct", "500m")).await;
        assert_eq!(code, Code::Ok);
        assert_eq!(resp.headers()["x-sent-timeout"], "500000u");
        assert_eq!(resp.headers()["x-callers"], "yes");
        // Below the floor: answered at once, never sent.
        let (code, resp, _) = send(&mut svc, with_timeout("GetProduct", "1n")).await;
        assert_eq!(code, Code::DeadlineExceeded);
        assert!(resp.headers().get("x-sent-timeout").is_none());
        assert!(
            resp.extensions()
                .get::<discovery_kit::server::CallerDeadline>()
                .is_some()
        );
        // An upstream slower than the caller's deadline is cut at it.
        let started = Instant::now();
        let (code, resp, _) = send(&mut svc, with_timeout("GetProduct", "50m")).await;
        assert_eq!(code, Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert!(
            resp.extensions()
                .get::<discovery_kit::server::CallerDeadline>()
                .is_some(),
            "the caller's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_slower_than_the_routes_deadline_is_the_upstreams_fault() {
        let layer = DeadlineLayer::new(Duration::from_millis(5), Duration::from_secs(60));
        let mut svc = layer.layer(AttemptLayer.layer(slow(Duration::from_secs(3))));
        let started = Instant::now();
        let (code, resp, _) = send(&mut svc, routed("GetProduct")).await;
        assert_eq!(code, Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(
            resp.extensions()
                .get::<discovery_kit::server::CallerDeadline>()
                .is_none()
        );
        // A caller asking for more than the gateway's maximum gets the maximum.
        let layer = DeadlineLayer::new(Duration::from_millis(5), Duration::from_secs(1));
        let mut svc = layer.layer(AttemptLayer.layer(slow(Duration::from_secs(3))));
        let started = Instant::now();
        let (code, _, _) = send(&mut svc, with_timeout("IngestCatalog", "1H")).await;
        assert_eq!(code, Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // Streams without a caller deadline have none.
        let mut svc = layer.layer(AttemptLayer.layer(answering(|_| ok_answer(b"ok"))));
        assert_eq!(send(&mut svc, routed("IngestCatalog")).await.0, Code::Ok);
    }
}
