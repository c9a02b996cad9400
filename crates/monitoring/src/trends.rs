//! Which way a series is going: the least-squares line through its points,
//! and its change over the points' span relative to their mean; and the
//! services' series over a time range, from the scraped history.

use std::collections::BTreeMap;

use crate::window::{self, History};

/// Direction of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Up by more than [`STEADY_BAND`] of its mean over the span.
    Rising,
    /// Down by more than [`STEADY_BAND`].
    Falling,
    /// Within the band (or too few points to say).
    Steady,
}

/// A series' trend.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Trend {
    /// Which way.
    pub direction: Direction,
    /// The fitted line's change over the span, relative to the mean
    /// (0.25: up a quarter); 0 when the mean is 0 and the line is flat.
    pub change: f64,
    /// The fitted line's slope, in the series' unit per hour.
    pub per_hour: f64,
}

/// A change under this fraction of the mean over the span is steady: the
/// noise of 5-minute windows on a quiet service stays under it.
pub const STEADY_BAND: f64 = 0.05;

/// Fewest points a direction is read from.
pub const MIN_POINTS: usize = 3;

/// The trend of `points` (`(unix ms, value)`, any order), its change
/// relative to their mean.
pub fn trend(points: &[(i64, f64)]) -> Trend {
    trend_against(points, None)
}

/// [`trend`] with the change relative to `scale` instead of the mean
/// (`None`: the mean): a ratio near 1 such as availability moves by a
/// tiny fraction of its mean, but by a lot against its distance to a
/// threshold.
pub fn trend_against(points: &[(i64, f64)], scale: Option<f64>) -> Trend {
    let steady = Trend {
        direction: Direction::Steady,
        change: 0.0,
        per_hour: 0.0,
    };
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(t, v)| (*t as f64, *v))
        .collect();
    if pts.len() < MIN_POINTS {
        return steady;
    }
    let n = pts.len() as f64;
    let (mt, mv) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let var: f64 = pts.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if var == 0.0 {
        return steady;
    }
    let slope = pts.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum::<f64>() / var;
    let (t0, t1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let delta = slope * (t1 - t0);
    let scale = scale.map_or(mv.abs(), f64::abs);
    let change = if scale > f64::EPSILON {
        delta / scale
    } else if delta.abs() > f64::EPSILON {
        delta.signum()
    } else {
        0.0
    };
    let direction = if change > STEADY_BAND {
        Direction::Rising
    } else if change < -STEADY_BAND {
        Direction::Falling
    } else {
        Direction::Steady
    };
    Trend {
        direction,
        change,
        per_hour: slope * 3_600_000.0,
    }
}

/// One service's time series by name (`rate`, `error_rate`, `p95_ms`,
/// `p99_ms`): `(unix ms, value)` points.
pub type Series = BTreeMap<&'static str, Vec<(i64, f64)>>;

/// Per service: rate, error rate, p95 and p99 between `from` and `to`.
pub fn service_series(
    history: &History,
    from: tokio::time::Instant,
    to: tokio::time::Instant,
    points: usize,
) -> BTreeMap<String, Series> {
    let now = tokio::time::Instant::now();
    let unix = |at: tokio::time::Instant| {
        discovery_kit::now_unix_ms() - now.saturating_duration_since(at).as_millis() as i64
    };
    let mut services: BTreeMap<String, Series> = BTreeMap::new();
    for (at, secs, inc) in history.steps_between(from, to, points) {
        let t = unix(at);
        for (svc, (count, errors)) in window::per_service(&inc) {
            let s = services.entry(svc.clone()).or_default();
            s.entry("rate")
                .or_default()
                .push((t, count as f64 / secs.max(1e-3)));
            s.entry("error_rate")
                .or_default()
                .push((t, errors as f64 / count.max(1) as f64));
            for (name, q) in [("p95_ms", 0.95), ("p99_ms", 0.99)] {
                if let Some(v) = window::service_quantile(&inc, q, &svc, None) {
                    s.entry(name).or_default().push((t, v * 1000.0));
                }
            }
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(a: f64, b: f64) -> Vec<(i64, f64)> {
        (0..30).map(|i| (i * 60_000, a + b * i as f64)).collect()
    }

    #[test]
    fn a_line_reads_its_direction_and_slope() {
        let up = trend(&line(100.0, 2.0));
        assert_eq!(up.direction, Direction::Rising);
        // 58 over 29 minutes, mean 129.
        assert!((up.change - 58.0 / 129.0).abs() < 1e-9, "{up:?}");
        assert!((up.per_hour - 120.0).abs() < 1e-6);
        assert_eq!(trend(&line(100.0, -2.0)).direction, Direction::Falling);
        assert_eq!(trend(&line(100.0, 0.1)).direction, Direction::Steady);
    }

    #[test]
    fn too_little_or_flat_is_steady() {
        assert_eq!(trend(&[]).direction, Direction::Steady);
        assert_eq!(trend(&[(0, 1.0), (1, 9.0)]).direction, Direction::Steady);
        assert_eq!(trend(&line(0.0, 0.0)).change, 0.0);
        // From nothing to something is a rise, however small.
        assert_eq!(trend(&line(0.0, 0.001)).direction, Direction::Rising);
        // Not-a-number points are skipped, not spread.
        let mut pts = line(50.0, 1.0);
        pts.push((10, f64::NAN));
        assert_eq!(trend(&pts).direction, Direction::Rising);
    }

    #[test]
    fn a_small_move_near_a_threshold_is_a_move() {
        let pts: Vec<(i64, f64)> = (0..10)
            .map(|i| (i * 60_000, 0.9995 - 0.0001 * i as f64))
            .collect();
        assert_eq!(
            trend(&pts).direction,
            Direction::Steady,
            "0.1 % of the mean"
        );
        let t = trend_against(&pts, Some(0.0005));
        assert_eq!(t.direction, Direction::Falling);
        assert!((t.change + 1.8).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn noise_around_a_level_is_steady() {
        let pts: Vec<(i64, f64)> = (0..60)
            .map(|i| (i * 10_000, 200.0 + if i % 2 == 0 { 6.0 } else { -6.0 }))
            .collect();
        assert_eq!(trend(&pts).direction, Direction::Steady);
    }
}
