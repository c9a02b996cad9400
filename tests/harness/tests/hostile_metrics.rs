//! Hostile callers against the breakers, the metrics and the SLA, in a
//! test binary of its own: the `/metrics` page and monitoring's report are
//! process-wide, so no other test may add series or calls while this one
//! measures them. The threat model is in `docs/security.md`; the other
//! attacks are in `hostile.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::rig::*;
use discovery_gateway::auth::Tier;
use discovery_gateway::routes::Scope;
use discovery_loadgen::Target;
use discovery_loadgen::grpc::frame;
use discovery_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_cannot_open_a_circuit_for_everyone_or_grow_the_metrics() {
    // Rate limits off: the attacker must reach the breaker and the metrics
    // (with limits on, the anonymous tier's 20/min would hide both).
    let rig = Rig::start(
        "hostile_breaker",
        &[
            ("DISCOVERY_LIMITS", "off"),
            ("DISCOVERY_GATEWAY_MIN_DEADLINE", "10us"),
        ],
    )
    .await;
    let browser = rig
        .key("browser", Tier::Anonymous, &[Scope::Public], &[])
        .await;
    let shop = rig
        .key("shop-bff", Tier::Authenticated, &[Scope::Public], &[])
        .await;
    let ids = rig.product_ids(&shop).await;
    let bystander = Bystander::start(Arc::new(rig.target(&shop, 1).await), ids.clone());
    let attacker = Arc::new(rig.target(&browser, 4).await);

    // 1. The caller's own absurd deadline, 1,000 times: below the floor.
    let codes = codes_of(&attacker, &ids[0], 1000, &[("grpc-timeout", "1n")]).await;
    println!("1,000 GetProduct with grpc-timeout 1n from an anonymous key: codes {codes:?}");
    // DEADLINE_EXCEEDED from the floor, or CANCELLED when tonic's own
    // server timeout fires first (it honours grpc-timeout too): either way
    // the caller's deadline, and the call's future is dropped.
    assert!(
        codes.keys().all(|c| *c == 4 || *c == 1),
        "only the caller's deadline: {codes:?}"
    );
    assert_eq!(rig.parts.breaker_state("GetProduct"), Some("closed"));

    // 2. Above the floor (10 µs here) but shorter than any answer: the
    //    gateway forwards and gives up on the caller's behalf, 1,000 times.
    let codes = codes_of(&attacker, &ids[0], 1000, &[("grpc-timeout", "20u")]).await;
    println!("1,000 GetProduct with grpc-timeout 20u: codes {codes:?}");
    assert!(codes.get(&4).copied().unwrap_or(0) > 0, "some expired");
    assert_eq!(
        rig.parts.breaker_state("GetProduct"),
        Some("closed"),
        "the caller's deadline is not the upstream's failure"
    );

    // 3. No key at all, 10,000 random paths and methods: one `unmatched`
    //    series, whatever the paths.
    let anonymous = Arc::new(
        Target::connect(
            &format!("http://{}", rig.gateway.addr),
            None,
            4,
            Duration::from_secs(10),
        )
        .await
        .unwrap(),
    );
    let mut rng = discovery_kit::rng::SplitMix(7);
    let mut random_path = move || {
        let svc = [
            "discovery.v1.Discovery",
            "x",
            "discovery.v1.Catalog",
            "a.b.C",
        ];
        format!(
            "/{}/{:x}{}",
            rng.pick(&svc),
            rng.next_u64(),
            "z".repeat(rng.below(200))
        )
    };
    // The baseline is taken once the system has settled: every series a
    // normal run makes exists (the dependency probes' first round, a cache
    // hit, the first unknown path).
    let mut shopper = client(rig.gateway.addr, &[("x-api-key", &shop)]).await;
    for _ in 0..2 {
        shopper
            .recommend(pb::RecommendRequest::default())
            .await
            .expect("a recommendation");
    }
    for _ in 0..20 {
        let p = random_path();
        let _ = anonymous
            .call_with(&p, frame(&pb::GetProductRequest::default()), &[])
            .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (names_before, _) = metrics_series();
    let (series_before, bytes_before) = metrics_size();
    let mut codes = std::collections::BTreeMap::new();
    let mut sent = 0;
    for _ in 0..100 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                let (t, p) = (anonymous.clone(), random_path());
                tokio::spawn(async move {
                    code_of(
                        &t.call_with(&p, Bytes::from_static(&[0, 0, 0, 0, 0]), &[])
                            .await,
                    )
                })
            })
            .collect();
        for c in futures::future::join_all(batch).await {
            *codes.entry(c.unwrap()).or_insert(0) += 1;
            sent += 1;
        }
    }
    let (series_after, bytes_after) = metrics_size();
    let (names_after, _) = metrics_series();
    for n in names_after.difference(&names_before) {
        println!("new series: {n}");
    }
    println!(
        "{sent} calls to random paths without a key: codes {codes:?}; /metrics {series_before} -> {series_after} series, {bytes_before} -> {bytes_after} bytes"
    );
    assert!(
        codes.keys().all(|c| *c == 12 || *c == 16),
        "UNIMPLEMENTED or UNAUTHENTICATED"
    );
    assert!(
        (bytes_after as f64) <= bytes_before as f64 * 1.05,
        "metrics page grew from {bytes_before} to {bytes_after} bytes"
    );
    assert!(series_after <= series_before + series_before / 20);

    // 4. Made-up methods do not count against the SLA: monitoring's report
    //    of the gateway shows no errors after them.
    let mut monitoring = discovery_proto::v1::monitoring_client::MonitoringClient::new(
        common::internal_channel(rig.monitoring.addr, "tests"),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let report = monitoring
        .get_sla_report(pb::GetSlaReportRequest {
            service: "gateway".into(),
            window: pb::Window::Window1h as i32,
        })
        .await
        .expect("SLA report")
        .into_inner();
    let errors: u64 = report.methods.iter().map(|m| m.errors).sum();
    let calls: u64 = report.methods.iter().map(|m| m.count).sum();
    println!("monitoring's SLA report of the gateway: {calls} calls, {errors} server faults");
    assert_eq!(errors, 0, "{:?}", report.methods);
    bystander.finish("breaker and metrics attacks").await;
    rig.stop().await;
}
