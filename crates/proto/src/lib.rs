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
