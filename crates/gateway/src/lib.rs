//! The gateway: the one public gRPC API (`discovery.v1.Discovery`).
//!
//! A byte-level proxy: a public call's message is forwarded untouched to
//! the upstream method with the same types ([`routes`]), so the gateway
//! never decodes or re-encodes a message. Around the forwarding sits a
//! stack of tower layers ([`layers`]): routing and metrics, API keys
//! ([`auth`]), rate limits and in-flight bounds ([`limits`]), the caller's
//! body, deadlines, fallback answers, per-method circuit breakers
//! ([`breaker`]), retries, and balancing over replicas with health checks
//! and ejection ([`upstream`]). gRPC-Web (tonic-web) and CORS wrap the
//! stack for browsers; compression is negotiated end to end with the
//! owning service (the gateway passes `grpc-encoding` through and never
//! recompresses).
//!
//! Architecture invariant: the gateway holds no domain logic; every RPC is
//! answered by the service that owns it, or refused here for a reason of
//! the caller's (key, limit, overload) or of the upstream's (open circuit,
//! no healthy replica, deadline).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod breaker;
pub mod client_addr;
pub mod config;
pub mod connect;
pub mod grpc;
pub mod layers;
pub mod limits;
pub mod routes;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use discovery_kit::CancellationToken;
use discovery_kit::config::ConfigError;
use discovery_kit::deps::Dependency;
use discovery_kit::server::{BoxError, ServiceHandle};
use discovery_kit::store::Workload;
use discovery_proto::service_names;
use tonic::service::Routes;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use crate::auth::KeyRing;
use crate::layers::breaker::Breakers;
use crate::layers::{Discovery, balance::Pools};
use crate::limits::{InFlight, Limiter};
use crate::routes::Upstream;
use crate::upstream::Pool;

pub use crate::config::Config;

fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let exposed = [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "retry-after",
        "x-discovery-reason",
    ]
    .map(http::HeaderName::from_static);
    let layer = CorsLayer::new()
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers(exposed)
        .max_age(Duration::from_secs(3600));
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<http::HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// A running gateway's parts, for tests and operators.
#[derive(Clone)]
pub struct Parts {
    /// Per-method breakers.
    pub breakers: Arc<Breakers>,
    /// Replica pools.
    pub pools: Pools,
    /// API keys.
    pub keys: Arc<KeyRing>,
}

impl Parts {
    /// A method's breaker state ("closed", "open", "half-open").
    pub fn breaker_state(&self, method: &str) -> Option<&'static str> {
        self.breakers.state(method)
    }

    /// An upstream's pool.
    pub fn pool(&self, upstream: Upstream) -> Option<&Arc<Pool>> {
        self.pools.get(&upstream)
    }
}

/// Starts the gateway.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    spawn_with_parts(config, shutdown).await.map(|(h, _)| h)
}

/// Starts the gateway and returns its parts too.
pub async fn spawn_with_parts(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(ServiceHandle, Parts), BoxError> {
    let store = config.store.connect(Workload::Realtime).await?;
    let keys = Arc::new(KeyRing::default());
    let n = keys.refresh(&store).await?;
    if n == 0 {
        tracing::warn!(
            "no API keys: every call will be refused; create one with `discovery keys create`"
        );
    } else {
        tracing::info!(keys = n, "API keys loaded");
    }
    let redis = discovery_kit::cache::redis_pool(&config.cache)?;
    let deps = Dependency::store_and_redis(store.clone(), redis.clone());
    let limiter = Limiter::new(Arc::new(config.limits.clone()), redis);
    if config.limits.replicas_from.is_some() {
        let (l, stop) = (limiter.clone(), shutdown.clone());
        tokio::spawn(async move { l.follow_replicas(stop).await });
    }
    let in_flight = InFlight::new(&config.limits);
    let mut pools = std::collections::HashMap::new();
    for u in Upstream::ALL {
        let pool = Pool::new(u, config.upstreams.of(u).to_vec(), config.pools.clone())?;
        pools.insert(u, pool);
    }
    let pools: Pools = Arc::new(pools);
    let breakers = Breakers::new(config.proxy.breaker);
    let stack = layers::stack(layers::Parts {
        keys: keys.clone(),
        trusted: Arc::new(config.trusted_proxies.clone()),
        limiter,
        in_flight,
        breakers: breakers.clone(),
        pools: pools.clone(),
        proxy: config.proxy.clone(),
    });
    let web = cors(&config.cors_origins).layer(tonic_web::GrpcWebLayer::new().layer(stack.clone()));
    let connect = cors(&config.cors_origins).layer(
        connect::ConnectLayer::new(keys.clone(), config.limits.body_timeout).layer(stack.clone()),
    );
    let public = Discovery {
        native: stack,
        web: BoxCloneSyncService::new(web),
        connect: BoxCloneSyncService::new(connect),
        body_timeout: config.limits.body_timeout,
    };
    let tls = match &config.tls {
        None => None,
        Some((cert, key)) => {
            let read = |var: &str, p: &std::path::Path| {
                std::fs::read(p).map_err(|e| ConfigError::new(var, format!("{}: {e}", p.display())))
            };
            let identity = tonic::transport::Identity::from_pem(
                read("DISCOVERY_TLS_CERT", cert)?,
                read("DISCOVERY_TLS_KEY", key)?,
            );
            Some(
                tonic::transport::ServerTlsConfig::new()
                    .identity(identity)
                    .timeout(config.serve.limits.handshake_timeout),
            )
        }
    };
    let mut routes = Routes::new(public);
    connect::openapi::serve(&mut routes);
    let mut handle = ServiceHandle::start_on_workers(
        "gateway",
        &config.serve,
        routes,
        &[service_names::DISCOVERY],
        None,
        shutdown.clone(),
        config.pools.workers,
        // gRPC-Web from browsers arrives over HTTP/1.1; TLS when configured.
        |b| {
            let b = b.accept_http1(true);
            match &tls {
                Some(t) => b.tls_config(t.clone()),
                None => Ok(b),
            }
        },
    )
    .await?;
    handle.watch_dependencies(&config.serve, deps, shutdown.clone());
    for pool in pools.values().cloned() {
        let token = shutdown.clone();
        handle.push_task(tokio::spawn(async move {
            pool.run(token).await;
            Ok(())
        }));
    }
    let (ring, token, every) = (keys.clone(), shutdown.clone(), config.keys_refresh);
    handle.push_task(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            if let Err(e) = ring.refresh(&store).await {
                tracing::warn!(error = %e, "reloading API keys failed; keeping the last set");
            }
        }
    }));
    Ok((
        handle,
        Parts {
            breakers,
            pools,
            keys,
        },
    ))
}
