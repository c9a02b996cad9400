//! The capacity forecast's error on held-back history, and its cost:
//! synthetic hourly histories (a shop's day, busier weekends, weekly
//! growth, noise; `forecast::synthetic`) of 3 days to 90 days, the last
//! day held back, the model fitted on the rest and compared with it; and
//! the time to fit and forecast a week, side by side in one run.
//!
//!   cargo bench -p discovery-monitoring --bench forecast
use std::time::Instant;

use discovery_monitoring::forecast::{WEEK, forecast, synthetic};

fn main() {
    println!(
        "| history | noise | growth/week | season | back-test error (MAPE, last day) | fit + forecast a week |"
    );
    println!("|---|---|---|---|---|---|");
    for (days, noise, growth) in [
        (3, 0.05, 0.0),
        (7, 0.05, 0.0),
        (7, 0.10, 0.02),
        (15, 0.05, 0.02),
        (28, 0.05, 0.02),
        (28, 0.10, 0.02),
        (90, 0.05, 0.02),
        (90, 0.10, 0.05),
    ] {
        let h = synthetic(days, 1000.0, growth, noise);
        let runs = 5;
        let started = Instant::now();
        let mut f = None;
        for _ in 0..runs {
            f = Some(forecast(&h, WEEK).expect("enough history"));
        }
        let took = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
        let f = f.unwrap();
        println!(
            "| {days} days | {:.0} % | {:.0} % | {} | {:.1} % | {took:.1} ms |",
            noise * 100.0,
            growth * 100.0,
            if f.model.period == WEEK {
                "weekly"
            } else {
                "daily"
            },
            f.backtest_mape * 100.0
        );
    }
}
