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
//! DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, DATA_LOSS and transport errors.
//! Caller mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) and cancellations
//! are neither.

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
    /// The half-open probe: report its outcome with `probe = true`.
    Probe,
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
    pub fn allow(&self) -> Result<Permit, Duration> {
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

    /// Records a call's outcome (`failed`: see [`is_failure`]).
    pub fn record(&self, permit: Permit, failed: bool) {
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
        let b = Breaker::new(BreakerConfig::default());
        for _ in 0..4 {
            assert_eq!(b.allow(), Ok(Permit::Call));
            b.record(Permit::Call, true);
        }
        assert_eq!(b.state(), "closed");
        b.record(Permit::Call, true);
        assert_eq!(b.state(), "open");
        assert_eq!(b.allow(), Err(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.allow(), Ok(Permit::Probe));
        assert!(b.allow().is_err(), "one probe at a time");
        // A failed probe re-opens it for twice as long.
        b.record(Permit::Probe, true);
        assert_eq!(b.allow(), Err(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.allow(), Ok(Permit::Probe));
        b.record(Permit::Probe, false);
        assert_eq!(b.state(), "closed");
        assert_eq!(b.allow(), Ok(Permit::Call));
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
