//! Recommendation's variables (its `Config` is read in `lib.rs`).

use discovery_kit::config::Variable;

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
