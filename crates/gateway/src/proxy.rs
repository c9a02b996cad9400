//! The last stage: forwards the call's bytes to a replica of the upstream,
//! under its method's circuit breaker and deadline, retrying idempotent
//! calls on another replica within a retry budget, and serving the last
//! good response when the breaker is open and one is kept.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;

use crate::breaker::{Breaker, BreakerConfig, is_failure};
use crate::grpc;
use crate::routes::{ROUTES, Route, Upstream};
use crate::stack::{Next, Reply, Stage, call_of};
use crate::upstream::Pool;

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Longest deadline honoured (callers asking more get this).
    pub max_deadline: Duration,
    /// Shortest caller deadline forwarded: a call whose `grpc-timeout` is
    /// below it is answered DEADLINE_EXCEEDED at once, without touching an
    /// upstream (no useful answer fits in it, and it must cost nothing).
    pub min_deadline: Duration,
    /// Extra attempts for idempotent calls.
    pub retries: u32,
    /// A client stream must send a frame at least this often.
    pub stream_idle: Duration,
    /// Signs upstream calls as the gateway.
    pub internal: Option<discovery_kit::internal::InternalAuth>,
    /// Breakers.
    pub breaker: BreakerConfig,
    /// How long a fallback response is kept.
    pub fallback_ttl: Duration,
    /// Fallback store budget, bytes.
    pub fallback_bytes: u64,
    /// Largest response kept for fallback.
    pub fallback_max_response: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_deadline: Duration::from_secs(60),
            min_deadline: Duration::from_millis(5),
            retries: 2,
            stream_idle: Duration::from_secs(10),
            internal: None,
            breaker: BreakerConfig::default(),
            fallback_ttl: Duration::from_secs(600),
            fallback_bytes: 64 << 20,
            fallback_max_response: 1 << 20,
        }
    }
}

/// Retries may add at most a fifth of the calls (plus a reserve of 10):
/// a failing upstream is not hit with three times the load. Counted in
/// tenths of a retry.
#[derive(Debug)]
pub struct RetryBudget {
    tenths: Mutex<u32>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            tenths: Mutex::new(100),
        }
    }
}

impl RetryBudget {
    /// Every call adds 0.2 of a retry (up to 100 retries).
    pub fn deposit(&self) {
        let mut t = self.tenths.lock();
        *t = (*t + 2).min(1000);
    }

    /// A retry takes one if there is one.
    pub fn withdraw(&self) -> bool {
        let mut t = self.tenths.lock();
        if *t >= 10 {
            *t -= 10;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Kept {
    encoding: Option<HeaderValue>,
    body: Bytes,
    at: Instant,
}

/// A kept response younger than this is not captured again: repeated
/// requests (the common case for reads) cost one copy per interval, not
/// one per call.
const RECAPTURE_AFTER: Duration = Duration::from_secs(30);

struct Inner {
    pools: HashMap<Upstream, Arc<Pool>>,
    breakers: HashMap<&'static str, Arc<Breaker>>,
    budget: RetryBudget,
    kept: moka::sync::Cache<u64, Arc<Kept>>,
    config: ProxyConfig,
}

/// The forwarding service.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proxy")
    }
}

/// Headers that belong to one hop (HTTP/1.1 from gRPC-Web) and must not
/// be forwarded over HTTP/2.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// A DEADLINE_EXCEEDED the caller's own deadline caused: marked so that
/// it is not counted as a server fault (`kit::server::CallerDeadline`).
fn callers_deadline_error(status: tonic::Status) -> Response<Body> {
    let mut resp = grpc::error(status);
    resp.extensions_mut()
        .insert(discovery_kit::server::CallerDeadline);
    resp
}

fn fallback_key(route: &Route, body: &Bytes) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    route.method.hash(&mut h);
    body.hash(&mut h);
    h.finish()
}

fn kept_response(k: &Kept) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(Frame::data(k.body.clone())),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut resp = Response::new(Body::new(StreamBody::new(frames)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Some(e) = &k.encoding {
        resp.headers_mut().insert("grpc-encoding", e.clone());
    }
    resp.headers_mut().insert(
        "x-discovery-fallback",
        HeaderValue::from_static("circuit-open"),
    );
    resp
}

impl Proxy {
    /// A proxy over the upstream pools.
    pub fn new(pools: Vec<Arc<Pool>>, config: ProxyConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                pools: pools.into_iter().map(|p| (p.upstream, p)).collect(),
                breakers: ROUTES
                    .iter()
                    .map(|r| (r.method, Arc::new(Breaker::new(config.breaker))))
                    .collect(),
                budget: RetryBudget::default(),
                kept: moka::sync::Cache::builder()
                    .max_capacity(config.fallback_bytes)
                    .weigher(|_, v: &Arc<Kept>| v.body.len().min(u32::MAX as usize) as u32 + 64)
                    .time_to_live(config.fallback_ttl)
                    .build(),
                config,
            }),
        }
    }

    /// The breaker state of a method ("closed", "open", "half-open").
    pub fn breaker_state(&self, method: &str) -> Option<&'static str> {
        self.inner.breakers.get(method).map(|b| b.state())
    }

    /// A pool.
    pub fn pool(&self, upstream: Upstream) -> Option<&Arc<Pool>> {
        self.inner.pools.get(&upstream)
    }

    async fn forward(self, req: Request<Body>) -> Response<Body> {
        let call = call_of(&req);
        let Some(route) = call.lock().route else {
            return grpc::error(tonic::Status::internal("no route"));
        };
        let inner = &self.inner;
        let Some(pool) = inner.pools.get(&route.upstream).cloned() else {
            return grpc::error(tonic::Status::unavailable(format!(
                "no {} upstream configured",
                route.upstream.name()
            )));
        };
        let started = Instant::now();
        let callers = req
            .headers()
            .get("grpc-timeout")
            .and_then(grpc::parse_timeout);
        if let Some(d) = callers
            && d < inner.config.min_deadline
        {
            call.lock().answered_by = "deadline_floor";
            return callers_deadline_error(tonic::Status::deadline_exceeded(format!(
                "grpc-timeout of {d:?} is below this gateway's floor of {:?}; give the call at least that long",
                inner.config.min_deadline
            )));
        }
        let deadline = callers
            .or(route.default_deadline)
            .map(|d| d.min(inner.config.max_deadline));
        // Whose deadline is it? A DEADLINE_EXCEEDED under the caller's own
        // (shorter) deadline says nothing about the upstream's health.
        let callers_deadline = match (callers, route.default_deadline) {
            (Some(c), Some(own)) => c < own.min(inner.config.max_deadline),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let verdict = move |code: Code| match code {
            Code::DeadlineExceeded if callers_deadline => None,
            c => is_failure(c),
        };
        let (mut parts, body) = req.into_parts();
        // Unary calls arrive buffered (`stack::Admit` read them whole), so
        // idempotent ones can be sent again. A stream's body is watched: a
        // caller that stalls or breaks its own stream is the caller's
        // fault, never the upstream's.
        let fault = grpc::CallerFault::default();
        let (buffered, mut streaming_body) = if !route.streaming {
            match Limited::new(body, discovery_proto::MAX_REQUEST_BYTES)
                .collect()
                .await
            {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(e) => {
                    return grpc::error(tonic::Status::invalid_argument(format!(
                        "request body could not be read: {e}"
                    )));
                }
            }
        } else {
            let watched = grpc::CallerBody::new(
                body,
                route.method,
                route.max_body,
                inner.config.stream_idle,
                fault.clone(),
            );
            (None, Some(Body::new(watched)))
        };
        let key = buffered
            .as_ref()
            .filter(|_| route.fallback)
            .map(|b| fallback_key(route, b));
        let capture = key.filter(|k| {
            inner
                .kept
                .get(k)
                .is_none_or(|kept| kept.at.elapsed() >= RECAPTURE_AFTER)
        });

        let breaker = &inner.breakers[route.method];
        let ticket = match breaker.allow() {
            Ok(p) => p,
            Err(wait) => {
                if let Some(kept) = key.and_then(|k| inner.kept.get(&k)) {
                    call.lock().answered_by = "fallback";
                    metrics::counter!("discovery_gateway_fallbacks_total", "method" => route.method).increment(1);
                    return kept_response(&kept);
                }
                call.lock().answered_by = "breaker";
                return grpc::error_with(
                    tonic::Status::unavailable(format!(
                        "{} is failing upstream (circuit open); retry in {} s",
                        route.method,
                        wait.as_secs().max(1)
                    )),
                    &[("retry-after", wait.as_secs().max(1).to_string())],
                );
            }
        };

        for h in HOP_BY_HOP {
            parts.headers.remove(h);
        }
        discovery_kit::internal::sign(
            inner.config.internal.as_ref(),
            "gateway",
            &mut parts.headers,
        );
        inner.budget.deposit();
        // Idempotent calls are retried on another replica after any
        // upstream failure; the others only when the upstream provably
        // never took the call (`never_sent`: refused connection, refused
        // stream, a stream above its GOAWAY), as gRPC's transparent retry
        // does: a replica that is draining must not fail a face analysis.
        let attempts = if buffered.is_some() {
            1 + inner.config.retries
        } else {
            1
        };
        let mut leaving = None;
        let mut out_of_time = false;
        let mut last_error = String::from("no attempt made");
        for attempt in 0..attempts {
            if attempt > 0 && !inner.budget.withdraw() {
                last_error.push_str(" (retry budget spent)");
                break;
            }
            let Some(replica) = pool.pick(leaving.as_ref()) else {
                last_error = format!("no {} replicas", route.upstream.name());
                break;
            };
            let remaining = match deadline {
                Some(d) => match d.checked_sub(started.elapsed()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        out_of_time = true;
                        break;
                    }
                },
                None => None,
            };
            let mut out = Request::new(match (&buffered, streaming_body.take()) {
                (Some(b), _) => Body::new(http_body_util::Full::new(b.clone())),
                (None, Some(b)) => b,
                (None, None) => Body::empty(),
            });
            *out.method_mut() = parts.method.clone();
            *out.version_mut() = http::Version::HTTP_2;
            *out.headers_mut() = parts.headers.clone();
            if let Some(r) = remaining {
                out.headers_mut()
                    .insert("grpc-timeout", grpc::encode_timeout(r));
            }
            let span = discovery_kit::telemetry::client_span(route.path, &replica.url);
            discovery_kit::telemetry::inject_span_headers(&span, out.headers_mut());
            let send = replica.send(out, route.path).instrument(span.clone());
            let guard = replica.start();
            let sent = Instant::now();
            let result = match remaining {
                Some(r) => match tokio::time::timeout(r, send).await {
                    Ok(r) => r,
                    Err(_) => {
                        ticket.record(verdict(Code::DeadlineExceeded));
                        call.lock().answered_by = "deadline";
                        let status = tonic::Status::deadline_exceeded(format!(
                            "{} did not answer within {:?} (upstream {})",
                            route.method,
                            deadline.unwrap_or_default(),
                            replica.url
                        ));
                        return if callers_deadline {
                            callers_deadline_error(status)
                        } else {
                            grpc::error(status)
                        };
                    }
                },
                None => send.await,
            };
            match &result {
                Ok(resp) => {
                    let code = grpc::status_of(resp.headers()).unwrap_or(Code::Ok);
                    span.record("rpc.grpc.status_code", code as i32);
                }
                Err(_) => {
                    span.record("rpc.grpc.status_code", Code::Unavailable as i32);
                    span.record("otel.status_code", "ERROR");
                }
            }
            drop(span);
            if let Some(status) = fault.get() {
                // The caller's own body failed: nothing to learn about the
                // upstream, nothing to retry.
                ticket.record(None);
                call.lock().answered_by = "caller_body";
                return grpc::error(status.clone());
            }
            match result {
                Err(e) => {
                    replica.failed(pool.config());
                    last_error = format!("{}: {e}", replica.url);
                    tracing::debug!(method = route.method, replica = %replica.url, error = %e, attempt, "upstream call failed");
                    if !route.idempotent && !discovery_kit::client::never_sent(&*e) {
                        break; // it may have run: not ours to repeat
                    }
                    leaving = Some(replica);
                    continue;
                }
                Ok(resp) => {
                    replica.observe_latency(sent.elapsed());
                    let early = grpc::status_of(resp.headers());
                    if early == Some(Code::Unavailable)
                        && route.idempotent
                        && attempt + 1 < attempts
                    {
                        replica.failed(pool.config());
                        last_error = format!("{}: UNAVAILABLE", replica.url);
                        leaving = Some(replica);
                        continue;
                    }
                    let encoding = resp.headers().get("grpc-encoding").cloned();
                    let this = self.clone();
                    let mut state = call.lock();
                    if capture.is_some() {
                        state.capture = Some(inner.config.fallback_max_response);
                    }
                    state
                        .hooks
                        .push(Box::new(move |code: Code, body: Option<&Bytes>| {
                            drop(guard);
                            if fault.get().is_some() {
                                // Cut short by the caller's own body.
                                ticket.record(None);
                            } else {
                                if code == Code::Unavailable {
                                    replica.failed(pool.config());
                                } else if code != Code::Cancelled {
                                    replica.succeeded();
                                }
                                ticket.record(verdict(code));
                            }
                            if let (Code::Ok, Some(k), Some(b)) = (code, capture, body) {
                                this.inner.kept.insert(
                                    k,
                                    Arc::new(Kept {
                                        encoding,
                                        body: b.clone(),
                                        at: Instant::now(),
                                    }),
                                );
                            }
                        }));
                    drop(state);
                    return resp;
                }
            }
        }
        if out_of_time {
            // The deadline ran out before (another) attempt: the replicas
            // tried failed, unless the deadline was the caller's own.
            ticket.record(verdict(Code::DeadlineExceeded).map(|_| true));
            call.lock().answered_by = "deadline";
            let status = tonic::Status::deadline_exceeded(format!(
                "{} did not answer within {:?}: {last_error}",
                route.method,
                deadline.unwrap_or_default()
            ));
            return if callers_deadline {
                callers_deadline_error(status)
            } else {
                grpc::error(status)
            };
        }
        ticket.record(Some(true));
        call.lock().answered_by = "upstream_unavailable";
        grpc::error(tonic::Status::unavailable(format!(
            "{} is unavailable: {last_error}",
            route.upstream.name()
        )))
    }
}

/// The last stage: it never calls `next`.
impl Stage for Proxy {
    fn call(&self, req: Request<Body>, _next: Next) -> Reply {
        let this = self.clone();
        Box::pin(async move { this.forward(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_is_a_fifth_of_calls_plus_a_reserve() {
        let b = RetryBudget::default();
        let mut retries = 0;
        for _ in 0..100 {
            b.deposit();
            while b.withdraw() {
                retries += 1;
            }
        }
        assert_eq!(retries, 30, "10 reserve + 100 x 0.2");
    }
}
