//! The last good answer while a circuit is open: for routes that allow it
//! (reads whose answer may be a little stale: Recommend, search, products),
//! a successful answer is kept (keyed by method and request bytes; at
//! most one copy per key every 30 s, bounded in bytes and age) and served,
//! marked `x-discovery-fallback: circuit-open`, when the breaker refuses
//! the same request.

use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::Layer;

use super::{Buffered, CircuitOpen, Inner, Reply, always_ready, answered, pass, route_of};
use crate::config::ProxyConfig;
use crate::grpc;
use crate::routes::Route;

/// A kept response younger than this is not captured again: repeated
/// requests (the common case for reads) cost one copy per interval, not
/// one per call.
const RECAPTURE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Kept {
    encoding: Option<HeaderValue>,
    body: Bytes,
    at: Instant,
}

type Store = moka::sync::Cache<u64, Arc<Kept>>;

/// Keeps and serves fallback answers.
#[derive(Clone)]
pub struct FallbackLayer {
    kept: Store,
    max_response: usize,
}

impl std::fmt::Debug for FallbackLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("kept", &self.kept.entry_count())
            .finish()
    }
}

impl FallbackLayer {
    /// With the proxy's fallback budget, age and largest kept answer.
    pub fn new(config: &ProxyConfig) -> Self {
        Self {
            kept: moka::sync::Cache::builder()
                .max_capacity(config.fallback_bytes)
                .weigher(|_, v: &Arc<Kept>| v.body.len().min(u32::MAX as usize) as u32 + 64)
                .time_to_live(config.fallback_ttl)
                .build(),
            max_response: config.fallback_max_response,
        }
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = Fallback<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`FallbackLayer`].
#[derive(Debug, Clone)]
pub struct Fallback<S> {
    inner: S,
    layer: FallbackLayer,
}

fn key(route: &Route, body: &Bytes) -> u64 {
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

impl<S: Inner> Fallback<S> {
    fn serve(&mut self, req: Request<Body>) -> Reply {
        let Some(route) = route_of(&req) else {
            return pass(&mut self.inner, req);
        };
        let key = match req.extensions().get::<Buffered>() {
            Some(b) if route.fallback => key(route, &b.0),
            _ => return pass(&mut self.inner, req),
        };
        let kept = self.layer.kept.clone();
        let capture = kept
            .get(&key)
            .is_none_or(|k| k.at.elapsed() >= RECAPTURE_AFTER);
        let limit = self.layer.max_response;
        let answer = self.inner.call(req);
        Box::pin(async move {
            let Ok(resp) = answer.await;
            if resp.extensions().get::<CircuitOpen>().is_some() {
                if let Some(k) = kept.get(&key) {
                    metrics::counter!("discovery_gateway_fallbacks_total", "method" => route.method)
                        .increment(1);
                    return Ok(answered("fallback", kept_response(&k)));
                }
                return Ok(resp);
            }
            if !capture || grpc::status_of(resp.headers()).is_some() {
                return Ok(resp);
            }
            let encoding = resp.headers().get("grpc-encoding").cloned();
            let buf = Arc::new(Mutex::new(Some(BytesMut::new())));
            let seen = buf.clone();
            let (parts, body) = resp.into_parts();
            let observed = grpc::Observed::new(
                body,
                Box::new(move |code| {
                    if let (Code::Ok, Some(body)) = (code, seen.lock().take()) {
                        kept.insert(
                            key,
                            Arc::new(Kept {
                                encoding,
                                body: body.freeze(),
                                at: Instant::now(),
                            }),
                        );
                    }
                }),
            )
            .capturing(buf, limit);
            Ok(Response::from_parts(parts, Body::new(observed)))
        })
    }
}

always_ready!(Fallback);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::breaker::{BreakerLayer, Breakers};
    use crate::layers::testing::{answering, ok_answer, routed, send};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn buffered(method: &str, body: &'static [u8]) -> Request<Body> {
        let mut req = routed(method);
        req.extensions_mut()
            .insert(Buffered(Bytes::from_static(body)));
        req
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_serves_the_last_good_answer_to_the_same_request() {
        let up = Arc::new(AtomicBool::new(true));
        let upstream = {
            let up = up.clone();
            answering(move |_| {
                if up.load(Ordering::Relaxed) {
                    ok_answer(b"fresh")
                } else {
                    grpc::error(tonic::Status::unavailable("down"))
                }
            })
        };
        let breakers = Breakers::new(crate::breaker::BreakerConfig {
            consecutive: 2,
            ..Default::default()
        });
        let mut svc = FallbackLayer::new(&ProxyConfig::default())
            .layer(BreakerLayer::new(breakers.clone()).layer(upstream));
        let (code, _, data) = send(&mut svc, buffered("GetProduct", b"p1")).await;
        assert_eq!((code, &data[..]), (Code::Ok, &b"fresh"[..]));

        up.store(false, Ordering::Relaxed);
        for _ in 0..2 {
            send(&mut svc, buffered("GetProduct", b"p2")).await;
        }
        assert_eq!(breakers.state("GetProduct"), Some("open"));
        let (code, resp, data) = send(&mut svc, buffered("GetProduct", b"p1")).await;
        assert_eq!(
            (code, &data[..]),
            (Code::Ok, &b"fresh"[..]),
            "the kept answer"
        );
        assert_eq!(resp.headers()["x-discovery-fallback"], "circuit-open");
        assert_eq!(
            resp.extensions().get(),
            Some(&super::super::AnsweredBy("fallback"))
        );
        // A request never answered has nothing kept: the refusal stands.
        let (code, resp, _) = send(&mut svc, buffered("GetProduct", b"p3")).await;
        assert_eq!(code, Code::Unavailable);
        assert!(resp.headers().get("x-discovery-fallback").is_none());
        // Routes whose answers must be fresh never get one.
        let (code, _, _) = send(&mut svc, buffered("GetSession", b"p1")).await;
        assert_eq!(code, Code::Unavailable);
    }
}
