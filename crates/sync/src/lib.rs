//! The sync service: catalogue ingestion, job progress, dead letters and the
//! catalogue change feed.
//!
//! - [`records`]: decoding (typed, NDJSON, Shopify NDJSON), mapping and
//!   validation of feed records;
//! - [`ingest`]: jobs, the bounded batch pipeline, newer-wins bulk upserts,
//!   dead letters.
//!
//! - [`embedder`]: product embeddings, off the ingest path, stored with
//!   each product (and by text, so an unchanged text is not embedded again);
//! - [`feed`]: the products change stream delivered to recommendation
//!   replicas, checkpointed; `WatchCatalogChanges`;
//! - [`api`]: the gRPC adapter; [`config`]: variables; [`store`]: the
//!   collections, documents and indexes; [`error`]: what a call or job
//!   fails with, and its status.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod convert;
pub mod embedder;
pub mod error;
pub mod feed;
pub mod ingest;
pub mod records;
pub mod store;

pub use api::Sources;
pub use config::Config;
pub use store::{SYNC_CHECKPOINTS, SYNC_DEAD_LETTERS, SYNC_JOBS, indexes};

use std::sync::Arc;

use discovery_kit::CancellationToken;
use discovery_kit::deps::Dependency;
use discovery_kit::server::{BoxError, ServiceHandle};
use discovery_kit::store::Workload;
use discovery_proto::service_names;
use discovery_proto::v1::sync_server::SyncServer;
use tonic::service::Routes;

use crate::api::Service;

/// Starts the service.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    let store = config.store.connect(Workload::Realtime).await?;
    for (coll, ix) in indexes() {
        store.ensure_indexes(coll, &ix).await?;
    }
    let watchers = Arc::new(feed::Watchers::default());
    let jobs = Arc::new(ingest::Jobs::new(config.retry_for).with_max_future(config.max_future));
    let written = jobs.written();
    let routes = Routes::new(discovery_kit::compressed!(SyncServer::new(Service {
        store: store.clone(),
        jobs,
        watchers: watchers.clone(),
    })));
    let mut handle = ServiceHandle::start(
        "sync",
        &config.serve,
        routes,
        &[service_names::SYNC],
        None,
        shutdown.clone(),
    )
    .await?;
    handle.watch_dependencies(
        &config.serve,
        [Dependency::store(store.clone())],
        shutdown.clone(),
    );
    let model = config.text_model.clone();
    let embedder = if config.embed {
        tokio::task::spawn_blocking(move || embedder::load(&model))
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    if let Some(embedder) = embedder {
        let (store, shutdown, idle) = (store.clone(), shutdown.clone(), config.embed_idle);
        handle.push_task(tokio::spawn(async move {
            embedder::run(store, embedder, written, idle, shutdown).await;
            Ok(())
        }));
    }
    if config.follow {
        // Every replica takes deliveries (dns:// names are resolved again
        // as replicas come and go); each one fans the change out to the rest.
        let client = if config.recommendation_urls.is_empty() {
            None
        } else {
            Some(
                discovery_proto::v1::cache_admin_client::CacheAdminClient::new(
                    discovery_kit::client::connect_balanced(
                        "DISCOVERY_RECOMMENDATION_URLS",
                        &config.recommendation_urls,
                        config.serve.internal.as_ref(),
                        "sync",
                    )?,
                ),
            )
        };
        handle.push_task(tokio::spawn(async move {
            feed::follow(store, client, watchers, shutdown).await;
            Ok(())
        }));
    }
    Ok(handle)
}
