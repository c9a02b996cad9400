//! Dependency checks: readiness that tells "degraded" from "down".
//!
//! A service whose database or Redis is unreachable keeps serving what it
//! can (the recommendation snapshot, L1 + origin, cached analyses), so its
//! own gRPC names stay SERVING: load balancers, the gateway and Kubernetes
//! keep sending it traffic. Each dependency gets a health name of its own,
//! `discovery.dependency.<name>`, SERVING or NOT_SERVING, probed every few
//! seconds; monitoring reads those names and reports the service ready but
//! degraded, naming what is unreachable (`GetSystemHealth`).
//!
//! Invariant: a probe never blocks a request path (it runs on its own task
//! with a timeout), and a dependency going down or coming back is logged
//! once per transition, not once per probe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::server::BoxError;
use crate::store::Store;

/// Health names of dependencies start with this.
pub const PREFIX: &str = "discovery.dependency.";

/// The dependencies monitoring asks every service about.
pub const KNOWN: &[&str] = &["store", "redis"];

/// A check of one dependency: `Err` explains what is wrong.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// One dependency to watch.
#[derive(Clone)]
pub struct Dependency {
    /// Short name ("store", "redis").
    pub name: &'static str,
    /// Its check.
    pub probe: Probe,
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.name)
            .finish()
    }
}

impl Dependency {
    /// The document store (MongoDB answers `ping`; the embedded store
    /// always does).
    pub fn store(store: Store) -> Self {
        Self {
            name: "store",
            probe: Arc::new(move || {
                let store = store.clone();
                Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
            }),
        }
    }

    /// The store, and Redis Cluster when the service has one (its cache's
    /// L2 pool, or the gateway's limiter pool).
    pub fn store_and_redis(store: Store, redis: Option<fred::clients::Pool>) -> Vec<Self> {
        std::iter::once(Self::store(store))
            .chain(redis.map(Self::redis))
            .collect()
    }

    /// A Redis Cluster pool (`PING` through it).
    pub fn redis(pool: fred::clients::Pool) -> Self {
        Self {
            name: "redis",
            probe: Arc::new(move || {
                let pool = pool.clone();
                Box::pin(async move { crate::cache::ping_redis(&pool).await })
            }),
        }
    }
}

/// The health name of dependency `name`.
pub fn health_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Probes `deps` every `every` (each with a timeout of `every`, at most
/// 2 s) until `shutdown`, setting their health names and the
/// `discovery_dependency_up{service, dependency}` gauge.
pub fn watch(
    service: &'static str,
    health: HealthReporter,
    deps: Vec<Dependency>,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), BoxError>> {
    tokio::spawn(async move {
        let timeout = every.min(Duration::from_secs(2));
        let mut up: Vec<Option<bool>> = vec![None; deps.len()];
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let results = futures::future::join_all(deps.iter().map(|d| async {
                match tokio::time::timeout(timeout, (d.probe)()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            }))
            .await;
            for ((dep, was), result) in deps.iter().zip(&mut up).zip(results) {
                let now = result.is_ok();
                metrics::gauge!(
                    "discovery_dependency_up",
                    "service" => service,
                    "dependency" => dep.name
                )
                .set(if now { 1.0 } else { 0.0 });
                if *was == Some(now) {
                    continue;
                }
                match (&result, *was) {
                    (Err(e), _) => tracing::warn!(
                        service, dependency = dep.name, error = %e,
                        "dependency unreachable; serving degraded"
                    ),
                    (Ok(()), Some(false)) => {
                        tracing::info!(service, dependency = dep.name, "dependency back")
                    }
                    (Ok(()), _) => {}
                }
                let status = if now {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                health
                    .set_service_status(health_name(dep.name), status)
                    .await;
                *was = Some(now);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic_health::pb::health_server::Health;

    #[tokio::test]
    async fn a_dependency_going_down_and_back_flips_its_health_name_only() {
        let health = HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(health.clone());
        health
            .set_service_status("discovery.v1.Catalog", ServingStatus::Serving)
            .await;
        let ok = Arc::new(AtomicBool::new(true));
        let flag = ok.clone();
        let dep = Dependency {
            name: "store",
            probe: Arc::new(move || {
                let ok = flag.load(Ordering::SeqCst);
                Box::pin(async move { if ok { Ok(()) } else { Err("down".into()) } })
            }),
        };
        let shutdown = CancellationToken::new();
        let task = watch(
            "test",
            health.clone(),
            vec![dep],
            Duration::from_millis(10),
            shutdown.clone(),
        );
        let status = |name: &'static str| {
            let service = &service;
            async move {
                service
                    .check(tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                        service: name.into(),
                    }))
                    .await
                    .map(|r| r.into_inner().status)
            }
        };
        let wait_for = |want: ServingStatus| {
            let status = &status;
            async move {
                for _ in 0..500 {
                    if status("discovery.dependency.store").await.ok() == Some(want as i32) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                false
            }
        };
        assert!(wait_for(ServingStatus::Serving).await);
        ok.store(false, Ordering::SeqCst);
        assert!(wait_for(ServingStatus::NotServing).await);
        // The service itself stays SERVING: degraded, not down.
        assert_eq!(
            status("discovery.v1.Catalog").await.ok(),
            Some(ServingStatus::Serving as i32)
        );
        ok.store(true, Ordering::SeqCst);
        assert!(wait_for(ServingStatus::Serving).await);
        // A dependency this service does not have is unknown, not down.
        assert_eq!(
            status("discovery.dependency.redis")
                .await
                .unwrap_err()
                .code(),
            tonic::Code::NotFound
        );
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }
}
