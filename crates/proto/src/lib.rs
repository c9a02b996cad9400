//! Generated code for the `discovery.v1` gRPC contracts.
//!
//! The `.proto` files in `proto/discovery/v1/` are the source of truth; this
//! crate only compiles them. Services map these types to their domain types at
//! their edge (`api.rs`), so nothing but this crate and the edges see prost.
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)]

/// `discovery.v1`: messages, clients (`*_client`) and servers (`*_server`).
pub mod v1 {
    tonic::include_proto!("discovery.v1");
}

/// Encoded `FileDescriptorSet` of every discovery proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/discovery_descriptor.bin"));

/// Every `/package.Service/Method` path the contracts define (all
/// services), generated from the `.proto` files: the closed set metric
/// labels and span names are drawn from.
pub const METHOD_PATHS: &[&str] = include!(concat!(env!("OUT_DIR"), "/method_paths.rs"));

/// Largest request any discovery server accepts: a 15 MiB photo (the
/// AnalyzeFace limit) plus its envelope. Servers that carry photos set this
/// as their decoding limit (tonic's default is 4 MiB).
pub const MAX_REQUEST_BYTES: usize = (15 << 20) + 4096;

/// Fully qualified service names, as used by health checks and reflection.
pub mod service_names {
    /// The public API served by the gateway.
    pub const DISCOVERY: &str = "discovery.v1.Discovery";
    /// Face analysis.
    pub const FACE_ANALYSIS: &str = "discovery.v1.FaceAnalysis";
    /// Recommendations.
    pub const RECOMMENDATION: &str = "discovery.v1.Recommendation";
    /// Catalogue reads and search.
    pub const CATALOG: &str = "discovery.v1.Catalog";
    /// Cache administration.
    pub const CACHE_ADMIN: &str = "discovery.v1.CacheAdmin";
    /// The one-call journey (analyse, then recommend).
    pub const JOURNEY: &str = "discovery.v1.Journey";
    /// Ranking experiments and the recommendation report.
    pub const EXPERIMENTS: &str = "discovery.v1.Experiments";
    /// Catalogue sync.
    pub const SYNC: &str = "discovery.v1.Sync";
    /// Monitoring.
    pub const MONITORING: &str = "discovery.v1.Monitoring";
}

/// The system's topology, in one table: each service's name, port
/// variable and default port, the variable callers use for its address,
/// and the gRPC service its readiness is checked on. The gateway (its
/// upstreams), monitoring (its targets), the CLI and the launcher read it;
/// the variables list and the chart are checked against it by tests.
pub mod topology {
    use super::service_names;

    /// One service's place in the system.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Service {
        /// Short name (metrics' `service` label, log lines, the chart's
        /// component).
        pub name: &'static str,
        /// Variable of its gRPC port.
        pub port_var: &'static str,
        /// Default gRPC port.
        pub port: u16,
        /// Variable callers set to its address(es).
        pub urls_var: &'static str,
        /// Its address when all runs on this machine (`discovery up`).
        pub default_url: &'static str,
        /// gRPC service whose health is its readiness.
        pub health: &'static str,
    }

    /// The public gateway.
    pub const GATEWAY: Service = Service {
        name: "gateway",
        port_var: "DISCOVERY_GATEWAY_PORT",
        port: 50051,
        urls_var: "DISCOVERY_GATEWAY_URLS",
        default_url: "http://127.0.0.1:50051",
        health: service_names::DISCOVERY,
    };
    /// Face analysis.
    pub const FACE_ANALYSIS: Service = Service {
        name: "face-analysis",
        port_var: "DISCOVERY_FACE_ANALYSIS_PORT",
        port: 50052,
        urls_var: "DISCOVERY_FACE_ANALYSIS_URLS",
        default_url: "http://127.0.0.1:50052",
        health: service_names::FACE_ANALYSIS,
    };
    /// Recommendation (catalogue, ranking, search).
    pub const RECOMMENDATION: Service = Service {
        name: "recommendation",
        port_var: "DISCOVERY_RECOMMENDATION_PORT",
        port: 50053,
        urls_var: "DISCOVERY_RECOMMENDATION_URLS",
        default_url: "http://127.0.0.1:50053",
        health: service_names::RECOMMENDATION,
    };
    /// Catalogue sync.
    pub const SYNC: Service = Service {
        name: "sync",
        port_var: "DISCOVERY_SYNC_PORT",
        port: 50054,
        urls_var: "DISCOVERY_SYNC_URLS",
        default_url: "http://127.0.0.1:50054",
        health: service_names::SYNC,
    };
    /// Monitoring.
    pub const MONITORING: Service = Service {
        name: "monitoring",
        port_var: "DISCOVERY_MONITORING_PORT",
        port: 50055,
        urls_var: "DISCOVERY_MONITORING_URLS",
        default_url: "http://127.0.0.1:50055",
        health: service_names::MONITORING,
    };

    /// Every service, the public one first (monitoring lists its targets,
    /// and the dashboard its rows, in this order).
    pub const ALL: [Service; 5] = [GATEWAY, FACE_ANALYSIS, RECOMMENDATION, SYNC, MONITORING];

    /// A service by short name.
    pub fn by_name(name: &str) -> Option<Service> {
        ALL.into_iter().find(|s| s.name == name)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn each_default_url_is_its_port_and_names_are_unique() {
            for s in ALL {
                assert_eq!(
                    s.default_url,
                    format!("http://127.0.0.1:{}", s.port),
                    "{s:?}"
                );
                let var = s.name.to_ascii_uppercase().replace('-', "_");
                assert_eq!(s.port_var, format!("DISCOVERY_{var}_PORT"));
                assert_eq!(s.urls_var, format!("DISCOVERY_{var}_URLS"));
                assert_eq!(by_name(s.name), Some(s));
            }
        }
    }
}
