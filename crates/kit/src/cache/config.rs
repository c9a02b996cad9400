//! The cache's variables: Redis nodes, auth, TLS, the L1 budget.

use super::*;

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// L1 budget in bytes.
    pub l1_bytes: u64,
    /// Redis Cluster seed nodes (`host:port`); empty means no L2.
    pub redis_nodes: Vec<(String, u16)>,
    /// Connections per node.
    pub redis_pool: usize,
    /// Per-command timeout for L2 (a slow Redis degrades, it does not stall).
    pub redis_timeout: Duration,
    /// Redis ACL user and password (`DISCOVERY_REDIS_USERNAME`,
    /// `DISCOVERY_REDIS_PASSWORD` or `DISCOVERY_REDIS_PASSWORD_FILE`).
    pub redis_auth: Option<RedisAuth>,
    /// TLS to every node (`rediss://` URLs), with an optional private CA
    /// (`DISCOVERY_REDIS_CA_FILE`, PEM) beside the system roots.
    pub redis_tls: Option<RedisTls>,
}

/// Credentials for Redis (`AUTH [user] password`).
#[derive(Clone)]
pub struct RedisAuth {
    /// ACL user; `None` for the default user.
    pub username: Option<String>,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &"<secret>")
            .finish()
    }
}

/// TLS settings for Redis.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// PEM file of a private CA to trust (besides the system roots).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Reads a secret from `var`, or from the file `var_FILE` names (a mounted
/// Kubernetes or compose secret: the value never sits in the environment).
pub fn secret(env: &Env, var: &str) -> Result<Option<String>, ConfigError> {
    let file_var = format!("{var}_FILE");
    match (env.raw(var), env.raw(&file_var)) {
        (None, None) => Ok(None),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| ConfigError::new(&file_var, format!("{path}: {e}"))),
        (Some(_), Some(_)) => Err(ConfigError::new(
            var,
            format!("set {var} or {file_var}, not both"),
        )),
    }
}

impl CacheConfig {
    /// Reads `DISCOVERY_CACHE_L1_BYTES`, `DISCOVERY_REDIS_URLS`, `DISCOVERY_REDIS_POOL`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut nodes = Vec::new();
        let urls = env.list("DISCOVERY_REDIS_URLS", &[]);
        let tls_urls = urls
            .iter()
            .filter(|u| u.trim().starts_with("rediss://"))
            .count();
        if tls_urls != 0 && tls_urls != urls.len() {
            return Err(ConfigError::new(
                "DISCOVERY_REDIS_URLS",
                "mixes rediss:// (TLS) and plain nodes; use one scheme for the whole cluster",
            ));
        }
        for url in &urls {
            nodes.push(parse_node(url).ok_or_else(|| {
                ConfigError::new(
                    "DISCOVERY_REDIS_URLS",
                    format!("{url:?} is not a Redis node (redis://host:port, rediss://host:port or host:port)"),
                )
            })?);
        }
        let password = secret(env, "DISCOVERY_REDIS_PASSWORD")?;
        let username = env
            .raw("DISCOVERY_REDIS_USERNAME")
            .filter(|u| !u.is_empty());
        if username.is_some() && password.is_none() {
            return Err(ConfigError::new(
                "DISCOVERY_REDIS_PASSWORD",
                "DISCOVERY_REDIS_USERNAME is set: give the password too (or DISCOVERY_REDIS_PASSWORD_FILE)",
            ));
        }
        let ca_file = env.raw("DISCOVERY_REDIS_CA_FILE").filter(|f| !f.is_empty());
        if ca_file.is_some() && tls_urls == 0 {
            return Err(ConfigError::new(
                "DISCOVERY_REDIS_CA_FILE",
                "a CA only matters with TLS: use rediss:// URLs in DISCOVERY_REDIS_URLS",
            ));
        }
        Ok(Self {
            l1_bytes: env.parse("DISCOVERY_CACHE_L1_BYTES", 256 << 20, "a number of bytes")?,
            redis_nodes: nodes,
            redis_pool: env.parse("DISCOVERY_REDIS_POOL", 4usize, "a whole number")?,
            redis_timeout: Duration::from_millis(250),
            redis_auth: password.map(|password| RedisAuth { username, password }),
            redis_tls: (tls_urls > 0).then(|| RedisTls {
                ca_file: ca_file.map(Into::into),
            }),
        })
    }

    /// L1 only, with `bytes` of budget.
    pub fn l1_only(bytes: u64) -> Self {
        Self {
            l1_bytes: bytes,
            redis_nodes: Vec::new(),
            redis_pool: 1,
            redis_timeout: Duration::from_millis(250),
            redis_auth: None,
            redis_tls: None,
        }
    }
}

pub(super) fn parse_node(url: &str) -> Option<(String, u16)> {
    let rest = url
        .trim()
        .trim_start_matches("redis://")
        .trim_start_matches("rediss://")
        .trim_start_matches("redis-cluster://");
    let rest = rest.split('/').next()?;
    let (host, port) = rest.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}
