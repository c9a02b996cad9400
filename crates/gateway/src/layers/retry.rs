//! Retries on another replica. Unary calls arrive buffered ([`Buffered`]),
//! so they can be sent again: an idempotent call after any upstream
//! failure (transport error, or an early UNAVAILABLE); any other call only
//! when the upstream provably never took it (refused connection, refused
//! stream, a stream above its GOAWAY), as gRPC's transparent retry does: a
//! replica that is draining must not fail a face analysis. Streams are
//! sent once. Retries may add at most a fifth of the calls plus a reserve
//! ([`RetryBudget`]): a failing upstream is not hit with three times the
//! load. Whatever the last attempt met becomes the answer.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service};

use super::balance::Unreached;
use super::deadline::exceeded;
use super::{Avoid, Buffered, CallDeadline, CallerFault, Reply, ServedBy, answered, route_of};
use crate::grpc;
use crate::routes::Route;

/// Retries may add at most a fifth of the calls (plus a reserve of 10).
/// Counted in tenths of a retry.
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

/// Retries calls.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    retries: u32,
    budget: Arc<RetryBudget>,
}

impl RetryLayer {
    /// At most `retries` extra attempts per call.
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            budget: Arc::default(),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

/// What the retry layer wraps: a service that sends one attempt, failing
/// with [`Unreached`] when no replica took it.
pub trait Attempts:
    Service<Request<Body>, Response = Response<Body>, Error = Unreached, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<T> Attempts for T where
    T: Service<Request<Body>, Response = Response<Body>, Error = Unreached, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// One attempt's request: the call's head, a fresh body, and the replica
/// to leave.
fn attempt(parts: &http::request::Parts, body: Body, leaving: &Option<Avoid>) -> Request<Body> {
    let mut req = Request::from_parts(parts.clone(), body);
    if let Some(a) = leaving {
        req.extensions_mut().insert(a.clone());
    }
    req
}

impl<S: Attempts> Retry<S> {
    async fn run(
        mut inner: S,
        layer: RetryLayer,
        route: &'static Route,
        req: Request<Body>,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let buffered: Option<Bytes> = parts.extensions.get::<Buffered>().map(|b| b.0.clone());
        let fault = parts.extensions.get::<CallerFault>().cloned();
        let deadline = parts.extensions.get::<CallDeadline>().copied();
        let caller_broke_it = || fault.as_ref().and_then(|f| f.get().cloned());
        layer.budget.deposit();
        let attempts = if buffered.is_some() {
            1 + layer.retries
        } else {
            1
        };
        let mut body = Some(body);
        let mut leaving: Option<Avoid> = None;
        let mut last_error = String::from("no attempt made");
        for n in 0..attempts {
            if n > 0 {
                if !layer.budget.withdraw() {
                    last_error.push_str(" (retry budget spent)");
                    break;
                }
                if let Some(d) = deadline
                    && d.at.is_some_and(|at| at <= Instant::now())
                {
                    let status = tonic::Status::deadline_exceeded(format!(
                        "{} did not answer within {:?}: {last_error}",
                        route.method,
                        d.within.unwrap_or_default()
                    ));
                    return answered("deadline", exceeded(status, d.callers));
                }
            }
            let this_body = match (&buffered, body.take()) {
                (Some(b), _) => Body::new(http_body_util::Full::new(b.clone())),
                (None, Some(b)) => b,
                (None, None) => Body::empty(),
            };
            let result = inner.call(attempt(&parts, this_body, &leaving)).await;
            if let Some(status) = caller_broke_it() {
                // The caller's own body failed: nothing to learn about the
                // upstream, nothing to retry.
                return answered("caller_body", grpc::error(status));
            }
            match result {
                Err(e) => {
                    tracing::debug!(method = route.method, error = %e, attempt = n, "upstream call failed");
                    last_error = e.to_string();
                    if !route.idempotent && !e.never_sent {
                        break; // it may have run: not ours to repeat
                    }
                    leaving = e.replica.map(Avoid);
                }
                Ok(resp) => {
                    let retry = grpc::status_of(resp.headers()) == Some(Code::Unavailable)
                        && route.idempotent
                        && n + 1 < attempts;
                    if !retry {
                        return resp;
                    }
                    let served = resp.extensions().get::<ServedBy>().cloned();
                    last_error = match &served {
                        Some(s) => format!("{}: UNAVAILABLE", s.0.url),
                        None => "UNAVAILABLE".to_string(),
                    };
                    leaving = served.map(|s| Avoid(s.0));
                }
            }
        }
        answered(
            "upstream_unavailable",
            grpc::error(tonic::Status::unavailable(format!(
                "{} is unavailable: {last_error}",
                route.upstream.name()
            ))),
        )
    }
}

impl<S: Attempts> Service<Request<Body>> for Retry<S> {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Reply;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Reply {
        let Some(route) = route_of(&req) else {
            return super::ready(super::unrouted());
        };
        let (inner, layer) = (self.inner.clone(), self.layer.clone());
        Box::pin(async move { Ok(Self::run(inner, layer, route, req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{ok_answer, routed, send};
    use crate::upstream::{PoolConfig, Replica};
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// Two replicas; the first fails as `first` says, the second answers.
    /// Counts attempts, and answers with the replica it was told to avoid.
    #[derive(Clone)]
    struct TwoReplicas {
        replicas: [Arc<Replica>; 2],
        first: fn(&Arc<Replica>) -> Result<Response<Body>, Unreached>,
        attempts: Arc<AtomicUsize>,
    }

    impl Service<Request<Body>> for TwoReplicas {
        type Response = Response<Body>;
        type Error = Unreached;
        type Future = std::future::Ready<Result<Response<Body>, Unreached>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Unreached>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<Body>) -> Self::Future {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let avoid = req.extensions().get::<Avoid>().map(|a| a.0.clone());
            let r = match avoid {
                Some(a) if Arc::ptr_eq(&a, &self.replicas[0]) => {
                    let mut ok = ok_answer(b"second");
                    ok.extensions_mut()
                        .insert(ServedBy(self.replicas[1].clone()));
                    Ok(ok)
                }
                _ => (self.first)(&self.replicas[0]),
            };
            std::future::ready(r)
        }
    }

    fn two(
        first: fn(&Arc<Replica>) -> Result<Response<Body>, Unreached>,
    ) -> (Retry<TwoReplicas>, Arc<AtomicUsize>) {
        let config = PoolConfig::default();
        let replica = |port| {
            Arc::new(Replica::for_tests(
                &format!("http://127.0.0.1:{port}"),
                &config,
            ))
        };
        let attempts = Arc::new(AtomicUsize::new(0));
        let inner = TwoReplicas {
            replicas: [replica(1), replica(2)],
            first,
            attempts: attempts.clone(),
        };
        (RetryLayer::new(2).layer(inner), attempts)
    }

    fn unary(method: &str) -> Request<Body> {
        let mut req = routed(method);
        req.extensions_mut()
            .insert(Buffered(Bytes::from_static(b"x")));
        req
    }

    fn refused(r: &Arc<Replica>) -> Result<Response<Body>, Unreached> {
        Err(Unreached::new(Some(r.clone()), "connection refused", true))
    }

    fn reset(r: &Arc<Replica>) -> Result<Response<Body>, Unreached> {
        Err(Unreached::new(
            Some(r.clone()),
            "connection reset mid-call",
            false,
        ))
    }

    fn unavailable(r: &Arc<Replica>) -> Result<Response<Body>, Unreached> {
        let mut resp = grpc::error(tonic::Status::unavailable("draining"));
        resp.extensions_mut().insert(ServedBy(r.clone()));
        Ok(resp)
    }

    #[tokio::test(start_paused = true)]
    async fn idempotent_calls_move_to_another_replica() {
        for first in [refused, reset, unavailable] {
            let (mut svc, attempts) = two(first);
            let (code, _, data) = send(&mut svc, unary("GetProduct")).await;
            assert_eq!((code, &data[..]), (Code::Ok, &b"second"[..]));
            assert_eq!(attempts.load(Ordering::Relaxed), 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn other_calls_are_retried_only_when_never_sent() {
        let (mut svc, attempts) = two(refused);
        assert_eq!(send(&mut svc, unary("RecordInteraction")).await.0, Code::Ok);
        assert_eq!(
            attempts.load(Ordering::Relaxed),
            2,
            "never reached the first replica"
        );
        let (mut svc, attempts) = two(reset);
        let (code, resp, _) = send(&mut svc, unary("RecordInteraction")).await;
        assert_eq!(code, Code::Unavailable, "it may have run: not repeated");
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
        assert_eq!(
            resp.extensions().get(),
            Some(&super::super::AnsweredBy("upstream_unavailable"))
        );
        // An early UNAVAILABLE of a call that is not idempotent is its answer.
        let (mut svc, attempts) = two(unavailable);
        assert_eq!(
            send(&mut svc, unary("RecordInteraction")).await.0,
            Code::Unavailable
        );
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
        // Streams are sent once.
        let (mut svc, attempts) = two(refused);
        assert_eq!(
            send(&mut svc, routed("IngestCatalog")).await.0,
            Code::Unavailable
        );
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_budget_is_spent() {
        let (mut svc, attempts) = two(|r| {
            let _ = r;
            Err(Unreached::new(None, "nothing listens", true))
        });
        // The reserve (10 retries) and a fifth of the calls, no more.
        for _ in 0..20 {
            let (code, _, _) = send(&mut svc, unary("GetProduct")).await;
            assert_eq!(code, Code::Unavailable);
        }
        let n = attempts.load(Ordering::Relaxed);
        assert_eq!(n, 20 + 10 + 4, "20 calls, 14 retries");
    }
}
