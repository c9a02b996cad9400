//! The face-analysis service: photo or client landmarks in, landmarks,
//! millimetre measurements and a face shape out.
//!
//! Code map: [`image`] (decode, limits, orientation, sampling) →
//! [`models`] (ONNX Runtime sessions, engine pool) → [`detect`] (BlazeFace
//! post-processing) → [`pipeline`] (stages and quality gates) →
//! [`geometry`] (millimetres, pose, face shape) → [`api`] (gRPC, cache,
//! store).
//!
//! Invariants: no pixel buffer is allocated before the header's dimensions
//! pass the limits; model work runs on blocking threads, at most one request
//! per engine and one engine per core; every rejection has a stable reason
//! code; a stored analysis is the exact result first returned.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod detect;
pub mod geometry;
pub mod image;
pub mod models;
pub mod pipeline;

use std::path::PathBuf;
use std::sync::Arc;

use discovery_kit::CancellationToken;
use discovery_kit::cache::{Cache, CacheConfig};
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::deps::Dependency;
use discovery_kit::server::{BoxError, ServeConfig, ServiceHandle};
use discovery_kit::store::{IndexSpec, StoreConfig, Workload, doc};
use discovery_proto::service_names;
use discovery_proto::v1::face_analysis_server::FaceAnalysisServer;
use tonic::service::Routes;

/// Collection of stored analyses (TTL 24 h).
pub const FACE_ANALYSES: &str = "face_analyses";

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Store.
    pub store: StoreConfig,
    /// Cache.
    pub cache: CacheConfig,
    /// Models and ONNX Runtime.
    pub models_dir: PathBuf,
    /// Engines (concurrent analyses).
    pub workers: usize,
}

impl Config {
    /// Reads `DISCOVERY_FACE_ANALYSIS_PORT`, `DISCOVERY_FACE_MODELS_DIR`,
    /// `DISCOVERY_FACE_WORKERS`, the store and cache variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = env.parse("DISCOVERY_FACE_WORKERS", cores, "a number of workers")?;
        if workers == 0 || workers > 256 {
            return Err(ConfigError::new(
                "DISCOVERY_FACE_WORKERS",
                format!("{workers} is not between 1 and 256"),
            ));
        }
        Ok(Self {
            serve: ServeConfig::from_env(
                env,
                discovery_proto::topology::FACE_ANALYSIS.port_var,
                discovery_proto::topology::FACE_ANALYSIS.port,
            )?,
            store: StoreConfig::from_env(env)?,
            cache: CacheConfig::from_env(env)?,
            models_dir: PathBuf::from(env.string("DISCOVERY_FACE_MODELS_DIR", "models")),
            workers,
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

/// Starts the service. Missing models do not stop it: photos then get
/// FAILED_PRECONDITION naming the fix, client landmarks still work.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    let store = config.store.connect(Workload::Realtime).await?;
    store.ensure_indexes(FACE_ANALYSES, &indexes()).await?;
    let cache = Arc::new(Cache::new(&config.cache).await?);
    let (dir, workers) = (config.models_dir.clone(), config.workers);
    let pool = tokio::task::spawn_blocking(move || models::Pool::load(&dir, workers)).await?;
    match &pool {
        Ok(p) => {
            tracing::info!(engines = p.size(), dir = %config.models_dir.display(), "face models loaded")
        }
        Err(e) => {
            tracing::warn!(error = %e, "face models unavailable; photos will be refused until they are installed")
        }
    }
    let deps = Dependency::store_and_redis(store.clone(), cache.l2_pool().cloned());
    let svc = api::Service::new(pool, store, cache);
    let routes = Routes::new(
        discovery_kit::compressed!(FaceAnalysisServer::new(svc))
            .max_decoding_message_size(api::MAX_REQUEST_BYTES),
    );
    let mut handle = ServiceHandle::start(
        "face-analysis",
        &config.serve,
        routes,
        &[service_names::FACE_ANALYSIS],
        None,
        shutdown.clone(),
    )
    .await?;
    handle.watch_dependencies(&config.serve, deps, shutdown);
    Ok(handle)
}
