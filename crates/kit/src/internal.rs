//! Authentication of calls between services.
//!
//! Every service's port is reachable from the pod network, and some of
//! their methods must never be called by anyone but another service
//! (`ApplyCatalogChange` pins product versions; `WarmCache` spends CPU;
//! identity headers set by the gateway decide whose session is read). With
//! `DISCOVERY_INTERNAL_SECRET` set (from a Kubernetes Secret or compose
//! secret; `DISCOVERY_INTERNAL_SECRET_FILE` names a file holding it), each
//! service proves who it is on every call with two headers:
//!
//! - `x-discovery-caller`: the service name (`gateway`, `sync`, ...);
//! - `x-discovery-token`: HMAC-SHA256(secret, "discovery-internal/v1/" +
//!   name), hex.
//!
//! and servers refuse any other call with UNAUTHENTICATED, except health
//! checks (the kubelet's probes carry no headers) and the gateway's public
//! API (which has API keys). A handler reads the proven caller from the
//! request's extensions ([`Caller`]) to allow a method to one service only.
//!
//! Why a shared secret and not mTLS: it needs no certificate authority or
//! rotation machinery in the chart, works in the all-in-one process and in
//! compose unchanged, and costs one header compare per call (the token of
//! each service is computed once). What it does not give: a compromised pod
//! knows the secret and so can claim any service's name; traffic is not
//! encrypted (run a mesh, or terminate TLS at the pod, for that). Both are
//! written down in `docs/security.md`.

use std::sync::Arc;

use hmac::{KeyInit, Mac};

/// Header naming the calling service.
pub const CALLER_HEADER: &str = "x-discovery-caller";
/// Header carrying the caller's token.
pub const TOKEN_HEADER: &str = "x-discovery-token";

/// Headers only the gateway (or another service) may set: identity of the
/// shopper and client a call is made for. Servers drop them from calls
/// that are not authenticated as internal; the gateway drops them from
/// every public call before setting its own.
pub const IDENTITY_HEADERS: [&str; 3] = [
    "x-discovery-client",
    "x-discovery-user",
    "x-discovery-sources",
];

/// The service a call was proven to come from (in the request extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// The shared secret and the tokens it gives.
#[derive(Clone)]
pub struct InternalAuth {
    secret: Arc<Vec<u8>>,
    /// Tokens computed so far, by service name: signing and checking a call
    /// is then a lookup, not an HMAC. Bounded: names past [`MAX_CACHED`]
    /// (a stranger inventing caller names) are computed each time.
    tokens: Arc<parking_lot::RwLock<std::collections::HashMap<String, Arc<str>>>>,
}

/// Most tokens kept (the services of a deployment are a handful).
const MAX_CACHED: usize = 32;

impl std::fmt::Debug for InternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalAuth(<secret>)")
    }
}

/// Shortest secret accepted, bytes.
pub const MIN_SECRET: usize = 16;

impl InternalAuth {
    /// From the secret's bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: Arc::new(secret.into()),
            tokens: Arc::default(),
        }
    }

    /// A random secret, hex (the all-in-one process makes one per run).
    pub fn random_secret() -> String {
        use rand::RngCore;
        let mut s = [0u8; 32];
        rand::rng().fill_bytes(&mut s);
        hex::encode(s)
    }

    /// Reads `DISCOVERY_INTERNAL_SECRET` or `DISCOVERY_INTERNAL_SECRET_FILE`;
    /// `None` when neither is set (internal calls are then open: a
    /// warning says so at start).
    pub fn from_env(env: &crate::config::Env) -> Result<Option<Self>, crate::config::ConfigError> {
        use crate::config::ConfigError;
        let secret = match (
            env.raw("DISCOVERY_INTERNAL_SECRET"),
            env.raw("DISCOVERY_INTERNAL_SECRET_FILE"),
        ) {
            (None, None) => return Ok(None),
            (Some(s), None) => s.into_bytes(),
            (None, Some(path)) => std::fs::read(&path)
                .map_err(|e| {
                    ConfigError::new("DISCOVERY_INTERNAL_SECRET_FILE", format!("{path}: {e}"))
                })?
                .trim_ascii()
                .to_vec(),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "DISCOVERY_INTERNAL_SECRET",
                    "set this or DISCOVERY_INTERNAL_SECRET_FILE, not both",
                ));
            }
        };
        if secret.len() < MIN_SECRET {
            return Err(ConfigError::new(
                "DISCOVERY_INTERNAL_SECRET",
                format!(
                    "the secret is {} bytes; give at least {MIN_SECRET} (e.g. `openssl rand -hex 32`)",
                    secret.len()
                ),
            ));
        }
        Ok(Some(Self::new(secret)))
    }

    /// The token of service `name` (kept for next time).
    pub fn token(&self, name: &str) -> Arc<str> {
        if let Some(t) = self.tokens.read().get(name) {
            return t.clone();
        }
        let token = self.compute(name);
        self.keep(name, &token);
        token
    }

    fn compute(&self, name: &str) -> Arc<str> {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any length");
        mac.update(b"discovery-internal/v1/");
        mac.update(name.as_bytes());
        hex::encode(mac.finalize().into_bytes()).into()
    }

    fn keep(&self, name: &str, token: &Arc<str>) {
        let mut tokens = self.tokens.write();
        if tokens.len() < MAX_CACHED {
            tokens.insert(name.to_string(), token.clone());
        }
    }

    /// The headers service `name` sends on every call.
    pub fn headers_of(&self, name: &str) -> [(http::HeaderName, http::HeaderValue); 2] {
        [
            (
                http::HeaderName::from_static(CALLER_HEADER),
                http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("?")),
            ),
            (
                http::HeaderName::from_static(TOKEN_HEADER),
                http::HeaderValue::from_str(&self.token(name))
                    .unwrap_or(http::HeaderValue::from_static("?")),
            ),
        ]
    }

    /// The caller proven by `headers`, if any.
    pub fn verify(&self, headers: &http::HeaderMap) -> Option<Caller> {
        let name = headers.get(CALLER_HEADER)?.to_str().ok()?;
        if name.is_empty() || name.len() > 64 {
            return None;
        }
        let token = headers.get(TOKEN_HEADER)?.as_bytes();
        // Only a proven name is kept: a stranger inventing names cannot
        // fill the cache.
        let cached = self.tokens.read().get(name).cloned();
        let expected = cached.clone().unwrap_or_else(|| self.compute(name));
        if !same(token, expected.as_bytes()) {
            return None;
        }
        if cached.is_none() {
            self.keep(name, &expected);
        }
        Some(Caller(name.to_string()))
    }
}

/// Equal-time comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Adds service `name`'s headers to `headers` (no-op without a secret).
pub fn sign(auth: Option<&InternalAuth>, name: &str, headers: &mut http::HeaderMap) {
    if let Some(a) = auth {
        for (k, v) in a.headers_of(name) {
            headers.insert(k, v);
        }
    }
}

/// A tonic interceptor signing every call as one service (and carrying W3C
/// trace context, like [`crate::telemetry::TracePropagator`]).
#[derive(Debug, Clone)]
pub struct Signer {
    headers: Option<(
        tonic::metadata::AsciiMetadataValue,
        tonic::metadata::AsciiMetadataValue,
    )>,
}

impl Signer {
    /// Signs as `name` when `auth` is set.
    pub fn new(auth: Option<&InternalAuth>, name: &str) -> Self {
        Self {
            headers: auth.and_then(|a| {
                Some((
                    tonic::metadata::AsciiMetadataValue::try_from(name).ok()?,
                    tonic::metadata::AsciiMetadataValue::try_from(&*a.token(name)).ok()?,
                ))
            }),
        }
    }
}

impl tonic::service::Interceptor for Signer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        crate::telemetry::inject_current(req.metadata_mut());
        if let Some((caller, token)) = &self.headers {
            req.metadata_mut().insert(CALLER_HEADER, caller.clone());
            req.metadata_mut().insert(TOKEN_HEADER, token.clone());
        }
        Ok(req)
    }
}

/// Which calls a server lets through without an internal token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exempt {
    /// Health checks only (every service but the gateway).
    HealthOnly,
    /// Anything but the internal services' own paths: the gateway's
    /// public port (its callers have API keys instead).
    Public,
}

/// Is `path` let through without a token?
fn exempt(path: &str, mode: Exempt) -> bool {
    if path.starts_with("/grpc.health.v1.Health/") {
        return true;
    }
    match mode {
        Exempt::HealthOnly => false,
        Exempt::Public => true,
    }
}

/// Tower layer checking internal tokens ([`InternalAuth`]); records the
/// proven [`Caller`] in the request's extensions and strips identity
/// headers from calls that are not internal.
#[derive(Debug, Clone)]
pub struct CheckLayer {
    auth: Option<InternalAuth>,
    mode: Exempt,
}

impl CheckLayer {
    /// Checks with `auth` (`None`: open), letting `mode`'s calls through.
    pub fn new(auth: Option<InternalAuth>, mode: Exempt) -> Self {
        Self { auth, mode }
    }
}

impl<S> tower::Layer<S> for CheckLayer {
    type Service = Check<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Check {
            inner,
            auth: self.auth.clone(),
            mode: self.mode,
        }
    }
}

/// See [`CheckLayer`].
#[derive(Debug, Clone)]
pub struct Check<S> {
    inner: S,
    auth: Option<InternalAuth>,
    mode: Exempt,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, ReqB> tower::Service<http::Request<ReqB>> for Check<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, BoxFuture<Result<Self::Response, Self::Error>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let Some(auth) = &self.auth else {
            return futures::future::Either::Left(self.inner.call(req));
        };
        match auth.verify(req.headers()) {
            Some(caller) => {
                req.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(req))
            }
            None if exempt(req.uri().path(), self.mode) => {
                for h in IDENTITY_HEADERS {
                    req.headers_mut().remove(h);
                }
                futures::future::Either::Left(self.inner.call(req))
            }
            None => {
                metrics::counter!("discovery_internal_auth_refused_total").increment(1);
                let status = tonic::Status::unauthenticated(
                    "this is an internal port: calls need the x-discovery-caller and x-discovery-token headers of a discovery service (DISCOVERY_INTERNAL_SECRET); public callers use the gateway",
                );
                futures::future::Either::Right(Box::pin(async move { Ok(status.into_http()) }))
            }
        }
    }
}

/// Refuses a call unless it was proven to come from one of `allowed`
/// (always allowed when internal authentication is off).
#[allow(clippy::result_large_err)]
pub fn require_caller<T>(
    req: &tonic::Request<T>,
    auth_on: bool,
    allowed: &[&str],
    method: &str,
) -> Result<(), tonic::Status> {
    if !auth_on {
        return Ok(());
    }
    match req.extensions().get::<Caller>() {
        Some(Caller(c)) if allowed.contains(&c.as_str()) => Ok(()),
        Some(Caller(c)) => Err(tonic::Status::permission_denied(format!(
            "{method} is accepted only from {}; this call came from {c}",
            allowed.join(" or ")
        ))),
        None => Err(tonic::Status::permission_denied(format!(
            "{method} is accepted only from {}",
            allowed.join(" or ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_prove_a_service_and_nothing_else() {
        let a = InternalAuth::new(b"0123456789abcdef0123".to_vec());
        let mut h = http::HeaderMap::new();
        sign(Some(&a), "sync", &mut h);
        assert_eq!(a.verify(&h), Some(Caller("sync".into())));
        // Another name with sync's token: refused.
        h.insert(CALLER_HEADER, http::HeaderValue::from_static("gateway"));
        assert_eq!(a.verify(&h), None);
        // Another secret: refused.
        let b = InternalAuth::new(b"another secret of enough bytes".to_vec());
        let mut h = http::HeaderMap::new();
        sign(Some(&b), "sync", &mut h);
        assert_eq!(a.verify(&h), None);
        assert_eq!(a.verify(&http::HeaderMap::new()), None);
        assert!(!format!("{a:?}").contains("0123"));
        // Cached tokens are the computed ones; invented names past the
        // bound are computed each time and never kept.
        let first = a.token("sync");
        assert_eq!(a.token("sync"), first);
        for i in 0..100 {
            let mut h = http::HeaderMap::new();
            h.insert(CALLER_HEADER, format!("stranger-{i}").parse().unwrap());
            h.insert(TOKEN_HEADER, http::HeaderValue::from_static("00"));
            assert_eq!(a.verify(&h), None);
        }
        assert!(a.tokens.read().len() <= 1, "failed checks keep nothing");
        for i in 0..100 {
            let _ = a.token(&format!("service-{i}"));
        }
        assert!(a.tokens.read().len() <= MAX_CACHED);
        assert_eq!(a.token("sync"), first);
        let mut h = http::HeaderMap::new();
        sign(Some(&a), "stranger-99", &mut h);
        assert_eq!(a.verify(&h), Some(Caller("stranger-99".into())));
    }

    #[test]
    fn short_or_double_secrets_are_refused() {
        let env = crate::config::Env::from_pairs([("DISCOVERY_INTERNAL_SECRET", "short")]);
        let e = InternalAuth::from_env(&env).unwrap_err();
        assert!(
            e.to_string().starts_with("DISCOVERY_INTERNAL_SECRET:"),
            "{e}"
        );
        let env = crate::config::Env::from_pairs([("UNRELATED", "1")]);
        assert!(InternalAuth::from_env(&env).unwrap().is_none());
    }
}
