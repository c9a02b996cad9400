//! The SLA report: per service, method and window, and the spec's targets
//! evaluated on the 5-minute window.
//!
//! Availability is request-based: the share of calls that did not end in a
//! server fault (`window::SERVER_FAULTS`).

use std::collections::HashMap;
use std::time::Duration;

use discovery_proto::v1 as pb;

use crate::rules::{Observation, Signal};
use crate::window::{self, History, Key};

/// The report's windows.
pub const WINDOWS: [(pb::Window, Duration); 4] = [
    (pb::Window::Window1m, Duration::from_secs(60)),
    (pb::Window::Window5m, Duration::from_secs(300)),
    (pb::Window::Window1h, Duration::from_secs(3600)),
    (pb::Window::Window24h, Duration::from_secs(24 * 3600)),
];

/// The targets of the spec, evaluated on the 5-minute window.
fn targets(inc: &HashMap<Key, f64>) -> Vec<pb::SlaTarget> {
    let caches = window::caches(inc);
    let p95 = |service: &str, method: Option<&str>| {
        window::service_quantile(inc, 0.95, service, method).map(|s| s * 1000.0)
    };
    let mut out = Vec::new();
    let mut push = |name: &str, target: f64, observed: Option<f64>, below: bool| {
        if let Some(observed) = observed {
            out.push(pb::SlaTarget {
                name: name.into(),
                target,
                observed,
                met: if below {
                    observed < target
                } else {
                    observed > target
                },
                comparison: if below { "<" } else { ">" }.into(),
            });
        }
    };
    push("api_p95_ms", 500.0, p95("gateway", None), true);
    push(
        "face_analysis_p95_ms",
        2000.0,
        p95(
            "face-analysis",
            Some("/discovery.v1.FaceAnalysis/AnalyzeFace"),
        ),
        true,
    );
    push(
        "recommendation_p95_ms",
        1000.0,
        p95(
            "recommendation",
            Some("/discovery.v1.Recommendation/Recommend"),
        ),
        true,
    );
    let (count, errors) = window::per_service(inc)
        .values()
        .fold((0u64, 0u64), |(c, e), (n, f)| (c + n, e + f));
    let rate = (count > 0).then(|| errors as f64 / count as f64);
    push("error_rate", 0.001, rate, true);
    push("availability", 0.9995, rate.map(|r| 1.0 - r), false);
    let hit = |kind: &str| {
        caches
            .get(kind)
            .filter(|(h, m)| h + m > 0)
            .map(|(h, m)| *h as f64 / (h + m) as f64)
    };
    push("product_cache_hit", 0.90, hit("product"), false);
    push(
        "recommendation_cache_hit",
        0.80,
        hit("recommendations"),
        false,
    );
    out
}

/// Builds the report from the history (`service` empty: all).
pub fn report(history: &History, service: &str, only: pb::Window) -> pb::GetSlaReportResponse {
    let mut resp = pb::GetSlaReportResponse {
        generated_at_unix_ms: discovery_kit::now_unix_ms(),
        ..Default::default()
    };
    for (w, d) in WINDOWS {
        if only != pb::Window::Unspecified && only != w {
            continue;
        }
        let inc = history.increase(d);
        for ((svc, method), f) in window::methods(&inc) {
            if !service.is_empty() && svc != service {
                continue;
            }
            let error_rate = f.errors as f64 / f.count as f64;
            resp.methods.push(pb::MethodStats {
                service: svc,
                method,
                window: w as i32,
                count: f.count,
                errors: f.errors,
                p50_ms: f.p50_ms,
                p95_ms: f.p95_ms,
                p99_ms: f.p99_ms,
                error_rate,
                availability: 1.0 - error_rate,
            });
        }
        for (kind, (hits, misses)) in window::caches(&inc) {
            if hits + misses == 0 {
                continue;
            }
            resp.caches.push(pb::CacheStats {
                kind,
                window: w as i32,
                hits,
                misses,
                hit_rate: hits as f64 / (hits + misses) as f64,
            });
        }
    }
    resp.targets = targets(&history.increase(Duration::from_secs(300)));
    resp
}

/// What the alert rules look at, from the 5-minute window (latency and
/// errors per service, hit rate per cache kind) and the newest values
/// (CPU, memory).
pub fn observations(history: &History) -> Vec<Observation> {
    let inc = history.increase(Duration::from_secs(300));
    let mut out = Vec::new();
    let label =
        |k: &str, v: &str| -> crate::rules::Labels { [(k.to_string(), v.to_string())].into() };
    use crate::rules::prometheus::{MIN_BASELINE_RATE, MIN_CALLS_5M, MIN_CALLS_24H};
    for (svc, (count, errors)) in window::per_service(&inc) {
        // A trickle of calls is no signal (a p95 of three calls is one call).
        if count < MIN_CALLS_5M {
            continue;
        }
        if let Some(p95) = window::service_quantile(&inc, 0.95, &svc, None) {
            out.push(Observation {
                signal: Signal::LatencyP95Ms,
                labels: label("service", &svc),
                value: p95 * 1000.0,
            });
        }
        out.push(Observation {
            signal: Signal::ErrorRate,
            labels: label("service", &svc),
            value: errors as f64 / count.max(1) as f64,
        });
    }
    // Availability over the day (as much of it as the history holds).
    let (day, covered) = history.increase_over(Duration::from_secs(24 * 3600));
    let day_calls = window::per_service(&day);
    for (svc, (count, errors)) in &day_calls {
        if *count >= MIN_CALLS_24H {
            out.push(Observation {
                signal: Signal::Availability24h,
                labels: label("service", svc),
                value: 1.0 - *errors as f64 / *count as f64,
            });
        }
    }
    // Throughput: the last 10 minutes' rate against the rate before them,
    // once there is an hour of "before" at least.
    let (recent, recent_span) = history.increase_over(Duration::from_secs(600));
    let before_span = covered.saturating_sub(recent_span);
    if before_span >= Duration::from_secs(3600) && recent_span >= Duration::from_secs(600) {
        let recent_calls = window::per_service(&recent);
        for (svc, (all, _)) in &day_calls {
            let now = recent_calls.get(svc).map_or(0, |c| c.0);
            let baseline = all.saturating_sub(now) as f64 / before_span.as_secs_f64();
            if baseline >= MIN_BASELINE_RATE {
                out.push(Observation {
                    signal: Signal::ThroughputRatio,
                    labels: label("service", svc),
                    value: (now as f64 / recent_span.as_secs_f64()) / baseline,
                });
            }
        }
    }
    // Database operations over 1 s per minute, every process together.
    let (mut all, mut fast) = (0.0, 0.0);
    for (k, v) in &inc {
        if k.0 == "discovery_db_operation_duration_seconds_count" {
            all += v;
        } else if k.0 == "discovery_db_operation_duration_seconds_bucket" {
            fast += v;
        }
    }
    if all > 0.0 {
        out.push(Observation {
            signal: Signal::DbSlowOpsPerMin,
            labels: Default::default(),
            value: (all - fast).max(0.0) / 5.0,
        });
    }
    // CPU: seconds used per second over the window, per process; memory:
    // resident over the cgroup limit, where there is one.
    let latest = history.latest();
    for (k, v) in &inc {
        if k.0 == "process_cpu_seconds_total" {
            out.push(Observation {
                signal: Signal::Cpu,
                labels: k.1.clone(),
                value: v / 300.0,
            });
        }
    }
    for (k, rss) in &latest {
        if k.0 != "process_resident_memory_bytes" {
            continue;
        }
        let limit = latest
            .iter()
            .find(|(l, _)| l.0 == "process_memory_limit_bytes" && l.1 == k.1)
            .map(|(_, v)| *v);
        if let Some(limit) = limit.filter(|l| *l > 0.0) {
            out.push(Observation {
                signal: Signal::Memory,
                labels: k.1.clone(),
                value: rss / limit,
            });
        }
    }
    for (kind, (h, m)) in window::caches(&inc) {
        if h + m >= crate::rules::MIN_CACHE_LOOKUPS
            && crate::rules::CACHE_HIT_RATE_KINDS.contains(&kind.as_str())
        {
            out.push(Observation {
                signal: Signal::CacheHitRate,
                labels: label("kind", &kind),
                value: h as f64 / (h + m) as f64,
            });
        }
    }
    out
}
