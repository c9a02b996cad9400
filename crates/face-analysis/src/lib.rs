//! The face-analysis service: photo or client landmarks in, landmarks,
//! millimetre measurements and a face shape out.
//!
//! This issue wires the service (contract, server, store, cache); the model
//! pipeline and measurements arrive with the face-analysis issue, and until
//! then AnalyzeFace answers UNIMPLEMENTED with that reason.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use discovery_kit::CancellationToken;
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::server::{BoxError, ServeConfig, ServiceHandle};
use discovery_kit::store::{IndexSpec, Store, StoreConfig, Workload, doc};
use discovery_proto::service_names;
use discovery_proto::v1 as pb;
use discovery_proto::v1::face_analysis_server::{FaceAnalysis, FaceAnalysisServer};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// Collection of stored analyses (TTL 24 h).
pub const FACE_ANALYSES: &str = "face_analyses";

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Store.
    pub store: StoreConfig,
}

impl Config {
    /// Reads `DISCOVERY_FACE_ANALYSIS_PORT` and the store variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            serve: ServeConfig::from_env(env, "DISCOVERY_FACE_ANALYSIS_PORT", 50052)?,
            store: StoreConfig::from_env(env)?,
        })
    }
}

/// Indexes of `face_analyses`: TTL 24 h on `createdAt`, lookups by session.
pub fn indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new("createdAt_ttl", doc! {"createdAt": 1})
            .ttl(std::time::Duration::from_secs(24 * 3600)),
        IndexSpec::new(
            "sessionId_1_createdAt_-1",
            doc! {"sessionId": 1, "createdAt": -1},
        ),
    ]
}

#[derive(Clone)]
struct Service {
    store: Store,
}

#[tonic::async_trait]
impl FaceAnalysis for Service {
    async fn analyze_face(
        &self,
        req: Request<pb::AnalyzeFaceRequest>,
    ) -> Result<Response<pb::AnalyzeFaceResponse>, Status> {
        match req.into_inner().input {
            None => Err(Status::invalid_argument(
                "input: send an image (JPEG, PNG or WebP bytes) or client landmarks",
            )),
            Some(_) => Err(Status::unimplemented(
                "face analysis models are not installed in this build yet (tracked by the face-analysis issue)",
            )),
        }
    }

    async fn get_face_analysis(
        &self,
        req: Request<pb::GetFaceAnalysisRequest>,
    ) -> Result<Response<pb::GetFaceAnalysisResponse>, Status> {
        let id = req.into_inner().analysis_id;
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "analysis_id: give the id AnalyzeFace returned",
            ));
        }
        match self.store.get(FACE_ANALYSES, &id).await {
            Ok(Some(_)) => Err(Status::unimplemented(
                "stored analyses cannot be decoded by this build yet",
            )),
            Ok(None) => Err(Status::not_found(format!(
                "analysis_id: no analysis {id:?} (they are kept 24 h)"
            ))),
            Err(e) => {
                tracing::error!(error = %e, "reading face analysis failed");
                Err(Status::unavailable(
                    "analyses cannot be read right now; retry later",
                ))
            }
        }
    }
}

/// Starts the service.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    let store = config.store.connect(Workload::Realtime).await?;
    store.ensure_indexes(FACE_ANALYSES, &indexes()).await?;
    let routes = Routes::new(FaceAnalysisServer::new(Service { store }));
    ServiceHandle::start(
        "face-analysis",
        &config.serve,
        routes,
        &[service_names::FACE_ANALYSIS],
        None,
        shutdown,
    )
    .await
}
