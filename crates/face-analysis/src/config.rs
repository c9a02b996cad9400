//! Face analysis' configuration: its variables (documented from
//! [`VARIABLES`]) and the [`Config`] read from them.

use std::path::PathBuf;

use discovery_kit::cache::CacheConfig;
use discovery_kit::config::{ConfigError, Env, Variable};
use discovery_kit::server::ServeConfig;
use discovery_kit::store::StoreConfig;

/// This service's variables, with their defaults (the launcher lists them
/// with everyone's: `discovery env`, the README).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DISCOVERY_FACE_ANALYSIS_PORT",
        default: "50052",
        help: "face-analysis gRPC port",
    },
    Variable {
        name: "DISCOVERY_FACE_MODELS_DIR",
        default: "models",
        help: "face models and libonnxruntime.so (scripts/fetch-models.sh fills it)",
    },
    Variable {
        name: "DISCOVERY_FACE_WORKERS",
        default: "number of cores",
        help: "face analyses run at once (one model engine, one core each)",
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
