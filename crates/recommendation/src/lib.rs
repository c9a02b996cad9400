//! The recommendation service: frame catalogue, fit-aware ranking, search.
//!
//! Architecture invariant: requests are answered from the in-memory
//! [`snapshot`]; the database is read only to (re)load it.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod catalog;
pub mod rank;
pub mod snapshot;

use std::sync::Arc;

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
    let routes = Routes::new(RecommendationServer::new(svc.clone()))
        .add_service(CatalogServer::new(svc.clone()))
        .add_service(CacheAdminServer::new(svc));
    ServiceHandle::start(
        "recommendation",
        &config.serve,
        routes,
        &[
            service_names::RECOMMENDATION,
            service_names::CATALOG,
            service_names::CACHE_ADMIN,
        ],
        None,
        shutdown,
    )
    .await
}
