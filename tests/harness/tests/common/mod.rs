//! Helpers shared by the tests that run the all-in-one system.
#![allow(dead_code)]

pub mod rig;

use discovery_kit::config::Env;
use discovery_proto::v1::discovery_client::DiscoveryClient;

/// Every port OS-chosen, a short shutdown grace, limits off.
pub fn ephemeral_env() -> Env {
    Env::from_pairs([
        ("DISCOVERY_GATEWAY_PORT", "0"),
        ("DISCOVERY_FACE_ANALYSIS_PORT", "0"),
        ("DISCOVERY_RECOMMENDATION_PORT", "0"),
        ("DISCOVERY_SYNC_PORT", "0"),
        ("DISCOVERY_MONITORING_PORT", "0"),
        ("DISCOVERY_METRICS_PORT", "0"),
        ("DISCOVERY_SHUTDOWN_GRACE", "1s"),
        ("DISCOVERY_LIMITS", "off"),
        ("DISCOVERY_INTERNAL_SECRET", TEST_SECRET),
    ])
}

/// The internal secret of the tests' systems.
pub const TEST_SECRET: &str = "test-internal-secret-0123456789";

/// A channel to an internal service port of a test system, signed as
/// `caller` with [`TEST_SECRET`].
pub fn internal_channel(
    addr: std::net::SocketAddr,
    caller: &str,
) -> discovery_kit::client::TracedChannel {
    let auth = discovery_kit::internal::InternalAuth::new(TEST_SECRET.as_bytes().to_vec());
    discovery_kit::client::connect_as("TEST", &format!("http://{addr}"), Some(&auth), caller)
        .expect("a valid URL")
}

/// Sends an API key on every call.
#[derive(Clone)]
pub struct ApiKey(tonic::metadata::AsciiMetadataValue);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("x-api-key", self.0.clone());
        Ok(r)
    }
}

/// A client of the public API sending a key.
pub type Gateway = DiscoveryClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ApiKey>,
>;

/// Connects to the gateway at `addr` with API key `key`.
pub async fn gateway(addr: std::net::SocketAddr, key: &str) -> Gateway {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to gateway");
    DiscoveryClient::with_interceptor(channel, ApiKey(key.parse().unwrap()))
}

/// A sync job's final state: follows `WatchSyncJob` to its last message.
pub async fn final_job<T>(
    client: &mut discovery_proto::v1::sync_client::SyncClient<T>,
    job_id: &str,
) -> discovery_proto::v1::SyncJob
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut watch = client
        .watch_sync_job(discovery_proto::v1::WatchSyncJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .expect("watch the job")
        .into_inner();
    let mut last = None;
    while let Some(j) = watch.message().await.expect("job progress") {
        last = Some(j);
    }
    last.expect("at least one progress message")
}

/// The all-in-one system (`discovery up`) for one test:
/// `TestApp::builder().with("DISCOVERY_X", "v").start().await`, then its
/// gateway, a load-tool target or an internal channel to one of its
/// services, and `stop()` at the end (a panicking test's system goes down
/// with the runtime). Every port is OS-chosen ([`ephemeral_env`]).
pub struct TestApp {
    /// The running system (addresses, its API key).
    pub system: discovery::up::System,
    shutdown: discovery_kit::CancellationToken,
}

/// Settings of a [`TestApp`] before it starts.
pub struct TestAppBuilder {
    env: Env,
}

impl TestAppBuilder {
    /// Sets one variable.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.env = self.env.with(name, value);
        self
    }

    /// Starts the system.
    pub async fn start(self) -> TestApp {
        let shutdown = discovery_kit::CancellationToken::new();
        let system = discovery::up::start(self.env, shutdown.clone())
            .await
            .expect("system starts");
        TestApp { system, shutdown }
    }
}

impl TestApp {
    /// The defaults: [`ephemeral_env`].
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: ephemeral_env(),
        }
    }

    /// The gateway's address.
    pub fn gateway_addr(&self) -> std::net::SocketAddr {
        self.system.gateway()
    }

    /// The gateway's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.system.gateway())
    }

    /// A client of the public API with the system's key.
    pub async fn gateway(&self) -> Gateway {
        gateway(self.system.gateway(), &self.system.api_key).await
    }

    /// A load-tool target on the gateway: `connections` HTTP/2
    /// connections, `timeout` per call.
    pub async fn target(
        &self,
        connections: usize,
        timeout: std::time::Duration,
    ) -> std::sync::Arc<discovery_loadgen::Target> {
        let target = discovery_loadgen::Target::connect(
            &self.url(),
            Some(&self.system.api_key),
            connections,
            timeout,
        )
        .await
        .expect("connect the load tool");
        std::sync::Arc::new(target)
    }

    /// A channel to `service`'s internal port, signed as `caller`.
    pub fn internal(&self, service: &str, caller: &str) -> discovery_kit::client::TracedChannel {
        internal_channel(self.system.addr_of(service), caller)
    }

    /// Shuts the system down and waits for it.
    pub async fn stop(self) -> Result<(), discovery_kit::server::BoxError> {
        self.shutdown.cancel();
        self.system.wait().await
    }
}

/// Sends the given metadata on every call.
#[derive(Clone)]
pub struct Headers(pub Vec<(&'static str, tonic::metadata::AsciiMetadataValue)>);

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in &self.0 {
            req.metadata_mut().insert(*k, v.clone());
        }
        Ok(req)
    }
}

/// A client of the public API at `addr` sending `headers` on every call.
pub async fn client_with(
    addr: std::net::SocketAddr,
    headers: &[(&'static str, &str)],
) -> DiscoveryClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Headers>,
> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let h = headers
        .iter()
        .map(|(k, v)| (*k, v.parse().unwrap()))
        .collect();
    DiscoveryClient::with_interceptor(channel, Headers(h))
}

/// Waits until the service at `addr` reports its dependency `name` (e.g.
/// "redis") reachable on its health service. A gateway whose Redis pool is
/// still connecting counts limits in its local fallback bucket, by design
/// (as when Redis is down); a test that counts shared limits waits first.
#[allow(dead_code)]
pub async fn wait_dependency(addr: std::net::SocketAddr, name: &str) {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: discovery_kit::deps::health_name(name),
            })
            .await
            .map(|r| r.into_inner().status)
            .ok();
        if status == Some(tonic_health::ServingStatus::Serving as i32) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{addr} never reached its {name}: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
