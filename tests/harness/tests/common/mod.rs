//! Helpers shared by the tests that run the all-in-one system.
#![allow(dead_code)]

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
    ])
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
