//! The gateway: the one public gRPC API (`discovery.v1.Discovery`).
//!
//! A byte-level proxy: a public call's message is forwarded untouched to
//! the upstream method with the same types ([`routes`]), so the gateway
//! never decodes or re-encodes a message. Around the forwarding sits a
//! stack of stages ([`stack`]): route and accounting, API keys ([`auth`]),
//! rate limits and in-flight bounds ([`limits`]), then [`proxy`] with
//! per-method circuit breakers ([`breaker`]), balancing over replicas with
//! health checks and ejection ([`upstream`]), retries and deadlines.
//! gRPC-Web (tonic-web) and CORS wrap the stack for browsers; compression
//! is negotiated end to end with the owning service (the gateway passes
//! `grpc-encoding` through and never recompresses).
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
pub mod grpc;
pub mod limits;
pub mod proxy;
pub mod routes;
pub mod stack;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use discovery_kit::CancellationToken;
use discovery_kit::cache::CacheConfig;
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::deps::Dependency;
use discovery_kit::server::{BoxError, ServeConfig, ServiceHandle};
use discovery_kit::store::{StoreConfig, Workload};
use discovery_proto::service_names;
use discovery_proto::topology::{FACE_ANALYSIS, GATEWAY, MONITORING, RECOMMENDATION, SYNC};
use tonic::service::Routes;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use crate::auth::KeyRing;
use crate::limits::{InFlight, LimitConfig, Limiter};
use crate::proxy::{Proxy, ProxyConfig};
use crate::routes::Upstream;
use crate::stack::{Admit, Authenticate, Discovery, Front};
use crate::upstream::{Pool, PoolConfig};

/// Upstream URLs, one list per service.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// Face-analysis replicas.
    pub face_analysis: Vec<String>,
    /// Recommendation replicas.
    pub recommendation: Vec<String>,
    /// Sync replicas.
    pub sync: Vec<String>,
    /// Monitoring replicas.
    pub monitoring: Vec<String>,
}

impl Upstreams {
    fn of(&self, u: Upstream) -> &[String] {
        match u {
            Upstream::FaceAnalysis => &self.face_analysis,
            Upstream::Recommendation => &self.recommendation,
            Upstream::Sync => &self.sync,
            Upstream::Monitoring => &self.monitoring,
        }
    }
}

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Upstream services.
    pub upstreams: Upstreams,
    /// Where API keys live.
    pub store: StoreConfig,
    /// Redis Cluster (shared rate-limit state).
    pub cache: CacheConfig,
    /// Rate and concurrency limits.
    pub limits: LimitConfig,
    /// Replica pools.
    pub pools: PoolConfig,
    /// Forwarding.
    pub proxy: ProxyConfig,
    /// How often API keys are reloaded.
    pub keys_refresh: Duration,
    /// Origins allowed for browser (gRPC-Web) calls; `*` for any.
    pub cors_origins: Vec<String>,
    /// TLS certificate chain and key (PEM files); plaintext when None.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Proxies (load balancers) whose forwarding headers are believed.
    pub trusted_proxies: client_addr::TrustedProxies,
}

fn urls(env: &Env, var: &'static str, default: &str) -> Result<Vec<String>, ConfigError> {
    let list = env.list(var, &[default]);
    if list.is_empty() {
        return Err(ConfigError::new(
            var,
            "give at least one URL (http://host:port, or dns://host:port to resolve every replica)",
        ));
    }
    for u in &list {
        let check = u.replace("dns://", "http://");
        discovery_kit::client::endpoint(var, &check)
            .map_err(|e| ConfigError::new(var, format!("{u:?}: {}", e.reason)))?;
    }
    Ok(list)
}

impl Config {
    /// Reads `DISCOVERY_GATEWAY_PORT`, the `DISCOVERY_*_URLS` lists, the
    /// store, Redis and limit variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let pools = PoolConfig {
            connections: env.parse(
                "DISCOVERY_GATEWAY_CONNECTIONS",
                1,
                "a number of connections",
            )?,
            workers: env.parse(
                "DISCOVERY_GATEWAY_WORKERS",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
                "a number of threads",
            )?,
            check_interval: env.duration("DISCOVERY_HEALTH_INTERVAL", Duration::from_secs(10))?,
            ..PoolConfig::default()
        };
        if pools.connections == 0 || pools.check_interval.is_zero() {
            return Err(ConfigError::new(
                "DISCOVERY_GATEWAY_CONNECTIONS",
                "connections and DISCOVERY_HEALTH_INTERVAL must be above zero",
            ));
        }
        if pools.workers == 0 {
            return Err(ConfigError::new(
                "DISCOVERY_GATEWAY_WORKERS",
                "give at least 1 worker thread",
            ));
        }
        let defaults = ProxyConfig::default();
        let proxy = ProxyConfig {
            retries: env.parse("DISCOVERY_GATEWAY_RETRIES", 2, "a number of retries")?,
            stream_idle: env.duration("DISCOVERY_GATEWAY_BODY_TIMEOUT", defaults.stream_idle)?,
            min_deadline: env.duration("DISCOVERY_GATEWAY_MIN_DEADLINE", defaults.min_deadline)?,
            max_deadline: env.duration("DISCOVERY_GATEWAY_MAX_DEADLINE", defaults.max_deadline)?,
            ..defaults
        };
        if proxy.max_deadline.is_zero() || proxy.min_deadline >= proxy.max_deadline {
            return Err(ConfigError::new(
                "DISCOVERY_GATEWAY_MAX_DEADLINE",
                "must be above zero and above DISCOVERY_GATEWAY_MIN_DEADLINE",
            ));
        }
        let mut serve = ServeConfig::from_env(env, GATEWAY.port_var, GATEWAY.port)?;
        // The public port: API keys instead of internal tokens, and
        // reflection of the public API on unless turned off.
        serve.exempt = discovery_kit::internal::Exempt::Public;
        serve.reflection = env.bool("DISCOVERY_REFLECTION", true)?;
        let proxy = ProxyConfig {
            internal: serve.internal.clone(),
            ..proxy
        };
        Ok(Self {
            serve,
            upstreams: Upstreams {
                face_analysis: urls(env, FACE_ANALYSIS.urls_var, FACE_ANALYSIS.default_url)?,
                recommendation: urls(env, RECOMMENDATION.urls_var, RECOMMENDATION.default_url)?,
                sync: urls(env, SYNC.urls_var, SYNC.default_url)?,
                monitoring: urls(env, MONITORING.urls_var, MONITORING.default_url)?,
            },
            store: StoreConfig::from_env(env)?,
            cache: CacheConfig::from_env(env)?,
            limits: LimitConfig::from_env(env)?,
            pools,
            proxy,
            keys_refresh: env.duration("DISCOVERY_API_KEYS_REFRESH", Duration::from_secs(10))?,
            cors_origins: env.list("DISCOVERY_CORS_ORIGINS", &["*"]),
            trusted_proxies: client_addr::TrustedProxies::from_env(env)?,
            tls: match (env.raw("DISCOVERY_TLS_CERT"), env.raw("DISCOVERY_TLS_KEY")) {
                (None, None) => None,
                (Some(c), Some(k)) => Some((c.into(), k.into())),
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        "DISCOVERY_TLS_KEY",
                        "DISCOVERY_TLS_CERT is set: give the private key (PEM) too",
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        "DISCOVERY_TLS_CERT",
                        "DISCOVERY_TLS_KEY is set: give the certificate chain (PEM) too",
                    ));
                }
            },
        })
    }
}

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
    /// The forwarding stage (breakers, pools).
    pub proxy: Proxy,
    /// API keys.
    pub keys: Arc<KeyRing>,
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
    let mut pools = Vec::new();
    for u in Upstream::ALL {
        pools.push(Pool::new(
            u,
            config.upstreams.of(u).to_vec(),
            config.pools.clone(),
        )?);
    }
    let proxy = Proxy::new(pools.clone(), config.proxy.clone());
    let stack = stack::build(vec![
        Arc::new(Front),
        Arc::new(Authenticate {
            keys: keys.clone(),
            trusted: Arc::new(config.trusted_proxies.clone()),
        }),
        Arc::new(Admit { limiter, in_flight }),
        Arc::new(proxy.clone()),
    ]);
    let web = cors(&config.cors_origins).layer(tonic_web::GrpcWebLayer::new().layer(stack.clone()));
    let public = Discovery {
        native: stack,
        web: BoxCloneSyncService::new(web),
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
    let mut handle = ServiceHandle::start_on_workers(
        "gateway",
        &config.serve,
        Routes::new(public),
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
    for pool in pools {
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
    Ok((handle, Parts { proxy, keys }))
}
