//! The gateway as a stack of stages, each a tower service over
//! `http::Request<tonic::body::Body>` that may answer by itself (an error
//! status) or pass the call on:
//!
//! 1. [`Front`]: finds the route (UNIMPLEMENTED otherwise), measures the
//!    call, and runs the end-of-call accounting when the response's
//!    trailers go by;
//! 2. [`Authenticate`]: API key and scope ([`crate::auth`]);
//! 3. [`Admit`]: rate limits, then in-flight bounds ([`crate::limits`]);
//! 4. [`crate::proxy::Proxy`]: breaker, balancing, retries, deadline,
//!    forwarding.
//!
//! Stages share one [`Call`] per request (in the request's extensions):
//! the route, the principal, and what must happen when the call ends.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::{Request, Response};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::auth::{KeyRing, Principal};
use crate::grpc::{self, Observed};
use crate::limits::{Busy, InFlight, Limiter, Slot};
use crate::routes::{self, Route};

/// The rest of the stack.
pub type Next = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// A stage's answer.
pub type Reply = BoxFuture<'static, Response<Body>>;

/// A hook run when the call ends: its final status and, when capture was
/// asked for, the response body bytes.
pub type EndHook = Box<dyn FnOnce(Code, Option<&Bytes>) + Send>;

/// Per-call state shared by the stages.
#[derive(Default)]
pub struct CallState {
    /// The route.
    pub route: Option<&'static Route>,
    /// Who is calling.
    pub principal: Option<Principal>,
    /// In-flight slot, released at the end.
    pub slot: Option<Slot>,
    /// Hooks for the end of the call.
    pub hooks: Vec<EndHook>,
    /// Keep the response body for the hooks (up to this many bytes).
    pub capture: Option<usize>,
    /// What answered: `upstream`, `fallback`, or the stage that refused.
    pub answered_by: &'static str,
}

/// Shared per-call state.
pub type Call = Arc<Mutex<CallState>>;

/// One stage.
pub trait Stage: Send + Sync + 'static {
    /// Handles the call or passes it to `next`.
    fn call(&self, req: Request<Body>, next: Next) -> Reply;
}

/// A stage as a tower service.
#[derive(Clone)]
pub struct Staged {
    stage: Arc<dyn Stage>,
    next: Next,
}

impl Service<Request<Body>> for Staged {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fut = self.stage.call(req, self.next.clone());
        Box::pin(async move { Ok(fut.await) })
    }
}

/// Stacks `stages`, outermost first; the last one must answer by itself.
pub fn build(stages: Vec<Arc<dyn Stage>>) -> Next {
    let end = BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(grpc::error(tonic::Status::internal(
            "the last stage passed the call on",
        )))
    }));
    stages.into_iter().rev().fold(end, |next, stage| {
        BoxCloneSyncService::new(Staged { stage, next })
    })
}

/// The per-call state of a request.
pub fn call_of(req: &Request<Body>) -> Call {
    req.extensions().get::<Call>().cloned().unwrap_or_default()
}

/// Passes `req` on.
pub async fn pass(mut next: Next, req: Request<Body>) -> Response<Body> {
    match next.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Route, measurement and end-of-call accounting.
#[derive(Debug, Default)]
pub struct Front;

impl Stage for Front {
    fn call(&self, mut req: Request<Body>, next: Next) -> Reply {
        let Some(route) = routes::lookup(req.uri().path()) else {
            let path = req.uri().path().to_string();
            return Box::pin(async move {
                grpc::error(tonic::Status::unimplemented(format!(
                    "{path}: no such method on discovery.v1.Discovery"
                )))
            });
        };
        let call: Call = Arc::new(Mutex::new(CallState {
            route: Some(route),
            answered_by: "upstream",
            ..Default::default()
        }));
        req.extensions_mut().insert(call.clone());
        let started = Instant::now();
        Box::pin(async move {
            let resp = pass(next, req).await;
            let (parts, body) = resp.into_parts();
            let capture = call.lock().capture;
            let finish = move |code: Code, body: Option<&Bytes>| {
                let mut state = std::mem::take(&mut *call.lock());
                for hook in state.hooks.drain(..) {
                    hook(code, body);
                }
                drop(state.slot.take());
                let code_name = grpc::code_name(code);
                metrics::counter!("discovery_gateway_requests_total", "method" => route.method, "code" => code_name, "by" => state.answered_by)
                    .increment(1);
                metrics::histogram!("discovery_gateway_request_duration_seconds", "method" => route.method, "by" => state.answered_by)
                    .record(started.elapsed().as_secs_f64());
            };
            // Trailers-only answers (errors, refusals) end here.
            if let Some(code) = grpc::status_of(&parts.headers) {
                finish(code, None);
                return Response::from_parts(parts, body);
            }
            let observed = match capture {
                None => Observed::new(body, Box::new(move |code| finish(code, None))),
                Some(limit) => {
                    let buf = Arc::new(Mutex::new(Some(BytesMut::new())));
                    let seen = buf.clone();
                    Observed::new(
                        body,
                        Box::new(move |code| {
                            let bytes = seen.lock().take().map(BytesMut::freeze);
                            finish(code, bytes.as_ref());
                        }),
                    )
                    .capturing(buf, limit)
                }
            };
            Response::from_parts(parts, Body::new(observed))
        })
    }
}

/// API key and scope.
#[derive(Debug)]
pub struct Authenticate {
    /// The keys.
    pub keys: Arc<KeyRing>,
    /// Proxies whose forwarding headers name the client.
    pub trusted: Arc<crate::client_addr::TrustedProxies>,
}

fn peer(req: &Request<Body>) -> Option<IpAddr> {
    req.extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| a.ip())
}

impl Stage for Authenticate {
    fn call(&self, mut req: Request<Body>, next: Next) -> Reply {
        let call = call_of(&req);
        let Some(route) = call.lock().route else {
            return Box::pin(async { grpc::error(tonic::Status::internal("no route")) });
        };
        let client = crate::client_addr::client_ip(peer(&req), req.headers(), &self.trusted);
        let span = tracing::info_span!(
            "gateway.auth",
            discovery.client = tracing::field::Empty,
            discovery.tier = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let admitted = span.in_scope(|| self.keys.admit(req.headers(), route, client));
        match &admitted {
            Ok(p) => {
                span.record("discovery.client", p.key.client.as_str());
                span.record("discovery.tier", p.tier.name());
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        drop(span);
        match admitted {
            Ok(p) => {
                // The key stops here: upstreams and their logs never see it.
                req.headers_mut().remove("x-api-key");
                req.headers_mut().remove(http::header::AUTHORIZATION);
                set_identity(req.headers_mut(), &p);
                call.lock().principal = Some(p);
                Box::pin(pass(next, req))
            }
            Err(status) => {
                call.lock().answered_by = "auth";
                Box::pin(async move { grpc::error(status) })
            }
        }
    }
}

/// Replaces whatever identity headers the caller sent with the ones the
/// key proves: `x-discovery-client` (the key's client) and, for a key of
/// the authenticated tier that names a shopper, `x-discovery-user`.
/// Upstreams take the user for personalisation, interactions and session
/// ownership from these, never from a request body a browser controls.
fn set_identity(headers: &mut http::HeaderMap, p: &Principal) {
    use discovery_kit::internal::{CALLER_HEADER, IDENTITY_HEADERS, TOKEN_HEADER};
    for h in IDENTITY_HEADERS
        .iter()
        .chain(&[CALLER_HEADER, TOKEN_HEADER])
    {
        headers.remove(*h);
    }
    let client = http::HeaderValue::from_str(&p.key.client)
        .or_else(|_| http::HeaderValue::from_str(&format!("key:{}", p.key.id)));
    if let Ok(v) = client {
        headers.insert("x-discovery-client", v);
    }
    if p.tier == crate::auth::Tier::Authenticated
        && let Some(user) = p.requester.strip_prefix("u:")
        && let Ok(v) = http::HeaderValue::from_str(user)
    {
        headers.insert("x-discovery-user", v);
    }
    if let Some(sources) = p.key.sources_header() {
        headers.insert("x-discovery-sources", sources);
    }
}

/// Rate limits and in-flight bounds.
#[derive(Debug)]
pub struct Admit {
    /// Rate limiter.
    pub limiter: Limiter,
    /// In-flight bounds.
    pub in_flight: Arc<InFlight>,
}

impl Stage for Admit {
    fn call(&self, req: Request<Body>, next: Next) -> Reply {
        let call = call_of(&req);
        let (route, principal) = {
            let c = call.lock();
            (c.route, c.principal.clone())
        };
        let (Some(route), Some(principal)) = (route, principal) else {
            return Box::pin(async {
                grpc::error(tonic::Status::internal("admission before authentication"))
            });
        };
        let limiter = self.limiter.clone();
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            if limiter.config().enabled
                && let Err(refused) = {
                    use tracing::Instrument;
                    let span = tracing::info_span!(
                        "gateway.limit",
                        discovery.class = route.class.name(),
                        discovery.limited = tracing::field::Empty,
                    );
                    let r = limiter
                        .admit(&principal, route.class)
                        .instrument(span.clone())
                        .await;
                    span.record("discovery.limited", r.is_err());
                    r
                }
            {
                call.lock().answered_by = "rate_limit";
                let secs = refused.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                metrics::counter!("discovery_gateway_rate_limited_total", "method" => route.method)
                    .increment(1);
                let which = match refused.limit.split_once(":c:") {
                    Some((_, client)) => format!("client {client}'s share of the global rate"),
                    None => refused
                        .limit
                        .split(':')
                        .next_back()
                        .unwrap_or("calls")
                        .to_string(),
                };
                return grpc::error_with(
                    tonic::Status::resource_exhausted(format!(
                        "rate limit reached ({which}); retry in {secs} s"
                    )),
                    &[
                        ("retry-after", secs.to_string()),
                        ("x-discovery-limit", refused.limit.clone()),
                    ],
                );
            }
            // A unary body is read whole before the call takes an
            // in-flight slot: a slow sender holds no slot others need, and
            // the body is bounded by its route's limit and a timeout.
            let req = if route.streaming {
                req
            } else {
                match read_unary(req, route, limiter.config().body_timeout).await {
                    Ok(r) => r,
                    Err(status) => {
                        call.lock().answered_by = "caller_body";
                        return grpc::error(status);
                    }
                }
            };
            match in_flight.enter_for(route.class, &principal.key) {
                Ok(slot) => {
                    call.lock().slot = Some(slot);
                    pass(next, req).await
                }
                Err(busy) => {
                    call.lock().answered_by = "shed";
                    metrics::counter!(
                        "discovery_gateway_shed_total",
                        "method" => route.method,
                        "path" => route.path
                    )
                    .increment(1);
                    // RESOURCE_EXHAUSTED, gRPC's code for a server out of
                    // resources for now (UNAVAILABLE is kept for "no replica
                    // can answer"); `grpc-retry-pushback-ms` is what gRPC
                    // clients with a retry policy honour, `retry-after` is
                    // for everyone else.
                    let pushback = [
                        ("retry-after", "1".to_string()),
                        ("grpc-retry-pushback-ms", "1000".to_string()),
                    ];
                    match busy {
                        Busy::Overloaded(n) => grpc::error_with(
                            tonic::Status::resource_exhausted(format!(
                                "gateway at capacity ({n} calls in flight); load shed, retry in 1 s"
                            )),
                            &pushback,
                        ),
                        Busy::Client(n) => grpc::error_with(
                            tonic::Status::resource_exhausted(format!(
                                "client {:?} already has {n} calls in flight on this gateway (its share of the gateway); load shed, retry in 1 s",
                                principal.key.client
                            )),
                            &pushback,
                        ),
                        Busy::Method(n) => grpc::error_with(
                            tonic::Status::resource_exhausted(format!(
                                "{} already has {n} calls in flight on this gateway; load shed, retry in 1 s",
                                route.method
                            )),
                            &pushback,
                        ),
                    }
                }
            }
        })
    }
}

/// Reads a unary call's body whole (at most the route's limit, within
/// `timeout`, four times that for a photo) and gives the request back with
/// the bytes in memory.
async fn read_unary(
    req: Request<Body>,
    route: &'static Route,
    timeout: std::time::Duration,
) -> Result<Request<Body>, tonic::Status> {
    use http_body_util::BodyExt;
    let limit = route.max_body.unwrap_or(routes::SMALL_BODY);
    let timeout = if route.max_body == Some(routes::PHOTO_BODY) {
        timeout * 4
    } else {
        timeout
    };
    let (parts, body) = req.into_parts();
    let fault = grpc::CallerFault::default();
    let read = grpc::CallerBody::new(body, route.method, Some(limit), timeout, fault).collect();
    let bytes = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(status)) => return Err(status),
        Err(_) => return Err(grpc::too_slow(route.method, timeout)),
    };
    Ok(Request::from_parts(
        parts,
        Body::new(http_body_util::Full::new(bytes)),
    ))
}

/// The whole stack as the public service (`discovery.v1.Discovery`):
/// calls from browsers (an `Origin` header, or gRPC-Web) go through the
/// CORS and gRPC-Web translation in `web`; native gRPC calls skip both (the
/// CORS layer would add `vary` headers to every answer).
#[derive(Clone)]
pub struct Discovery {
    /// Native gRPC.
    pub native: Next,
    /// Browsers.
    pub web: Next,
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
        let web = req.headers().contains_key(http::header::ORIGIN)
            || req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web"));
        if web {
            self.web.call(req)
        } else {
            self.native.call(req)
        }
    }
}
