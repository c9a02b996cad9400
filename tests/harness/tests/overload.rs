//! Overload: the all-in-one system offered three times what it can serve.
//! The gateway sheds the excess at its in-flight bound with
//! RESOURCE_EXHAUSTED (and `retry-after`), keeps serving what it accepts at
//! about its capacity, with accepted calls' latency bounded by that queue,
//! and is back to zero errors as soon as the load drops. Timings are
//! compared as ratios within the run (capacity first, then overload, then
//! recovery), never against wall-clock constants.
//!
//! The method is AnalyzeFace, where the work is the server's (about 30 ms
//! of model time per photo): the load tool shares these two cores, and at
//! three times the capacity of a cheap read its own sending would take
//! the CPU the server needs, which measures the tool, not the shedding.

mod common;
use common::TestApp;

use std::sync::Arc;
use std::time::Duration;

use discovery_loadgen::{Corpus, Load, Phase, Plan, Report, RunOptions};

fn open(name: &str, rps: f64, secs: u64, mix: &discovery_loadgen::Mix) -> Plan {
    Plan {
        scenario: name.into(),
        load: Load::Open(vec![Phase {
            name: name.into(),
            duration: Duration::from_secs(secs),
            from_rps: rps,
            to_rps: rps,
        }]),
        mix: mix.clone(),
        max_calls: None,
        max_in_flight: 100_000,
    }
}

fn line(r: &Report) -> String {
    format!(
        "{}: sent {} ok {} ({:.0}/s) errors {:?}; p50 {:.2} ms p99 {:.2} ms; OK only p99 {:.2} ms",
        r.scenario,
        r.sent,
        r.ok,
        r.ok_rps,
        r.errors_by_code,
        r.latency.p50,
        r.latency.p99,
        r.latency_ok.p99
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_capacity_is_shed_with_resource_exhausted_and_recovers() {
    const BOUND: usize = 4;
    let root = discovery_harness::workspace_root();
    let photo = std::fs::read(root.join("models/testdata/astronaut.png"))
        .expect("models/testdata/astronaut.png: run scripts/fetch-models.sh --test-data");
    let app = TestApp::builder()
        .with("DISCOVERY_GATEWAY_MAX_IN_FLIGHT", &BOUND.to_string())
        .with(
            "DISCOVERY_FACE_MODELS_DIR",
            &root.join("models").display().to_string(),
        )
        .start()
        .await;
    let target = app.target(2, Duration::from_secs(10)).await;
    let mix = discovery_loadgen::Mix::only(discovery_loadgen::Op::AnalyzeFace);
    let corpus = Arc::new(Corpus::build(&target, &mix, Some(photo)).await.unwrap());
    let options = RunOptions::default();

    // Capacity: as many callers as the gateway admits, back to back.
    let capacity = discovery_loadgen::run(
        target.clone(),
        corpus.clone(),
        &Plan {
            scenario: "capacity".into(),
            load: Load::Closed {
                concurrency: BOUND,
                duration: Duration::from_secs(3),
            },
            mix: mix.clone(),
            max_calls: None,
            max_in_flight: 100_000,
        },
        &options,
    )
    .await;
    eprintln!("{}", line(&capacity));
    assert_eq!(capacity.errors, 0, "{:?}", capacity.first_errors);
    let cap = capacity.ok_rps;

    // Three times that, open loop.
    let over = discovery_loadgen::run(
        target.clone(),
        corpus.clone(),
        &open("3x", 3.0 * cap, 4, &mix),
        &options,
    )
    .await;
    eprintln!("{}", line(&over));
    // Then half of capacity.
    let after = discovery_loadgen::run(
        target.clone(),
        corpus.clone(),
        &open("0.5x", 0.5 * cap, 3, &mix),
        &options,
    )
    .await;
    eprintln!("{}", line(&after));

    let shed = over
        .errors_by_code
        .get("RESOURCE_EXHAUSTED")
        .copied()
        .unwrap_or(0);
    assert!(shed > 0, "the excess is shed: {:?}", over.errors_by_code);
    assert_eq!(
        over.errors, shed,
        "shedding is the only refusal (no UNAVAILABLE, no timeouts): {:?} {:?}",
        over.errors_by_code, over.first_errors
    );
    assert_eq!(over.not_sent, 0);
    assert!(
        over.first_errors.iter().any(|e| e.contains("load shed")),
        "the refusal says what happened: {:?}",
        over.first_errors
    );
    // Goodput holds: refusing costs microseconds, so the engines stay busy
    // with accepted photos (measured here: 100% of capacity at 3x).
    // The bound is half, not the measured 100%: capacity and overload are
    // measured one after the other on a shared 2-core machine, and CI saw
    // 0.51 once while another build ran beside it.
    assert!(
        over.ok_rps > 0.5 * cap,
        "accepted {:.0}/s under overload against a capacity of {cap:.0}/s",
        over.ok_rps
    );
    // Accepted calls wait behind at most BOUND others, not behind the
    // whole backlog: their p99 stays about the p99 at capacity (measured:
    // 1.0x; a queue growing for 4 s at 3x would reach seconds, 20x or more).
    assert!(
        over.latency_ok.p99 < 4.0 * capacity.latency.p99.max(1.0),
        "accepted p99 {:.1} ms against {:.1} ms at capacity",
        over.latency_ok.p99,
        capacity.latency.p99
    );
    // And it is over as soon as the load drops (a random burst may still
    // meet the bound now and then: allow 0.1%, the availability target).
    assert_eq!(after.not_sent, 0);
    assert!(
        after.errors * 1000 <= after.sent,
        "{:?} {:?}",
        after.errors_by_code,
        after.first_errors
    );
    assert!(
        after.latency.p99 < 3.0 * capacity.latency.p99.max(1.0),
        "after: p99 {:.1} ms against {:.1} ms at capacity",
        after.latency.p99,
        capacity.latency.p99
    );
    let _ = app.stop().await;
}
