//! Per-method circuit breakers.
//!
//! Closed: calls flow; outcomes go into a 10-bucket rolling window. It
//! opens when the window holds at least `min_calls` calls with an error
//! rate at or above `error_rate`, or after `consecutive` failures in a row.
//! Open: calls fail fast (or get a cached fallback) for `open_for`, doubled
//! each time it re-opens, up to `max_open`. Half-open: one probe at a
//! time; a success closes it, a failure opens it again.
//!
//! Failures are what the upstream cannot help: UNAVAILABLE,
//! DEADLINE_EXCEEDED of the gateway's own deadline for the route, INTERNAL,
//! UNKNOWN, DATA_LOSS and transport errors. Caller mistakes
//! (INVALID_ARGUMENT, NOT_FOUND, ...), cancellations and the caller's own
//! deadline are neither: a caller must not be able to open a circuit for
//! everyone by sending `grpc-timeout: 1n` (the proxy decides whose deadline
//! it was, [`crate::proxy`]).
//!
//! [`Breaker::allow`] hands out a [`Ticket`]; the ticket reports the call's
//! outcome once, and a ticket dropped without an outcome (the caller went
//! away, the future was dropped) counts as neither: a half-open probe is
//! released on every path, so a method cannot stay open until restart.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::Code;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Rolling window.
    pub window: Duration,
    /// Calls needed in the window before the error rate counts.
    pub min_calls: u32,
    /// Error rate that opens it.
    pub error_rate: f64,
    /// Failures in a row that open it.
    pub consecutive: u32,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period.
    pub max_open: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_calls: 20,
            error_rate: 0.5,
            consecutive: 5,
            open_for: Duration::from_secs(5),
            max_open: Duration::from_secs(60),
        }
    }
}

/// How a call ended, for the breaker.
pub fn is_failure(code: Code) -> Option<bool> {
    match code {
        Code::Ok => Some(false),
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Unknown
        | Code::DataLoss => Some(true),
        Code::Cancelled => None,
        _ => Some(false),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant, times: u32 },
    HalfOpen { probing: bool, times: u32 },
}

#[derive(Debug)]
struct Inner {
    state: State,
    buckets: [(u32, u32); 10],
    bucket_at: Instant,
    current: usize,
    in_a_row: u32,
}

/// What the breaker allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A normal call.
    Call,
    /// The half-open probe: its outcome closes or re-opens the breaker.
    Probe,
}

/// A call admitted by a breaker. Report the outcome with [`Ticket::record`];
/// dropped unreported, it counts as neither success nor failure (and a
/// probe lets the next call probe).
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    permit: Permit,
    reported: bool,
}

impl Ticket {
    /// What was allowed.
    pub fn permit(&self) -> Permit {
        self.permit
    }

    /// Reports the outcome: `Some(true)` failed, `Some(false)` succeeded,
    /// `None` says nothing about the upstream (cancelled, the caller's own
    /// deadline).
    pub fn record(mut self, outcome: Option<bool>) {
        self.reported = true;
        match outcome {
            Some(failed) => self.breaker.record(self.permit, failed),
            None => self.breaker.release(self.permit),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.release(self.permit);
        }
    }
}

/// One breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                buckets: [(0, 0); 10],
                bucket_at: Instant::now(),
                current: 0,
                in_a_row: 0,
            }),
        }
    }

    fn roll(&self, inner: &mut Inner, now: Instant) {
        let width = self.config.window / 10;
        while now.duration_since(inner.bucket_at) >= width {
            inner.current = (inner.current + 1) % 10;
            inner.buckets[inner.current] = (0, 0);
            inner.bucket_at += width;
            if now.duration_since(inner.bucket_at) > self.config.window {
                inner.buckets = [(0, 0); 10];
                inner.bucket_at = now;
            }
        }
    }

    /// May a call go now? `Err` carries how long until the next probe.
    pub fn allow(self: &Arc<Self>) -> Result<Ticket, Duration> {
        self.permit().map(|permit| Ticket {
            breaker: self.clone(),
            permit,
            reported: false,
        })
    }

    fn permit(&self) -> Result<Permit, Duration> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed => Ok(Permit::Call),
            State::Open { until, times } if now >= until => {
                inner.state = State::HalfOpen {
                    probing: true,
                    times,
                };
                Ok(Permit::Probe)
            }
            State::Open { until, .. } => Err(until - now),
            State::HalfOpen {
                probing: false,
                times,
            } => {
                inner.state = State::HalfOpen {
                    probing: true,
                    times,
                };
                Ok(Permit::Probe)
            }
            State::HalfOpen { probing: true, .. } => Err(Duration::from_millis(100)),
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant, times: u32) {
        let period = self
            .config
            .open_for
            .saturating_mul(1 << times.min(16))
            .min(self.config.max_open);
        inner.state = State::Open {
            until: now + period,
            times: times + 1,
        };
        inner.buckets = [(0, 0); 10];
        inner.in_a_row = 0;
    }

    /// A call ended with no verdict on the upstream: a probe lets the
    /// next call probe instead.
    fn release(&self, permit: Permit) {
        if permit != Permit::Probe {
            return;
        }
        let mut inner = self.inner.lock();
        if let State::HalfOpen {
            probing: true,
            times,
        } = inner.state
        {
            inner.state = State::HalfOpen {
                probing: false,
                times,
            };
        }
    }

    /// Records a call's outcome (`failed`: see [`is_failure`]).
    fn record(&self, permit: Permit, failed: bool) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if permit == Permit::Probe {
            if let State::HalfOpen { times, .. } = inner.state {
                if failed {
                    self.open(&mut inner, now, times);
                } else {
                    inner.state = State::Closed;
                    inner.in_a_row = 0;
                    inner.buckets = [(0, 0); 10];
                    inner.bucket_at = now;
                }
            }
            return;
        }
        if inner.state != State::Closed {
            return;
        }
        self.roll(&mut inner, now);
        let cur = inner.current;
        inner.buckets[cur].0 += 1;
        if failed {
            inner.buckets[cur].1 += 1;
            inner.in_a_row += 1;
        } else {
            inner.in_a_row = 0;
        }
        let (calls, failures) = inner
            .buckets
            .iter()
            .fold((0, 0), |(c, f), b| (c + b.0, f + b.1));
        let rate_trips = calls >= self.config.min_calls
            && failures as f64 >= self.config.error_rate * calls as f64;
        if inner.in_a_row >= self.config.consecutive || rate_trips {
            self.open(&mut inner, now, 0);
        }
    }

    /// "closed", "open" or "half-open".
    pub fn state(&self) -> &'static str {
        match self.inner.lock().state {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_probes_and_closes() {
        let b = Arc::new(Breaker::new(BreakerConfig::default()));
        for _ in 0..4 {
            let t = b.allow().unwrap();
            assert_eq!(t.permit(), Permit::Call);
            t.record(Some(true));
        }
        assert_eq!(b.state(), "closed");
        b.allow().unwrap().record(Some(true));
        assert_eq!(b.state(), "open");
        assert_eq!(b.allow().unwrap_err(), Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.allow().unwrap();
        assert_eq!(probe.permit(), Permit::Probe);
        assert!(b.allow().is_err(), "one probe at a time");
        // A failed probe re-opens it for twice as long.
        probe.record(Some(true));
        assert_eq!(b.allow().unwrap_err(), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.allow().unwrap();
        assert_eq!(probe.permit(), Permit::Probe);
        probe.record(Some(false));
        assert_eq!(b.state(), "closed");
        assert_eq!(b.allow().unwrap().permit(), Permit::Call);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_is_released_when_cancelled_or_dropped() {
        let b = Arc::new(Breaker::new(BreakerConfig::default()));
        for _ in 0..5 {
            b.allow().unwrap().record(Some(true));
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        // Cancelled: no verdict, the next call probes.
        let probe = b.allow().unwrap();
        assert!(b.allow().is_err());
        probe.record(None);
        assert_eq!(b.state(), "half-open");
        // Dropped without a word (the caller's future went away).
        let probe = b.allow().unwrap();
        assert_eq!(probe.permit(), Permit::Probe);
        drop(probe);
        let probe = b.allow().expect("a dropped probe lets the next call probe");
        probe.record(Some(false));
        assert_eq!(b.state(), "closed");
        // Unreported normal calls count as nothing: 100 of them leave it closed.
        for _ in 0..100 {
            drop(b.allow().unwrap());
        }
        assert_eq!(b.state(), "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_over_the_window_only() {
        let b = Breaker::new(BreakerConfig::default());
        // 50 % failures, alternating (never 5 in a row), 10 calls: too few.
        for i in 0..10 {
            b.record(Permit::Call, i % 2 == 0);
        }
        assert_eq!(b.state(), "closed");
        // Old calls leave the window: 10 s later the count starts again.
        tokio::time::advance(Duration::from_secs(11)).await;
        for i in 0..19 {
            b.record(Permit::Call, i % 2 == 0);
        }
        assert_eq!(b.state(), "closed", "19 calls in the window");
        b.record(Permit::Call, false);
        assert_eq!(b.state(), "open", "20 calls, 10 failed");
        // Caller errors are not failures.
        assert_eq!(is_failure(Code::InvalidArgument), Some(false));
        assert_eq!(is_failure(Code::Cancelled), None);
        assert_eq!(is_failure(Code::Unavailable), Some(true));
    }
}
