//! The outermost layer: finds the call's [`Route`] (UNIMPLEMENTED for a
//! path that is not a public method), hands it inward, and counts the call
//! when it ends: `discovery_gateway_requests_total{method, code, by}` and
//! its duration.

use discovery_kit::metrics::{Counters, Histograms};
use http::Request;
use tokio::time::Instant;
use tonic::body::Body;
use tower::Layer;

use super::{AnsweredBy, Inner, Reply, always_ready, ready};
use crate::grpc;
use crate::routes::{self, Route};

static REQUESTS: Counters<3> =
    Counters::new("discovery_gateway_requests_total", ["method", "code", "by"]);
static DURATIONS: Histograms<2> = Histograms::new(
    "discovery_gateway_request_duration_seconds",
    ["method", "by"],
);

/// Routes calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLayer;

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RouteService { inner }
    }
}

/// See [`RouteLayer`].
#[derive(Debug, Clone)]
pub struct RouteService<S> {
    inner: S,
}

impl<S: Inner> RouteService<S> {
    fn serve(&mut self, mut req: Request<Body>) -> Reply {
        let Some(route) = routes::lookup(req.uri().path()) else {
            let status = tonic::Status::unimplemented(format!(
                "{}: no such method on discovery.v1.Discovery",
                req.uri().path()
            ));
            return ready(grpc::error(status));
        };
        req.extensions_mut().insert::<&'static Route>(route);
        let started = Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let Ok(resp) = answer.await;
            let by = resp
                .extensions()
                .get::<AnsweredBy>()
                .map_or("upstream", |a| a.0);
            Ok(grpc::on_end(resp, move |code| {
                let code = grpc::code_name(code);
                REQUESTS.increment([route.method, code, by], 1);
                DURATIONS.record([route.method, by], started.elapsed().as_secs_f64());
            }))
        })
    }
}

always_ready!(RouteService);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{call, echo_route};
    use tonic::Code;

    #[tokio::test(start_paused = true)]
    async fn a_public_method_is_routed_and_anything_else_is_unimplemented() {
        let mut svc = RouteLayer.layer(echo_route());
        let (code, resp) = call(&mut svc, "/discovery.v1.Discovery/GetProduct").await;
        assert_eq!(code, Code::Ok);
        assert_eq!(
            resp.headers()["x-route"],
            "GetProduct",
            "the route went inward"
        );
        for path in [
            "/discovery.v1.Discovery/Nope",
            "/discovery.v1.Catalog/GetProduct",
            "/",
        ] {
            let (code, resp) = call(&mut svc, path).await;
            assert_eq!(code, Code::Unimplemented, "{path}");
            assert!(
                resp.headers().get("x-route").is_none(),
                "{path} went inward"
            );
        }
    }
}
