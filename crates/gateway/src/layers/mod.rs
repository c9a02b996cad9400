//! The gateway as tower layers over `http::Request<tonic::body::Body>`,
//! outermost first:
//!
//! | layer | module | refuses with |
//! |---|---|---|
//! | route, and the call's metrics | [`route`] | UNIMPLEMENTED |
//! | API key and scope | [`authenticate`] | UNAUTHENTICATED, PERMISSION_DENIED |
//! | rate limits | [`rate`] | RESOURCE_EXHAUSTED + `retry-after` |
//! | the caller's body, bounded | [`body`] | RESOURCE_EXHAUSTED, CANCELLED |
//! | in-flight bounds | [`concurrency`] | RESOURCE_EXHAUSTED + pushback |
//! | the call's deadline | [`deadline::DeadlineLayer`] | DEADLINE_EXCEEDED (below the floor) |
//! | last good answer while a circuit is open | [`fallback`] | (answers) |
//! | per-method circuit breaker | [`breaker`] | UNAVAILABLE + `retry-after` |
//! | retries on another replica, within a budget | [`retry`] | UNAVAILABLE |
//! | each attempt's share of the deadline | [`deadline::AttemptLayer`] | DEADLINE_EXCEEDED |
//! | balancing over the upstream's replicas | [`balance`] | (transport errors) |
//!
//! What a layer learns about a call it hands inward as a typed request
//! extension: the [`Route`] (`&'static Route`), the caller's
//! [`Principal`](crate::auth::Principal), the buffered unary body
//! ([`Buffered`]), the caller-body fault cell ([`CallerFault`]), the
//! deadline ([`CallDeadline`]), the replica a retry leaves ([`Avoid`]).
//! What it says about its answer goes outward as a response extension
//! ([`AnsweredBy`], [`CircuitOpen`], [`ServedBy`]). Work due when the call
//! ends (releasing a slot, a breaker's verdict, keeping a fallback copy,
//! metrics) rides on the response body ([`crate::grpc::on_end`]).
//!
//! Every layer is always ready (`poll_ready` is `Ready`): admission
//! happens inside `call`, where the refusal can say why.

pub mod authenticate;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod concurrency;
pub mod deadline;
pub mod fallback;
pub mod rate;
pub mod retry;
pub mod route;

#[cfg(test)]
mod testing;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::auth::KeyRing;
use crate::client_addr::TrustedProxies;
use crate::config::ProxyConfig;
use crate::grpc;
use crate::limits::{InFlight, Limiter};
use crate::routes::Route;

pub use crate::grpc::CallerFault;

/// The whole stack, boxed.
pub type Next = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// A layer's answer.
pub type Reply = BoxFuture<'static, Result<Response<Body>, Infallible>>;

/// What every layer but the last wraps: a service that always answers
/// (refusals are gRPC statuses, never `Err`).
pub trait Inner:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Inner for T where
    T: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Response extension: what answered (the `by` label of the gateway's
/// request metrics). Absent means the upstream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredBy(pub &'static str);

/// Request extension: a unary call's body, read whole by [`body`] (so a
/// retry can send it again and [`fallback`] can key on it).
#[derive(Debug, Clone)]
pub struct Buffered(pub Bytes);

/// Request extension: when the call must be answered, set by
/// [`deadline::DeadlineLayer`].
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline {
    /// The instant, when the call has a deadline.
    pub at: Option<tokio::time::Instant>,
    /// The deadline as granted (for messages).
    pub within: Option<std::time::Duration>,
    /// The deadline is the caller's own (shorter than the route's): a
    /// DEADLINE_EXCEEDED under it says nothing about the upstream.
    pub callers: bool,
}

/// Request extension: the replica a retry is leaving (the balancer picks
/// another when there is one).
#[derive(Debug, Clone)]
pub struct Avoid(pub Arc<crate::upstream::Replica>);

/// Response extension: the replica that answered.
#[derive(Debug, Clone)]
pub struct ServedBy(pub Arc<crate::upstream::Replica>);

/// Response extension: the breaker refused the call (a fallback may
/// answer instead).
#[derive(Debug, Clone, Copy)]
pub struct CircuitOpen;

/// The route a call was given by [`route`]; an INTERNAL answer when a
/// layer is used without it (a stack built in the wrong order).
pub(crate) fn route_of(req: &Request<Body>) -> Option<&'static Route> {
    req.extensions().get::<&'static Route>().copied()
}

/// The answer of a layer used without [`route_of`]'s route.
pub(crate) fn unrouted() -> Response<Body> {
    grpc::error(tonic::Status::internal(
        "a gateway layer ran before routing",
    ))
}

/// `resp` marked as answered by `by`.
pub(crate) fn answered(by: &'static str, mut resp: Response<Body>) -> Response<Body> {
    resp.extensions_mut().insert(AnsweredBy(by));
    resp
}

/// A ready answer.
pub(crate) fn ready(resp: Response<Body>) -> Reply {
    Box::pin(std::future::ready(Ok(resp)))
}

/// Calls `inner` (always ready, never `Err`) and boxes its answer.
pub(crate) fn pass<S: Inner>(inner: &mut S, req: Request<Body>) -> Reply {
    Box::pin(inner.call(req))
}

/// Awaits `inner`'s answer.
pub(crate) async fn answer<S: Inner>(mut inner: S, req: Request<Body>) -> Response<Body> {
    match inner.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// What the stack is built from.
pub struct Parts {
    /// API keys.
    pub keys: Arc<KeyRing>,
    /// Proxies whose forwarding headers name the client.
    pub trusted: Arc<TrustedProxies>,
    /// Rate limits.
    pub limiter: Limiter,
    /// In-flight bounds.
    pub in_flight: Arc<InFlight>,
    /// Per-method breakers.
    pub breakers: Arc<breaker::Breakers>,
    /// The replica pools.
    pub pools: balance::Pools,
    /// Forwarding settings.
    pub proxy: ProxyConfig,
}

/// The stack, outermost layer first.
pub fn stack(p: Parts) -> Next {
    let body_timeout = p.limiter.config().body_timeout;
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(route::RouteLayer)
            .layer(authenticate::AuthLayer::new(p.keys, p.trusted))
            .layer(rate::RateLayer::new(p.limiter))
            .layer(body::BodyLayer::new(body_timeout, p.proxy.stream_idle))
            .layer(concurrency::ConcurrencyLayer::new(p.in_flight))
            .layer(deadline::DeadlineLayer::new(
                p.proxy.min_deadline,
                p.proxy.max_deadline,
            ))
            .layer(fallback::FallbackLayer::new(&p.proxy))
            .layer(breaker::BreakerLayer::new(p.breakers))
            .layer(retry::RetryLayer::new(p.proxy.retries))
            .layer(deadline::AttemptLayer)
            .service(balance::Balance::new(p.pools, p.proxy.internal)),
    )
}

/// The whole stack as the public service (`discovery.v1.Discovery`):
/// calls from browsers (an `Origin` header, or gRPC-Web) go through the
/// CORS and gRPC-Web translation in `web`; Connect calls (a JSON or binary
/// content type) through CORS and [`crate::connect`]; native gRPC calls
/// skip all of it (the CORS layer would add `vary` headers to every answer).
#[derive(Clone)]
pub struct Discovery {
    /// Native gRPC.
    pub native: Next,
    /// Browsers.
    pub web: Next,
    /// Connect unary calls (JSON or binary over HTTP/1.1 or HTTP/2).
    pub connect: Next,
    /// How long an HTTP/1.1 caller may take to send a small body
    /// ([`Discovery::read_first`]).
    pub body_timeout: std::time::Duration,
}

/// Largest HTTP/1.1 body read before the stack sees the call.
const READ_FIRST: u64 = 1 << 20;

impl Discovery {
    /// An HTTP/1.1 caller (gRPC-Web) writes its body after the head, and a
    /// refusal sent before the body is read ends the connection under it
    /// (Node reports EPIPE instead of the refusal). So a small body (at most
    /// [`READ_FIRST`] by `content-length`, which gRPC-Web clients send) is
    /// read first, within the body timeout; larger ones go on unread.
    fn read_first(&self, req: &Request<Body>) -> bool {
        req.version() < http::Version::HTTP_2
            && req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n <= READ_FIRST)
    }
}

impl tonic::server::NamedService for Discovery {
    const NAME: &'static str = "discovery.v1.Discovery";
}

impl Service<Request<Body>> for Discovery {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <Next as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both stacks are always ready (admission happens inside).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if crate::connect::Codec::of(req.headers()).is_some() {
            return self.connect.call(req);
        }
        let web = req.headers().contains_key(http::header::ORIGIN)
            || req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web"));
        if !web {
            return self.native.call(req);
        }
        if !self.read_first(&req) {
            return self.web.call(req);
        }
        let (mut web, within) = (self.web.clone(), self.body_timeout);
        Box::pin(async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let read = http_body_util::Limited::new(body, READ_FIRST as usize).collect();
            match tokio::time::timeout(within, read).await {
                Ok(Ok(c)) => {
                    let body = Body::new(http_body_util::Full::new(c.to_bytes()));
                    web.call(Request::from_parts(parts, body)).await
                }
                _ => Ok(grpc::error(tonic::Status::cancelled(format!(
                    "the request body did not arrive whole within {} s (content-length at most {READ_FIRST})",
                    within.as_secs_f64()
                )))),
            }
        })
    }
}

/// The `Service` boilerplate of a layer whose service is `$svc<S>` with
/// an inherent `fn serve(&mut self, req) -> Reply`.
macro_rules! always_ready {
    ($svc:ident) => {
        impl<S: $crate::layers::Inner> tower::Service<http::Request<tonic::body::Body>>
            for $svc<S>
        {
            type Response = http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = $crate::layers::Reply;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
                self.serve(req)
            }
        }
    };
}
pub(crate) use always_ready;
