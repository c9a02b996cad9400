//! Rate limits ([`crate::limits::Limiter`]): the call counts against the
//! global, per-method, per-client and per-requester rates, or is answered
//! RESOURCE_EXHAUSTED with `retry-after` and the limit it reached.

use http::Request;
use tonic::body::Body;
use tower::Layer;
use tracing::Instrument;

use super::{Inner, Reply, always_ready, answer, answered, ready, route_of};
use crate::auth::Principal;
use crate::grpc;
use crate::limits::{Limiter, Refused};
use crate::routes::Route;

/// Applies the rate limits.
#[derive(Debug, Clone)]
pub struct RateLayer {
    limiter: Limiter,
}

impl RateLayer {
    /// Over `limiter`.
    pub fn new(limiter: Limiter) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// See [`RateLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Limiter,
}

impl<S: Inner> RateLimit<S> {
    fn serve(&mut self, req: Request<Body>) -> Reply {
        let Some(route) = route_of(&req) else {
            return ready(super::unrouted());
        };
        if !self.limiter.config().enabled {
            return super::pass(&mut self.inner, req);
        }
        let Some(principal) = req.extensions().get::<Principal>().cloned() else {
            return ready(grpc::error(tonic::Status::internal(
                "rate limits before authentication",
            )));
        };
        let (limiter, inner) = (self.limiter.clone(), self.inner.clone());
        Box::pin(async move {
            let span = tracing::info_span!(
                "gateway.limit",
                discovery.class = route.class.name(),
                discovery.limited = tracing::field::Empty,
            );
            let admitted = limiter
                .admit(&principal, route.class)
                .instrument(span.clone())
                .await;
            span.record("discovery.limited", admitted.is_err());
            Ok(match admitted {
                Ok(()) => answer(inner, req).await,
                Err(refused) => answered("rate_limit", refusal(route, &refused)),
            })
        })
    }
}

always_ready!(RateLimit);

/// RESOURCE_EXHAUSTED naming the limit, with `retry-after` (whole
/// seconds, at least 1) and `x-discovery-limit`.
fn refusal(route: &Route, refused: &Refused) -> http::Response<Body> {
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
    grpc::error_with(
        tonic::Status::resource_exhausted(format!(
            "rate limit reached ({which}); retry in {secs} s"
        )),
        &[
            ("retry-after", secs.to_string()),
            ("x-discovery-limit", refused.limit.clone()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{echo_route, request_by, send};
    use crate::limits::{LimitConfig, Rate};
    use std::sync::Arc;
    use std::time::Duration;
    use tonic::Code;

    #[tokio::test(start_paused = true)]
    async fn a_caller_over_its_rate_waits_what_it_is_told() {
        let mut config = LimitConfig {
            global: None,
            face: None,
            recommend: None,
            ..LimitConfig::default()
        };
        config.partner.all = Rate::parse("2/m");
        let mut svc = RateLayer::new(Limiter::new(Arc::new(config), None)).layer(echo_route());
        for _ in 0..2 {
            assert_eq!(
                send(&mut svc, request_by("GetProduct", "a")).await.0,
                Code::Ok
            );
        }
        let (code, resp, _) = send(&mut svc, request_by("GetProduct", "a")).await;
        assert_eq!(code, Code::ResourceExhausted);
        assert!(resp.headers().get("x-route").is_none(), "refused here");
        assert_eq!(resp.headers()["retry-after"], "30");
        assert!(
            resp.headers()["x-discovery-limit"]
                .to_str()
                .unwrap()
                .ends_with(":all")
        );
        assert_eq!(
            resp.extensions().get(),
            Some(&super::super::AnsweredBy("rate_limit"))
        );
        // Another key has its own rate.
        assert_eq!(
            send(&mut svc, request_by("GetProduct", "b")).await.0,
            Code::Ok
        );
        // After the time it was told, the first caller is let in again.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            send(&mut svc, request_by("GetProduct", "a")).await.0,
            Code::Ok
        );
    }
}
