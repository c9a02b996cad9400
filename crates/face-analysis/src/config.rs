//! Face analysis' variables (its `Config` is read in `lib.rs`).

use discovery_kit::config::Variable;

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
