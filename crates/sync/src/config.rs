//! Sync's variables and their defaults.

use discovery_kit::config::{ConfigError, Env, Variable};
use discovery_kit::server::ServeConfig;
use discovery_kit::store::StoreConfig;

use crate::ingest;

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Store.
    pub store: StoreConfig,
    /// Recommendation replicas to deliver catalogue changes to (one is
    /// enough: it fans out to the others).
    pub recommendation_urls: Vec<String>,
    /// Follow the products change stream (one sync replica should).
    pub follow: bool,
    /// How long a batch is retried while the database is unavailable.
    pub retry_for: std::time::Duration,
    /// How far ahead of now a record's `updated_at` may be.
    pub max_future: std::time::Duration,
    /// Compute product embeddings (when the model is there).
    pub embed: bool,
    /// The sentence-embedding model's directory.
    pub text_model: std::path::PathBuf,
    /// Longest wait between embedding sweeps that found nothing.
    pub embed_idle: std::time::Duration,
}

impl Config {
    /// Reads `DISCOVERY_SYNC_PORT` and the store variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            serve: ServeConfig::from_env(
                env,
                discovery_proto::topology::SYNC.port_var,
                discovery_proto::topology::SYNC.port,
            )?,
            store: StoreConfig::from_env(env)?,
            recommendation_urls: env.list(
                discovery_proto::topology::RECOMMENDATION.urls_var,
                &[discovery_proto::topology::RECOMMENDATION.default_url],
            ),
            follow: env.bool("DISCOVERY_SYNC_FOLLOW", true)?,
            retry_for: env.duration("DISCOVERY_SYNC_RETRY_FOR", ingest::DEFAULT_RETRY_FOR)?,
            max_future: env.duration("DISCOVERY_SYNC_MAX_FUTURE", ingest::DEFAULT_MAX_FUTURE)?,
            embed: env.bool("DISCOVERY_SYNC_EMBED", true)?,
            text_model: std::path::PathBuf::from(env.string(
                discovery_embed::MODEL_VAR,
                discovery_embed::DEFAULT_MODEL_PATH,
            )),
            embed_idle: env.duration(
                "DISCOVERY_SYNC_EMBED_IDLE",
                std::time::Duration::from_secs(30),
            )?,
        })
    }
}

/// This service's variables, with their defaults (the launcher lists them
/// with everyone's: `discovery env`, the README).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DISCOVERY_SYNC_PORT",
        default: "50054",
        help: "sync gRPC port",
    },
    Variable {
        name: "DISCOVERY_SYNC_RETRY_FOR",
        default: "5m",
        help: "sync: how long a batch is retried while MongoDB is unreachable before the job fails",
    },
    Variable {
        name: "DISCOVERY_SYNC_MAX_FUTURE",
        default: "24h",
        help: "sync: a record whose updated_at is further ahead than this is a dead letter (newer wins: a far-future date would pin the product)",
    },
    Variable {
        name: "DISCOVERY_SYNC_EMBED",
        default: "true",
        help: "sync: compute product embeddings for semantic search (when the model is installed)",
    },
    Variable {
        name: "DISCOVERY_SYNC_EMBED_IDLE",
        default: "30s",
        help: "sync: longest wait between embedding sweeps that found nothing to embed (a job's end starts one at once)",
    },
    Variable {
        name: "DISCOVERY_SYNC_FOLLOW",
        default: "true",
        help: "sync: follow the products change stream and deliver changes to recommendation",
    },
];
