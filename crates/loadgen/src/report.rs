//! The report of a run, as JSON (for tools) and Markdown (for people and
//! `docs/benchmarks.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plan::{Load, Plan};
use crate::run::Stats;

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Answers counted.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        // Recorded in whole microseconds: exact in milliseconds to 3 places.
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Latency {
                count: 0,
                p50: 0.0,
                p90: 0.0,
                p95: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean().round() / 1000.0,
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    /// Answers with OK in that second.
    pub ok: u64,
    /// Errors in that second.
    pub errors: u64,
    /// Median latency of that second's answers, ms.
    pub p50_ms: f64,
    /// 99th percentile of that second's answers, ms.
    pub p99_ms: f64,
}

/// Per method.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MethodReport {
    /// Method name.
    pub method: String,
    /// OK answers.
    pub ok: u64,
    /// Errors by gRPC code name (or TRANSPORT, TIMEOUT).
    pub errors: BTreeMap<String, u64>,
    /// Latency of every answer, OK or not.
    pub latency: Latency,
}

/// Per phase of an open-loop run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseReport {
    /// Phase name.
    pub name: String,
    /// Scheduled calls per second (mean over the phase); 0 for closed loop.
    pub target_rps: f64,
    /// Answered calls per second.
    pub achieved_rps: f64,
    /// OK answers.
    pub ok: u64,
    /// Errors.
    pub errors: u64,
    /// Latency.
    pub latency: Latency,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `open` or `closed`.
    pub mode: String,
    /// Closed-loop callers (0 for open loop).
    pub concurrency: usize,
    /// Target URL.
    pub target: String,
    /// Machine: cores and CPU model.
    pub machine: String,
    /// Wall time of the run, s.
    pub duration_s: f64,
    /// Calls sent.
    pub sent: u64,
    /// OK answers.
    pub ok: u64,
    /// Errors (answers that were not OK, and calls with no answer).
    pub errors: u64,
    /// Calls the schedule wanted but the tool did not send because too many
    /// were outstanding (open loop): count them as failures of the system.
    pub not_sent: u64,
    /// OK answers per second over the run.
    pub ok_rps: f64,
    /// Errors by code over all methods.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Latency of every answer (from when the call was due, open loop).
    pub latency: Latency,
    /// Latency of the OK answers only: what accepted calls saw while others
    /// were refused (shedding, limits).
    pub latency_ok: Latency,
    /// How late calls left against the schedule (open loop): the tool's
    /// own health; a large lag means the figures are the tool's.
    pub send_lag: Latency,
    /// Per method.
    pub methods: Vec<MethodReport>,
    /// Per phase.
    pub phases: Vec<PhaseReport>,
    /// Answer bytes received.
    pub bytes: u64,
    /// Products in the browsing corpus.
    pub product_ids: usize,
    /// CPU seconds this tool used.
    pub loadgen_cpu_s: Option<f64>,
    /// CPU seconds the server process used (with --server-pid).
    pub server_cpu_s: Option<f64>,
    /// Server CPU per answered call, µs.
    pub server_cpu_per_call_us: Option<f64>,
    /// The first few errors, verbatim.
    pub first_errors: Vec<String>,
    /// One entry a second.
    pub timeline: Vec<Second>,
}

/// CPU seconds (user + system) of a process (`None`: this one), from /proc.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let u: f64 = f.get(11)?.parse().ok()?;
    let s: f64 = f.get(12)?.parse().ok()?;
    Some((u + s) / 100.0)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plan: &Plan,
        target: &str,
        st: &Stats,
        elapsed: Duration,
        sent: u64,
        loadgen_cpu_s: Option<f64>,
        server_cpu_s: Option<f64>,
        product_ids: usize,
    ) -> Report {
        let mut errors_by_code = BTreeMap::new();
        let mut ok = 0;
        let methods: Vec<MethodReport> = st
            .ops
            .iter()
            .filter(|o| !o.hist.is_empty())
            .map(|o| {
                ok += o.ok;
                for (k, v) in &o.errors {
                    *errors_by_code.entry(k.to_string()).or_insert(0) += v;
                }
                MethodReport {
                    method: o.op.name().to_string(),
                    ok: o.ok,
                    errors: o.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                    latency: Latency::of(&o.hist),
                }
            })
            .collect();
        let answered: u64 = st.all.len();
        let unanswered = sent.saturating_sub(answered);
        if unanswered > 0 {
            errors_by_code.insert("UNANSWERED".into(), unanswered);
        }
        let errors = errors_by_code.values().sum();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let (mode, concurrency) = match &plan.load {
            Load::Open(_) => ("open", 0),
            Load::Closed { concurrency, .. } => ("closed", *concurrency),
        };
        let phases = st
            .phases
            .iter()
            .map(|p| PhaseReport {
                name: p.name.clone(),
                target_rps: (p.target_rps * 10.0).round() / 10.0,
                achieved_rps: ((p.ok + p.errors) as f64 / p.duration.as_secs_f64().max(1e-9)
                    * 10.0)
                    .round()
                    / 10.0,
                ok: p.ok,
                errors: p.errors,
                latency: Latency::of(&p.hist),
            })
            .collect();
        Report {
            scenario: plan.scenario.clone(),
            mode: mode.into(),
            concurrency,
            target: target.to_string(),
            machine: machine(),
            duration_s: (secs * 100.0).round() / 100.0,
            sent,
            ok,
            errors,
            not_sent: st.not_sent,
            ok_rps: (ok as f64 / secs * 10.0).round() / 10.0,
            errors_by_code,
            latency: Latency::of(&st.all),
            latency_ok: Latency::of(&st.accepted),
            send_lag: Latency::of(&st.lag),
            methods,
            phases,
            bytes: st.bytes,
            product_ids,
            loadgen_cpu_s,
            server_cpu_s,
            server_cpu_per_call_us: server_cpu_s
                .filter(|_| answered > 0)
                .map(|c| (c / answered as f64 * 1e6 * 10.0).round() / 10.0),
            first_errors: st.first_errors.clone(),
            timeline: st.timeline.clone(),
        }
    }

    /// Zero errors and every scheduled call sent.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.not_sent == 0
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as Markdown tables.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let l = &self.latency;
        let _ = writeln!(
            s,
            "### `{}` ({} loop{}) against {}\n",
            self.scenario,
            self.mode,
            if self.concurrency > 0 {
                format!(", {} callers", self.concurrency)
            } else {
                String::new()
            },
            self.target
        );
        let _ = writeln!(
            s,
            "Machine: {}. Run: {:.1} s.\n",
            self.machine, self.duration_s
        );
        let _ = writeln!(
            s,
            "| sent | ok | errors | not sent | ok/s | p50 | p90 | p95 | p99 | p99.9 | max |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            self.sent,
            self.ok,
            self.errors,
            self.not_sent,
            self.ok_rps,
            ms(l.p50),
            ms(l.p90),
            ms(l.p95),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
        if self.errors > 0 && self.ok > 0 {
            let a = &self.latency_ok;
            let _ = writeln!(
                s,
                "OK answers only: p50 {}, p99 {}, p99.9 {}, max {}.\n",
                ms(a.p50),
                ms(a.p99),
                ms(a.p999),
                ms(a.max)
            );
        }
        let _ = writeln!(
            s,
            "| method | ok | errors | p50 | p95 | p99 | p99.9 | max |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for m in &self.methods {
            let errors: Vec<String> = m.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                m.method,
                m.ok,
                if errors.is_empty() {
                    "0".into()
                } else {
                    errors.join(", ")
                },
                ms(m.latency.p50),
                ms(m.latency.p95),
                ms(m.latency.p99),
                ms(m.latency.p999),
                ms(m.latency.max)
            );
        }
        if self.phases.len() > 1 {
            let _ = writeln!(
                s,
                "\n| phase | scheduled/s | answered/s | ok | errors | p50 | p99 | max |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
            for p in &self.phases {
                let _ = writeln!(
                    s,
                    "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                    p.name,
                    p.target_rps,
                    p.achieved_rps,
                    p.ok,
                    p.errors,
                    ms(p.latency.p50),
                    ms(p.latency.p99),
                    ms(p.latency.max)
                );
            }
        }
        let _ = writeln!(s);
        if self.mode == "open" {
            let _ = writeln!(
                s,
                "Send lag (how late calls left against the schedule): p50 {}, p99 {}, max {}.",
                ms(self.send_lag.p50),
                ms(self.send_lag.p99),
                ms(self.send_lag.max)
            );
        }
        if let Some(c) = self.loadgen_cpu_s {
            let _ = write!(
                s,
                "CPU: load tool {:.2} cores",
                c / self.duration_s.max(1e-9)
            );
            if let (Some(sc), Some(per)) = (self.server_cpu_s, self.server_cpu_per_call_us) {
                let _ = write!(
                    s,
                    ", server {:.2} cores ({per:.1} µs per call)",
                    sc / self.duration_s.max(1e-9)
                );
            }
            let _ = writeln!(s, ".");
        }
        if !self.errors_by_code.is_empty() {
            let e: Vec<String> = self
                .errors_by_code
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "\nErrors by code: {}.", e.join(", "));
            for e in &self.first_errors {
                let _ = writeln!(s, "- {e}");
            }
        }
        s
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}
