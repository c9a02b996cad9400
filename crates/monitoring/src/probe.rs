//! Readiness checks of the services monitoring watches (gRPC health, or
//! an HTTP readiness path), one address or every replica of a name.

use std::time::{Duration, Instant};

use crate::{Target, collect};
use discovery_proto::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The services monitoring checks, and its own store: `GetSystemHealth`
/// and the dashboard's health panel.
#[derive(Clone)]
pub struct Fleet {
    targets: std::sync::Arc<Vec<(Target, Probe)>>,
    store: discovery_kit::store::Store,
}

impl Fleet {
    /// Probes for `targets`; monitoring's own entry reports `store`.
    pub fn new(
        targets: Vec<Target>,
        store: discovery_kit::store::Store,
    ) -> Result<Self, discovery_kit::client::EndpointError> {
        let targets = targets
            .into_iter()
            .map(|t| Probe::new(&t).map(|p| (t, p)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            targets: std::sync::Arc::new(targets),
            store,
        })
    }

    /// Every replica of every service, checked together, and monitoring.
    pub async fn health(&self) -> pb::GetSystemHealthResponse {
        let checks = self.targets.iter().map(|(t, p)| p.check(t));
        let mut services: Vec<pb::ServiceHealth> = futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        // Monitoring serves from memory; without its store it only loses
        // rollups and alert history writes (retried on the next tick).
        let store_ok = self.store.ping().await.is_ok();
        services.push(pb::ServiceHealth {
            service: "monitoring".into(),
            address: "self".into(),
            live: true,
            ready: true,
            detail: if store_ok {
                format!("store: {}", self.store.kind())
            } else {
                format!("store: {}; degraded: store unreachable", self.store.kind())
            },
            latency_ms: 0.0,
            degraded: !store_ok,
            degraded_dependencies: if store_ok {
                vec![]
            } else {
                vec!["store".into()]
            },
        });
        let ready = services.iter().all(|s| s.ready);
        let degraded = services.iter().any(|s| s.degraded);
        pb::GetSystemHealthResponse {
            ready,
            services,
            degraded,
        }
    }
}

/// `(scheme, host:port, /path)` of a URL with a path (an HTTP readiness
/// endpoint); `None` for a plain gRPC URL.
pub(crate) fn readiness_path(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let at = rest.find('/')?;
    let (authority, path) = rest.split_at(at);
    (path.len() > 1).then_some((scheme, authority, path))
}

/// How a target is reached for health checks.
#[derive(Clone)]
pub(crate) enum Probe {
    /// HTTP GET of a readiness path on one address (`http://`) or on every
    /// replica of a name (`dns://`): 200 is ready, another answer live but
    /// not ready.
    Http {
        authority: String,
        path: String,
        every: bool,
    },
    /// One address (`http://host:port`).
    One(Box<HealthClient<discovery_kit::client::TracedChannel>>),
    /// Every replica a name resolves to (`dns://host:port`, a headless
    /// Service), each checked on its own.
    Every(String),
}

impl Probe {
    pub(crate) fn new(t: &Target) -> Result<Self, discovery_kit::client::EndpointError> {
        if let Some((scheme, authority, path)) = readiness_path(&t.url) {
            return Ok(Probe::Http {
                authority: authority.to_string(),
                path: path.to_string(),
                every: scheme == "dns",
            });
        }
        Ok(match t.url.strip_prefix("dns://") {
            Some(hostport) => Probe::Every(hostport.to_string()),
            None => Probe::One(Box::new(HealthClient::new(
                discovery_kit::client::connect_lazy("DISCOVERY_*_URLS", &t.url)?,
            ))),
        })
    }

    /// One entry per replica checked.
    pub(crate) async fn check(&self, target: &Target) -> Vec<pb::ServiceHealth> {
        match self {
            Probe::One(client) => vec![check(target, &target.url, (**client).clone()).await],
            Probe::Http {
                authority,
                path,
                every: false,
            } => vec![check_http(target, authority, path).await],
            Probe::Http {
                authority,
                path,
                every: true,
            } => match discovery_kit::client::resolve_all(authority).await {
                Ok(addrs) if !addrs.is_empty() => {
                    let checks = addrs
                        .into_iter()
                        .map(|a| async move { check_http(target, &a.to_string(), path).await });
                    futures::future::join_all(checks).await
                }
                failed => vec![unresolved(target, failed)],
            },
            Probe::Every(hostport) => {
                let addrs = match discovery_kit::client::resolve_all(hostport).await {
                    Ok(a) if !a.is_empty() => a,
                    failed => return vec![unresolved(target, failed)],
                };
                let checks = addrs.into_iter().filter_map(|a| {
                    let url = format!("http://{a}");
                    let ch = discovery_kit::client::connect_lazy("DISCOVERY_*_URLS", &url).ok()?;
                    Some(async move { check(target, &a.to_string(), HealthClient::new(ch)).await })
                });
                futures::future::join_all(checks).await
            }
        }
    }
}

/// The entry for a `dns://` name that gave no address.
fn unresolved<E: std::fmt::Display>(
    target: &Target,
    failed: Result<Vec<std::net::SocketAddr>, E>,
) -> pb::ServiceHealth {
    let why = match failed {
        Err(e) => e.to_string(),
        Ok(_) => "no addresses (no ready replica)".to_string(),
    };
    pb::ServiceHealth {
        service: target.service.clone(),
        address: target.url.clone(),
        detail: format!("cannot resolve {}: {why}", target.url),
        ..Default::default()
    }
}

/// One replica's HTTP readiness endpoint (the same answer as its gRPC
/// health; dependencies are not reported there).
async fn check_http(target: &Target, authority: &str, path: &str) -> pb::ServiceHealth {
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(2), collect::status(authority, path)).await;
    let (live, ready, detail) = match r {
        Err(_) => (false, false, format!("GET {path} timed out after 2 s")),
        Ok(Err(e)) => (false, false, format!("GET {path} failed: {e}")),
        Ok(Ok(code)) if code == http::StatusCode::OK => (true, true, "serving".to_string()),
        Ok(Ok(code)) => (true, false, format!("not serving (GET {path}: {code})")),
    };
    pb::ServiceHealth {
        service: target.service.clone(),
        address: authority.to_string(),
        live,
        ready,
        detail,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        degraded: false,
        degraded_dependencies: Vec::new(),
    }
}

async fn check(
    target: &Target,
    address: &str,
    mut client: HealthClient<discovery_kit::client::TracedChannel>,
) -> pb::ServiceHealth {
    let started = Instant::now();
    let req = tonic_health::pb::HealthCheckRequest {
        service: target.grpc_name.to_string(),
    };
    let r = tokio::time::timeout(Duration::from_secs(2), client.check(req)).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (live, ready, mut detail) = match r {
        Err(_) => (false, false, "health check timed out after 2 s".to_string()),
        Ok(Err(s)) => (
            false,
            false,
            format!("health check failed: {}", s.message()),
        ),
        Ok(Ok(resp)) => {
            let serving = resp.into_inner().status == ServingStatus::Serving as i32;
            (
                true,
                serving,
                if serving {
                    "serving".into()
                } else {
                    "not serving".into()
                },
            )
        }
    };
    // Dependencies the service reports under their own health names; an
    // unknown name (NOT_FOUND) is a dependency it does not have.
    let mut down = Vec::new();
    if live {
        for dep in discovery_kit::deps::KNOWN {
            let req = tonic_health::pb::HealthCheckRequest {
                service: discovery_kit::deps::health_name(dep),
            };
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), client.check(req)).await
                && r.into_inner().status == ServingStatus::NotServing as i32
            {
                down.push(dep.to_string());
            }
        }
    }
    if !down.is_empty() {
        detail = format!("{detail}; degraded: {} unreachable", down.join(", "));
    }
    pb::ServiceHealth {
        service: target.service.clone(),
        address: address.to_string(),
        live,
        ready,
        detail,
        latency_ms,
        degraded: !down.is_empty(),
        degraded_dependencies: down,
    }
}
