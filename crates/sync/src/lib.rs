//! The sync service: catalogue ingestion, job progress, dead letters and the
//! catalogue change feed.
//!
//! This issue wires the service (contract, server, store, indexes); ingestion
//! arrives with the sync issue, and until then those RPCs answer
//! UNIMPLEMENTED with that reason.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::pin::Pin;

use discovery_kit::CancellationToken;
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::server::{BoxError, ServeConfig, ServiceHandle};
use discovery_kit::store::{IndexSpec, Store, StoreConfig, Workload, doc};
use discovery_proto::service_names;
use discovery_proto::v1 as pb;
use discovery_proto::v1::sync_server::{Sync, SyncServer};
use futures::Stream;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

/// Jobs.
pub const SYNC_JOBS: &str = "sync_jobs";
/// Change-stream resume tokens.
pub const SYNC_CHECKPOINTS: &str = "sync_checkpoints";
/// Rejected records.
pub const SYNC_DEAD_LETTERS: &str = "sync_dead_letters";

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Store.
    pub store: StoreConfig,
}

impl Config {
    /// Reads `DISCOVERY_SYNC_PORT` and the store variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            serve: ServeConfig::from_env(env, "DISCOVERY_SYNC_PORT", 50054)?,
            store: StoreConfig::from_env(env)?,
        })
    }
}

#[derive(Clone)]
struct Service {
    store: Store,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn not_yet(what: &str) -> Status {
    discovery_kit::server::not_yet(what, "sync")
}

#[tonic::async_trait]
impl Sync for Service {
    async fn ingest_catalog(
        &self,
        _req: Request<Streaming<pb::IngestCatalogRequest>>,
    ) -> Result<Response<pb::IngestCatalogResponse>, Status> {
        Err(not_yet("IngestCatalog"))
    }

    async fn get_sync_job(
        &self,
        req: Request<pb::GetSyncJobRequest>,
    ) -> Result<Response<pb::GetSyncJobResponse>, Status> {
        let id = req.into_inner().job_id;
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "job_id: give the id IngestCatalog returned",
            ));
        }
        match self.store.get(SYNC_JOBS, &id).await {
            Ok(Some(_)) => Err(not_yet("decoding stored jobs")),
            Ok(None) => Err(Status::not_found(format!("job_id: no job {id:?}"))),
            Err(e) => {
                tracing::error!(error = %e, "reading sync job failed");
                Err(Status::unavailable(
                    "jobs cannot be read right now; retry later",
                ))
            }
        }
    }

    type WatchSyncJobStream = BoxStream<pb::SyncJob>;

    async fn watch_sync_job(
        &self,
        _req: Request<pb::WatchSyncJobRequest>,
    ) -> Result<Response<Self::WatchSyncJobStream>, Status> {
        Err(not_yet("WatchSyncJob"))
    }

    async fn list_dead_letters(
        &self,
        _req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Err(not_yet("ListDeadLetters"))
    }

    async fn replay_dead_letters(
        &self,
        _req: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        Err(not_yet("ReplayDeadLetters"))
    }

    type WatchCatalogChangesStream = BoxStream<pb::CatalogChange>;

    async fn watch_catalog_changes(
        &self,
        _req: Request<pb::WatchCatalogChangesRequest>,
    ) -> Result<Response<Self::WatchCatalogChangesStream>, Status> {
        Err(not_yet("WatchCatalogChanges"))
    }
}

/// Indexes of the sync collections.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    vec![
        (
            SYNC_JOBS,
            vec![IndexSpec::new("started_at_-1", doc! {"started_at": -1})],
        ),
        (
            SYNC_DEAD_LETTERS,
            vec![IndexSpec::new(
                "job_id_1_rejected_at_-1",
                doc! {"job_id": 1, "rejected_at": -1},
            )],
        ),
    ]
}

/// Starts the service.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    let store = config.store.connect(Workload::Realtime).await?;
    for (coll, ix) in indexes() {
        store.ensure_indexes(coll, &ix).await?;
    }
    let routes = Routes::new(SyncServer::new(Service { store }));
    ServiceHandle::start(
        "sync",
        &config.serve,
        routes,
        &[service_names::SYNC],
        None,
        shutdown,
    )
    .await
}
