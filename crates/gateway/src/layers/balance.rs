//! The innermost service: sends an attempt to one replica of the route's
//! upstream ([`crate::upstream::Pool::pick`]: power of two choices by
//! latency and load, skipping unhealthy and ejected replicas and the one a
//! retry leaves), signed as the gateway, traced as a client span, and
//! keeps each replica's record (latency, failures, in-flight) until the
//! answer ends. A call that reached no replica is an [`Unreached`] error
//! for [`super::retry`] to judge.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::Service;
use tracing::Instrument;

use super::{Avoid, CallerFault, ServedBy, route_of};
use crate::grpc;
use crate::routes::Upstream;
use crate::upstream::{Pool, Replica};

/// The pools, one per upstream.
pub type Pools = Arc<HashMap<Upstream, Arc<Pool>>>;

/// Headers that belong to one hop (HTTP/1.1 from gRPC-Web) and must not
/// be forwarded over HTTP/2 (RFC 9113 §8.2.2; `host` becomes `:authority`).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Removes the hop's own headers: the fixed list, the ones `connection`
/// names, and `te` unless it is `trailers` (the one value HTTP/2 allows; h2
/// refuses to send any other, which would fail the call).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| http::HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|h| h != http::header::TE)
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        headers.remove(http::header::TE);
    }
}

/// An attempt that got no answer from a replica.
#[derive(Debug, thiserror::Error)]
#[error("{}{error}", replica.as_ref().map(|r| format!("{}: ", r.url)).unwrap_or_default())]
pub struct Unreached {
    /// The replica tried, if one was.
    pub replica: Option<Arc<Replica>>,
    /// What went wrong.
    pub error: String,
    /// The replica provably never took the call (safe to send again).
    pub never_sent: bool,
}

impl Unreached {
    /// An attempt that failed at `replica` (or before choosing one).
    pub fn new(replica: Option<Arc<Replica>>, error: impl Into<String>, never_sent: bool) -> Self {
        Self {
            replica,
            error: error.into(),
            never_sent,
        }
    }
}

/// Sends attempts to replicas.
#[derive(Clone)]
pub struct Balance {
    pools: Pools,
    internal: Option<discovery_kit::internal::InternalAuth>,
}

impl std::fmt::Debug for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("upstreams", &self.pools.len())
            .finish()
    }
}

impl Balance {
    /// Over `pools`, signing calls with `internal` when set.
    pub fn new(pools: Pools, internal: Option<discovery_kit::internal::InternalAuth>) -> Self {
        Self { pools, internal }
    }
}

impl Service<Request<Body>> for Balance {
    type Response = Response<Body>;
    type Error = Unreached;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Unreached>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Unreached>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(route) = route_of(&req) else {
            return Box::pin(std::future::ready(Ok(super::unrouted())));
        };
        let Some(pool) = self.pools.get(&route.upstream).cloned() else {
            let error = format!("no {} upstream configured", route.upstream.name());
            return Box::pin(std::future::ready(Err(Unreached::new(None, error, true))));
        };
        let leaving = req.extensions().get::<Avoid>().map(|a| a.0.clone());
        let Some(replica) = pool.pick(leaving.as_ref()) else {
            let error = format!("no {} replicas", route.upstream.name());
            return Box::pin(std::future::ready(Err(Unreached::new(None, error, true))));
        };
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        discovery_kit::internal::sign(self.internal.as_ref(), "gateway", headers);
        *req.version_mut() = http::Version::HTTP_2;
        let fault = req.extensions().get::<CallerFault>().cloned();
        let span = discovery_kit::telemetry::client_span(route.path, &replica.url);
        discovery_kit::telemetry::inject_span_headers(&span, req.headers_mut());
        Box::pin(async move {
            let guard = replica.start();
            let sent = Instant::now();
            let result = replica.send(req, route.path).instrument(span.clone()).await;
            match result {
                Err(e) => {
                    span.record("rpc.grpc.status_code", Code::Unavailable as i32);
                    span.record("otel.status_code", "ERROR");
                    replica.failed(pool.config());
                    let never_sent = discovery_kit::client::never_sent(&*e);
                    Err(Unreached::new(Some(replica), e.to_string(), never_sent))
                }
                Ok(mut resp) => {
                    let code = grpc::status_of(resp.headers()).unwrap_or(Code::Ok);
                    span.record("rpc.grpc.status_code", code as i32);
                    replica.observe_latency(sent.elapsed());
                    resp.extensions_mut().insert(ServedBy(replica.clone()));
                    Ok(grpc::on_end(resp, move |code| {
                        drop(guard);
                        if fault.as_ref().is_some_and(|f| f.get().is_some()) {
                            return; // cut short by the caller's own body
                        }
                        if code == Code::Unavailable {
                            replica.failed(pool.config());
                        } else if code != Code::Cancelled {
                            replica.succeeded();
                        }
                    }))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{ok_answer, routed};
    use crate::upstream::PoolConfig;
    use http_body_util::BodyExt;

    #[test]
    fn hop_by_hop_headers_stay_behind_and_the_call_headers_go_on() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-hop, TE"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "gateway.example"),
            ("te", "gzip"),
            ("x-api-key", "k"),
            ("content-type", "application/grpc"),
        ] {
            h.insert(k, http::HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-api-key"]);
        // `te: trailers` is HTTP/2's own and stays, named or not.
        let mut h = http::HeaderMap::new();
        h.insert("connection", http::HeaderValue::from_static("te"));
        h.insert("te", http::HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    /// A replica served in process: `discovery_kit::inproc` routes calls
    /// for its address to a service of this process, as `discovery up`
    /// does, so the balancer's own path runs without a socket.
    #[tokio::test(start_paused = true)]
    async fn an_attempt_reaches_a_replica_signed_and_keeps_its_record() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let s = seen.clone();
        let upstream = tower::service_fn(move |req: Request<Body>| {
            s.lock().push((
                req.uri().path().to_string(),
                req.headers().contains_key("host"),
                req.version(),
            ));
            async move { Ok::<_, std::convert::Infallible>(ok_answer(b"answer")) }
        });
        let _registered = discovery_kit::inproc::register_for_tests(addr, upstream);
        let pool = Pool::new(
            Upstream::Recommendation,
            vec![format!("http://{addr}")],
            PoolConfig::default(),
        )
        .unwrap();
        let pools: Pools = Arc::new([(Upstream::Recommendation, pool.clone())].into());
        let mut balance = Balance::new(pools.clone(), None);

        let mut req = routed("GetProduct");
        req.headers_mut()
            .insert("host", "caller.example".parse().unwrap());
        let resp = balance.call(req).await.expect("an answer");
        assert!(resp.extensions().get::<ServedBy>().is_some());
        let replica = &pool.replicas()[0];
        assert_eq!(replica.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"answer");
        assert_eq!(
            seen.lock()[0],
            (
                "/discovery.v1.Catalog/GetProduct".to_string(),
                false,
                http::Version::HTTP_2
            ),
            "the upstream path, no hop-by-hop headers, HTTP/2"
        );

        // A route whose upstream has no pool reaches nobody.
        let e = balance.call(routed("AnalyzeFace")).await.unwrap_err();
        assert!(e.never_sent);
        assert!(e.to_string().contains("no face-analysis upstream"), "{e}");
    }
}
