//! Configuration from environment variables.
//!
//! Every variable is read through [`Env`], which names the variable in every
//! error, so a bad value fails start-up with one line an operator can act on:
//! `DISCOVERY_GATEWAY_PORT: "80a" is not a valid port number (0-65535)`.
//! Defaults live next to the variable they belong to, and [`VARIABLES`] lists
//! them all for `discovery --help` and the README.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The variable at fault.
    pub var: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl ConfigError {
    /// An error for `var`.
    pub fn new(var: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            var: var.into(),
            reason: reason.into(),
        }
    }
}

/// Where variables come from: the process environment, or a map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    overrides: Option<HashMap<String, String>>,
    process_fallback: bool,
}

impl Env {
    /// Reads the process environment.
    pub fn process() -> Self {
        Self {
            overrides: None,
            process_fallback: true,
        }
    }

    /// The process environment with `pairs` taking precedence (an empty value
    /// in `pairs` unsets the variable).
    pub fn process_with<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            process_fallback: true,
            ..Self::from_pairs(pairs)
        }
    }

    /// This environment with more overrides on top.
    pub fn with<K: Into<String>, V: Into<String>>(mut self, key: K, value: V) -> Self {
        self.overrides
            .get_or_insert_with(HashMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// This environment with several more overrides on top.
    pub fn with_all<I, K, V>(self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        pairs.into_iter().fold(self, |env, (k, v)| env.with(k, v))
    }

    /// Reads only the given pairs (for tests and for `discovery up`).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            overrides: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            process_fallback: false,
        }
    }

    /// The raw value, if set and not empty.
    pub fn raw(&self, var: &str) -> Option<String> {
        let v = match self.overrides.as_ref().and_then(|m| m.get(var)) {
            Some(v) => Some(v.clone()),
            None if self.process_fallback => std::env::var(var).ok(),
            None => None,
        };
        v.filter(|s| !s.trim().is_empty())
    }

    /// A string with a default.
    pub fn string(&self, var: &str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_string())
    }

    /// A parsed value with a default; `what` describes the expected form.
    pub fn parse<T>(&self, var: &str, default: T, what: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(var) {
            None => Ok(default),
            Some(s) => s
                .trim()
                .parse()
                .map_err(|e| ConfigError::new(var, format!("{s:?} is not {what} ({e})"))),
        }
    }

    /// A TCP port.
    pub fn port(&self, var: &str, default: u16) -> Result<u16, ConfigError> {
        self.parse(var, default, "a valid port number (0-65535)")
    }

    /// An IP address to bind.
    pub fn ip(&self, var: &str, default: IpAddr) -> Result<IpAddr, ConfigError> {
        self.parse(var, default, "an IP address such as 0.0.0.0 or 127.0.0.1")
    }

    /// A boolean: true/false, 1/0, yes/no, on/off.
    pub fn bool(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::new(
                    var,
                    format!("{s:?} is not a boolean (use true or false)"),
                )),
            },
        }
    }

    /// A duration: `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
    pub fn duration(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(s) => parse_duration(&s).ok_or_else(|| {
                ConfigError::new(
                    var,
                    format!("{s:?} is not a duration (examples: 250ms, 5s, 2m, 1h)"),
                )
            }),
        }
    }

    /// A comma-separated list.
    pub fn list(&self, var: &str, default: &[&str]) -> Vec<String> {
        match self.raw(var) {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some(s) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// A socket address built from a bind IP variable and a port variable.
    pub fn listen(
        &self,
        ip_var: &str,
        port_var: &str,
        default_port: u16,
    ) -> Result<SocketAddr, ConfigError> {
        let ip = self.ip(ip_var, IpAddr::from([127, 0, 0, 1]))?;
        let port = self.port(port_var, default_port)?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit.trim() {
        "us" => n / 1_000_000.0,
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// One documented variable.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    /// Name.
    pub name: &'static str,
    /// Default, as text.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
}

/// The kit's own variables (server, store, cache, telemetry), with their
/// defaults. Each service lists its own (`<crate>::config::VARIABLES`) and
/// the launcher all of them (`discovery::variables()`, which a test checks
/// against the code and the README).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DISCOVERY_HOSTS",
        default: "",
        help: "static addresses for dns:// names, like /etc/hosts: `name=ip,ip name2=ip` (runs the chart's topology on one machine)",
    },
    Variable {
        name: "DISCOVERY_BIND_IP",
        default: "127.0.0.1",
        help: "IP every service binds (0.0.0.0 in containers)",
    },
    Variable {
        name: "DISCOVERY_SERVICE",
        default: "",
        help: "the service `discovery serve` runs when none is named (set by the images)",
    },
    Variable {
        name: "DISCOVERY_METRICS_PORT",
        default: "9090",
        help: "Prometheus /metrics HTTP port of a service binary (0 disables); `discovery up` serves one on this port for all five",
    },
    Variable {
        name: "DISCOVERY_MAX_CONNECTIONS",
        default: "10000",
        help: "every service: open connections at once; more are closed as they arrive",
    },
    Variable {
        name: "DISCOVERY_MAX_STREAMS",
        default: "256",
        help: "every service: concurrent HTTP/2 streams per connection",
    },
    Variable {
        name: "DISCOVERY_HANDSHAKE_TIMEOUT",
        default: "10s",
        help: "every service: a TLS handshake not finished within this is cut",
    },
    Variable {
        name: "DISCOVERY_MONGO_URI_FILE",
        default: "",
        help: "a file holding DISCOVERY_MONGO_URI (when the URI carries credentials: keep it in a secret)",
    },
    Variable {
        name: "DISCOVERY_MONGO_USERNAME",
        default: "",
        help: "MongoDB user (SCRAM), given apart from the URI",
    },
    Variable {
        name: "DISCOVERY_MONGO_PASSWORD_FILE",
        default: "",
        help: "a file holding the MongoDB password (or DISCOVERY_MONGO_PASSWORD)",
    },
    Variable {
        name: "DISCOVERY_REDIS_USERNAME",
        default: "",
        help: "Redis ACL user (default user when empty)",
    },
    Variable {
        name: "DISCOVERY_REDIS_PASSWORD_FILE",
        default: "",
        help: "a file holding the Redis password (or DISCOVERY_REDIS_PASSWORD); AUTH on every connection",
    },
    Variable {
        name: "DISCOVERY_REDIS_CA_FILE",
        default: "",
        help: "PEM CA trusted for rediss:// (TLS) nodes, besides the system roots",
    },
    Variable {
        name: "DISCOVERY_INTERNAL_SECRET",
        default: "",
        help: "every service: shared secret for calls between services (at least 16 bytes); internal ports refuse calls without its tokens",
    },
    Variable {
        name: "DISCOVERY_INTERNAL_SECRET_FILE",
        default: "",
        help: "every service: a file holding DISCOVERY_INTERNAL_SECRET (a mounted Kubernetes or compose secret)",
    },
    Variable {
        name: "DISCOVERY_REFLECTION",
        default: "off (gateway: on)",
        help: "every service: serve gRPC reflection",
    },
    Variable {
        name: "DISCOVERY_TLS_CERT",
        default: "",
        help: "gateway: TLS certificate chain (PEM file); with DISCOVERY_TLS_KEY, serves TLS (HTTP/2 and gRPC-Web)",
    },
    Variable {
        name: "DISCOVERY_TLS_KEY",
        default: "",
        help: "gateway: TLS private key (PEM file)",
    },
    Variable {
        name: "DISCOVERY_STORE",
        default: "memory",
        help: "`memory` (embedded, in-process) or `mongodb`",
    },
    Variable {
        name: "DISCOVERY_MONGO_URI",
        default: "mongodb://127.0.0.1:27017/?replicaSet=rs0",
        help: "MongoDB connection string (when DISCOVERY_STORE=mongodb)",
    },
    Variable {
        name: "DISCOVERY_MONGO_DATABASE",
        default: "discovery",
        help: "MongoDB database name",
    },
    Variable {
        name: "DISCOVERY_MONGO_MIN_POOL",
        default: "5",
        help: "minimum connections per MongoDB host",
    },
    Variable {
        name: "DISCOVERY_MONGO_MAX_POOL",
        default: "50",
        help: "maximum connections per MongoDB host",
    },
    Variable {
        name: "DISCOVERY_MONGO_MAX_IDLE",
        default: "30s",
        help: "close pooled connections idle this long",
    },
    Variable {
        name: "DISCOVERY_MONGO_TIMEOUT",
        default: "5s",
        help: "server selection and connect timeout; start-up fails after it",
    },
    Variable {
        name: "DISCOVERY_REDIS_URLS",
        default: "",
        help: "comma-separated Redis Cluster seed nodes (redis://host:port); empty means L1-only cache",
    },
    Variable {
        name: "DISCOVERY_REDIS_POOL",
        default: "4",
        help: "Redis connections per node",
    },
    Variable {
        name: "DISCOVERY_CACHE_L1_BYTES",
        default: "268435456",
        help: "in-process cache budget in bytes per service",
    },
    Variable {
        name: "DISCOVERY_LOG_FORMAT",
        default: "pretty",
        help: "`pretty` or `json` log lines",
    },
    Variable {
        name: "RUST_LOG",
        default: "info",
        help: "log filter (tracing-subscriber EnvFilter syntax)",
    },
    Variable {
        name: "DISCOVERY_TRACE_FILTER",
        default: "info",
        help: "which spans are exported (EnvFilter syntax), apart from RUST_LOG: quieter logs keep their traces",
    },
    Variable {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: "",
        help: "OTLP/gRPC endpoint for traces (e.g. http://jaeger:4317); unset disables export",
    },
    Variable {
        name: "OTEL_TRACES_SAMPLER_ARG",
        default: "1.0",
        help: "parent-based trace sampling ratio in [0, 1]",
    },
    Variable {
        name: "OTEL_SERVICE_NAME",
        default: "",
        help: "`service.name` of the spans (default: the service's name)",
    },
    Variable {
        name: "OTEL_RESOURCE_ATTRIBUTES",
        default: "",
        help: "more resource attributes, `k=v,k=v` (the chart sets service.instance.id, k8s.pod.name, k8s.namespace.name)",
    },
    Variable {
        name: "DISCOVERY_SHUTDOWN_GRACE",
        default: "10s",
        help: "how long shutdown waits for in-flight calls",
    },
    Variable {
        name: "DISCOVERY_SHUTDOWN_DELAY",
        default: "0s",
        help: "on SIGTERM, how long to keep serving (not ready) before refusing new connections: the time a Service takes to drop the pod (the chart sets 5s)",
    },
    Variable {
        name: "DISCOVERY_DEPENDENCY_CHECKS",
        default: "2s",
        help: "how often each service probes MongoDB and Redis (health names discovery.dependency.*; 0s: never)",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_port_names_the_variable() {
        let env = Env::from_pairs([("DISCOVERY_GATEWAY_PORT", "80a")]);
        let err = env.port("DISCOVERY_GATEWAY_PORT", 1).unwrap_err();
        let line = err.to_string();
        assert!(
            line.starts_with("DISCOVERY_GATEWAY_PORT: \"80a\""),
            "{line}"
        );
        assert!(line.contains("port"), "{line}");
    }

    #[test]
    fn defaults_apply_when_unset_or_blank() {
        let env = Env::from_pairs([("A", "  ")]);
        assert_eq!(env.port("A", 7).unwrap(), 7);
        assert_eq!(env.string("B", "x"), "x");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn booleans_parse() {
        let env = Env::from_pairs([("A", "yes"), ("B", "maybe")]);
        assert!(env.bool("A", false).unwrap());
        assert!(
            env.bool("B", false)
                .unwrap_err()
                .to_string()
                .starts_with("B: ")
        );
    }
}
