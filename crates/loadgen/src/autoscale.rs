//! Autoscaling, simulated: a traffic trace replayed, second by second,
//! against Kubernetes' HorizontalPodAutoscaler algorithm with the chart's
//! policies and the per-pod capacity measured in `docs/benchmarks.md`
//! ("Capacity: CPU and memory per service"), reporting the replicas over
//! time, how long 2 → 20 pods takes, and the p99 a queueing model predicts.
//!
//! The model, and where it is rough:
//! - A pod serves calls at `cores / cpu_per_call` per second (its CPU
//!   request: what it is guaranteed, not the limit it may burst to) as one
//!   M/M/1 queue: p99 of the time in the pod is `ln 100 / (μ - λ)`, added to
//!   the p99 measured at light load beyond the no-queue part. Above
//!   capacity the calls that cannot be served pile up (a fluid backlog) and
//!   wait `backlog / capacity`.
//! - The HPA (every 15 s) computes, per metric, `ceil(ready × value /
//!   target)` outside a 10 % tolerance and takes the largest; adds at most
//!   what its scale-up policies allow in their periods (the larger, with
//!   `selectPolicy: Max`); removes only what every recommendation of the
//!   last 10 minutes agrees on, and at most its scale-down policy's pods
//!   per period. Its metrics are 1-minute averages (Prometheus' `rate[1m]`
//!   through the adapter). A new pod takes the service's `ready_after` to
//!   take calls (start, catalogue snapshot or models, `minReadySeconds`).
//!
//! Nothing here measures: the figures are predictions from measured
//! inputs, to choose policies and targets with.

use std::collections::VecDeque;

/// One scale-up or scale-down policy (`behavior.scaleUp.policies[]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// At most this many pods per period.
    Pods(u32, u32),
    /// At most this percentage of the pods at the period's start, per period.
    Percent(u32, u32),
}

impl Step {
    fn period(self) -> u32 {
        match self {
            Step::Pods(_, p) | Step::Percent(_, p) => p,
        }
    }
}

/// An HPA's limits and behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// `minReplicas`.
    pub min: u32,
    /// `maxReplicas`.
    pub max: u32,
    /// Scale-up policies (the one allowing more applies).
    pub up: Vec<Step>,
    /// Scale-down policies (the one allowing less applies).
    pub down: Vec<Step>,
    /// Scale-down stabilisation window, seconds.
    pub down_window: u32,
}

impl Scaling {
    /// Seed 000's policy alone: +2 pods per 5 minutes, -1 per 10 minutes.
    pub fn seed(min: u32, max: u32) -> Self {
        Self {
            min,
            max,
            up: vec![Step::Pods(2, 300)],
            down: vec![Step::Pods(1, 600)],
            down_window: 600,
        }
    }

    /// The chart's (`helm/discovery/values.yaml`, `autoscaling.behavior`):
    /// the seed's, and doubling per minute when the signals ask for that.
    pub fn chart(min: u32, max: u32) -> Self {
        Self {
            up: vec![Step::Pods(2, 300), Step::Percent(100, 60)],
            ..Self::seed(min, max)
        }
    }
}

/// What a service's HPA scales on besides CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Calls per second per pod (the gateway).
    RatePerPod(f64),
    /// Calls in flight per pod (recommendation's queue).
    InFlightPerPod(f64),
    /// Seconds per call (face analysis's processing time).
    SecondsPerCall(f64),
}

/// One service as the simulation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Name.
    pub name: &'static str,
    /// Calls this service gets per call at the gateway.
    pub share: f64,
    /// CPU seconds per call.
    pub cpu_per_call: f64,
    /// A pod's CPU request, cores.
    pub cores: f64,
    /// The HPA's CPU target (share of the request).
    pub cpu_target: f64,
    /// The HPA's other signal.
    pub signal: Signal,
    /// p99 measured at light load, seconds.
    pub base_p99: f64,
    /// From the HPA's decision to a pod taking calls, seconds.
    pub ready_after: u32,
    /// Seed 000's warning tier for its p95 (the alert rules'), seconds:
    /// the report counts the seconds whose predicted p99 is above it.
    pub tier: f64,
    /// Its HPA.
    pub scaling: Scaling,
}

/// The three services whose HPAs scale on load, as the chart configures
/// them, with the measured costs (docs/benchmarks.md: 0.15 cores per
/// 1,000 calls/s at the gateway, 0.13 at recommendation, 25 ms of a core
/// per photo; p99 3 ms through the cluster at 1,000 calls/s, 20 ms for a
/// photo) and one photo per 50 catalogue calls.
pub fn chart_services(scaling: fn(u32, u32) -> Scaling) -> Vec<Service> {
    vec![
        Service {
            name: "gateway",
            share: 1.0,
            cpu_per_call: 0.15e-3,
            cores: 0.5,
            cpu_target: 0.7,
            signal: Signal::RatePerPod(1600.0),
            base_p99: 3e-3,
            ready_after: 20,
            tier: 0.3,
            scaling: scaling(3, 20),
        },
        Service {
            name: "recommendation",
            share: 1.0,
            cpu_per_call: 0.13e-3,
            cores: 0.5,
            cpu_target: 0.7,
            signal: Signal::InFlightPerPod(6.0),
            base_p99: 2e-3,
            ready_after: 45,
            tier: 0.8,
            scaling: scaling(2, 20),
        },
        Service {
            name: "face-analysis",
            share: 1.0 / 50.0,
            cpu_per_call: 25e-3,
            cores: 1.0,
            cpu_target: 0.7,
            signal: Signal::SecondsPerCall(0.1),
            base_p99: 20e-3,
            ready_after: 30,
            tier: 1.5,
            scaling: scaling(2, 20),
        },
    ]
}

/// The state of one service each second.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: u32,
    /// Calls per second offered to the service.
    pub offered: f64,
    /// Pods asked for (`spec.replicas`).
    pub replicas: u32,
    /// Pods taking calls.
    pub ready: u32,
    /// Predicted p99, seconds.
    pub p99: f64,
}

/// HPA sync period, seconds.
pub const SYNC: u32 = 15;
/// The HPA's tolerance: no change while every ratio is within 10 % of 1.
pub const TOLERANCE: f64 = 0.1;
/// Seconds the metrics average over.
pub const METRIC_WINDOW: usize = 60;

/// Replays `offered(t)` (gateway calls per second at second `t`) for
/// `seconds` through `svc`, starting at `start` ready pods.
pub fn simulate(
    svc: &Service,
    offered: &dyn Fn(u32) -> f64,
    seconds: u32,
    start: u32,
) -> Vec<Second> {
    let s = &svc.scaling;
    let mu = svc.cores / svc.cpu_per_call; // one pod's calls per second
    let mut replicas = start.clamp(s.min, s.max);
    let mut ready = replicas;
    let mut starting: VecDeque<u32> = VecDeque::new(); // ready times
    let mut events: VecDeque<(u32, i64)> = VecDeque::new(); // (t, pods added (+) / removed (-))
    let mut recs: VecDeque<(u32, u32)> = VecDeque::new(); // (t, recommendation)
    let mut seen: VecDeque<(f64, f64, f64)> = VecDeque::new(); // per second: cpu util, signal, offered
    let mut backlog = 0.0f64;
    let mut out = Vec::with_capacity(seconds as usize);
    let ln100 = 100f64.ln();
    for t in 0..seconds {
        while starting.front().is_some_and(|r| *r <= t) {
            starting.pop_front();
            ready += 1;
        }
        let lambda = offered(t) * svc.share;
        let capacity = f64::from(ready) * mu;
        backlog = (backlog + lambda - capacity).max(0.0);
        let per_pod = lambda / f64::from(ready);
        let (queue_p99, mean_time) = if per_pod < mu && backlog == 0.0 {
            (
                (ln100 / (mu - per_pod) - ln100 / mu).max(0.0),
                1.0 / (mu - per_pod),
            )
        } else {
            // Saturated: what cannot be served waits.
            let wait = backlog / capacity;
            (wait + ln100 / mu, wait + 1.0 / mu)
        };
        let p99 = svc.base_p99 + queue_p99;
        let util = (per_pod.min(mu) * svc.cpu_per_call) / svc.cores;
        let signal = match svc.signal {
            Signal::RatePerPod(_) => per_pod,
            Signal::InFlightPerPod(_) => per_pod.min(mu) * mean_time + backlog / f64::from(ready),
            Signal::SecondsPerCall(_) => mean_time,
        };
        seen.push_back((util, signal, lambda));
        if seen.len() > METRIC_WINDOW {
            seen.pop_front();
        }
        if t % SYNC == 0 && t > 0 {
            let n = seen.len() as f64;
            let avg = |f: fn(&(f64, f64, f64)) -> f64| seen.iter().map(f).sum::<f64>() / n;
            let target = match svc.signal {
                Signal::RatePerPod(x) | Signal::InFlightPerPod(x) | Signal::SecondsPerCall(x) => x,
            };
            let ratios = [avg(|x| x.0) / svc.cpu_target, avg(|x| x.1) / target];
            let desired = ratios
                .iter()
                .map(|r| {
                    if (r - 1.0).abs() <= TOLERANCE {
                        replicas
                    } else {
                        (f64::from(ready) * r).ceil() as u32
                    }
                })
                .max()
                .unwrap_or(replicas)
                .clamp(s.min, s.max);
            recs.push_back((t, desired));
            while recs.front().is_some_and(|(at, _)| t - at > s.down_window) {
                recs.pop_front();
            }
            while events.front().is_some_and(|(at, _)| t - at > 3600) {
                events.pop_front();
            }
            let changed = |period: u32, sign: i64| -> u32 {
                events
                    .iter()
                    .filter(|(at, d)| t - at < period && d.signum() == sign)
                    .map(|(_, d)| d.unsigned_abs() as u32)
                    .sum()
            };
            let next = if desired > replicas {
                let limit =
                    s.up.iter()
                        .map(|p| {
                            let start = replicas - changed(p.period(), 1).min(replicas);
                            match *p {
                                Step::Pods(v, _) => start + v,
                                Step::Percent(v, _) => {
                                    (f64::from(start) * (1.0 + f64::from(v) / 100.0)).ceil() as u32
                                }
                            }
                        })
                        .max()
                        .unwrap_or(replicas);
                desired.min(limit).max(replicas)
            } else {
                // The highest recommendation of the window: a dip shorter
                // than it removes nothing.
                let stable = recs.iter().map(|r| r.1).max().unwrap_or(replicas);
                let floor = s
                    .down
                    .iter()
                    .map(|p| {
                        let start = replicas + changed(p.period(), -1);
                        match *p {
                            Step::Pods(v, _) => start.saturating_sub(v),
                            Step::Percent(v, _) => {
                                (f64::from(start) * (1.0 - f64::from(v) / 100.0)).floor() as u32
                            }
                        }
                    })
                    .max()
                    .unwrap_or(replicas);
                stable.max(floor).min(replicas).max(s.min)
            };
            if next > replicas {
                for _ in replicas..next {
                    starting.push_back(t + svc.ready_after);
                }
                events.push_back((t, i64::from(next - replicas)));
            } else if next < replicas {
                // Pods still starting go first, then ready ones.
                for _ in next..replicas {
                    if starting.pop_back().is_none() {
                        ready -= 1;
                    }
                }
                events.push_back((t, -i64::from(replicas - next)));
            }
            replicas = next;
        }
        out.push(Second {
            t,
            offered: lambda,
            replicas,
            ready,
            p99,
        });
    }
    out
}

/// Seconds from the start until `pods` pods take calls.
pub fn time_to(run: &[Second], pods: u32) -> Option<u32> {
    run.iter().find(|s| s.ready >= pods).map(|s| s.t)
}

/// The p-th quantile (0..=1) of the predicted p99 over a run's seconds.
pub fn p99_quantile(run: &[Second], q: f64) -> f64 {
    let mut v: Vec<f64> = run.iter().map(|s| s.p99).collect();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Traffic traces: gateway calls per second at second `t`.
pub mod trace {
    /// A day around seed 000's baseline of 1,000 calls/s: quiet at night,
    /// busy at lunch, peaking in the evening at 1,700/s (an illustrative
    /// shop's shape), linear between hours.
    pub fn day(t: u32) -> f64 {
        const HOURLY: [f64; 25] = [
            0.35, 0.25, 0.2, 0.2, 0.25, 0.35, 0.55, 0.8, 1.0, 1.05, 1.1, 1.15, 1.2, 1.15, 1.1, 1.1,
            1.15, 1.25, 1.4, 1.6, 1.7, 1.5, 1.0, 0.6, 0.35,
        ];
        let h = (t as f64 / 3600.0) % 24.0;
        let (i, f) = (h.floor() as usize, h.fract());
        1000.0 * (HOURLY[i] * (1.0 - f) + HOURLY[i + 1] * f)
    }

    /// 1,000 calls/s, a ramp to 10x (10,000/s) over a minute at 10 min,
    /// held an hour, then back.
    pub fn spike(t: u32) -> f64 {
        let ramp = |x: f64| 1000.0 + 9000.0 * x.clamp(0.0, 1.0);
        match t {
            0..600 => 1000.0,
            600..660 => ramp((t - 600) as f64 / 60.0),
            660..4260 => 10_000.0,
            4260..4320 => ramp(1.0 - (t - 4260) as f64 / 60.0),
            _ => 1000.0,
        }
    }

    /// From a trickle to `peak` at once (at 60 s): 2 -> 20 pods.
    pub fn surge(peak: f64) -> impl Fn(u32) -> f64 {
        move |t| if t < 60 { 50.0 } else { peak }
    }
}

/// A scenario's runs under one policy: per service, every second.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scenario {
    /// `day`, `busy-day` (the day at 10x), `spike` or `surge`.
    pub name: &'static str,
    /// `seed` or `chart`.
    pub policy: &'static str,
    /// Per service: its run, one entry per minute.
    pub services: Vec<(&'static str, Vec<Second>)>,
}

/// The day, the spike and the surge under seed 000's policy and the
/// chart's, side by side.
pub fn scenarios() -> Vec<(Scenario, Vec<Vec<Second>>)> {
    let mut out = Vec::new();
    for (policy, scaling) in [
        ("seed", Scaling::seed as fn(u32, u32) -> Scaling),
        ("chart", Scaling::chart),
    ] {
        for (name, seconds) in [
            ("day", 24 * 3600),
            ("busy-day", 24 * 3600),
            ("spike", 2 * 3600),
            ("surge", 4200),
        ] {
            let mut full = Vec::new();
            let mut services = Vec::new();
            for svc in chart_services(scaling) {
                let run = match name {
                    "day" => simulate(&svc, &trace::day, seconds, svc.scaling.min),
                    "busy-day" => {
                        simulate(&svc, &|t| 10.0 * trace::day(t), seconds, svc.scaling.min)
                    }
                    "spike" => simulate(&svc, &trace::spike, seconds, svc.scaling.min),
                    _ => simulate(&svc, &trace::surge(surge_peak(&svc)), seconds, 2),
                };
                services.push((svc.name, run.iter().step_by(60).copied().collect()));
                full.push(run);
            }
            out.push((
                Scenario {
                    name,
                    policy,
                    services,
                },
                full,
            ));
        }
    }
    out
}

/// Gateway calls per second that keep 25 pods of `svc` at its CPU target.
pub fn surge_peak(svc: &Service) -> f64 {
    25.0 * svc.cores * svc.cpu_target / svc.cpu_per_call / svc.share
}

fn ms(s: f64) -> String {
    if s >= 10.0 {
        format!("{:.0} s", s)
    } else if s >= 1.0 {
        format!("{:.1} s", s)
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

fn minsec(s: Option<u32>) -> String {
    match s {
        Some(s) => format!("{}:{:02}", s / 60, s % 60),
        None => "never".into(),
    }
}

/// The Markdown tables `docs/benchmarks.md` carries.
pub fn markdown() -> String {
    use std::fmt::Write;
    let all = scenarios();
    let find = |name: &str, policy: &str| {
        all.iter()
            .find(|(s, _)| s.name == name && s.policy == policy)
            .map(|(_, runs)| runs)
            .expect("every scenario runs under both policies")
    };
    let names: Vec<&str> = chart_services(Scaling::chart)
        .iter()
        .map(|s| s.name)
        .collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "**Surge to 25 pods' worth of load, from 2 pods** (time until 20 pods take calls):\n"
    );
    let _ = writeln!(
        md,
        "| service | seed 000's +2/5 min | the chart's (+2/5 min or x2/min) |\n|---|---|---|"
    );
    for (i, n) in names.iter().enumerate() {
        let t = |p| minsec(time_to(&find("surge", p)[i], 20).map(|t| t - 60));
        let _ = writeln!(md, "| {n} | {} | {} |", t("seed"), t("chart"));
    }
    let _ = writeln!(
        md,
        "\n**10x spike** (1,000 -> 10,000 calls/s at 10 min for an hour; 200 photos/s):\n"
    );
    let _ = writeln!(
        md,
        "| service | policy | pods before / most / at the end | behind for | predicted p99 before / worst | seconds over its tier |\n|---|---|---|---|---|---|"
    );
    let services = chart_services(Scaling::chart);
    for (i, n) in names.iter().enumerate() {
        for p in ["seed", "chart"] {
            let run = &find("spike", p)[i];
            let tier = services[i].tier;
            let most = run.iter().map(|s| s.ready).max().unwrap_or(0);
            // Caught up: from the spike on, the first second whose p99 is
            // back within twice the one before it.
            let before = run[590].p99;
            let after = &run[600..];
            let caught = match after.iter().position(|s| s.p99 > 2.0 * before) {
                None => "never behind".to_string(),
                Some(i) => minsec(
                    after[i..]
                        .iter()
                        .find(|s| s.p99 <= 2.0 * before)
                        .map(|s| s.t - 600),
                ),
            };
            let over = run.iter().filter(|s| s.p99 > tier).count();
            let _ = writeln!(
                md,
                "| {n} | {p} | {} / {most} / {} | {} | {} / {} | {over} (> {}) |",
                run[590].ready,
                run.last().map_or(0, |s| s.ready),
                caught,
                ms(before),
                ms(p99_quantile(run, 1.0)),
                ms(tier),
            );
        }
    }
    let _ = writeln!(
        md,
        "\n**Pods over the spike** (the chart's policy; minutes from the start):\n"
    );
    let marks = [
        0u32, 10, 11, 12, 13, 15, 20, 30, 70, 72, 80, 90, 100, 110, 119,
    ];
    let _ = write!(md, "| minute | calls/s |");
    for n in &names {
        let _ = write!(md, " {n} |");
    }
    let _ = writeln!(md, "\n|---|---|{}", "---|".repeat(names.len()));
    let spike = find("spike", "chart");
    for m in marks {
        let at = (m * 60) as usize;
        let _ = write!(md, "| {m} | {:.0} |", trace::spike(m * 60));
        for run in spike {
            let _ = write!(md, " {} ({}) |", run[at].ready, ms(run[at].p99));
        }
        let _ = writeln!(md);
    }
    for (name, scale, what) in [
        ("day", 1.0, "A day around 1,000 calls/s"),
        (
            "busy-day",
            10.0,
            "The same day at 10x (a large shop, 2,000-17,000 calls/s)",
        ),
    ] {
        let _ = writeln!(
            md,
            "\n**{what}** (the chart's policy; pods every 3 hours, the most, and the worst predicted p99):\n"
        );
        let _ = write!(md, "| hour | calls/s |");
        for n in &names {
            let _ = write!(md, " {n} |");
        }
        let _ = writeln!(md, "\n|---|---|{}", "---|".repeat(names.len()));
        let day = find(name, "chart");
        for h in (0..24).step_by(3) {
            let at = (h * 3600) as usize;
            let _ = write!(md, "| {h}:00 | {:.0} |", scale * trace::day(h * 3600));
            for run in day {
                let _ = write!(md, " {} |", run[at].ready);
            }
            let _ = writeln!(md);
        }
        let _ = write!(md, "| most | |");
        for run in day {
            let _ = write!(md, " {} |", run.iter().map(|s| s.ready).max().unwrap_or(0));
        }
        let _ = write!(md, "\n| worst p99 | |");
        for run in day {
            let _ = write!(md, " {} |", ms(p99_quantile(run, 1.0)));
        }
        let _ = writeln!(md);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(scaling: fn(u32, u32) -> Scaling) -> Service {
        chart_services(scaling).remove(0)
    }

    /// No `period` window of the run adds more than `most` pods.
    fn most_added(run: &[Second], period: u32) -> u32 {
        (0..run.len())
            .map(|i| {
                let end = (i + period as usize).min(run.len() - 1);
                run[end].replicas.saturating_sub(run[i].replicas)
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_seeds_step_adds_two_pods_per_five_minutes_at_most() {
        let svc = gateway(Scaling::seed);
        let run = simulate(&svc, &trace::surge(60_000.0), 3600, 3);
        assert!(most_added(&run, 299) <= 2, "{}", most_added(&run, 299));
        // 3 -> 20 in steps of 2: 9 steps, the first at once.
        let t = time_to(&run, 20).expect("reaches 20");
        assert!((8 * 300..=9 * 300 + 60 + 20).contains(&t), "{t}");
    }

    #[test]
    fn the_charts_policy_doubles_per_minute_and_reaches_20_within_5_minutes() {
        for svc in chart_services(Scaling::chart) {
            // Enough load for 25 pods of it.
            let peak = match svc.signal {
                Signal::RatePerPod(x) => 25.0 * x,
                _ => 25.0 * svc.cores * svc.cpu_target / svc.cpu_per_call / svc.share,
            };
            let run = simulate(&svc, &trace::surge(peak), 1800, 2);
            let t = time_to(&run, 20).expect("reaches 20") - 60;
            assert!(t < 300, "{}: 2 -> 20 took {t} s", svc.name);
            assert!(run.iter().all(|s| s.replicas <= 20), "above max");
        }
    }

    #[test]
    fn scale_down_waits_ten_minutes_and_removes_one_pod_per_ten_minutes() {
        let svc = gateway(Scaling::chart);
        let run = simulate(&svc, &trace::spike, 4 * 3600, 3);
        // The load starts to fall at 4,260 s.
        let peak_end = 4260;
        let top = run[peak_end as usize].replicas;
        // Nothing removed in the 10 minutes after the load began to fall.
        assert_eq!(run[(peak_end + 590) as usize].replicas, top);
        for w in run[peak_end as usize..].windows(600) {
            assert!(
                w[0].replicas - w[599].replicas <= 1,
                "two pods removed within 10 min"
            );
        }
        assert!(run.last().unwrap().replicas < top, "never scaled down");
        assert!(run.iter().all(|s| s.replicas >= 3), "below min");
    }

    #[test]
    fn a_steady_load_within_the_tolerance_moves_nothing() {
        let svc = gateway(Scaling::chart);
        // 3 pods at 1,600/s each: on target.
        let run = simulate(&svc, &|_| 4800.0, 1800, 3);
        assert!(run.iter().all(|s| s.replicas == 3));
        // Latency: the light-load p99 plus a queue well under capacity.
        let p = run.last().unwrap().p99;
        assert!(p > svc.base_p99 && p < 0.01, "{p}");
    }

    #[test]
    fn overload_builds_a_backlog_that_the_new_pods_drain() {
        // Face analysis: 20 photos/s at 1,000 calls/s, 200/s in the spike;
        // 2 pods hold 80/s.
        let svc = chart_services(Scaling::seed).remove(2);
        let run = simulate(&svc, &trace::spike, 2 * 3600, 3);
        let worst = p99_quantile(&run, 1.0);
        assert!(
            worst > 1.0,
            "a 10x spike on +2 per 5 min queues for seconds: {worst}"
        );
        let end = run.last().unwrap().p99;
        assert!(end < 0.1, "drained by the end: {end}");
    }
}
