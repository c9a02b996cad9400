//! Rolling windows over scraped Prometheus metrics.
//!
//! Every scrape ([`parse`] of the text format) becomes a [`Snapshot`] of
//! the cumulative series monitoring uses (RPC counts and latency
//! histograms, cache lookups, process CPU/RSS). A window's figures are the
//! difference between the newest snapshot and the newest one at least the
//! window's length older (Prometheus' `increase`), so counts are exact
//! whatever the scrape interval; a counter that went down (a restart) counts
//! from zero. Snapshots are kept at full rate for the last hour and one a
//! minute for 24 h.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Series monitoring keeps (everything else in a scrape is ignored).
const KEPT: &[&str] = &[
    "discovery_rpc_server_requests_total",
    "discovery_rpc_server_duration_seconds_bucket",
    "discovery_cache_requests_total",
    "discovery_gateway_shed_total",
    "discovery_rpc_server_caller_deadline_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_memory_limit_bytes",
    "discovery_db_operation_duration_seconds_count",
    "discovery_db_operation_duration_seconds_bucket",
];

/// Database operation series are kept only as totals per process (what
/// `db_slow_ops_per_min` needs: all operations and those within 1 s), not
/// per collection, operation and bucket: a day of snapshots of those would
/// be thousands of series each.
fn reduced(name: &str, labels: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    match name {
        "discovery_db_operation_duration_seconds_count" => Some(BTreeMap::new()),
        "discovery_db_operation_duration_seconds_bucket" => (labels.get("le").map(String::as_str)
            == Some("1"))
        .then(|| [("le".to_string(), "1".to_string())].into()),
        _ => Some(labels),
    }
}

/// gRPC codes counted as server faults (the SLA's error rate).
/// UNIMPLEMENTED is the caller's (a path nobody serves: anyone could fire
/// SLA alerts and webhooks by calling made-up methods). Calls the
/// gateway shed at its in-flight bound answer RESOURCE_EXHAUSTED (like a
/// caller over its rate limit, which is not a fault) and are counted as
/// faults from `discovery_gateway_shed_total` instead.
pub const SERVER_FAULTS: &[&str] = &[
    "UNKNOWN",
    "INTERNAL",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "DATA_LOSS",
];

/// One series: metric name and sorted labels.
pub type Key = Arc<(String, BTreeMap<String, String>)>;

/// Parses Prometheus text exposition, keeping the series in `KEPT`.
pub fn parse(text: &str) -> Vec<(Key, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        if !KEPT.contains(&name) {
            continue;
        }
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let Some(labels) = reduced(name, parse_labels(labels)) else {
            continue;
        };
        out.push((Arc::new((name.to_string(), labels)), v));
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(k.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// One scrape of every source, merged.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When taken.
    pub at: Instant,
    /// Series values (summed when several sources report the same series).
    pub values: HashMap<Key, f64>,
}

/// The kept snapshots.
#[derive(Debug, Default)]
pub struct History {
    snapshots: VecDeque<Snapshot>,
}

/// Full-rate history.
const FULL: Duration = Duration::from_secs(3600);
/// Everything.
const KEEP: Duration = Duration::from_secs(25 * 3600);

impl History {
    /// Adds a snapshot and thins the old ones.
    pub fn push(&mut self, snap: Snapshot) {
        let now = snap.at;
        self.snapshots.push_back(snap);
        while self
            .snapshots
            .front()
            .is_some_and(|s| now.duration_since(s.at) > KEEP)
        {
            self.snapshots.pop_front();
        }
        // Older than an hour: keep one a minute.
        let mut last_kept: Option<Instant> = None;
        self.snapshots.retain(|s| {
            if now.duration_since(s.at) <= FULL {
                return true;
            }
            match last_kept {
                Some(t) if s.at.duration_since(t) < Duration::from_secs(60) => false,
                _ => {
                    last_kept = Some(s.at);
                    true
                }
            }
        });
    }

    /// Snapshots held.
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// Increase of every series over the last `window` (from the newest
    /// snapshot at least `window` old, or the oldest there is).
    pub fn increase(&self, window: Duration) -> HashMap<Key, f64> {
        self.increase_over(window).0
    }

    /// [`History::increase`], and the time it actually covers (shorter
    /// than `window` while the history is younger; longer by up to a
    /// snapshot interval).
    pub fn increase_over(&self, window: Duration) -> (HashMap<Key, f64>, Duration) {
        let Some(newest) = self.snapshots.back() else {
            return (HashMap::new(), Duration::ZERO);
        };
        let base = self
            .snapshots
            .iter()
            .rev()
            .find(|s| newest.at.duration_since(s.at) >= window)
            .or(self.snapshots.front());
        let mut out = HashMap::new();
        for (k, v) in &newest.values {
            let before = base
                .filter(|b| !std::ptr::eq(*b, newest))
                .and_then(|b| b.values.get(k))
                .copied()
                .unwrap_or(0.0);
            // A reset (restart): the counter started again from zero.
            let d = if *v >= before { v - before } else { *v };
            out.insert(k.clone(), d);
        }
        let covered = base.map_or(Duration::ZERO, |b| newest.at.duration_since(b.at));
        (out, covered)
    }

    /// `span` before `at`, or the oldest snapshot's time when that is
    /// before the clock's start.
    pub fn ago(&self, at: Instant, span: Duration) -> Instant {
        at.checked_sub(span)
            .or(self.snapshots.front().map(|s| s.at))
            .unwrap_or(at)
    }

    /// Increases between the snapshots taken in `[from, to]`, at most
    /// `points` of them (evenly strided), each with the end snapshot's time
    /// and the seconds it covers.
    pub fn steps_between(
        &self,
        from: Instant,
        to: Instant,
        points: usize,
    ) -> Vec<(Instant, f64, HashMap<Key, f64>)> {
        let recent: Vec<&Snapshot> = self
            .snapshots
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .collect();
        if recent.len() < 2 {
            return Vec::new();
        }
        let stride = recent.len().div_ceil(points.max(1)).max(1);
        let picked: Vec<&Snapshot> = recent
            .iter()
            .rev()
            .step_by(stride)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .copied()
            .collect();
        picked
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                let inc = b
                    .values
                    .iter()
                    .map(|(k, v)| {
                        let before = a.values.get(k).copied().unwrap_or(0.0);
                        (k.clone(), if *v >= before { v - before } else { *v })
                    })
                    .collect();
                (b.at, b.at.duration_since(a.at).as_secs_f64(), inc)
            })
            .collect()
    }

    /// The newest value of every series (gauges).
    pub fn latest(&self) -> HashMap<Key, f64> {
        self.snapshots
            .back()
            .map(|s| s.values.clone())
            .unwrap_or_default()
    }
}

/// Figures for one (service, method) over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodFigures {
    /// Calls.
    pub count: u64,
    /// Server faults.
    pub errors: u64,
    /// DEADLINE_EXCEEDED answers the caller's own deadline caused (taken
    /// off `errors`).
    pub caller_deadlines: u64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 95th.
    pub p95_ms: f64,
    /// 99th.
    pub p99_ms: f64,
}

/// Per (service, method) figures from a window's increases.
pub fn methods(inc: &HashMap<Key, f64>) -> BTreeMap<(String, String), MethodFigures> {
    let mut out: BTreeMap<(String, String), MethodFigures> = BTreeMap::new();
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for (k, v) in inc {
        let (name, labels) = (&k.0, &k.1);
        let id = (
            labels.get("service").cloned().unwrap_or_default(),
            labels.get("method").cloned().unwrap_or_default(),
        );
        match name.as_str() {
            "discovery_rpc_server_requests_total" => {
                let f = out.entry(id).or_default();
                f.count += v.round() as u64;
                if labels
                    .get("code")
                    .is_some_and(|c| SERVER_FAULTS.contains(&c.as_str()))
                {
                    f.errors += v.round() as u64;
                }
            }
            "discovery_rpc_server_caller_deadline_total" => {
                out.entry(id).or_default().caller_deadlines += v.round() as u64;
            }
            "discovery_gateway_shed_total" => {
                let id = (
                    "gateway".to_string(),
                    labels.get("path").cloned().unwrap_or_default(),
                );
                out.entry(id).or_default().errors += v.round() as u64;
            }
            "discovery_rpc_server_duration_seconds_bucket" => {
                let le = match labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(x) => x.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                buckets.entry(id).or_default().push((le, *v));
            }
            _ => {}
        }
    }
    for (id, mut b) in buckets {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let f = out.entry(id).or_default();
        f.p50_ms = quantile(0.50, &b) * 1000.0;
        f.p95_ms = quantile(0.95, &b) * 1000.0;
        f.p99_ms = quantile(0.99, &b) * 1000.0;
    }
    for f in out.values_mut() {
        f.errors = f.errors.saturating_sub(f.caller_deadlines);
    }
    out.retain(|_, f| f.count > 0);
    out
}

/// `histogram_quantile`: linear interpolation inside the bucket holding
/// the q-th observation; cumulative `(le, count)` sorted by `le`.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let in_bucket = c - prev.1;
            if in_bucket <= 0.0 {
                return le;
            }
            return prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket;
        }
        prev = (le, c);
    }
    prev.0
}

/// Calls and server faults per service, all methods together.
pub fn per_service(inc: &HashMap<Key, f64>) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for ((svc, _), f) in methods(inc) {
        let e = out.entry(svc).or_default();
        e.0 += f.count;
        e.1 += f.errors;
    }
    out
}

/// A quantile (seconds) of one service's calls, all methods or one.
pub fn service_quantile(
    inc: &HashMap<Key, f64>,
    q: f64,
    service: &str,
    method: Option<&str>,
) -> Option<f64> {
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (k, v) in inc {
        if k.0 != "discovery_rpc_server_duration_seconds_bucket"
            || k.1.get("service").map(String::as_str) != Some(service)
            || method.is_some_and(|m| k.1.get("method").map(String::as_str) != Some(m))
        {
            continue;
        }
        let le = match k.1.get("le").map(String::as_str) {
            Some("+Inf") => f64::INFINITY,
            Some(x) => x.parse().unwrap_or(f64::INFINITY),
            None => continue,
        };
        by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += v;
    }
    let mut b: Vec<(f64, f64)> = by_le.into_values().collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    (b.last().is_some_and(|l| l.1 > 0.0)).then(|| quantile(q, &b))
}

/// Hits and misses per cache kind.
pub fn caches(inc: &HashMap<Key, f64>) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (k, v) in inc {
        if k.0 != "discovery_cache_requests_total" {
            continue;
        }
        let kind = k.1.get("kind").cloned().unwrap_or_default();
        let e = out.entry(kind).or_default();
        match k.1.get("result").map(String::as_str) {
            Some("hit") => e.0 += v.round() as u64,
            Some("miss") => e.1 += v.round() as u64,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod props {
    //! Property tests of the exposition parser (a fixed budget of cases,
    //! inside `make test`): any text parses without panicking, and kept
    //! series round-trip whatever their label values hold.
    use super::*;
    use proptest::prelude::*;

    fn escape(v: &str) -> String {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_text_parses_without_panicking(text in "\\PC{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn arbitrary_bytes_as_lossy_text_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn kept_series_round_trip_with_any_label_values(
            // (The database series are reduced on purpose: `reduced`.)
            name in proptest::sample::select(
                KEPT.iter().copied().filter(|n| !n.starts_with("discovery_db_")).collect::<Vec<_>>()
            ),
            labels in proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{0,40}", 0..5),
            value in -1e12f64..1e12,
        ) {
            let rendered: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let text = if rendered.is_empty() {
                format!("# HELP x y\n{name} {value}\n")
            } else {
                format!("{name}{{{}}} {value}\n", rendered.join(","))
            };
            let got = parse(&text);
            prop_assert_eq!(got.len(), 1, "{}", text);
            prop_assert_eq!(&got[0].0.0, name);
            prop_assert_eq!(&got[0].0.1, &labels);
            prop_assert_eq!(got[0].1, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_series_are_kept_as_totals_and_the_one_second_bucket() {
        let text = concat!(
            "discovery_db_operation_duration_seconds_bucket{system=\"mongodb\",operation=\"find\",collection=\"products\",outcome=\"ok\",le=\"0.5\"} 7\n",
            "discovery_db_operation_duration_seconds_bucket{system=\"mongodb\",operation=\"find\",collection=\"products\",outcome=\"ok\",le=\"1\"} 9\n",
            "discovery_db_operation_duration_seconds_count{system=\"mongodb\",operation=\"find\",collection=\"products\",outcome=\"ok\"} 10\n",
            "discovery_db_operation_duration_seconds_count{system=\"mongodb\",operation=\"put\",collection=\"alerts\",outcome=\"ok\"} 4\n",
        );
        let got = parse(text);
        let names: Vec<(&str, usize)> =
            got.iter().map(|(k, _)| (k.0.as_str(), k.1.len())).collect();
        assert_eq!(
            names,
            [
                ("discovery_db_operation_duration_seconds_bucket", 1),
                ("discovery_db_operation_duration_seconds_count", 0),
                ("discovery_db_operation_duration_seconds_count", 0),
            ],
            "only le=1 of the buckets, and no per-collection labels"
        );
    }

    const TEXT: &str = r#"# TYPE discovery_rpc_server_requests_total counter
discovery_rpc_server_requests_total{service="gateway",method="/discovery.v1.Discovery/Recommend",code="OK"} 90
discovery_rpc_server_requests_total{service="gateway",method="/discovery.v1.Discovery/Recommend",code="UNAVAILABLE"} 10
discovery_rpc_server_requests_total{service="gateway",method="/discovery.v1.Discovery/Recommend",code="NOT_FOUND"} 5
discovery_rpc_server_requests_total{service="gateway",method="/discovery.v1.Discovery/Recommend",code="RESOURCE_EXHAUSTED"} 7
discovery_gateway_shed_total{method="Recommend",path="/discovery.v1.Discovery/Recommend"} 3
discovery_rpc_server_duration_seconds_bucket{service="gateway",method="/discovery.v1.Discovery/Recommend",le="0.001"} 50
discovery_rpc_server_duration_seconds_bucket{service="gateway",method="/discovery.v1.Discovery/Recommend",le="0.01"} 100
discovery_rpc_server_duration_seconds_bucket{service="gateway",method="/discovery.v1.Discovery/Recommend",le="+Inf"} 105
discovery_cache_requests_total{kind="recommendations",result="hit",level="l1"} 8
discovery_cache_requests_total{kind="recommendations",result="miss",level="all"} 2
something_else{a="b"} 1
"#;

    fn snap(at: Instant, text: &str) -> Snapshot {
        Snapshot {
            at,
            values: parse(text).into_iter().collect(),
        }
    }

    #[test]
    fn parses_labels_with_escapes_and_keeps_only_known_series() {
        let s = parse("discovery_cache_requests_total{kind=\"a\\\"b\",result=\"hit\"} 3\nfoo 1\n");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0.1["kind"], "a\"b");
        assert_eq!(s[0].1, 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn window_figures_are_increases_with_resets_and_quantiles() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.push(snap(t0, ""));
        tokio::time::advance(Duration::from_secs(30)).await;
        h.push(snap(Instant::now(), TEXT));
        let m = methods(&h.increase(Duration::from_secs(60)));
        let f = &m[&(
            "gateway".to_string(),
            "/discovery.v1.Discovery/Recommend".to_string(),
        )];
        // 7 refused: 4 over a rate limit (the caller's doing), 3 shed.
        assert_eq!((f.count, f.errors), (112, 13));
        // 50 of 105 below 1 ms: the median is just above 1 ms.
        assert!(f.p50_ms > 1.0 && f.p50_ms < 2.0, "{}", f.p50_ms);
        assert!(f.p95_ms > 9.0 && f.p95_ms <= 10.0, "{}", f.p95_ms);
        assert_eq!(
            caches(&h.increase(Duration::from_secs(60)))["recommendations"],
            (8, 2)
        );
        // A restart: counters start again from zero.
        tokio::time::advance(Duration::from_secs(30)).await;
        h.push(snap(
            Instant::now(),
            "discovery_rpc_server_requests_total{service=\"gateway\",method=\"m\",code=\"OK\"} 4\n",
        ));
        let m = methods(&h.increase(Duration::from_secs(20)));
        assert_eq!(m[&("gateway".to_string(), "m".to_string())].count, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn history_thins_to_one_a_minute_after_an_hour() {
        let mut h = History::default();
        for _ in 0..(2 * 360) {
            h.push(snap(Instant::now(), ""));
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        // The last hour at 10 s (361), the hour before at 1/min (~60).
        assert!(h.len() > 400 && h.len() < 430, "{}", h.len());
    }
}
