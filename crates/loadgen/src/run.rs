//! The engine: sends a [`Plan`]'s calls and records every answer.
//!
//! - **Open loop**: a dispatcher thread of its own (not a runtime task: the
//!   runtime's timer has 1 ms ticks, far coarser than 100 µs between
//!   calls at 10,000/s) sleeps until the next call is due and hands every
//!   due call to the runtime. Latency is measured from the moment the call
//!   was *due*, so a stall in the system (or in this tool) shows as
//!   latency and is never hidden by sending less. How late calls left is
//!   reported as `send lag`. Beyond `max_in_flight` outstanding calls the
//!   tool stops sending and counts the call as not sent.
//! - **Closed loop**: `concurrency` callers, each sending its next call on
//!   an answer; latency from the send.
//!
//! Every call ends in one recording under one lock (a few hundred
//! nanoseconds); per-second windows feed the live progress line and the
//! report's timeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::grpc::{CallError, Target};
use discovery_kit::rng::SplitMix;

use crate::plan::{Corpus, Load, Op, Plan};
use crate::report::{Report, Second};

/// A histogram of microseconds, 1 µs to 10 min at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// What has been recorded so far.
pub(crate) struct Stats {
    pub(crate) ops: Vec<OpStats>,
    pub(crate) phases: Vec<PhaseStats>,
    pub(crate) all: Histogram<u64>,
    pub(crate) accepted: Histogram<u64>,
    pub(crate) lag: Histogram<u64>,
    pub(crate) not_sent: u64,
    pub(crate) window: Window,
    pub(crate) timeline: Vec<Second>,
    pub(crate) bytes: u64,
    pub(crate) first_errors: Vec<String>,
}

pub(crate) struct OpStats {
    pub(crate) op: Op,
    pub(crate) hist: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: std::collections::BTreeMap<&'static str, u64>,
}

pub(crate) struct PhaseStats {
    pub(crate) name: String,
    pub(crate) target_rps: f64,
    pub(crate) duration: Duration,
    pub(crate) hist: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
}

#[derive(Default)]
pub(crate) struct Window {
    pub(crate) hist: Option<Histogram<u64>>,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
}

impl Stats {
    fn new(plan: &Plan) -> Stats {
        let phases = match &plan.load {
            Load::Open(phases) => phases
                .iter()
                .map(|p| PhaseStats {
                    name: p.name.clone(),
                    target_rps: p.calls() / p.duration.as_secs_f64().max(1e-9),
                    duration: p.duration,
                    hist: histogram(),
                    ok: 0,
                    errors: 0,
                })
                .collect(),
            Load::Closed { duration, .. } => vec![PhaseStats {
                name: plan.scenario.clone(),
                target_rps: 0.0,
                duration: *duration,
                hist: histogram(),
                ok: 0,
                errors: 0,
            }],
        };
        Stats {
            ops: Op::ALL
                .into_iter()
                .map(|op| OpStats {
                    op,
                    hist: histogram(),
                    ok: 0,
                    errors: Default::default(),
                })
                .collect(),
            phases,
            all: histogram(),
            accepted: histogram(),
            lag: histogram(),
            not_sent: 0,
            window: Window::default(),
            timeline: Vec::new(),
            bytes: 0,
            first_errors: Vec::new(),
        }
    }

    fn record(&mut self, op: Op, phase: usize, micros: u64, outcome: &Result<usize, CallError>) {
        let v = micros.max(1);
        let o = &mut self.ops[op as usize];
        let _ = o.hist.record(v);
        let _ = self.all.record(v);
        let last = self.phases.len() - 1;
        let p = &mut self.phases[phase.min(last)];
        let _ = p.hist.record(v);
        let w = self.window.hist.get_or_insert_with(histogram);
        let _ = w.record(v);
        match outcome {
            Ok(bytes) => {
                let _ = self.accepted.record(v);
                o.ok += 1;
                p.ok += 1;
                self.window.ok += 1;
                self.bytes += *bytes as u64;
            }
            Err(e) => {
                *o.errors.entry(e.label()).or_insert(0) += 1;
                p.errors += 1;
                self.window.errors += 1;
                if self.first_errors.len() < 10 {
                    self.first_errors.push(format!("{}: {e}", op.name()));
                }
            }
        }
    }
}

/// Shared between the senders.
struct Shared {
    target: Arc<Target>,
    corpus: Arc<Corpus>,
    stats: Mutex<Stats>,
    in_flight: AtomicUsize,
    sent: AtomicU64,
    done: AtomicBool,
}

impl Shared {
    async fn call(&self, op: Op, draw: u64, phase: usize, due: Instant) {
        let body = self.corpus.body(op, draw);
        let r = self
            .target
            .call(op.path(), body, false)
            .await
            .map(|a| a.bytes);
        let micros = due.elapsed().as_micros() as u64;
        self.stats.lock().record(op, phase, micros, &r);
    }
}

/// Options that are not part of the plan.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print a progress line every second (on a terminal, redrawn).
    pub progress: bool,
    /// The server's process ids (every process of a multi-process
    /// system), to report their CPU per call together.
    pub server_pids: Vec<u32>,
}

/// Runs `plan` against `target` and reports. The run is bounded by the
/// plan's duration (and `max_calls`); the tool then waits at most the
/// call timeout for outstanding answers.
pub async fn run(
    target: Arc<Target>,
    corpus: Arc<Corpus>,
    plan: &Plan,
    options: &RunOptions,
) -> Report {
    let shared = Arc::new(Shared {
        target,
        corpus,
        stats: Mutex::new(Stats::new(plan)),
        in_flight: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let cpu_before = (
        crate::report::cpu_seconds(None),
        servers_cpu(&options.server_pids),
    );
    let started = Instant::now();
    let ticker = tokio::spawn(tick(shared.clone(), started, options.progress));
    match &plan.load {
        Load::Open(phases) => open_loop(&shared, plan, phases.clone(), started).await,
        Load::Closed {
            concurrency,
            duration,
        } => closed_loop(&shared, plan, *concurrency, *duration, started).await,
    }
    // Outstanding answers, within a bound.
    let drain_until = Instant::now() + Duration::from_secs(10);
    while shared.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    shared.done.store(true, Ordering::Release);
    let _ = ticker.await;
    let cpu_after = (
        crate::report::cpu_seconds(None),
        servers_cpu(&options.server_pids),
    );
    let cpu = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    let mut stats = shared.stats.lock();
    let unanswered = shared.in_flight.load(Ordering::Acquire);
    if unanswered > 0 {
        stats.first_errors.push(format!(
            "{unanswered} calls still unanswered when the run ended"
        ));
    }
    Report::new(
        plan,
        shared.target.url(),
        &stats,
        elapsed,
        shared.sent.load(Ordering::Relaxed),
        cpu(cpu_before.0, cpu_after.0),
        cpu(cpu_before.1, cpu_after.1),
        shared.corpus.product_ids,
    )
}

/// CPU seconds of all `pids` together (None without any, or when one
/// cannot be read).
fn servers_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|p| crate::report::cpu_seconds(Some(*p)))
        .sum()
}

async fn open_loop(
    shared: &Arc<Shared>,
    plan: &Plan,
    phases: Vec<crate::plan::Phase>,
    started: Instant,
) {
    let handle = tokio::runtime::Handle::current();
    let shared2 = shared.clone();
    let mix = plan.mix.clone();
    let max_calls = plan.max_calls.unwrap_or(u64::MAX);
    let max_in_flight = plan.max_in_flight;
    let dispatcher = std::thread::Builder::new()
        .name("loadgen-dispatch".into())
        .spawn(move || {
            let shared = shared2;
            let mut draws = SplitMix(0x10AD);
            let mut n = 0u64;
            let mut phase_start = 0.0f64;
            'phases: for (pi, phase) in phases.iter().enumerate() {
                let len = phase.duration.as_secs_f64();
                let mut t = 0.0f64;
                loop {
                    let rate = phase.rate_at(t);
                    if rate <= 0.0 {
                        // Nothing scheduled here: move on in 1 ms steps.
                        t += 0.001;
                        if t >= len {
                            break;
                        }
                        continue;
                    }
                    let due_s = phase_start + t;
                    let due = started + Duration::from_secs_f64(due_s);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if n >= max_calls {
                        break 'phases;
                    }
                    if shared.in_flight.load(Ordering::Acquire) >= max_in_flight {
                        shared.stats.lock().not_sent += 1;
                    } else {
                        let lag = Instant::now().saturating_duration_since(due);
                        let _ = shared.stats.lock().lag.record(lag.as_micros() as u64 + 1);
                        let op = mix.pick(draws.next_u64());
                        let draw = draws.next_u64();
                        shared.in_flight.fetch_add(1, Ordering::AcqRel);
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                        let s = shared.clone();
                        handle.spawn(async move {
                            s.call(op, draw, pi, due).await;
                            s.in_flight.fetch_sub(1, Ordering::AcqRel);
                        });
                    }
                    n += 1;
                    t += 1.0 / rate;
                    if t >= len {
                        break;
                    }
                }
                phase_start += len;
            }
        });
    match dispatcher {
        Ok(d) => {
            // Wait without blocking the runtime.
            let _ = tokio::task::spawn_blocking(move || d.join()).await;
        }
        Err(e) => shared
            .stats
            .lock()
            .first_errors
            .push(format!("cannot start the dispatcher thread: {e}")),
    }
}

async fn closed_loop(
    shared: &Arc<Shared>,
    plan: &Plan,
    concurrency: usize,
    duration: Duration,
    started: Instant,
) {
    let until = started + duration;
    let max_calls = plan.max_calls.unwrap_or(u64::MAX);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let s = shared.clone();
        let mix = plan.mix.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut draws = SplitMix(0xC105ED ^ (w as u64) << 32);
            while Instant::now() < until {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= max_calls {
                    break;
                }
                let op = mix.pick(draws.next_u64());
                let draw = draws.next_u64();
                s.in_flight.fetch_add(1, Ordering::AcqRel);
                s.sent.fetch_add(1, Ordering::Relaxed);
                s.call(op, draw, 0, Instant::now()).await;
                s.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Once a second: closes the window into the timeline and prints progress.
async fn tick(shared: Arc<Shared>, started: Instant, progress: bool) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut next = started + Duration::from_secs(1);
    loop {
        let stop = shared.done.load(Ordering::Acquire);
        if !stop {
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        }
        let t = started.elapsed().as_secs_f64();
        let line = {
            let mut st = shared.stats.lock();
            let w = std::mem::take(&mut st.window);
            let (p50, p99) = w.hist.as_ref().map_or((0.0, 0.0), |h| {
                (
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                )
            });
            let sec = Second {
                t: t.round() as u64,
                ok: w.ok,
                errors: w.errors,
                p50_ms: p50,
                p99_ms: p99,
            };
            let line = format!(
                "[{:>5.0}s] {:>7} ok/s {:>5} err/s  p50 {:>7.2} ms  p99 {:>7.2} ms  in flight {:>5}  sent {}",
                t,
                sec.ok,
                sec.errors,
                p50,
                p99,
                shared.in_flight.load(Ordering::Relaxed),
                shared.sent.load(Ordering::Relaxed)
            );
            if sec.ok + sec.errors > 0 || !stop {
                st.timeline.push(sec);
            }
            line
        };
        if progress {
            if tty {
                eprint!("\r{line}");
            } else if (t.round() as u64).is_multiple_of(5) {
                eprintln!("{line}");
            }
        }
        if stop {
            if progress && tty {
                eprintln!();
            }
            return;
        }
        next += Duration::from_secs(1);
    }
}
