//! The L2 connection: a `fred` pool over Redis Cluster (or one node),
//! with auth and TLS from the cache's variables.

use super::*;

/// The fred builder every Redis Cluster client here uses: 2 s connect,
/// `redis_timeout` per command, fail fast, reconnect with backoff. None
/// without nodes.
pub(super) fn redis_builder(config: &CacheConfig) -> Result<Option<Builder>, CacheError> {
    if config.redis_nodes.is_empty() {
        return Ok(None);
    }
    let timeout = config.redis_timeout;
    let mut b = Builder::from_config(redis_config(config)?);
    b.with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(2);
        c.max_command_attempts = 2;
    })
    .with_performance_config(|p| {
        p.default_command_timeout = timeout;
    })
    .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(Some(b))
}

pub(super) fn init_in_background(pool: &Pool) {
    let p = pool.clone();
    tokio::spawn(async move {
        if let Err(e) = p.init().await {
            tracing::warn!(error = %e, "Redis Cluster not reachable yet; serving without it until it is");
        }
    });
}

/// One `PING` through `pool` (bounded by its command timeout).
pub async fn ping_redis(pool: &Pool) -> Result<(), String> {
    pool.next()
        .ping::<()>(None)
        .await
        .map_err(|e| format!("Redis Cluster: {e}"))
}

/// A Redis Cluster connection pool with the cache's settings, connecting
/// in the background (commands fail fast until it is up). None when no
/// nodes are configured. For other Redis users (the gateway's limiter).
pub fn redis_pool(config: &CacheConfig) -> Result<Option<Pool>, CacheError> {
    let Some(builder) = redis_builder(config)? else {
        return Ok(None);
    };
    let pool = builder
        .build_pool(config.redis_pool.max(1))
        .map_err(|e| CacheError(e.to_string()))?;
    init_in_background(&pool);
    Ok(Some(pool))
}

pub(super) fn redis_config(config: &CacheConfig) -> Result<Config, CacheError> {
    let mut cfg = Config {
        server: ServerConfig::new_clustered(config.redis_nodes.clone()),
        fail_fast: true,
        ..Default::default()
    };
    cfg.version = fred::types::RespVersion::RESP3;
    if let Some(auth) = &config.redis_auth {
        cfg.username = auth.username.clone();
        cfg.password = Some(auth.password.clone());
    }
    if let Some(tls) = &config.redis_tls {
        cfg.tls = Some(redis_tls(tls)?);
    }
    Ok(cfg)
}

/// rustls (ring) with the system roots plus an optional private CA.
pub(super) fn redis_tls(tls: &RedisTls) -> Result<fred::types::config::TlsConfig, CacheError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &tls.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| CacheError(format!("DISCOVERY_REDIS_CA_FILE {}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                CacheError(format!("DISCOVERY_REDIS_CA_FILE {}: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                CacheError(format!("DISCOVERY_REDIS_CA_FILE {}: {e}", path.display()))
            })?;
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CacheError(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(fred::types::config::TlsConfig {
        connector: fred::types::config::TlsConnector::from(client),
        hostnames: fred::types::config::TlsHostMapping::None,
    })
}
