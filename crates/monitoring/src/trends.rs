//! Which way a series is going: the least-squares line through its points,
//! and its change over the points' span relative to their mean.

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
