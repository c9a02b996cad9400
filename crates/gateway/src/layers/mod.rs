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
    /// How long an HTTP/1.1 caller may take to send the start of its body
    /// ([`read_first`]).
    pub body_timeout: std::time::Duration,
}

/// Most of an HTTP/1.1 body read before the stack sees the call.
const READ_FIRST: usize = 1 << 20;

/// An HTTP/1.1 caller (gRPC-Web) writes its body after the head, and a
/// refusal sent before the body is read ends the connection under it (Node
/// reports EPIPE instead of the refusal). So up to [`READ_FIRST`] bytes of
/// the body are read first, within `within`, whether it comes with a
/// `content-length` or chunked (connect-node's gRPC-Web transport); a longer
/// body goes on as what was read followed by the rest, unread.
async fn read_first(body: Body, within: std::time::Duration) -> Result<Body, tonic::Status> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut prefix = bytes::BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                prefix.extend_from_slice(&data);
                if prefix.len() > READ_FIRST {
                    return Ok(false);
                }
            }
        }
        Ok::<_, tonic::Status>(true)
    };
    let ended = match tokio::time::timeout(within, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(tonic::Status::cancelled(format!(
                "the request body stalled: not received within {} s",
                within.as_secs_f64()
            )));
        }
    };
    let prefix = prefix.freeze();
    if ended {
        return Ok(Body::new(http_body_util::Full::new(prefix)));
    }
    use futures::StreamExt;
    let first =
        futures::stream::once(
            async move { Ok::<_, tonic::Status>(http_body::Frame::data(prefix)) },
        );
    let rest = http_body_util::BodyStream::new(body);
    Ok(Body::new(http_body_util::StreamBody::new(
        first.chain(rest),
    )))
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
        if req.version() >= http::Version::HTTP_2 {
            return self.web.call(req);
        }
        let (mut web, within) = (self.web.clone(), self.body_timeout);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            match read_first(body, within).await {
                Ok(body) => web.call(Request::from_parts(parts, body)).await,
                Err(status) => Ok(grpc::error(status)),
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

#[cfg(test)]
mod read_first_tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunked(chunks: Vec<Bytes>) -> Body {
        let frames = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, tonic::Status>(http_body::Frame::data(c))),
        );
        Body::new(http_body_util::StreamBody::new(frames))
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunked_body_is_read_first_and_a_long_one_goes_on_whole() {
        let within = std::time::Duration::from_secs(5);
        // Short, chunked (no content-length): read whole before the stack.
        let body = read_first(
            chunked(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]),
            within,
        )
        .await
        .unwrap();
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            Some(4),
            "buffered"
        );
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcd");
        // Longer than READ_FIRST: what was read, then the rest, in order.
        let chunks: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 64 << 10])).collect();
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let body = read_first(chunked(chunks), within).await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes().to_vec(), whole);
        // A caller that stops sending: cut at the body timeout.
        let (_tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, tonic::Status>>(1);
        let stalled = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let e = read_first(stalled, within).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Cancelled);
        assert!(e.message().contains("stalled"), "{}", e.message());
    }
}
