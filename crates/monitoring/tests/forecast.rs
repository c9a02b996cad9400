//! `GetCapacityForecast` on stored hours: four weeks of a shop's traffic
//! (a daily shape, busier weekends, 2 % growth a week, 5 % noise) written
//! as monitoring writes them, one document an hour, with a few hours
//! missing (monitoring restarting); the forecast learns the weekly season,
//! says how wrong it was on the held-back day, and sizes the scenarios.
//! Bad requests are refused with the field named.

use discovery_kit::store::{StoreConfig, Workload};
use discovery_monitoring::api::capacity_forecast;
use discovery_monitoring::forecast::synthetic;
use discovery_monitoring::store::{Hour, put_hour};
use discovery_proto::v1 as pb;

const HOUR_MS: i64 = 3_600_000;

#[tokio::test]
async fn four_weeks_of_hours_forecast_the_next_week_with_its_error() {
    let store = StoreConfig::Memory
        .connect(Workload::Analytics)
        .await
        .unwrap();
    let rates = synthetic(28, 1000.0, 0.02, 0.05);
    let last = discovery_kit::now_unix_ms() / HOUR_MS - 1;
    let first = last - rates.len() as i64 + 1;
    for (i, rate) in rates.iter().enumerate() {
        // Three hours lost to a restart, mid-history.
        if (300..303).contains(&i) {
            continue;
        }
        let hour = Hour {
            start_ms: (first + i as i64) * HOUR_MS,
            covered_s: 3600.0,
            services: [
                ("gateway".to_string(), ((rate * 3600.0) as u64, 3)),
                ("recommendation".to_string(), ((rate * 3600.0) as u64, 0)),
            ]
            .into(),
        };
        put_hour(&store, &hour).await.unwrap();
    }
    let f = capacity_forecast(
        &store,
        &pb::GetCapacityForecastRequest {
            horizon_seconds: 7 * 24 * 3600,
            growth: vec![0.0, 1.0],
        },
    )
    .await
    .expect("a forecast");
    assert_eq!(f.history_hours, 28 * 24);
    assert!(f.model.contains("weekly season"), "{}", f.model);
    assert_eq!(f.forecast.len(), 7 * 24);
    assert_eq!(f.backtest_hours, 24);
    assert!(
        f.backtest_mape < 0.08,
        "back-test error {}",
        f.backtest_mape
    );
    println!(
        "{}: back-test error {:.1} %",
        f.model,
        f.backtest_mape * 100.0
    );
    // The forecast continues the history, hour after hour.
    assert_eq!(
        f.forecast[0].at_unix_ms,
        f.history.last().unwrap().at_unix_ms + HOUR_MS
    );
    // Weekend evenings are the peak: 1,700/s x 1.3 x growth.
    let peak = f.forecast.iter().map(|p| p.value).fold(0.0, f64::max);
    assert!((2000.0..2800.0).contains(&peak), "peak {peak}");
    let names: Vec<&str> = f.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["forecast", "forecast +100 %", "10x peak"]);
    assert_eq!(f.scenarios[0].pods["gateway"], 3);
    assert!(f.scenarios[2].pods["gateway"] >= 7, "{:?}", f.scenarios[2]);

    for (req, field) in [
        (
            pb::GetCapacityForecastRequest {
                horizon_seconds: 60,
                growth: vec![],
            },
            "horizon_seconds",
        ),
        (
            pb::GetCapacityForecastRequest {
                horizon_seconds: 0,
                growth: vec![f64::NAN],
            },
            "growth",
        ),
        (
            pb::GetCapacityForecastRequest {
                horizon_seconds: 0,
                growth: vec![-1.0],
            },
            "growth",
        ),
        (
            pb::GetCapacityForecastRequest {
                horizon_seconds: 0,
                growth: vec![0.1; 11],
            },
            "growth",
        ),
    ] {
        let e = capacity_forecast(&store, &req).await.unwrap_err();
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with(field), "{}", s.message());
    }
}

/// `GetTrends` names what is wrong with a request, and says when there is
/// nothing scraped yet.
#[test]
fn trends_refuse_what_a_caller_gets_wrong() {
    use discovery_monitoring::api::get_trends;
    use discovery_monitoring::window::History;
    let empty = History::default();
    let ok = pb::GetTrendsRequest {
        metric: pb::TrendMetric::LatencyP95Ms as i32,
        ..Default::default()
    };
    let status =
        |h: &History, r: &pb::GetTrendsRequest| tonic::Status::from(get_trends(h, r).unwrap_err());
    assert_eq!(status(&empty, &ok).code(), tonic::Code::Unavailable);
    for (req, field) in [
        (
            pb::GetTrendsRequest {
                metric: 0,
                ..ok.clone()
            },
            "metric",
        ),
        (
            pb::GetTrendsRequest {
                metric: 99,
                ..ok.clone()
            },
            "metric",
        ),
        (
            pb::GetTrendsRequest {
                period_seconds: 59,
                ..ok.clone()
            },
            "period_seconds",
        ),
        (
            pb::GetTrendsRequest {
                period_seconds: 90_001,
                ..ok.clone()
            },
            "period_seconds",
        ),
        (
            pb::GetTrendsRequest {
                service: "x".repeat(65),
                ..ok.clone()
            },
            "service",
        ),
    ] {
        let s = status(&empty, &req);
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{}", s.message());
        assert!(s.message().starts_with(field), "{}", s.message());
    }
}
