//! Prometheus metrics.
//!
//! One process-wide recorder (the `metrics` facade with the Prometheus
//! exporter), installed on first use; [`router`] serves it as `/metrics`.
//! Names follow `discovery_<area>_<what>_<unit>`; every series carries a
//! `service` label so that `discovery up`, which runs all five services in one
//! process, still tells them apart. `docs/metrics.md` lists them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first call.
/// If another recorder is already installed (a test harness's), a detached
/// handle is returned so rendering still works.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A counter or histogram family whose label values are all `&'static str`
/// (closed sets: method paths, status code names, cache kinds), recorded on
/// hot paths through handles registered once per set of values.
///
/// `metrics::counter!` with label values builds a key (a vector of labels),
/// hashes its strings and looks it up in the registry on every call; here a
/// call hashes the values' addresses and reads a handle under a read lock.
/// Two literals with the same text may be two entries; both hold the same
/// series (the registry keys on the text). The entries are bounded by the
/// closed sets; past [`Family::MAX`] a call records through the registry.
pub struct Family<const N: usize, H> {
    name: &'static str,
    labels: [&'static str; N],
    handles: std::sync::LazyLock<parking_lot::RwLock<HandleMap<N, H>>>,
}

type HandleMap<const N: usize, H> = std::collections::HashMap<[(usize, usize); N], H>;

/// A counter family (see [`Family`]).
pub type Counters<const N: usize> = Family<N, metrics::Counter>;
/// A histogram family (see [`Family`]).
pub type Histograms<const N: usize> = Family<N, metrics::Histogram>;
/// A gauge family (see [`Family`]).
pub type Gauges<const N: usize> = Family<N, metrics::Gauge>;

/// A metric handle [`Family`] keeps.
pub trait Handle: Clone {
    /// Registers `key` with the process's recorder.
    fn register(key: &metrics::Key) -> Self;
}

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Handle for metrics::Counter {
    fn register(key: &metrics::Key) -> Self {
        metrics::with_recorder(|r| r.register_counter(key, &METADATA))
    }
}

impl Handle for metrics::Gauge {
    fn register(key: &metrics::Key) -> Self {
        metrics::with_recorder(|r| r.register_gauge(key, &METADATA))
    }
}

impl Handle for metrics::Histogram {
    fn register(key: &metrics::Key) -> Self {
        metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
    }
}

impl<const N: usize, H: Handle> Family<N, H> {
    /// Most handles one family keeps.
    pub const MAX: usize = 4096;

    /// The family `name` with label names `labels`.
    pub const fn new(name: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            labels,
            handles: std::sync::LazyLock::new(Default::default),
        }
    }

    fn with(&self, values: [&'static str; N], f: impl FnOnce(&H)) {
        let at = values.map(|v| (v.as_ptr() as usize, v.len()));
        if let Some(h) = self.handles.read().get(&at) {
            return f(h);
        }
        // The recorder is installed before the first handle is taken (a
        // handle taken before would record nowhere, forever).
        let _ = handle();
        let labels: Vec<metrics::Label> = self
            .labels
            .iter()
            .zip(values)
            .map(|(k, v)| metrics::Label::from_static_parts(k, v))
            .collect();
        let h = H::register(&metrics::Key::from_parts(self.name, labels));
        f(&h);
        let mut handles = self.handles.write();
        if handles.len() < Self::MAX {
            handles.insert(at, h);
        }
    }
}

impl<const N: usize> Family<N, metrics::Counter> {
    /// Adds `by` to the series of `values`.
    pub fn increment(&self, values: [&'static str; N], by: u64) {
        self.with(values, |c| c.increment(by));
    }
}

impl<const N: usize> Family<N, metrics::Histogram> {
    /// Records `value` in the series of `values`.
    pub fn record(&self, values: [&'static str; N], value: f64) {
        self.with(values, |h| h.record(value));
    }
}

impl<const N: usize> Family<N, metrics::Gauge> {
    /// Adds `by` (negative: takes away) to the series of `values`.
    pub fn add(&self, values: [&'static str; N], by: f64) {
        self.with(values, |g| g.increment(by));
    }
}

/// Renders every metric in the Prometheus text format, with the
/// process's CPU and memory read at that moment.
pub fn render() -> String {
    let h = handle();
    record_process();
    h.render()
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes` and, under
/// a cgroup memory limit, `process_memory_limit_bytes` (Linux `/proc` and
/// cgroup v2; nothing elsewhere).
fn record_process() {
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces): utime and
        // stime are the 12th and 13th, in USER_HZ (100 on Linux).
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(u), Some(s)) = (
                f.get(11).and_then(|v| v.parse::<f64>().ok()),
                f.get(12).and_then(|v| v.parse::<f64>().ok()),
            ) {
                metrics::gauge!("process_cpu_seconds_total").set((u + s) / 100.0);
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    {
        metrics::gauge!("process_resident_memory_bytes").set(kb * 1024.0);
    }
    if let Ok(max) = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        && let Ok(limit) = max.trim().parse::<f64>()
    {
        metrics::gauge!("process_memory_limit_bytes").set(limit);
    }
}

/// An axum router serving `GET /metrics` (text format) and `GET /livez`.
pub fn router() -> axum::Router {
    use axum::routing::get;
    // Install before the first scrape so counters registered early are kept.
    let _ = handle();
    axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(),
                )
            }),
        )
        .route("/livez", get(|| async { "ok" }))
}

/// Serves [`router`] (plus `extra` routes) on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    extra: Option<axum::Router>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = match extra {
        Some(r) => router().merge(r),
        None => router(),
    };
    // Peer addresses for routes that tell loopback from the network (the
    // dashboard).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

#[cfg(test)]
mod tests {
    static EVENTS: super::Counters<2> =
        super::Counters::new("discovery_test_family_total", ["service", "code"]);
    static TIMES: super::Histograms<1> =
        super::Histograms::new("discovery_test_family_seconds", ["service"]);

    #[test]
    fn a_family_records_each_set_of_values_as_its_own_series() {
        // Two literals with one text: one series.
        let ok_again = String::from("OK").leak();
        for _ in 0..3 {
            EVENTS.increment(["kit", "OK"], 1);
        }
        EVENTS.increment(["kit", ok_again], 2);
        EVENTS.increment(["kit", "NOT_FOUND"], 1);
        TIMES.record(["kit"], 0.002);
        let text = super::render();
        assert!(
            text.contains("discovery_test_family_total{service=\"kit\",code=\"OK\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("discovery_test_family_total{service=\"kit\",code=\"NOT_FOUND\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("discovery_test_family_seconds_count{service=\"kit\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn recorded_counter_is_rendered() {
        let _ = super::handle();
        metrics::counter!("discovery_test_events_total", "service" => "kit").increment(3);
        let text = super::render();
        assert!(
            text.contains("discovery_test_events_total{service=\"kit\"} 3"),
            "{text}"
        );
    }
}
