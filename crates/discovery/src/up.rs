//! `discovery up`: all five services in one process, on localhost ports,
//! talking real gRPC to each other, with the embedded store, an L1-only cache
//! and the demo catalogue.

use std::net::SocketAddr;

use discovery_kit::CancellationToken;
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::server::{BoxError, ServiceHandle};
use discovery_proto::topology::GATEWAY;

/// The running system.
pub struct System {
    /// Services in start order.
    pub services: Vec<ServiceHandle>,
    /// Shared metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// A development API key with every scope (partner tier).
    pub api_key: String,
    /// A browser key: public scope, anonymous tier (per-address limits).
    pub browser_key: String,
    metrics_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl System {
    /// The gateway's address.
    pub fn gateway(&self) -> SocketAddr {
        self.addr_of("gateway")
    }

    /// A service's address by short name (panics on an unknown name: a bug).
    pub fn addr_of(&self, name: &str) -> SocketAddr {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.addr)
            .unwrap_or_else(|| panic!("no service named {name}"))
    }

    /// Waits for every service to stop.
    pub async fn wait(self) -> Result<(), BoxError> {
        for s in self.services {
            s.wait().await?;
        }
        if let Some(t) = self.metrics_task {
            let _ = t.await;
        }
        Ok(())
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Starts the system. `env` is the user's environment; store, cache and
/// per-service metrics are forced to the embedded defaults.
pub async fn start(env: Env, shutdown: CancellationToken) -> Result<System, BoxError> {
    // One shared metrics endpoint for the process, read before the
    // per-service endpoints are turned off below.
    let metrics_port = env.port("DISCOVERY_METRICS_PORT", 9090)?;
    // Services of this one process call each other directly, not over
    // loopback HTTP/2.
    if env.bool("DISCOVERY_IN_PROCESS_CALLS", true)? {
        discovery_kit::inproc::enable();
    }
    // Internal ports are authenticated even here: a secret for this run
    // unless the user gave one.
    let env = if env.raw("DISCOVERY_INTERNAL_SECRET").is_none()
        && env.raw("DISCOVERY_INTERNAL_SECRET_FILE").is_none()
    {
        env.with(
            "DISCOVERY_INTERNAL_SECRET",
            discovery_kit::internal::InternalAuth::random_secret(),
        )
    } else {
        env
    };
    let env = env
        .with("DISCOVERY_STORE", "memory")
        .with("DISCOVERY_REDIS_URLS", "")
        .with("DISCOVERY_METRICS_PORT", "0");
    let bind_ip = env.ip("DISCOVERY_BIND_IP", [127, 0, 0, 1].into())?;

    let face = discovery_face_analysis::spawn(
        discovery_face_analysis::Config::from_env(&env)?,
        shutdown.clone(),
    )
    .await?;
    // Recommendation resolves analysis ids through face-analysis.
    let env = env.with("DISCOVERY_FACE_ANALYSIS_URLS", url(face.addr));
    let reco = discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(&env)?,
        shutdown.clone(),
    )
    .await?;
    // Sync delivers catalogue changes to the recommendation service.
    let env = env.with("DISCOVERY_RECOMMENDATION_URLS", url(reco.addr));
    let sync =
        discovery_sync::spawn(discovery_sync::Config::from_env(&env)?, shutdown.clone()).await?;
    // The gateway port is bound last but must be known to monitoring; reserve it
    // by reading the configured value (0 is resolved after the gateway starts).
    let env = env.with("DISCOVERY_SYNC_URLS", url(sync.addr));
    let gateway_port = env.port(GATEWAY.port_var, GATEWAY.port)?;
    let mut monitoring_env = env.clone().with(
        "DISCOVERY_GATEWAY_URLS",
        url(SocketAddr::new(bind_ip, gateway_port)),
    );
    // The dashboard's admin actions call the gateway from the browser on
    // this machine.
    if env.raw("DISCOVERY_DASHBOARD_GATEWAY_URL").is_none() && gateway_port != 0 {
        let scheme = if env.raw("DISCOVERY_TLS_CERT").is_some() {
            "https"
        } else {
            "http"
        };
        let host = if bind_ip.is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            bind_ip
        };
        monitoring_env = monitoring_env.with(
            "DISCOVERY_DASHBOARD_GATEWAY_URL",
            format!("{scheme}://{}", SocketAddr::new(host, gateway_port)),
        );
    }
    let (monitoring, dashboard) = discovery_monitoring::spawn_with_dashboard(
        discovery_monitoring::Config::from_env(&monitoring_env)?,
        shutdown.clone(),
    )
    .await?;
    let env = env.with("DISCOVERY_MONITORING_URLS", url(monitoring.addr));
    // Keys for this run, in the embedded store the gateway reads.
    use discovery_gateway::auth::{self, Tier};
    use discovery_gateway::routes::Scope;
    let store = discovery_kit::store::StoreConfig::Memory
        .connect(discovery_kit::store::Workload::Realtime)
        .await?;
    let (api_key, _) = auth::create(
        &store,
        "development",
        Tier::Partner,
        &[Scope::Public, Scope::Ingest, Scope::Admin],
    )
    .await?;
    let (browser_key, _) =
        auth::create(&store, "browser", Tier::Anonymous, &[Scope::Public]).await?;
    let gateway =
        discovery_gateway::spawn(discovery_gateway::Config::from_env(&env)?, shutdown.clone())
            .await?;

    let (metrics_addr, metrics_task) = if metrics_port == 0 {
        (None, None)
    } else {
        let addr = SocketAddr::new(bind_ip, metrics_port);
        let listener = discovery_kit::server::bind("DISCOVERY_METRICS_PORT", addr).await?;
        let addr = listener.local_addr().ok();
        let token = shutdown.clone();
        (
            addr,
            Some(tokio::spawn(discovery_kit::metrics::serve(
                listener,
                Some(dashboard),
                token,
            ))),
        )
    };
    Ok(System {
        services: vec![face, reco, sync, monitoring, gateway],
        metrics_addr,
        api_key,
        browser_key,
        metrics_task,
    })
}

/// Checks the up-front configuration that `start` reads, for a clear error
/// before anything binds.
pub fn check(env: &Env) -> Result<(), ConfigError> {
    env.ip("DISCOVERY_BIND_IP", [127, 0, 0, 1].into())?;
    let services = discovery_proto::topology::ALL.map(|s| (s.port_var, s.port));
    for (var, d) in services
        .into_iter()
        .chain([("DISCOVERY_METRICS_PORT", 9090)])
    {
        env.port(var, d)?;
    }
    Ok(())
}
