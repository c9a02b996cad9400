//! The gateway's configuration: its variables (documented from
//! [`VARIABLES`]) and the [`Config`] read from them.

use std::time::Duration;

use discovery_kit::cache::CacheConfig;
use discovery_kit::config::{ConfigError, Env, Variable};
use discovery_kit::server::ServeConfig;
use discovery_kit::store::StoreConfig;
use discovery_proto::topology::{FACE_ANALYSIS, GATEWAY, MONITORING, RECOMMENDATION, SYNC};

use crate::breaker::BreakerConfig;
use crate::client_addr;
use crate::limits::LimitConfig;
use crate::routes::Upstream;
use crate::upstream::PoolConfig;

/// This service's variables, with their defaults (the launcher lists them
/// with everyone's: `discovery env`, the README).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DISCOVERY_GATEWAY_PORT",
        default: "50051",
        help: "gateway gRPC port (public API, gRPC-Web)",
    },
    Variable {
        name: "DISCOVERY_API_KEYS_REFRESH",
        default: "10s",
        help: "gateway: how often API keys are reloaded from api_keys (revocations take effect within it)",
    },
    Variable {
        name: "DISCOVERY_CORS_ORIGINS",
        default: "*",
        help: "gateway: origins allowed for browser gRPC-Web calls (comma-separated)",
    },
    Variable {
        name: "DISCOVERY_LIMITS",
        default: "true",
        help: "gateway: rate and per-method concurrency limits on or off (benchmarks)",
    },
    Variable {
        name: "DISCOVERY_LIMIT_GLOBAL",
        default: "1000/s:2000",
        help: "gateway: every call, all gateways together (N/s, N/m, N/h, optional :BURST, or off)",
    },
    Variable {
        name: "DISCOVERY_LIMIT_FACE",
        default: "50/m",
        help: "gateway: AnalyzeFace, all callers",
    },
    Variable {
        name: "DISCOVERY_LIMIT_RECOMMEND",
        default: "200/m",
        help: "gateway: Recommend, all callers",
    },
    Variable {
        name: "DISCOVERY_LIMIT_AUTHENTICATED",
        default: "100/m,face=10/h,recommend=20/m",
        help: "gateway: per signed-in user (x-user-id)",
    },
    Variable {
        name: "DISCOVERY_LIMIT_ANONYMOUS",
        default: "20/m,face=3/h,recommend=5/m",
        help: "gateway: per address for anonymous callers",
    },
    Variable {
        name: "DISCOVERY_LIMIT_PARTNER",
        default: "off",
        help: "gateway: per partner key",
    },
    Variable {
        name: "DISCOVERY_CONCURRENCY_FACE",
        default: "10",
        help: "gateway: AnalyzeFace calls in flight per gateway",
    },
    Variable {
        name: "DISCOVERY_CONCURRENCY_RECOMMEND",
        default: "50",
        help: "gateway: Recommend calls in flight per gateway",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_MAX_IN_FLIGHT",
        default: "2000",
        help: "gateway: calls in flight before shedding (RESOURCE_EXHAUSTED, retry-after)",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_REPLICAS",
        default: "1",
        help: "gateway: replica count, or dns://host:port of the gateway's headless Service to count them; the local fallback (Redis down) divides limits by it",
    },
    Variable {
        name: "DISCOVERY_LIMIT_REDIS_TIMEOUT",
        default: "50ms",
        help: "gateway: Redis answer time before the local fallback",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_CONNECTIONS",
        default: "1",
        help: "gateway: HTTP/2 connections per upstream replica and worker",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_WORKERS",
        default: "cores",
        help: "gateway: worker threads, each serving its connections start to end",
    },
    Variable {
        name: "DISCOVERY_HEALTH_INTERVAL",
        default: "10s",
        help: "gateway: upstream health checks (unhealthy after 3 failures, healthy after 2 successes)",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_RETRIES",
        default: "2",
        help: "gateway: extra attempts for idempotent calls, on another replica, within a retry budget",
    },
    Variable {
        name: "DISCOVERY_TRUSTED_PROXIES",
        default: "",
        help: "gateway: CIDRs of the load balancers whose X-Forwarded-For / Forwarded name the client (empty: the TCP peer is the client)",
    },
    Variable {
        name: "DISCOVERY_LIMIT_CLIENT_SHARE",
        default: "0.5",
        help: "gateway: the largest share of the global rate and in-flight budgets one client (API key's client) may take; 1 turns it off",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_BODY_TIMEOUT",
        default: "10s",
        help: "gateway: a unary request body must arrive within this (a photo: 4x); a stream must send a frame at least this often",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_MIN_DEADLINE",
        default: "5ms",
        help: "gateway: shortest caller deadline (grpc-timeout) forwarded; shorter ones answer DEADLINE_EXCEEDED at once",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_MAX_DEADLINE",
        default: "60s",
        help: "gateway: longest deadline honoured; callers asking more get this",
    },
];

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
    pub(crate) fn of(&self, u: Upstream) -> &[String] {
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

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Longest deadline honoured (callers asking more get this).
    pub max_deadline: Duration,
    /// Shortest caller deadline forwarded: a call whose `grpc-timeout` is
    /// below it is answered DEADLINE_EXCEEDED at once, without touching an
    /// upstream (no useful answer fits in it, and it must cost nothing).
    pub min_deadline: Duration,
    /// Extra attempts for idempotent calls.
    pub retries: u32,
    /// A client stream must send a frame at least this often.
    pub stream_idle: Duration,
    /// Signs upstream calls as the gateway.
    pub internal: Option<discovery_kit::internal::InternalAuth>,
    /// Breakers.
    pub breaker: BreakerConfig,
    /// How long a fallback response is kept.
    pub fallback_ttl: Duration,
    /// Fallback store budget, bytes.
    pub fallback_bytes: u64,
    /// Largest response kept for fallback.
    pub fallback_max_response: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_deadline: Duration::from_secs(60),
            min_deadline: Duration::from_millis(5),
            retries: 2,
            stream_idle: Duration::from_secs(10),
            internal: None,
            breaker: BreakerConfig::default(),
            fallback_ttl: Duration::from_secs(600),
            fallback_bytes: 64 << 20,
            fallback_max_response: 1 << 20,
        }
    }
}
