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

const fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

/// What a row does not say: a public, idempotent unary call with a 2 s
/// deadline, a 1 MiB body and no fallback.
const UNARY: Route = Route {
    method: "",
    upstream: Recommendation,
    path: "",
    scope: Public,
    class: Class::Other,
    idempotent: true,
    streaming: false,
    default_deadline: ms(2_000),
    fallback: false,
    max_body: Some(SMALL_BODY),
};

/// A stream: no body buffering, no retries, no default deadline, no
/// fallback, no bound on the whole body (each message is bounded by the
/// upstream's decoder, and a stalled stream is cut).
const STREAM: Route = Route {
    idempotent: false,
    streaming: true,
    default_deadline: None,
    max_body: None,
    ..UNARY
};

use Class::{Face, Recommend};
use Scope::{Admin, Ingest, Public};
use Upstream::{FaceAnalysis, Monitoring, Recommendation, Sync};

/// Every public method. Deadlines follow the SLA figures: face analysis
/// 5 s, recommendations and reads 2 s, administrative calls 30 s; streams
/// have none.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    Route { method: "AnalyzeFace", upstream: FaceAnalysis, path: "/discovery.v1.FaceAnalysis/AnalyzeFace", class: Face, max_body: Some(PHOTO_BODY), default_deadline: ms(5000), ..UNARY },
    Route { method: "AnalyzeAndRecommend", upstream: Recommendation, path: "/discovery.v1.Journey/AnalyzeAndRecommend", class: Face, max_body: Some(PHOTO_BODY), default_deadline: ms(7000), ..UNARY },
    Route { method: "GetFaceAnalysis", upstream: FaceAnalysis, path: "/discovery.v1.FaceAnalysis/GetFaceAnalysis", ..UNARY },
    Route { method: "Recommend", upstream: Recommendation, path: "/discovery.v1.Recommendation/Recommend", class: Recommend, fallback: true, ..UNARY },
    Route { method: "SearchProducts", upstream: Recommendation, path: "/discovery.v1.Catalog/SearchProducts", fallback: true, ..UNARY },
    Route { method: "SimilarProducts", upstream: Recommendation, path: "/discovery.v1.Catalog/SimilarProducts", fallback: true, ..UNARY },
    Route { method: "Converse", upstream: Recommendation, path: "/discovery.v1.Catalog/Converse", class: Recommend, ..STREAM },
    Route { method: "SuggestQueries", upstream: Recommendation, path: "/discovery.v1.Catalog/SuggestQueries", default_deadline: ms(500), ..UNARY },
    Route { method: "GetProduct", upstream: Recommendation, path: "/discovery.v1.Catalog/GetProduct", fallback: true, ..UNARY },
    Route { method: "BatchGetProducts", upstream: Recommendation, path: "/discovery.v1.Catalog/BatchGetProducts", fallback: true, ..UNARY },
    Route { method: "GetTryOnPlacement", upstream: Recommendation, path: "/discovery.v1.Catalog/GetTryOnPlacement", ..UNARY },
    Route { method: "RecordInteraction", upstream: Recommendation, path: "/discovery.v1.Recommendation/RecordInteraction", idempotent: false, ..UNARY },
    Route { method: "GetSession", upstream: Recommendation, path: "/discovery.v1.Recommendation/GetSession", ..UNARY },
    Route { method: "UpdateSession", upstream: Recommendation, path: "/discovery.v1.Recommendation/UpdateSession", idempotent: false, ..UNARY },
    Route { method: "IngestCatalog", upstream: Sync, path: "/discovery.v1.Sync/IngestCatalog", scope: Ingest, ..STREAM },
    Route { method: "GetSyncJob", upstream: Sync, path: "/discovery.v1.Sync/GetSyncJob", scope: Ingest, ..UNARY },
    Route { method: "WatchSyncJob", upstream: Sync, path: "/discovery.v1.Sync/WatchSyncJob", scope: Ingest, ..STREAM },
    Route { method: "ListDeadLetters", upstream: Sync, path: "/discovery.v1.Sync/ListDeadLetters", scope: Ingest, default_deadline: ms(5000), ..UNARY },
    Route { method: "ReplayDeadLetters", upstream: Sync, path: "/discovery.v1.Sync/ReplayDeadLetters", scope: Ingest, idempotent: false, default_deadline: ms(30000), ..UNARY },
    Route { method: "GetSlaReport", upstream: Monitoring, path: "/discovery.v1.Monitoring/GetSlaReport", scope: Admin, default_deadline: ms(5000), ..UNARY },
    Route { method: "ListAlerts", upstream: Monitoring, path: "/discovery.v1.Monitoring/ListAlerts", scope: Admin, ..UNARY },
    Route { method: "GetSystemHealth", upstream: Monitoring, path: "/discovery.v1.Monitoring/GetSystemHealth", scope: Admin, ..UNARY },
    Route { method: "AcknowledgeAlert", upstream: Monitoring, path: "/discovery.v1.Monitoring/AcknowledgeAlert", scope: Admin, default_deadline: ms(5000), ..UNARY },
    Route { method: "CreateSilence", upstream: Monitoring, path: "/discovery.v1.Monitoring/CreateSilence", scope: Admin, idempotent: false, default_deadline: ms(5000), ..UNARY },
    Route { method: "ListSilences", upstream: Monitoring, path: "/discovery.v1.Monitoring/ListSilences", scope: Admin, ..UNARY },
    Route { method: "ExpireSilence", upstream: Monitoring, path: "/discovery.v1.Monitoring/ExpireSilence", scope: Admin, default_deadline: ms(5000), ..UNARY },
    Route { method: "GetAlertHistory", upstream: Monitoring, path: "/discovery.v1.Monitoring/GetAlertHistory", scope: Admin, default_deadline: ms(5000), ..UNARY },
    Route { method: "GetTrends", upstream: Monitoring, path: "/discovery.v1.Monitoring/GetTrends", scope: Admin, default_deadline: ms(5000), ..UNARY },
    Route { method: "GetCapacityForecast", upstream: Monitoring, path: "/discovery.v1.Monitoring/GetCapacityForecast", scope: Admin, default_deadline: ms(10000), ..UNARY },
    Route { method: "ListAlertDeliveries", upstream: Monitoring, path: "/discovery.v1.Monitoring/ListAlertDeliveries", scope: Admin, ..UNARY },
    Route { method: "GetCacheStatus", upstream: Recommendation, path: "/discovery.v1.CacheAdmin/GetCacheStatus", scope: Admin, ..UNARY },
    Route { method: "WarmCache", upstream: Recommendation, path: "/discovery.v1.CacheAdmin/WarmCache", scope: Admin, idempotent: false, default_deadline: ms(30000), ..UNARY },
    Route { method: "InvalidateCache", upstream: Recommendation, path: "/discovery.v1.CacheAdmin/InvalidateCache", scope: Admin, default_deadline: ms(5000), ..UNARY },
    Route { method: "StartExperiment", upstream: Recommendation, path: "/discovery.v1.Experiments/StartExperiment", scope: Admin, idempotent: false, default_deadline: ms(5000), ..UNARY },
    Route { method: "StopExperiment", upstream: Recommendation, path: "/discovery.v1.Experiments/StopExperiment", scope: Admin, idempotent: false, default_deadline: ms(5000), ..UNARY },
    Route { method: "ListExperiments", upstream: Recommendation, path: "/discovery.v1.Experiments/ListExperiments", scope: Admin, ..UNARY },
    Route { method: "GetRecommendationReport", upstream: Recommendation, path: "/discovery.v1.Experiments/GetRecommendationReport", scope: Admin, default_deadline: ms(5000), ..UNARY },
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
    }

    /// What the old positional rows derived, the named rows must still
    /// agree on.
    #[test]
    fn every_row_is_consistent() {
        let mut names = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(names.insert(r.method), "{} twice", r.method);
            assert!(r.path.ends_with(&format!("/{}", r.method)), "{}", r.method);
            assert_eq!(r.streaming, r.default_deadline.is_none(), "{}", r.method);
            assert_eq!(r.streaming, r.max_body.is_none(), "{}", r.method);
            assert_eq!(
                r.class == Class::Face,
                r.max_body == Some(PHOTO_BODY),
                "{}",
                r.method
            );
            if r.streaming {
                assert!(!r.idempotent && !r.fallback, "{}", r.method);
            }
            if r.fallback {
                assert!(r.idempotent && r.scope == Scope::Public, "{}", r.method);
            }
        }
        assert!(lookup("/other.Service/Recommend").is_none());
    }

    /// The public proto tells callers which scope a method needs: its
    /// comment names the route's scope (`(scope "ingest")`), and a public
    /// method names none.
    #[test]
    fn the_proto_comments_name_the_scope_each_method_needs() {
        let proto = include_str!("../../../proto/discovery/v1/gateway.proto");
        let lines: Vec<&str> = proto.lines().map(str::trim).collect();
        let mut seen = 0;
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.strip_prefix("rpc ") else {
                continue;
            };
            let method = rest.split('(').next().unwrap_or_default().trim();
            let route = ROUTES
                .iter()
                .find(|r| r.method == method)
                .unwrap_or_else(|| panic!("no route for {method}"));
            let comment: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.starts_with("//"))
                .copied()
                .collect();
            let comment = comment.join(" ");
            let wanted = format!("(scope \"{}\")", route.scope.name());
            match route.scope {
                Scope::Public => assert!(!comment.contains("scope \""), "{method}: {comment}"),
                _ => assert!(
                    comment.contains(&wanted),
                    "{method} needs {wanted}: {comment}"
                ),
            }
            seen += 1;
        }
        assert_eq!(seen, ROUTES.len(), "an rpc line per route");
    }
}
