//! Recommendation's configuration: its variables (documented from
//! [`VARIABLES`]) and the [`Config`] read from them.

use std::time::Duration;

use discovery_kit::cache::CacheConfig;
use discovery_kit::config::{ConfigError, Env, Variable};
use discovery_kit::server::ServeConfig;
use discovery_kit::store::StoreConfig;

use crate::api;

/// This service's variables, with their defaults (the launcher lists them
/// with everyone's: `discovery env`, the README).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DISCOVERY_RECOMMENDATION_PORT",
        default: "50053",
        help: "recommendation gRPC port",
    },
    Variable {
        name: "DISCOVERY_DEMO_CATALOG",
        default: "520 with the memory store, else 0",
        help: "seed this many demo frames into an empty catalogue",
    },
    Variable {
        name: "DISCOVERY_CATALOG_REFRESH",
        default: "5m",
        help: "recommendation: full snapshot reload from the store (safety net; 0s disables)",
    },
    Variable {
        name: "DISCOVERY_SIGNALS_REFRESH",
        default: "60s",
        help: "recommendation: rebuild popularity and co-occurrence from interactions (0s disables)",
    },
    Variable {
        name: "DISCOVERY_WARM_INTERVAL",
        default: "15m",
        help: "recommendation: cache warming period, also once at start (0s disables)",
    },
    Variable {
        name: "DISCOVERY_INTERACTIONS_PER_MINUTE",
        default: "120",
        help: "recommendation: most RecordInteraction calls one shopper (user, else session) makes per minute, counted across replicas; 0: no bound",
    },
];

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
    /// The sentence-embedding model's directory (absent: lexical search).
    pub text_model: std::path::PathBuf,
    /// Full snapshot reload from the store (safety net for missed change
    /// messages); zero disables.
    pub catalog_refresh: Duration,
    /// Rebuild of popularity and co-occurrence from interactions; zero disables.
    pub signals_refresh: Duration,
    /// Cache warming period (also once at start); zero disables.
    pub warm_interval: Duration,
    /// Face-analysis replicas, asked for the analyses `analysis_id` names.
    pub face_analysis_urls: Vec<String>,
    /// Most interactions one shopper records per minute (0: no bound).
    pub interactions_per_minute: u64,
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
            serve: ServeConfig::from_env(
                env,
                discovery_proto::topology::RECOMMENDATION.port_var,
                discovery_proto::topology::RECOMMENDATION.port,
            )?,
            store,
            cache: CacheConfig::from_env(env)?,
            text_model: std::path::PathBuf::from(env.string(
                discovery_embed::MODEL_VAR,
                discovery_embed::DEFAULT_MODEL_PATH,
            )),
            demo_catalog: env.parse(
                "DISCOVERY_DEMO_CATALOG",
                default_demo,
                "a number of frames",
            )?,
            catalog_refresh: env.duration("DISCOVERY_CATALOG_REFRESH", Duration::from_secs(300))?,
            signals_refresh: env.duration("DISCOVERY_SIGNALS_REFRESH", Duration::from_secs(60))?,
            warm_interval: env.duration("DISCOVERY_WARM_INTERVAL", Duration::from_secs(900))?,
            face_analysis_urls: env.list(
                discovery_proto::topology::FACE_ANALYSIS.urls_var,
                &[discovery_proto::topology::FACE_ANALYSIS.default_url],
            ),
            interactions_per_minute: env.parse(
                "DISCOVERY_INTERACTIONS_PER_MINUTE",
                api::INTERACTIONS_PER_MINUTE,
                "a number of interactions",
            )?,
        })
    }
}
