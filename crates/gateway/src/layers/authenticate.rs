//! API key and scope ([`crate::auth`]): hands the [`Principal`] inward, or
//! answers UNAUTHENTICATED / PERMISSION_DENIED. The key stops here: the
//! identity headers upstreams see are the ones the key proves.

use std::net::IpAddr;
use std::sync::Arc;

use http::Request;
use tonic::body::Body;
use tower::Layer;

use super::{Inner, Reply, always_ready, answered, pass, ready, route_of};
use crate::auth::{KeyRing, Principal, Tier};
use crate::client_addr::{self, TrustedProxies};
use crate::grpc;

/// Authenticates calls.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    keys: Arc<KeyRing>,
    trusted: Arc<TrustedProxies>,
}

impl AuthLayer {
    /// Keys, and the proxies whose forwarding headers name the client.
    pub fn new(keys: Arc<KeyRing>, trusted: Arc<TrustedProxies>) -> Self {
        Self { keys, trusted }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            keys: self.keys.clone(),
            trusted: self.trusted.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    keys: Arc<KeyRing>,
    trusted: Arc<TrustedProxies>,
}

fn peer(req: &Request<Body>) -> Option<IpAddr> {
    req.extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| a.ip())
}

impl<S: Inner> Authenticate<S> {
    fn serve(&mut self, mut req: Request<Body>) -> Reply {
        let Some(route) = route_of(&req) else {
            return ready(super::unrouted());
        };
        let client = client_addr::client_ip(peer(&req), req.headers(), &self.trusted);
        let span = tracing::info_span!(
            "gateway.auth",
            discovery.client = tracing::field::Empty,
            discovery.tier = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let admitted = span.in_scope(|| self.keys.admit(req.headers(), route, client));
        match admitted {
            Ok(p) => {
                span.record("discovery.client", p.key.client.as_str());
                span.record("discovery.tier", p.tier.name());
                drop(span);
                // The key stops here: upstreams and their logs never see it.
                req.headers_mut().remove("x-api-key");
                req.headers_mut().remove(http::header::AUTHORIZATION);
                set_identity(req.headers_mut(), &p);
                req.extensions_mut().insert(p);
                pass(&mut self.inner, req)
            }
            Err(status) => {
                span.record("otel.status_code", "ERROR");
                ready(answered("auth", grpc::error(status)))
            }
        }
    }
}

always_ready!(Authenticate);

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
    if p.tier == Tier::Authenticated
        && let Some(user) = p.requester.strip_prefix("u:")
        && let Ok(v) = http::HeaderValue::from_str(user)
    {
        headers.insert("x-discovery-user", v);
    }
    if let Some(sources) = p.key.sources_header() {
        headers.insert("x-discovery-sources", sources);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{answering, ok_answer, routed, send};
    use crate::routes::Scope;
    use discovery_kit::store::memory::MemoryStore;
    use tonic::Code;

    /// The inner service reports what reached it: the principal's
    /// requester and the identity headers.
    fn reporter() -> super::super::Next {
        answering(|req| {
            let mut resp = ok_answer(b"ok");
            let h = resp.headers_mut();
            if let Some(p) = req.extensions().get::<Principal>() {
                h.insert("x-saw-requester", p.requester.parse().unwrap());
            }
            for name in ["x-api-key", "x-discovery-user", "x-discovery-client"] {
                if let Some(v) = req.headers().get(name) {
                    h.insert(
                        http::HeaderName::from_bytes(format!("x-saw-{name}").as_bytes()).unwrap(),
                        v.clone(),
                    );
                }
            }
            resp
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_admits_with_its_identity_and_stops_here() {
        let store: discovery_kit::store::Store = MemoryStore::new();
        let (shop, _) =
            crate::auth::create(&store, "shop-a", Tier::Authenticated, &[Scope::Public])
                .await
                .unwrap();
        let keys = Arc::new(KeyRing::default());
        keys.refresh(&store).await.unwrap();
        let mut svc = AuthLayer::new(keys, Arc::new(TrustedProxies::default())).layer(reporter());

        let mut req = routed("Recommend");
        req.headers_mut().insert("x-api-key", shop.parse().unwrap());
        req.headers_mut()
            .insert("x-user-id", "alice".parse().unwrap());
        // A caller forging the identity the gateway vouches for.
        req.headers_mut()
            .insert("x-discovery-client", "someone-else".parse().unwrap());
        let (code, resp, _) = send(&mut svc, req).await;
        assert_eq!(code, Code::Ok);
        let h = resp.headers();
        assert_eq!(h["x-saw-requester"], "u:alice");
        assert_eq!(h["x-saw-x-discovery-user"], "alice");
        assert_eq!(
            h["x-saw-x-discovery-client"], "shop-a",
            "the key's client, not the caller's claim"
        );
        assert!(h.get("x-saw-x-api-key").is_none(), "the key went upstream");

        // No key, a wrong key, a key without the scope: refused here.
        let (code, resp, _) = send(&mut svc, routed("Recommend")).await;
        assert_eq!(code, Code::Unauthenticated);
        assert!(resp.headers().get("x-saw-requester").is_none());
        let mut req = routed("Recommend");
        req.headers_mut().insert(
            "x-api-key",
            "dk_000000000000_00000000000000000000000000000000"
                .parse()
                .unwrap(),
        );
        assert_eq!(send(&mut svc, req).await.0, Code::Unauthenticated);
        let mut req = routed("WarmCache");
        req.headers_mut().insert("x-api-key", shop.parse().unwrap());
        assert_eq!(send(&mut svc, req).await.0, Code::PermissionDenied);
    }
}
