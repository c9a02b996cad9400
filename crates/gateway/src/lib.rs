//! The gateway: the one public gRPC API (`discovery.v1.Discovery`).
//!
//! This issue wires the forwarding to the owning services over real gRPC,
//! with metadata (end-user id, W3C trace context) passed on. Auth, limits,
//! balancing over replicas, breakers and gRPC-Web arrive with the gateway
//! issue; until then the first URL of each `DISCOVERY_*_URLS` is used.
//!
//! Architecture invariant: the gateway holds no domain logic; every RPC is
//! answered by the service that owns it.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::pin::Pin;

use discovery_kit::CancellationToken;
use discovery_kit::client::{TracedChannel, connect_lazy};
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::server::{BoxError, ServeConfig, ServiceHandle};
use discovery_proto::service_names;
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_client::CacheAdminClient;
use discovery_proto::v1::catalog_client::CatalogClient;
use discovery_proto::v1::discovery_server::{Discovery, DiscoveryServer};
use discovery_proto::v1::face_analysis_client::FaceAnalysisClient;
use discovery_proto::v1::monitoring_client::MonitoringClient;
use discovery_proto::v1::recommendation_client::RecommendationClient;
use discovery_proto::v1::sync_client::SyncClient;
use futures::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

/// Upstream URLs, one list per service.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// Face-analysis replicas.
    pub face_analysis: Vec<String>,
    /// Recommendation replicas.
    pub recommendation: Vec<String>,
    /// Sync replicas.
    pub sync: Vec<String>,
    /// Monitoring replicas.
    pub monitoring: Vec<String>,
}

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Upstream services.
    pub upstreams: Upstreams,
}

fn urls(env: &Env, var: &'static str, default: &str) -> Result<Vec<String>, ConfigError> {
    let list = env.list(var, &[default]);
    if list.is_empty() {
        return Err(ConfigError::new(
            var,
            "give at least one URL (http://host:port)",
        ));
    }
    for u in &list {
        discovery_kit::client::endpoint(var, u)
            .map_err(|e| ConfigError::new(var, format!("{u:?}: {}", e.reason)))?;
    }
    Ok(list)
}

impl Config {
    /// Reads `DISCOVERY_GATEWAY_PORT` and the `DISCOVERY_*_URLS` lists.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            serve: ServeConfig::from_env(env, "DISCOVERY_GATEWAY_PORT", 50051)?,
            upstreams: Upstreams {
                face_analysis: urls(
                    env,
                    "DISCOVERY_FACE_ANALYSIS_URLS",
                    "http://127.0.0.1:50052",
                )?,
                recommendation: urls(
                    env,
                    "DISCOVERY_RECOMMENDATION_URLS",
                    "http://127.0.0.1:50053",
                )?,
                sync: urls(env, "DISCOVERY_SYNC_URLS", "http://127.0.0.1:50054")?,
                monitoring: urls(env, "DISCOVERY_MONITORING_URLS", "http://127.0.0.1:50055")?,
            },
        })
    }
}

#[derive(Clone)]
struct Gateway {
    face: FaceAnalysisClient<TracedChannel>,
    reco: RecommendationClient<TracedChannel>,
    catalog: CatalogClient<TracedChannel>,
    cache_admin: CacheAdminClient<TracedChannel>,
    sync: SyncClient<TracedChannel>,
    monitoring: MonitoringClient<TracedChannel>,
}

/// Re-wraps a request for the upstream, keeping the caller's metadata
/// (end-user id, deadline) but not its transport headers.
fn forward<T>(req: Request<T>) -> Request<T> {
    let (metadata, _ext, msg) = req.into_parts();
    let mut out = Request::new(msg);
    *out.metadata_mut() = metadata;
    out
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One forwarding method. Spelled in `async_trait`'s desugared form because
/// `#[tonic::async_trait]` cannot see inside macro invocations.
macro_rules! unary {
    ($name:ident, $client:ident, $req:ty, $resp:ty) => {
        fn $name<'life0, 'async_trait>(
            &'life0 self,
            req: Request<$req>,
        ) -> Pin<
            Box<
                dyn std::future::Future<Output = Result<Response<$resp>, Status>>
                    + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            let mut c = self.$client.clone();
            Box::pin(async move { c.$name(forward(req)).await })
        }
    };
}

#[tonic::async_trait]
impl Discovery for Gateway {
    unary!(
        analyze_face,
        face,
        pb::AnalyzeFaceRequest,
        pb::AnalyzeFaceResponse
    );
    unary!(
        get_face_analysis,
        face,
        pb::GetFaceAnalysisRequest,
        pb::GetFaceAnalysisResponse
    );
    unary!(recommend, reco, pb::RecommendRequest, pb::RecommendResponse);
    unary!(
        search_products,
        catalog,
        pb::SearchProductsRequest,
        pb::SearchProductsResponse
    );
    unary!(
        get_product,
        catalog,
        pb::GetProductRequest,
        pb::GetProductResponse
    );
    unary!(
        batch_get_products,
        catalog,
        pb::BatchGetProductsRequest,
        pb::BatchGetProductsResponse
    );
    unary!(
        record_interaction,
        reco,
        pb::RecordInteractionRequest,
        pb::RecordInteractionResponse
    );
    unary!(
        get_session,
        reco,
        pb::GetSessionRequest,
        pb::GetSessionResponse
    );
    unary!(
        update_session,
        reco,
        pb::UpdateSessionRequest,
        pb::UpdateSessionResponse
    );
    unary!(
        get_sync_job,
        sync,
        pb::GetSyncJobRequest,
        pb::GetSyncJobResponse
    );
    unary!(
        list_dead_letters,
        sync,
        pb::ListDeadLettersRequest,
        pb::ListDeadLettersResponse
    );
    unary!(
        replay_dead_letters,
        sync,
        pb::ReplayDeadLettersRequest,
        pb::ReplayDeadLettersResponse
    );
    unary!(
        get_sla_report,
        monitoring,
        pb::GetSlaReportRequest,
        pb::GetSlaReportResponse
    );
    unary!(
        list_alerts,
        monitoring,
        pb::ListAlertsRequest,
        pb::ListAlertsResponse
    );
    unary!(
        get_system_health,
        monitoring,
        pb::GetSystemHealthRequest,
        pb::GetSystemHealthResponse
    );
    unary!(
        get_cache_status,
        cache_admin,
        pb::GetCacheStatusRequest,
        pb::GetCacheStatusResponse
    );
    unary!(
        warm_cache,
        cache_admin,
        pb::WarmCacheRequest,
        pb::WarmCacheResponse
    );
    unary!(
        invalidate_cache,
        cache_admin,
        pb::InvalidateCacheRequest,
        pb::InvalidateCacheResponse
    );

    async fn ingest_catalog(
        &self,
        req: Request<Streaming<pb::IngestCatalogRequest>>,
    ) -> Result<Response<pb::IngestCatalogResponse>, Status> {
        let (metadata, _ext, inbound) = req.into_parts();
        // Forward items until the first transport error, which ends the
        // upstream stream early and so fails the ingest rather than truncating it silently.
        let items = inbound
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()));
        let mut out = Request::new(items);
        *out.metadata_mut() = metadata;
        self.sync.clone().ingest_catalog(out).await
    }

    type WatchSyncJobStream = BoxStream<pb::SyncJob>;

    async fn watch_sync_job(
        &self,
        req: Request<pb::WatchSyncJobRequest>,
    ) -> Result<Response<Self::WatchSyncJobStream>, Status> {
        let resp = self.sync.clone().watch_sync_job(forward(req)).await?;
        let (md, stream, ext) = resp.into_parts();
        Ok(Response::from_parts(
            md,
            Box::pin(stream) as BoxStream<pb::SyncJob>,
            ext,
        ))
    }
}

/// Starts the gateway.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    let u = &config.upstreams;
    let face = connect_lazy("DISCOVERY_FACE_ANALYSIS_URLS", &u.face_analysis[0])?;
    let reco = connect_lazy("DISCOVERY_RECOMMENDATION_URLS", &u.recommendation[0])?;
    let sync = connect_lazy("DISCOVERY_SYNC_URLS", &u.sync[0])?;
    let mon = connect_lazy("DISCOVERY_MONITORING_URLS", &u.monitoring[0])?;
    let gw = Gateway {
        face: FaceAnalysisClient::new(face)
            .max_encoding_message_size(discovery_proto::MAX_REQUEST_BYTES),
        reco: RecommendationClient::new(reco.clone()),
        catalog: CatalogClient::new(reco.clone()),
        cache_admin: CacheAdminClient::new(reco),
        sync: SyncClient::new(sync),
        monitoring: MonitoringClient::new(mon),
    };
    // Photos for AnalyzeFace are up to 15 MiB (tonic's default limit is 4).
    let routes = Routes::new(
        DiscoveryServer::new(gw).max_decoding_message_size(discovery_proto::MAX_REQUEST_BYTES),
    );
    ServiceHandle::start(
        "gateway",
        &config.serve,
        routes,
        &[service_names::DISCOVERY],
        None,
        shutdown,
    )
    .await
}
