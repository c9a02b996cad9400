//! The shared runtime of every discovery service.
//!
//! One place for what every service does the same way: configuration from
//! `DISCOVERY_*` environment variables ([`config`]), logs and traces
//! ([`telemetry`]), gRPC server bootstrap with health, reflection, metrics and
//! graceful shutdown ([`server`]), Prometheus metrics ([`metrics`]), document
//! storage with a MongoDB and an embedded implementation ([`store`]), and the
//! two-level cache ([`cache`]).
//!
//! Architecture invariant: the kit knows no service's domain. It never names a
//! collection, a cache key or an RPC of a particular service.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod bus;
pub mod cache;
pub mod client;
pub mod config;
pub mod deps;
pub mod inproc;
pub mod internal;
pub mod metrics;
pub mod rng;
pub mod server;
pub mod store;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken;

/// A generated tonic server with gzip and zstd accepted and offered,
/// negotiated per call (the gateway passes the client's choice through to
/// the owning service and never recompresses).
#[macro_export]
macro_rules! compressed {
    ($server:expr) => {
        $server
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Zstd)
    };
}

/// The allocator discovery's binaries and benchmarks choose, each in its
/// own `main.rs` or bench with [`global_allocator!`] (a library does not
/// choose for the program that links it). Measured: with glibc's allocator,
/// sync's pipeline spent three quarters of its time in
/// `malloc_consolidate`/`_int_malloc` freeing batches of BSON documents
/// (29k records/s); with mimalloc it is allocation-bound no more.
pub use mimalloc::MiMalloc;

/// Sets [`MiMalloc`] as the program's global allocator.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::MiMalloc = $crate::MiMalloc;
    };
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
