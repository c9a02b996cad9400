//! The monitoring service: SLA reports, alerts and aggregated health.
//!
//! - `collect`: metrics sources (this process's registry, or services'
//!   `/metrics` over HTTP), scraped every `DISCOVERY_MONITORING_SCRAPE_INTERVAL`;
//! - `window`: the scrapes kept as snapshots, window figures as increases;
//! - `sla`: `GetSlaReport` and the rules' observations;
//! - `rules`: the alert rules and their pending/firing/resolved machine;
//!   transitions are stored in `alerts`.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod channels;
pub mod collect;
pub mod config;
pub mod convert;
pub mod dashboard;
pub mod error;
pub mod forecast;
pub mod hub;
pub mod lifecycle;
pub mod notify;
pub mod probe;
pub mod reports;
pub mod rules;
pub mod sla;
pub mod standing;
pub mod store;
pub mod trends;
pub mod window;

use std::sync::{Arc, Mutex};

use discovery_kit::CancellationToken;
use discovery_kit::deps::Dependency;
use discovery_kit::server::{BoxError, ServiceHandle};
use discovery_kit::store::Workload;
use discovery_proto::service_names;
use discovery_proto::v1::cache_admin_client::CacheAdminClient;
use discovery_proto::v1::experiments_client::ExperimentsClient;
use discovery_proto::v1::monitoring_server::MonitoringServer;
use tonic::service::Routes;

use api::Service;
pub use config::{Config, Target};
pub use hub::Hub;
use hub::collect_loop;
pub use probe::Fleet;
pub use store::{ALERTS, METRICS_ROLLUPS, indexes};

/// Starts the service; its metrics endpoint also serves the dashboard.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    spawn_with_dashboard(config, shutdown).await.map(|(h, _)| h)
}

/// Starts the service and returns the dashboard's routes (`/dashboard`,
/// `/api/overview`) for a process that serves one shared HTTP endpoint
/// (`discovery up`).
pub async fn spawn_with_dashboard(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(ServiceHandle, axum::Router), BoxError> {
    let store = config.store.connect(Workload::Analytics).await?;
    for (coll, ix) in indexes() {
        store.ensure_indexes(coll, &ix).await?;
    }
    // Windows survive a restart: the stored minute rollups come back first.
    let mut restored = window::History::default();
    match store::restore(&store, &mut restored).await {
        Ok(n) if n > 0 => tracing::info!(rollups = n, "metric history restored"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "metric rollups unreadable; starting with none"),
    }
    let history = Arc::new(Mutex::new(restored));
    let recommendation_urls: Vec<String> = config
        .targets
        .iter()
        .filter(|t| t.service == "recommendation")
        .map(|t| t.url.clone())
        .collect();
    let fleet = Fleet::new(config.targets, store.clone())?;
    let recommendation = (!recommendation_urls.is_empty())
        .then(|| {
            discovery_kit::client::connect_balanced(
                "DISCOVERY_RECOMMENDATION_URLS",
                &recommendation_urls,
                config.serve.internal.as_ref(),
                "monitoring",
            )
        })
        .transpose()?;
    let report = recommendation.clone().map(ExperimentsClient::new);
    let recommendation = recommendation.map(CacheAdminClient::new);
    let hub = Hub::new(store.clone(), recommendation);
    hub.set_experiments(report);
    match hub.load_silences().await {
        Ok(n) if n > 0 => tracing::info!(silences = n, "alert silences restored"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "alert silences unreadable; starting with none"),
    }
    let routes = Routes::new(discovery_kit::compressed!(MonitoringServer::new(Service {
        store: store.clone(),
        fleet: fleet.clone(),
        history: history.clone(),
        hub: hub.clone(),
    })));
    let board = dashboard::router(dashboard::Dashboard {
        history: history.clone(),
        hub: hub.clone(),
        fleet,
        token: config.dashboard_token.as_deref().map(Arc::from),
        gateway_url: config.dashboard_gateway_url.as_deref().map(Arc::from),
    });
    let mut handle = ServiceHandle::start(
        "monitoring",
        &config.serve,
        routes,
        &[service_names::MONITORING],
        Some(board.clone()),
        shutdown.clone(),
    )
    .await?;
    handle.watch_dependencies(
        &config.serve,
        [Dependency::store(store.clone())],
        shutdown.clone(),
    );
    let store_for_rollups = store.clone();
    handle.push_task(tokio::spawn(async move {
        collect_loop(
            config.sources,
            config.scrape_interval,
            history,
            hub,
            store_for_rollups,
            rules::file::Watched::new(config.rules_file),
            shutdown,
        )
        .await;
        Ok(())
    }));
    Ok((handle, board))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::readiness_path;
    use discovery_kit::config::Env;

    #[test]
    fn the_dashboards_gateway_url_is_a_browsers_http_url() {
        let url = |u: &str| {
            Config::from_env(&Env::from_pairs([("DISCOVERY_DASHBOARD_GATEWAY_URL", u)]))
                .map(|c| c.dashboard_gateway_url)
        };
        assert_eq!(
            url("https://api.shop.example/").unwrap().as_deref(),
            Some("https://api.shop.example")
        );
        assert_eq!(url("").unwrap(), None);
        for bad in [
            "api.shop.example",
            "ftp://x",
            "https://x/?a=1",
            "javascript:alert(1)",
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("DISCOVERY_DASHBOARD_GATEWAY_URL:"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_url_with_a_path_is_an_http_readiness_check() {
        assert_eq!(
            readiness_path("dns://gw-headless.shop.svc:9090/readyz"),
            Some(("dns", "gw-headless.shop.svc:9090", "/readyz"))
        );
        assert_eq!(readiness_path("http://127.0.0.1:50051"), None);
        assert_eq!(readiness_path("http://127.0.0.1:50051/"), None);
        let env = Env::from_pairs([("DISCOVERY_GATEWAY_URLS", "ftp://x:1/readyz")]);
        let err = Config::from_env(&env).unwrap_err().to_string();
        assert!(err.starts_with("DISCOVERY_GATEWAY_URLS:"), "{err}");
        let env = Env::from_pairs([("DISCOVERY_GATEWAY_URLS", "dns://gw:9090/readyz")]);
        assert_eq!(
            Config::from_env(&env).unwrap().targets[0].url,
            "dns://gw:9090/readyz"
        );
    }
}
