//! The public API's method table: where each `discovery.v1.Discovery`
//! method goes, what it needs and how it may be retried.
//!
//! The gateway forwards message bytes untouched: each public method has the
//! same request and response types as the upstream method it maps to, so
//! only the path changes (`/discovery.v1.Discovery/GetProduct` →
//! `/discovery.v1.Catalog/GetProduct`).

use std::time::Duration;

/// Upstream services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// face-analysis.
    FaceAnalysis,
    /// recommendation (Recommendation, Catalog and CacheAdmin services).
    Recommendation,
    /// sync.
    Sync,
    /// monitoring.
    Monitoring,
}

impl Upstream {
    /// All of them.
    pub const ALL: [Upstream; 4] = [
        Upstream::FaceAnalysis,
        Upstream::Recommendation,
        Upstream::Sync,
        Upstream::Monitoring,
    ];

    /// Name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::FaceAnalysis => "face-analysis",
            Upstream::Recommendation => "recommendation",
            Upstream::Sync => "sync",
            Upstream::Monitoring => "monitoring",
        }
    }

    /// The gRPC service whose health decides a replica's health.
    pub fn health_service(self) -> &'static str {
        match self {
            Upstream::FaceAnalysis => discovery_proto::service_names::FACE_ANALYSIS,
            Upstream::Recommendation => discovery_proto::service_names::RECOMMENDATION,
            Upstream::Sync => discovery_proto::service_names::SYNC,
            Upstream::Monitoring => discovery_proto::service_names::MONITORING,
        }
    }
}

/// What an API key must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Shopper-facing calls.
    Public,
    /// Catalogue ingestion.
    Ingest,
    /// Cache administration and monitoring reports.
    Admin,
}

impl Scope {
    /// Name in key documents and errors.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Public => "public",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }

    /// Parses a scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "public" => Some(Scope::Public),
            "ingest" => Some(Scope::Ingest),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Which per-method limits a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// AnalyzeFace.
    Face,
    /// Recommend.
    Recommend,
    /// Everything else (only the general limits).
    Other,
}

impl Class {
    /// Name in configuration and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Class::Face => "face",
            Class::Recommend => "recommend",
            Class::Other => "other",
        }
    }
}

/// One public method.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Public method name (`Recommend`).
    pub method: &'static str,
    /// Upstream service.
    pub upstream: Upstream,
    /// Upstream path (`/discovery.v1.Recommendation/Recommend`).
    pub path: &'static str,
    /// Scope the key needs.
    pub scope: Scope,
    /// Limit class.
    pub class: Class,
    /// Safe to retry on another replica (reads, and writes that are
    /// idempotent by construction).
    pub idempotent: bool,
    /// Client or server streaming: no body buffering, no retries, no
    /// default deadline, no fallback.
    pub streaming: bool,
    /// Deadline when the caller sets none.
    pub default_deadline: Option<Duration>,
    /// A last good response may be served while the breaker is open.
    pub fallback: bool,
    /// Largest request body, bytes: photos only on AnalyzeFace; `None` for
    /// the streams (a feed is as long as the catalogue; each message is
    /// bounded by the upstream's decoder, and a stalled stream is cut).
    pub max_body: Option<usize>,
}

/// Largest AnalyzeFace request: a 15 MiB photo and its envelope.
pub const PHOTO_BODY: usize = discovery_proto::MAX_REQUEST_BYTES;

/// Largest request of every other unary method: far above any real one
/// (a Recommend with every filter set is a few KiB).
pub const SMALL_BODY: usize = 1 << 20;

// One row of the table below; positional so the table reads as one.
#[allow(clippy::too_many_arguments)]
const fn route(
    method: &'static str,
    upstream: Upstream,
    path: &'static str,
    scope: Scope,
    class: Class,
    idempotent: bool,
    deadline_ms: u64,
    fallback: bool,
) -> Route {
    Route {
        method,
        upstream,
        path,
        scope,
        class,
        idempotent,
        streaming: deadline_ms == 0,
        default_deadline: if deadline_ms == 0 {
            None
        } else {
            Some(Duration::from_millis(deadline_ms))
        },
        fallback,
        max_body: match (class, deadline_ms) {
            (Class::Face, _) => Some(PHOTO_BODY),
            (_, 0) => None,
            _ => Some(SMALL_BODY),
        },
    }
}

use Class::{Face, Other, Recommend};
use Scope::{Admin, Ingest, Public};
use Upstream::{FaceAnalysis, Monitoring, Recommendation, Sync};

/// Every public method. Deadlines follow the SLA figures: face analysis
/// 5 s, recommendations and reads 2 s, administrative calls 30 s;
/// streams have none (0).
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    route("AnalyzeFace", FaceAnalysis, "/discovery.v1.FaceAnalysis/AnalyzeFace", Public, Face, true, 5_000, false),
    route("AnalyzeAndRecommend", Recommendation, "/discovery.v1.Journey/AnalyzeAndRecommend", Public, Face, true, 7_000, false),
    route("GetFaceAnalysis", FaceAnalysis, "/discovery.v1.FaceAnalysis/GetFaceAnalysis", Public, Other, true, 2_000, false),
    route("Recommend", Recommendation, "/discovery.v1.Recommendation/Recommend", Public, Recommend, true, 2_000, true),
    route("SearchProducts", Recommendation, "/discovery.v1.Catalog/SearchProducts", Public, Other, true, 2_000, true),
    route("GetProduct", Recommendation, "/discovery.v1.Catalog/GetProduct", Public, Other, true, 2_000, true),
    route("BatchGetProducts", Recommendation, "/discovery.v1.Catalog/BatchGetProducts", Public, Other, true, 2_000, true),
    route("GetTryOnPlacement", Recommendation, "/discovery.v1.Catalog/GetTryOnPlacement", Public, Other, true, 2_000, false),
    route("RecordInteraction", Recommendation, "/discovery.v1.Recommendation/RecordInteraction", Public, Other, false, 2_000, false),
    route("GetSession", Recommendation, "/discovery.v1.Recommendation/GetSession", Public, Other, true, 2_000, false),
    route("UpdateSession", Recommendation, "/discovery.v1.Recommendation/UpdateSession", Public, Other, false, 2_000, false),
    route("IngestCatalog", Sync, "/discovery.v1.Sync/IngestCatalog", Ingest, Other, false, 0, false),
    route("GetSyncJob", Sync, "/discovery.v1.Sync/GetSyncJob", Ingest, Other, true, 2_000, false),
    route("WatchSyncJob", Sync, "/discovery.v1.Sync/WatchSyncJob", Ingest, Other, false, 0, false),
    route("ListDeadLetters", Sync, "/discovery.v1.Sync/ListDeadLetters", Ingest, Other, true, 5_000, false),
    route("ReplayDeadLetters", Sync, "/discovery.v1.Sync/ReplayDeadLetters", Ingest, Other, false, 30_000, false),
    route("GetSlaReport", Monitoring, "/discovery.v1.Monitoring/GetSlaReport", Admin, Other, true, 5_000, false),
    route("ListAlerts", Monitoring, "/discovery.v1.Monitoring/ListAlerts", Admin, Other, true, 2_000, false),
    route("GetSystemHealth", Monitoring, "/discovery.v1.Monitoring/GetSystemHealth", Admin, Other, true, 2_000, false),
    route("GetCacheStatus", Recommendation, "/discovery.v1.CacheAdmin/GetCacheStatus", Admin, Other, true, 2_000, false),
    route("WarmCache", Recommendation, "/discovery.v1.CacheAdmin/WarmCache", Admin, Other, false, 30_000, false),
    route("InvalidateCache", Recommendation, "/discovery.v1.CacheAdmin/InvalidateCache", Admin, Other, true, 5_000, false),
    route("StartExperiment", Recommendation, "/discovery.v1.Experiments/StartExperiment", Admin, Other, false, 5_000, false),
    route("StopExperiment", Recommendation, "/discovery.v1.Experiments/StopExperiment", Admin, Other, false, 5_000, false),
    route("ListExperiments", Recommendation, "/discovery.v1.Experiments/ListExperiments", Admin, Other, true, 2_000, false),
    route("GetRecommendationReport", Recommendation, "/discovery.v1.Experiments/GetRecommendationReport", Admin, Other, true, 5_000, false),
];

/// The public service's path prefix.
pub const PREFIX: &str = "/discovery.v1.Discovery/";

/// Looks a request path up.
pub fn lookup(path: &str) -> Option<&'static Route> {
    let method = path.strip_prefix(PREFIX)?;
    ROUTES.iter().find(|r| r.method == method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::FileDescriptorSet;

    /// Every method of the public service has a route, and each route's
    /// upstream method exists with the same request and response types.
    #[test]
    fn every_public_method_maps_to_an_upstream_method_with_the_same_types() {
        let set = FileDescriptorSet::decode(discovery_proto::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<_> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
            .collect();
        let find = |full: &str| {
            let (pkg, name) = full.rsplit_once('.').unwrap();
            services
                .iter()
                .find(|(p, s)| *p == pkg && s.name() == name)
                .map(|(_, s)| *s)
                .unwrap_or_else(|| panic!("no service {full}"))
        };
        let public = find("discovery.v1.Discovery");
        assert_eq!(
            public.method.len(),
            ROUTES.len(),
            "a route per public method"
        );
        for m in &public.method {
            let route = lookup(&format!("{PREFIX}{}", m.name()))
                .unwrap_or_else(|| panic!("no route for {}", m.name()));
            let (service, method) = route.path[1..].split_once('/').unwrap();
            let up = find(service)
                .method
                .iter()
                .find(|u| u.name() == method)
                .unwrap_or_else(|| panic!("{} has no {method}", service));
            assert_eq!(up.input_type(), m.input_type(), "{}", m.name());
            assert_eq!(up.output_type(), m.output_type(), "{}", m.name());
            let streaming = m.client_streaming() || m.server_streaming();
            assert_eq!(route.streaming, streaming, "{}", m.name());
        }
        assert!(lookup("/discovery.v1.Discovery/Nope").is_none());
        assert!(lookup("/other.Service/Recommend").is_none());
    }
}
