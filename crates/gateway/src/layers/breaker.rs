//! Per-method circuit breakers ([`crate::breaker`]): an open circuit
//! answers UNAVAILABLE with `retry-after` (and [`CircuitOpen`], so that
//! [`super::fallback`] may answer instead); an admitted call's final status
//! is its verdict when the call ends. The caller's own deadline and the
//! caller's own broken body are no verdict: a caller cannot open a
//! circuit for everyone.

use std::collections::HashMap;
use std::sync::Arc;

use http::Request;
use tonic::Code;
use tonic::body::Body;
use tower::Layer;

use super::{
    CallDeadline, CallerFault, CircuitOpen, Inner, Reply, always_ready, answered, ready, route_of,
};
use crate::breaker::{Breaker, BreakerConfig, is_failure};
use crate::grpc;
use crate::routes::ROUTES;

/// One breaker per public method.
#[derive(Debug)]
pub struct Breakers(HashMap<&'static str, Arc<Breaker>>);

impl Breakers {
    /// A closed breaker for every route.
    pub fn new(config: BreakerConfig) -> Arc<Self> {
        Arc::new(Self(
            ROUTES
                .iter()
                .map(|r| (r.method, Arc::new(Breaker::new(config))))
                .collect(),
        ))
    }

    /// A method's breaker state ("closed", "open", "half-open").
    pub fn state(&self, method: &str) -> Option<&'static str> {
        self.0.get(method).map(|b| b.state())
    }
}

/// Guards calls with the breakers.
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    breakers: Arc<Breakers>,
}

impl BreakerLayer {
    /// Over `breakers`.
    pub fn new(breakers: Arc<Breakers>) -> Self {
        Self { breakers }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = CircuitBreaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breakers: self.breakers.clone(),
        }
    }
}

/// See [`BreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breakers: Arc<Breakers>,
}

impl<S: Inner> CircuitBreaker<S> {
    fn serve(&mut self, req: Request<Body>) -> Reply {
        let Some(route) = route_of(&req) else {
            return ready(super::unrouted());
        };
        let Some(breaker) = self.breakers.0.get(route.method) else {
            return super::pass(&mut self.inner, req);
        };
        let ticket = match breaker.allow() {
            Ok(t) => t,
            Err(wait) => {
                let secs = wait.as_secs().max(1);
                let mut resp = grpc::error_with(
                    tonic::Status::unavailable(format!(
                        "{} is failing upstream (circuit open); retry in {secs} s",
                        route.method
                    )),
                    &[("retry-after", secs.to_string())],
                );
                resp.extensions_mut().insert(CircuitOpen);
                return ready(answered("breaker", resp));
            }
        };
        let fault = req.extensions().get::<CallerFault>().cloned();
        let callers = req
            .extensions()
            .get::<CallDeadline>()
            .is_some_and(|d| d.callers);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let Ok(resp) = answer.await;
            Ok(grpc::on_end(resp, move |code| {
                let caller_broke_it = fault.as_ref().is_some_and(|f| f.get().is_some());
                ticket.record(match code {
                    _ if caller_broke_it => None,
                    Code::DeadlineExceeded if callers => None,
                    c => is_failure(c),
                });
            }))
        })
    }
}

always_ready!(CircuitBreaker);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{answering, routed, send};
    use std::time::Duration;

    fn failing(code: Code) -> super::super::Next {
        answering(move |_| grpc::error(tonic::Status::new(code, "no")))
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive: 3,
            open_for: Duration::from_secs(5),
            ..BreakerConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_open_the_circuit_and_a_probe_closes_it() {
        let breakers = Breakers::new(config());
        let mut svc = BreakerLayer::new(breakers.clone()).layer(failing(Code::Unavailable));
        for _ in 0..3 {
            assert_eq!(
                send(&mut svc, routed("GetProduct")).await.0,
                Code::Unavailable
            );
        }
        assert_eq!(breakers.state("GetProduct"), Some("open"));
        assert_eq!(
            breakers.state("SearchProducts"),
            Some("closed"),
            "per method"
        );
        let (code, resp, _) = send(&mut svc, routed("GetProduct")).await;
        assert_eq!(code, Code::Unavailable);
        assert!(resp.extensions().get::<CircuitOpen>().is_some());
        assert_eq!(resp.headers()["retry-after"], "5");

        // After the open period one probe goes; its success closes it.
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut healthy = BreakerLayer::new(breakers.clone())
            .layer(answering(|_| crate::layers::testing::ok_answer(b"ok")));
        assert_eq!(send(&mut healthy, routed("GetProduct")).await.0, Code::Ok);
        assert_eq!(breakers.state("GetProduct"), Some("closed"));
    }

    #[tokio::test(start_paused = true)]
    async fn caller_mistakes_and_the_callers_own_deadline_are_no_verdict() {
        let breakers = Breakers::new(config());
        for (code, callers) in [
            (Code::InvalidArgument, false),
            (Code::NotFound, false),
            (Code::Cancelled, false),
            (Code::DeadlineExceeded, true),
        ] {
            let mut svc = BreakerLayer::new(breakers.clone()).layer(failing(code));
            for _ in 0..10 {
                let mut req = routed("GetProduct");
                req.extensions_mut().insert(CallDeadline {
                    at: None,
                    within: None,
                    callers,
                });
                assert_eq!(send(&mut svc, req).await.0, code);
            }
            assert_eq!(breakers.state("GetProduct"), Some("closed"), "{code:?}");
        }
        // The gateway's own deadline is the upstream's fault.
        let mut svc = BreakerLayer::new(breakers.clone()).layer(failing(Code::DeadlineExceeded));
        for _ in 0..3 {
            send(&mut svc, routed("GetProduct")).await;
        }
        assert_eq!(breakers.state("GetProduct"), Some("open"));
    }
}
