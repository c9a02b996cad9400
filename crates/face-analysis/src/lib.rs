//! The face-analysis service: photo or client landmarks in, landmarks,
//! millimetre measurements and a face shape out.
//!
//! Code map: [`image`] (decode, limits, orientation, sampling) →
//! [`models`] (ONNX Runtime sessions, engine pool) → [`detect`] (BlazeFace
//! post-processing) → [`pipeline`] (stages and quality gates) →
//! [`geometry`] (millimetres, pose, face shape) → [`api`] (gRPC, cache),
//! with [`convert`] (analysis → proto), [`store`] (`face_analyses`: its
//! documents and indexes), [`error`] (what a call fails with, and its
//! status) and [`config`].
//!
//! Invariants: no pixel buffer is allocated before the header's dimensions
//! pass the limits; model work runs on blocking threads, at most one request
//! per engine and one engine per core; every rejection has a stable reason
//! code; a stored analysis is the exact result first returned.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod convert;
pub mod detect;
pub mod error;
pub mod geometry;
pub mod image;
pub mod models;
pub mod pipeline;
pub mod store;

use std::sync::Arc;

use discovery_kit::CancellationToken;
use discovery_kit::cache::Cache;
use discovery_kit::deps::Dependency;
use discovery_kit::server::{BoxError, ServiceHandle};
use discovery_kit::store::Workload;
use discovery_proto::service_names;
use discovery_proto::v1::face_analysis_server::FaceAnalysisServer;
use tonic::service::Routes;

pub use config::Config;
pub use store::{FACE_ANALYSES, indexes};

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
