//! Where and how a service serves: addresses, connection limits, the
//! shutdown policy, from their variables.

use super::*;

/// Where and how a service serves: from `DISCOVERY_BIND_IP`, its port
/// variable, `DISCOVERY_METRICS_PORT` and `DISCOVERY_SHUTDOWN_GRACE`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub grpc: SocketAddr,
    /// Variable naming the gRPC port (for error lines).
    pub grpc_var: &'static str,
    /// Metrics listen address; `None` disables the endpoint.
    pub metrics: Option<SocketAddr>,
    /// How long shutdown waits for in-flight calls.
    pub grace: Duration,
    /// How long a stopping server keeps serving, not ready, before it
    /// stops accepting (`DISCOVERY_SHUTDOWN_DELAY`).
    pub unready_for: Duration,
    /// How often dependencies are probed ([`crate::deps`]); zero: never.
    pub dependency_checks: Duration,
    /// What one peer may hold of this server.
    pub limits: ConnLimits,
    /// Internal-call authentication (`DISCOVERY_INTERNAL_SECRET`); `None`:
    /// internal calls are open.
    pub internal: Option<crate::internal::InternalAuth>,
    /// What passes without an internal token.
    pub exempt: crate::internal::Exempt,
    /// gRPC reflection (`DISCOVERY_REFLECTION`; off on internal ports by
    /// default, on at the gateway).
    pub reflection: bool,
}

/// Bounds on what callers may hold of a server, so that a slow or hostile
/// peer (slow-loris: many connections, many streams, a byte a second)
/// cannot take what others need. Read from `DISCOVERY_MAX_CONNECTIONS`,
/// `DISCOVERY_MAX_STREAMS` and `DISCOVERY_HANDSHAKE_TIMEOUT`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnLimits {
    /// Open connections at once (all workers together); a connection over
    /// it is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection (SETTINGS, enforced by the
    /// peer's stack and refused with REFUSED_STREAM by ours).
    pub max_streams: u32,
    /// Largest header block, bytes.
    pub max_header_bytes: u32,
    /// TLS handshakes and idle connections that never send a request are
    /// cut after this long.
    pub handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_streams: 256,
            max_header_bytes: 16 << 10,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnLimits {
    /// Reads the limit variables.
    pub fn from_env(env: &crate::config::Env) -> Result<Self, crate::config::ConfigError> {
        let d = Self::default();
        let limits = Self {
            max_connections: env.parse(
                "DISCOVERY_MAX_CONNECTIONS",
                d.max_connections,
                "a number of connections",
            )?,
            max_streams: env.parse(
                "DISCOVERY_MAX_STREAMS",
                d.max_streams,
                "a number of streams",
            )?,
            max_header_bytes: d.max_header_bytes,
            handshake_timeout: env.duration("DISCOVERY_HANDSHAKE_TIMEOUT", d.handshake_timeout)?,
        };
        if limits.max_connections == 0 || limits.max_streams == 0 {
            return Err(crate::config::ConfigError::new(
                "DISCOVERY_MAX_CONNECTIONS",
                "DISCOVERY_MAX_CONNECTIONS and DISCOVERY_MAX_STREAMS must be above zero",
            ));
        }
        Ok(limits)
    }
}

impl ServeConfig {
    /// Reads the variables for a service whose port variable is `port_var`.
    pub fn from_env(
        env: &crate::config::Env,
        port_var: &'static str,
        default_port: u16,
    ) -> Result<Self, crate::config::ConfigError> {
        let grpc = env.listen("DISCOVERY_BIND_IP", port_var, default_port)?;
        let metrics_port = env.port("DISCOVERY_METRICS_PORT", 9090)?;
        if let Some(hosts) = env.raw("DISCOVERY_HOSTS") {
            crate::client::parse_hosts(&hosts)
                .map_err(|e| crate::config::ConfigError::new("DISCOVERY_HOSTS", e))?;
        }
        Ok(Self {
            grpc,
            grpc_var: port_var,
            metrics: (metrics_port != 0).then(|| SocketAddr::new(grpc.ip(), metrics_port)),
            grace: env.duration("DISCOVERY_SHUTDOWN_GRACE", Duration::from_secs(10))?,
            unready_for: env.duration("DISCOVERY_SHUTDOWN_DELAY", Duration::ZERO)?,
            dependency_checks: env
                .duration("DISCOVERY_DEPENDENCY_CHECKS", Duration::from_secs(2))?,
            limits: ConnLimits::from_env(env)?,
            internal: crate::internal::InternalAuth::from_env(env)?,
            exempt: crate::internal::Exempt::HealthOnly,
            reflection: env.bool("DISCOVERY_REFLECTION", false)?,
        })
    }

    /// Loopback, OS-chosen ports, no metrics endpoint: for tests.
    pub fn ephemeral(grpc_var: &'static str) -> Self {
        Self {
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_var,
            metrics: None,
            grace: Duration::from_secs(2),
            unready_for: Duration::ZERO,
            dependency_checks: Duration::from_secs(2),
            limits: ConnLimits::default(),
            internal: None,
            exempt: crate::internal::Exempt::HealthOnly,
            reflection: true,
        }
    }

    /// The policy its server applies.
    pub(super) fn policy(&self) -> Policy {
        Policy {
            limits: self.limits,
            internal: self.internal.clone(),
            exempt: self.exempt,
            reflection: self.reflection,
            unready_for: self.unready_for,
        }
    }
}

/// How a server treats its callers (from [`ServeConfig`]).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Connection bounds.
    pub limits: ConnLimits,
    /// Internal-call authentication.
    pub internal: Option<crate::internal::InternalAuth>,
    /// What passes without an internal token.
    pub exempt: crate::internal::Exempt,
    /// gRPC reflection served.
    pub reflection: bool,
    /// On shutdown, how long to keep serving (health NOT_SERVING) before
    /// refusing new connections and sending GOAWAY. Behind a Kubernetes
    /// Service the pod's endpoint is removed only after SIGTERM, and each
    /// node's proxy learns of it later still: new connections keep arriving
    /// for a few seconds, and a server that had already closed its socket
    /// would refuse them (the chart sets 5 s; a `preStop` sleep does the
    /// same where the image has a shell).
    pub unready_for: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            limits: ConnLimits::default(),
            internal: None,
            exempt: crate::internal::Exempt::HealthOnly,
            reflection: true,
            unready_for: Duration::ZERO,
        }
    }
}
