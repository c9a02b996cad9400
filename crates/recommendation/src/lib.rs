//! The recommendation service: frame catalogue, fit-aware ranking, search.
//!
//! Architecture invariant: requests are answered from the in-memory
//! [`snapshot`]; the database is read only to (re)load it.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod catalog;
pub mod rank;
pub mod search;
pub mod signals;
pub mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use discovery_kit::CancellationToken;
use discovery_kit::cache::{Cache, CacheConfig};
use discovery_kit::config::{ConfigError, Env};
use discovery_kit::server::{BoxError, ServeConfig, ServiceHandle};
use discovery_kit::store::{FindOptions, IndexSpec, Store, StoreConfig, Workload, doc};
use discovery_proto::service_names;
use discovery_proto::v1::cache_admin_server::CacheAdminServer;
use discovery_proto::v1::catalog_server::CatalogServer;
use discovery_proto::v1::recommendation_server::RecommendationServer;
use tonic::service::Routes;

use crate::catalog::{Frame, PRODUCTS};
use crate::snapshot::{Catalog, Snapshot};

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Store.
    pub store: StoreConfig,
    /// Cache.
    pub cache: CacheConfig,
    /// Seed this many demo frames when the catalogue is empty (0 = never).
    pub demo_catalog: usize,
    /// Full snapshot reload from the store (safety net for missed change
    /// messages); zero disables.
    pub catalog_refresh: Duration,
    /// Rebuild of popularity and co-occurrence from interactions; zero disables.
    pub signals_refresh: Duration,
    /// Cache warming period (also once at start); zero disables.
    pub warm_interval: Duration,
}

impl Config {
    /// Reads `DISCOVERY_RECOMMENDATION_PORT`, store, cache and
    /// `DISCOVERY_DEMO_CATALOG` (default 520 with the memory store, else 0).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let store = StoreConfig::from_env(env)?;
        let default_demo = if matches!(store, StoreConfig::Memory) {
            520
        } else {
            0
        };
        Ok(Self {
            serve: ServeConfig::from_env(env, "DISCOVERY_RECOMMENDATION_PORT", 50053)?,
            store,
            cache: CacheConfig::from_env(env)?,
            demo_catalog: env.parse(
                "DISCOVERY_DEMO_CATALOG",
                default_demo,
                "a number of frames",
            )?,
            catalog_refresh: env.duration("DISCOVERY_CATALOG_REFRESH", Duration::from_secs(300))?,
            signals_refresh: env.duration("DISCOVERY_SIGNALS_REFRESH", Duration::from_secs(60))?,
            warm_interval: env.duration("DISCOVERY_WARM_INTERVAL", Duration::from_secs(900))?,
        })
    }
}

/// Indexes on `products` and the collections this service owns (seed spec
/// `indexStrategy`), created idempotently at start.
pub fn product_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new("name_1", doc! {"name": 1}),
        IndexSpec::new("brand_1", doc! {"brand": 1}),
        IndexSpec::new("categories_1", doc! {"categories": 1}),
        IndexSpec::new(
            "inventory.variants.sku_1",
            doc! {"inventory.variants.sku": 1},
        ),
        IndexSpec::new(
            "ai_enhanced.style_keywords_1",
            doc! {"ai_enhanced.style_keywords": 1},
        ),
        IndexSpec::new("metadata.updated_at_-1", doc! {"metadata.updated_at": -1}),
        IndexSpec::new("price_1", doc! {"price": 1}),
        IndexSpec::new(
            "face_shape_compat_price",
            doc! {
                "ai_enhanced.face_shape_compatibility.oval": 1,
                "ai_enhanced.face_shape_compatibility.round": 1,
                "ai_enhanced.face_shape_compatibility.square": 1,
                "price": 1,
            },
        ),
        IndexSpec::new(
            "brand_categories_keywords_stock",
            doc! {"brand": 1, "categories": 1, "ai_enhanced.style_keywords": 1, "inventory.isInStock": 1},
        ),
        IndexSpec::new(
            "in_stock_price_partial",
            doc! {"inventory.isInStock": 1, "price": 1},
        )
        .partial(doc! {"inventory.isInStock": true}),
        IndexSpec::new(
            "updated_at_feature_summary_text",
            doc! {"metadata.updated_at": -1, "ai_enhanced.feature_summary": "text"},
        )
        // Search runs on the snapshot; the text index serves ad-hoc queries only.
        .optional(),
    ]
}

/// Indexes on `ai_sessions` (seed spec), with the 24 h TTL on `createdAt`.
pub fn session_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new(
            "sessionId_1_timestamp_-1",
            doc! {"sessionId": 1, "timestamp": -1},
        ),
        IndexSpec::new("userId_1_completed_1", doc! {"userId": 1, "completed": 1}),
        IndexSpec::new(
            "faceAnalysis.faceShape_1_timestamp_-1",
            doc! {"faceAnalysis.faceShape": 1, "timestamp": -1},
        ),
        IndexSpec::new("createdAt_ttl", doc! {"createdAt": 1}).ttl(Duration::from_secs(86_400)),
    ]
}

/// Indexes on `recommendations` (seed spec; served-recommendation logs).
pub fn recommendation_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new(
            "userId_1_timestamp_-1_relevanceScore_-1",
            doc! {"userId": 1, "timestamp": -1, "relevanceScore": -1},
        ),
        IndexSpec::new(
            "sessionId_1_productId_1",
            doc! {"sessionId": 1, "productId": 1},
        ),
        IndexSpec::new(
            "context.faceShape_1_context.stylePreferences_1",
            doc! {"context.faceShape": 1, "context.stylePreferences": 1},
        ),
        IndexSpec::new("userId_sparse", doc! {"userId": 1}).sparse(),
    ]
}

/// Indexes on `interactions` (signal rebuilds read the newest first).
pub fn interaction_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new("at_-1", doc! {"at": -1}),
        IndexSpec::new("userId_1_at_-1", doc! {"userId": 1, "at": -1}),
    ]
}

/// Loads every product into a new snapshot version.
pub async fn load_catalog(store: &Store, version: i64) -> Result<Catalog, BoxError> {
    let docs = store
        .find(PRODUCTS, doc! {}, FindOptions::default())
        .await?;
    let mut frames = Vec::with_capacity(docs.len());
    for d in docs {
        match Frame::from_document(d) {
            Ok(f) => frames.push(f),
            // A bad document must not take the catalogue down; sync validates on the way in.
            Err(e) => tracing::warn!(error = %e, "skipping undecodable product"),
        }
    }
    Ok(Catalog::new(frames, version))
}

/// Starts the service.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, BoxError> {
    let store = config.store.connect(Workload::Recommendation).await?;
    store.ensure_indexes(PRODUCTS, &product_indexes()).await?;
    store
        .ensure_indexes(api::AI_SESSIONS, &session_indexes())
        .await?;
    store
        .ensure_indexes("recommendations", &recommendation_indexes())
        .await?;
    store
        .ensure_indexes(api::INTERACTIONS, &interaction_indexes())
        .await?;
    if config.demo_catalog > 0 && store.count(PRODUCTS, doc! {}).await? == 0 {
        let frames = catalog::demo_catalog(config.demo_catalog);
        for chunk in frames.chunks(1000) {
            store
                .bulk_upsert(PRODUCTS, chunk.iter().map(Frame::to_document).collect())
                .await?;
        }
        tracing::info!(frames = frames.len(), "seeded the demo catalogue");
    }
    let snapshot = Snapshot::default();
    snapshot.replace(load_catalog(&store, 1).await?);
    tracing::info!(
        products = snapshot.load().frames.len(),
        "catalogue snapshot loaded"
    );
    let cache = Arc::new(Cache::new(&config.cache).await?);
    let svc = api::Service {
        snapshot,
        store,
        cache,
    };
    let mut handle = ServiceHandle::start(
        "recommendation",
        &config.serve,
        Routes::new(RecommendationServer::new(svc.clone()))
            .add_service(CatalogServer::new(svc.clone()))
            .add_service(CacheAdminServer::new(svc.clone())),
        &[
            service_names::RECOMMENDATION,
            service_names::CATALOG,
            service_names::CACHE_ADMIN,
        ],
        None,
        shutdown.clone(),
    )
    .await?;
    let (s, t) = (svc.clone(), shutdown.clone());
    handle.push_task(tokio::spawn(async move {
        follow_catalog_changes(s, t).await;
        Ok(())
    }));
    handle.push_task(tokio::spawn(async move {
        background(svc, config, shutdown).await;
        Ok(())
    }));
    Ok(handle)
}

/// Applies catalogue changes other replicas publish.
async fn follow_catalog_changes(svc: api::Service, shutdown: CancellationToken) {
    use prost::Message;
    let mut rx = svc.cache.bus().subscribe(api::CATALOG_CHANNEL);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => m,
        };
        match msg {
            Ok(bytes) => {
                let req = match discovery_proto::v1::ApplyCatalogChangeRequest::decode(bytes) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable catalogue change message");
                        continue;
                    }
                };
                match api::changes_from_proto(&req) {
                    Ok(changes) => {
                        let (_, _, tags) = svc.apply_local(changes);
                        // Local L1 only: the sender already cleared L2 and told every L1.
                        svc.cache.drop_tags_local(&tags).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "rejected a catalogue change message"),
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "missed catalogue change messages; reloading the snapshot"
                );
                reload(&svc).await;
            }
            Err(_) => return,
        }
    }
}

/// Reloads the whole catalogue and applies the differences as changes.
async fn reload(svc: &api::Service) {
    let current = svc.snapshot.load();
    match load_catalog(&svc.store, current.version).await {
        Ok(fresh) => {
            let mut changes = Vec::new();
            for (i, f) in fresh.frames.iter().enumerate() {
                let same = current
                    .index(&f.id)
                    .is_some_and(|r| current.features.stamp[r] == fresh.features.stamp[i]);
                if !same {
                    changes.push(snapshot::Change::Upsert(Box::new((**f).clone())));
                }
            }
            for f in &current.frames {
                if fresh.index(&f.id).is_none() {
                    changes.push(snapshot::Change::Delete(f.id.clone()));
                }
            }
            if !changes.is_empty() {
                let (_, _, tags) = svc.apply_local(changes);
                svc.cache.drop_tags_local(&tags).await;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "catalogue reload failed; keeping the current snapshot")
        }
    }
}

/// Periodic work: signals, snapshot reload, warming.
async fn background(svc: api::Service, config: Config, shutdown: CancellationToken) {
    let tick = |d: Duration| {
        let mut i = tokio::time::interval(if d.is_zero() {
            Duration::from_secs(86_400 * 365)
        } else {
            d
        });
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let mut signals = tick(config.signals_refresh);
    let mut refresh = tick(config.catalog_refresh);
    let mut warm = tick(config.warm_interval);
    // The first tick of each fires at once: signals, then a warm-up at start.
    refresh.reset();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = signals.tick(), if !config.signals_refresh.is_zero() => {
                match signals::Signals::load(&svc.store, discovery_kit::now_unix_ms()).await {
                    Ok(s) => {
                        tracing::debug!(interactions = s.interactions, "signals rebuilt");
                        svc.snapshot.set_signals(Arc::new(s));
                    }
                    Err(e) => tracing::warn!(error = %e, "signal rebuild failed; keeping the previous signals"),
                }
            }
            _ = refresh.tick(), if !config.catalog_refresh.is_zero() => reload(&svc).await,
            _ = warm.tick(), if !config.warm_interval.is_zero() => {
                let n = svc.warm().await;
                tracing::info!(entries = n, "cache warmed");
            }
        }
    }
}
