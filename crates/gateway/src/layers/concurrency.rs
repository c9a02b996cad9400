//! In-flight bounds ([`crate::limits::InFlight`]): the call takes a slot
//! (per method class, per client, gateway-wide) for as long as it runs,
//! body included, or is shed at once with RESOURCE_EXHAUSTED and pushback.

use std::sync::Arc;

use http::Request;
use tonic::body::Body;
use tower::Layer;

use super::{Inner, Reply, always_ready, answered, ready, route_of};
use crate::auth::Principal;
use crate::grpc;
use crate::limits::{Busy, InFlight};

/// Bounds calls in flight.
#[derive(Debug, Clone)]
pub struct ConcurrencyLayer {
    in_flight: Arc<InFlight>,
}

impl ConcurrencyLayer {
    /// Over `in_flight`.
    pub fn new(in_flight: Arc<InFlight>) -> Self {
        Self { in_flight }
    }
}

impl<S> Layer<S> for ConcurrencyLayer {
    type Service = Concurrency<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Concurrency {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

/// See [`ConcurrencyLayer`].
#[derive(Debug, Clone)]
pub struct Concurrency<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

impl<S: Inner> Concurrency<S> {
    fn serve(&mut self, req: Request<Body>) -> Reply {
        let Some(route) = route_of(&req) else {
            return ready(super::unrouted());
        };
        let Some(principal) = req.extensions().get::<Principal>() else {
            return ready(grpc::error(tonic::Status::internal(
                "in-flight bounds before authentication",
            )));
        };
        let slot = match self.in_flight.enter_for(route.class, &principal.key) {
            Ok(slot) => slot,
            Err(busy) => {
                metrics::counter!("discovery_gateway_shed_total", "method" => route.method, "path" => route.path)
                    .increment(1);
                return ready(answered(
                    "shed",
                    shed(busy, route.method, &principal.key.client),
                ));
            }
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            let Ok(resp) = answer.await;
            // The slot is held until the call ends, body and all.
            Ok(grpc::on_end(resp, move |_| drop(slot)))
        })
    }
}

always_ready!(Concurrency);

/// RESOURCE_EXHAUSTED, gRPC's code for a server out of resources for now
/// (UNAVAILABLE is kept for "no replica can answer");
/// `grpc-retry-pushback-ms` is what gRPC clients with a retry policy
/// honour, `retry-after` is for everyone else.
fn shed(busy: Busy, method: &str, client: &str) -> http::Response<Body> {
    let why = match busy {
        Busy::Overloaded(n) => format!("gateway at capacity ({n} calls in flight)"),
        Busy::Client(n) => format!(
            "client {client:?} already has {n} calls in flight on this gateway (its share of the gateway)"
        ),
        Busy::Method(n) => format!("{method} already has {n} calls in flight on this gateway"),
    };
    grpc::error_with(
        tonic::Status::resource_exhausted(format!("{why}; load shed, retry in 1 s")),
        &[
            ("retry-after", "1".to_string()),
            ("grpc-retry-pushback-ms", "1000".to_string()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{echo_route, request_by, send};
    use crate::limits::LimitConfig;
    use http_body_util::BodyExt;
    use tonic::Code;
    use tower::Service;

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_held_until_the_answer_ends_and_the_excess_is_shed() {
        let in_flight = InFlight::new(&LimitConfig {
            recommend_concurrency: 1,
            ..LimitConfig::default()
        });
        let mut svc = ConcurrencyLayer::new(in_flight.clone()).layer(echo_route());
        // The first call's answer is in flight while its body is unread.
        let Ok(first) = svc.call(request_by("Recommend", "a")).await;
        assert_eq!(in_flight.current(), 1);
        let (code, resp, _) = send(&mut svc, request_by("Recommend", "b")).await;
        assert_eq!(code, Code::ResourceExhausted);
        assert_eq!(resp.headers()["grpc-retry-pushback-ms"], "1000");
        assert!(resp.headers().get("x-route").is_none(), "shed here");
        // Other methods are not bound by Recommend's slots.
        assert_eq!(
            send(&mut svc, request_by("GetProduct", "b")).await.0,
            Code::Ok
        );
        // Reading the first answer to its trailers frees the slot.
        first.into_body().collect().await.unwrap();
        assert_eq!(in_flight.current(), 0);
        assert_eq!(
            send(&mut svc, request_by("Recommend", "b")).await.0,
            Code::Ok
        );
        // A caller that goes away mid-answer frees it too.
        let Ok(dropped) = svc.call(request_by("Recommend", "a")).await;
        drop(dropped);
        assert_eq!(in_flight.current(), 0);
    }
}
