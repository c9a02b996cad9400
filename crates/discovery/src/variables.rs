//! Every variable the system reads: the kit's, each service's, and the
//! launcher's (the topology's addresses, the CLI). `discovery env` prints
//! them; tests check the code reads no other and the README lists them.

use discovery_kit::config::Variable;

/// The launcher's and the CLI's own, and the services' addresses (their
/// defaults are `discovery_proto::topology`'s; a test compares).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DISCOVERY_FACE_ANALYSIS_URLS",
        default: "http://127.0.0.1:50052",
        help: "comma-separated face-analysis replicas the gateway balances over (recommendation reads stored analyses from them)",
    },
    Variable {
        name: "DISCOVERY_RECOMMENDATION_URLS",
        default: "http://127.0.0.1:50053",
        help: "comma-separated recommendation replicas",
    },
    Variable {
        name: "DISCOVERY_SYNC_URLS",
        default: "http://127.0.0.1:50054",
        help: "comma-separated sync replicas",
    },
    Variable {
        name: "DISCOVERY_GATEWAY_URLS",
        default: "http://127.0.0.1:50051",
        help: "comma-separated gateway replicas monitoring checks (a URL with a path, e.g. dns://gw:9090/readyz, is an HTTP readiness check)",
    },
    Variable {
        name: "DISCOVERY_API_KEY",
        default: "",
        help: "the `discovery` CLI's API key for `try` and `load` (printed by `discovery up`)",
    },
    Variable {
        name: "DISCOVERY_MONITORING_URLS",
        default: "http://127.0.0.1:50055",
        help: "comma-separated monitoring replicas",
    },
    Variable {
        name: "DISCOVERY_TEXT_MODEL_DIR",
        default: "models/all-MiniLM-L6-v2",
        help: "sync and recommendation: the sentence-embedding model's directory (absent: no product embeddings, search stays lexical)",
    },
    Variable {
        name: "DISCOVERY_IN_PROCESS_CALLS",
        default: "true",
        help: "discovery up: the gateway calls the services of its own process directly instead of over loopback HTTP/2",
    },
];

/// All of them, kit first.
pub fn all() -> Vec<Variable> {
    [
        discovery_kit::config::VARIABLES,
        discovery_gateway::config::VARIABLES,
        discovery_face_analysis::config::VARIABLES,
        discovery_recommendation::config::VARIABLES,
        discovery_sync::config::VARIABLES,
        discovery_monitoring::config::VARIABLES,
        VARIABLES,
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    /// The README lists every variable (its configuration table), once per
    /// name across crates.
    #[test]
    fn every_variable_is_in_the_readme_once() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
        )
        .expect("README.md");
        let all = super::all();
        let missing: Vec<&str> = all
            .iter()
            .map(|v| v.name)
            .filter(|n| !readme.contains(&format!("`{n}`")))
            .collect();
        assert!(missing.is_empty(), "not in README.md: {missing:?}");
        let mut names: Vec<&str> = all.iter().map(|v| v.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a variable is documented by two crates");
    }
}
