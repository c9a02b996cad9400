//! Capacity forecasting from the stored hourly history: the gateway's
//! calls per second, hour by hour, through Holt-Winters' additive model
//! (level, trend, and a daily season, or a weekly one given two weeks
//! and a day of history), its smoothing constants chosen by grid search on
//! one-step-ahead error; the model's error measured by holding back the
//! last day, fitting on the rest and forecasting it; and the pods each
//! growth scenario needs at the chart's HPA targets.
//!
//! Hand-written (about a hundred lines) rather than a forecasting crate:
//! the ones on crates.io that do Holt-Winters (`augurs-ets` and the like)
//! bring an optimiser and linear algebra for what is here three loops.

use std::collections::BTreeMap;

/// Fewest seasons a model is fitted on (besides the held-back day).
pub const MIN_SEASONS: usize = 2;
/// Hours held back for the back-test.
pub const HOLDOUT: usize = 24;
/// Hours in a day and a week: the seasons.
pub const DAY: usize = 24;
/// A week.
pub const WEEK: usize = 168;

/// Calls per second one pod takes at the chart's HPA target, per gateway
/// call per second (`helm/discovery/values.yaml`; docs/benchmarks.md,
/// "The model"): the gateway 1,600/s (its signal's target), recommendation
/// 2,700/s (70 % of its CPU request), face analysis 28 photos/s at one
/// photo per 50 catalogue calls (1,400 gateway calls/s).
pub const PER_POD: [(&str, f64); 3] = [
    ("gateway", 1600.0),
    ("recommendation", 2700.0),
    ("face-analysis", 1400.0),
];
/// The chart's minimum pods per service (its HPAs' `minReplicas`).
pub const MIN_PODS: [(&str, u32); 3] =
    [("gateway", 3), ("recommendation", 2), ("face-analysis", 2)];
/// Seed 000's peak: 10x the usual traffic.
pub const PEAK: f64 = 10.0;

/// A fitted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Smoothing of the level.
    pub alpha: f64,
    /// Smoothing of the trend.
    pub beta: f64,
    /// Smoothing of the season.
    pub gamma: f64,
    /// Season length, hours.
    pub period: usize,
    level: f64,
    trend: f64,
    season: Vec<f64>,
    /// Points seen.
    n: usize,
    /// One-step-ahead squared error over the fit.
    sse: f64,
}

impl Model {
    /// Fits `(alpha, beta, gamma)` to `y` with season `period`; `None`
    /// with fewer than two seasons.
    pub fn fit_with(y: &[f64], period: usize, alpha: f64, beta: f64, gamma: f64) -> Option<Self> {
        if period == 0 || y.len() < MIN_SEASONS * period {
            return None;
        }
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, second) = (mean(&y[..period]), mean(&y[period..2 * period]));
        let mut m = Model {
            alpha,
            beta,
            gamma,
            period,
            level: first,
            trend: (second - first) / period as f64,
            season: y[..period].iter().map(|v| v - first).collect(),
            n: 0,
            sse: 0.0,
        };
        for &v in y {
            let i = m.n % period;
            let s = m.season[i];
            let predicted = m.level + m.trend + s;
            m.sse += (v - predicted).powi(2);
            let level = alpha * (v - s) + (1.0 - alpha) * (m.level + m.trend);
            m.trend = beta * (level - m.level) + (1.0 - beta) * m.trend;
            m.season[i] = gamma * (v - level) + (1.0 - gamma) * s;
            m.level = level;
            m.n += 1;
        }
        Some(m)
    }

    /// The constants with the least one-step-ahead error on `y`.
    pub fn fit(y: &[f64], period: usize) -> Option<Self> {
        const ALPHAS: [f64; 9] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 0.95];
        const BETAS: [f64; 5] = [0.0, 0.01, 0.05, 0.1, 0.2];
        const GAMMAS: [f64; 6] = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5];
        let mut best: Option<Model> = None;
        for a in ALPHAS {
            for b in BETAS {
                for g in GAMMAS {
                    let m = Self::fit_with(y, period, a, b, g)?;
                    if best.as_ref().is_none_or(|x| m.sse < x.sse) {
                        best = Some(m);
                    }
                }
            }
        }
        best
    }

    /// The next `hours` values (never below zero: traffic is not).
    pub fn forecast(&self, hours: usize) -> Vec<f64> {
        (1..=hours)
            .map(|k| {
                let s = self.season[(self.n + k - 1) % self.period];
                (self.level + k as f64 * self.trend + s).max(0.0)
            })
            .collect()
    }
}

/// Why there is no forecast.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    /// Too little history.
    #[error(
        "a forecast needs {need} hours of history (two days and the held-back day); monitoring has stored {have}: it keeps one rollup an hour"
    )]
    TooLittle {
        /// Hours needed.
        need: usize,
        /// Hours stored.
        have: usize,
    },
}

/// A forecast and how good the model was on held-back history.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// The model on the whole history.
    pub model: Model,
    /// The next hours.
    pub points: Vec<f64>,
    /// Mean absolute percentage error on the held-back hours.
    pub backtest_mape: f64,
}

/// Fits `history` (hourly, oldest first, no gaps), back-tests it on the
/// last [`HOLDOUT`] hours and forecasts `horizon` hours.
pub fn forecast(history: &[f64], horizon: usize) -> Result<Forecast, ForecastError> {
    let period = if history.len() >= MIN_SEASONS * WEEK + HOLDOUT {
        WEEK
    } else {
        DAY
    };
    let need = MIN_SEASONS * DAY + HOLDOUT;
    let too_little = || ForecastError::TooLittle {
        need,
        have: history.len(),
    };
    if history.len() < need {
        return Err(too_little());
    }
    let (train, held) = history.split_at(history.len() - HOLDOUT);
    let back = Model::fit(train, period).ok_or_else(too_little)?;
    let predicted = back.forecast(HOLDOUT);
    let (sum, n) = held
        .iter()
        .zip(&predicted)
        .filter(|(actual, _)| **actual > 0.0)
        .fold((0.0, 0usize), |(s, n), (a, p)| {
            (s + (a - p).abs() / a, n + 1)
        });
    let model = Model::fit(history, period).ok_or_else(too_little)?;
    Ok(Forecast {
        points: model.forecast(horizon),
        model,
        backtest_mape: if n > 0 { sum / n as f64 } else { 0.0 },
    })
}

/// One scenario: its peak gateway rate and the pods per service.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// "forecast", "forecast +25 %", "10x peak".
    pub name: String,
    /// Peak calls per second.
    pub peak: f64,
    /// Pods per service at the HPA targets (at least the chart's minimum).
    pub pods: BTreeMap<&'static str, u32>,
}

fn pods_for(rate: f64) -> BTreeMap<&'static str, u32> {
    PER_POD
        .iter()
        .map(|(svc, per)| {
            let min = MIN_PODS.iter().find(|m| m.0 == *svc).map_or(1, |m| m.1);
            (*svc, ((rate / per).ceil() as u32).max(min))
        })
        .collect()
}

/// The forecast's peak grown by each of `growth`, and a 10x peak over its
/// mean.
pub fn scenarios(points: &[f64], growth: &[f64]) -> Vec<Scenario> {
    let peak = points.iter().copied().fold(0.0, f64::max);
    let mean = points.iter().sum::<f64>() / points.len().max(1) as f64;
    let mut out: Vec<Scenario> = growth
        .iter()
        .map(|g| Scenario {
            name: if *g == 0.0 {
                "forecast".into()
            } else {
                format!("forecast {:+.0} %", g * 100.0)
            },
            peak: peak * (1.0 + g),
            pods: pods_for(peak * (1.0 + g)),
        })
        .collect();
    out.push(Scenario {
        name: format!("{PEAK:.0}x peak"),
        peak: mean * PEAK,
        pods: pods_for(mean * PEAK),
    });
    out
}

/// A history with gaps (missing hours: `None`) made whole: inner gaps
/// filled linearly between their neighbours, leading ones dropped.
pub fn fill(hours: &[Option<f64>]) -> Vec<f64> {
    let start = hours
        .iter()
        .position(Option::is_some)
        .unwrap_or(hours.len());
    let hours = &hours[start..];
    let mut out = Vec::with_capacity(hours.len());
    let mut i = 0;
    while i < hours.len() {
        match hours[i] {
            Some(v) => {
                out.push(v);
                i += 1;
            }
            None => {
                let prev = out.last().copied().unwrap_or(0.0);
                let j = (i..hours.len()).find(|&j| hours[j].is_some());
                let next = j.and_then(|j| hours[j]).unwrap_or(prev);
                let end = j.unwrap_or(hours.len());
                let gap = (end - i + 1) as f64;
                for k in i..end {
                    out.push(prev + (next - prev) * (k - i + 1) as f64 / gap);
                }
                i = end;
            }
        }
    }
    out
}

/// A synthetic history for tests and the documented back-test: `days` of
/// a shop's day shape around `base` calls/s, weekends 30 % busier,
/// growing `growth` per week, with deterministic noise of `noise`
/// (fraction).
pub fn synthetic(days: usize, base: f64, growth: f64, noise: f64) -> Vec<f64> {
    const HOURLY: [f64; 24] = [
        0.35, 0.25, 0.2, 0.2, 0.25, 0.35, 0.55, 0.8, 1.0, 1.05, 1.1, 1.15, 1.2, 1.15, 1.1, 1.1,
        1.15, 1.25, 1.4, 1.6, 1.7, 1.5, 1.0, 0.6,
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..days * DAY)
        .map(|h| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            let weekend = if (h / DAY) % 7 >= 5 { 1.3 } else { 1.0 };
            let trend = 1.0 + growth * h as f64 / WEEK as f64;
            base * HOURLY[h % DAY] * weekend * trend * (1.0 + noise * u)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seasonal_series_is_forecast_within_its_noise() {
        // Four weeks, 5 % noise, 2 % growth a week: the weekly season.
        let h = synthetic(28, 1000.0, 0.02, 0.05);
        let f = forecast(&h, WEEK).unwrap();
        assert_eq!(f.model.period, WEEK);
        assert!(
            f.backtest_mape < 0.08,
            "back-test error {}",
            f.backtest_mape
        );
        // The forecast's next week against the same generator's.
        let truth = &synthetic(35, 1000.0, 0.02, 0.0)[28 * DAY..];
        let mape = truth
            .iter()
            .zip(&f.points)
            .map(|(a, p)| (a - p).abs() / a)
            .sum::<f64>()
            / truth.len() as f64;
        assert!(mape < 0.1, "forecast error {mape}");
    }

    #[test]
    fn three_days_give_a_daily_model_and_less_is_refused_with_the_hours() {
        let f = forecast(&synthetic(3, 500.0, 0.0, 0.05), 48).unwrap();
        assert_eq!(f.model.period, DAY);
        assert_eq!(f.points.len(), 48);
        assert!(f.backtest_mape < 0.15, "{}", f.backtest_mape);
        let e = forecast(&synthetic(2, 500.0, 0.0, 0.05), 48).unwrap_err();
        assert_eq!(e, ForecastError::TooLittle { need: 72, have: 48 });
        assert!(e.to_string().contains("72 hours"));
    }

    #[test]
    fn scenarios_grow_the_peak_and_count_pods_at_the_targets() {
        let points = [1000.0, 4000.0, 2000.0];
        let s = scenarios(&points, &[0.0, 1.0]);
        assert_eq!(s[0].peak, 4000.0);
        assert_eq!(s[0].pods["gateway"], 3);
        assert_eq!(s[0].pods["recommendation"], 2);
        assert_eq!(s[0].pods["face-analysis"], 3);
        assert_eq!(s[1].name, "forecast +100 %");
        assert_eq!(s[1].pods["gateway"], 5);
        assert_eq!(s[2].name, "10x peak");
        assert!((s[2].peak - 23_333.3).abs() < 1.0);
        assert_eq!(s[2].pods["gateway"], 15);
    }

    #[test]
    fn gaps_are_filled_between_their_neighbours() {
        assert_eq!(
            fill(&[None, Some(1.0), None, None, Some(4.0), None]),
            [1.0, 2.0, 3.0, 4.0, 4.0]
        );
        assert!(fill(&[None, None]).is_empty());
    }

    #[test]
    fn a_forecast_never_goes_below_zero() {
        let falling: Vec<f64> = (0..96)
            .map(|h| (960.0 - 10.0 * h as f64).max(0.0))
            .collect();
        let f = forecast(&falling, 200).unwrap();
        assert!(f.points.iter().all(|p| *p >= 0.0));
    }
}
