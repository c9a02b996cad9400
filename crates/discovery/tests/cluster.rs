//! The deployment users run, run here: the chart's topology as separate
//! `discovery serve` processes (2 gateways, 2 recommendation, 2
//! face-analysis, 1 sync, 1 monitoring) configured from `helm template`'s
//! own rendering (`discovery_harness::cluster`), on a Redis Cluster of 3
//! masters and 3 replicas and the MongoDB-compatible server.
//!
//! Checked: every probe passes as the kubelet runs it; a catalogue fed
//! through one gateway reaches every recommendation replica; a mixed load
//! through both gateways shows up in monitoring's SLA report with the load
//! tool's counts, from every replica; `GetSystemHealth` lists every replica
//! of every service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use discovery_harness::cluster::{Chart, Cluster, Supplied};
use discovery_harness::{MongoServer, RedisCluster, workspace_root};
use discovery_proto::v1 as pb;
use discovery_proto::v1::discovery_client::DiscoveryClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_discovery");

/// Sends the API key.
#[derive(Clone)]
struct Key(AsciiMetadataValue);

impl tonic::service::Interceptor for Key {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("x-api-key", self.0.clone());
        Ok(r)
    }
}

type Client = DiscoveryClient<InterceptedService<Channel, Key>>;

async fn client(addr: std::net::SocketAddr, key: &str) -> Client {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to a gateway");
    DiscoveryClient::with_interceptor(ch, Key(key.parse().unwrap()))
}

/// `discovery keys create` against the test database.
fn create_key(mongo: &MongoServer, db: &str, scopes: &str, sources: &str) -> String {
    let out = std::process::Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DISCOVERY_STORE", "mongodb")
        .env("DISCOVERY_MONGO_URI", mongo.uri())
        .env("DISCOVERY_MONGO_DATABASE", db)
        .args([
            "keys",
            "create",
            "--client",
            "cluster-bff",
            "--tier",
            "partner",
        ])
        .args(["--scopes", scopes, "--sources", sources])
        .output()
        .expect("discovery keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn feed(n: usize) -> Vec<pb::IngestCatalogRequest> {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&format!(
            concat!(
                r#"{{"id": {i}, "title": "Cluster Model {i}", "vendor": "Acme", "tags": "shape:round, material:acetate, size:50-20-145, width:{w}","#,
                r#" "updated_at": "2026-01-01T00:00:00Z", "variants": [{{"sku": "CL-{i}", "price": "{p}.00", "option1": "Black", "inventory_quantity": 3}}]}}"#,
                "\n"
            ),
            i = i,
            w = 120 + i % 30,
            p = 80 + i % 90
        ));
    }
    vec![
        pb::IngestCatalogRequest {
            item: Some(pb::ingest_catalog_request::Item::Header(pb::IngestHeader {
                source: "shopify:cluster".into(),
                format: pb::FeedFormat::ShopifyNdjson as i32,
                idempotency_key: String::new(),
            })),
        },
        pb::IngestCatalogRequest {
            item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(
                body.into_bytes(),
            )),
        },
    ]
}

/// Where a public method is counted: the gateway's path and the
/// recommendation service's.
fn paths(method: &str) -> [(&'static str, String); 2] {
    let upstream = match method {
        "Recommend" => "Recommendation",
        _ => "Catalog",
    };
    [
        ("gateway", format!("/discovery.v1.Discovery/{method}")),
        (
            "recommendation",
            format!("/discovery.v1.{upstream}/{method}"),
        ),
    ]
}

/// Calls per (service, method) in monitoring's 1 h window.
async fn sla_counts(c: &mut Client) -> BTreeMap<(String, String), u64> {
    c.get_sla_report(pb::GetSlaReportRequest {
        service: String::new(),
        window: pb::Window::Window1h as i32,
    })
    .await
    .expect("SLA report")
    .into_inner()
    .methods
    .into_iter()
    .map(|m| ((m.service, m.method), m.count))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_topology_runs_as_processes_and_monitoring_sees_every_replica() {
    let redis = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap()
        .expect("start a Redis Cluster of 3 masters and 3 replicas");
    let mongo = MongoServer::start().await.expect("start mongo");
    let db = mongo.fresh_db("cluster");
    let key = create_key(&mongo, &db, "public,ingest,admin", "shopify:cluster");

    // The chart's default values, plus what an operator sets for a test
    // run: limits off (the load below is not about them) and a 1 s scrape.
    let chart = Chart::render(
        "shop",
        &[
            "env.DISCOVERY_LIMITS=off",
            "env.DISCOVERY_MONITORING_SCRAPE_INTERVAL=1s",
        ],
    )
    .expect("helm template");
    let supplied = Supplied {
        mongo_uri: mongo.uri(),
        mongo_database: db.clone(),
        redis_urls: redis.urls().join(","),
        internal_secret: "cluster-test-internal-secret-0123456789abcdef".into(),
        extra: [(
            "DISCOVERY_FACE_MODELS_DIR".to_string(),
            workspace_root().join("models").display().to_string(),
        )]
        .into(),
        ..Default::default()
    };
    let replicas = [
        ("gateway", 2),
        ("recommendation", 2),
        ("face-analysis", 2),
        ("sync", 1),
        ("monitoring", 1),
    ];
    let mut cluster = Cluster::start(chart, std::path::Path::new(BIN), &replicas, &supplied)
        .expect("start the processes");
    println!("DISCOVERY_HOSTS={}", cluster.hosts());
    cluster
        .wait_started(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Every probe, as the kubelet runs it.
    for pod in &cluster.pods {
        let d = &pod.deployment;
        for (what, probe) in [
            ("startup", &d.startup),
            ("readiness", &d.readiness),
            ("liveness", &d.liveness),
        ] {
            let r = probe.check(pod.ip).await;
            println!(
                "{:<15} {:<12} {what:<9} {probe:?}: {r:?}",
                pod.service,
                pod.ip.to_string()
            );
            assert_eq!(r, Ok(()), "{} at {}: {what}", pod.service, pod.ip);
        }
    }

    // A feed through the first gateway reaches both recommendation
    // replicas (sync's change feed and the fan-out between replicas).
    let gateways: Vec<std::net::SocketAddr> = cluster
        .of("gateway")
        .into_iter()
        .map(|i| cluster.pods[i].addr("grpc"))
        .collect();
    let mut g0 = client(gateways[0], &key).await;
    let resp = g0
        .ingest_catalog(futures::stream::iter(feed(120)))
        .await
        .expect("ingest through the gateway")
        .into_inner();
    let mut watch = g0
        .watch_sync_job(pb::WatchSyncJobRequest {
            job_id: resp.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut job = None;
    while let Some(j) = watch.message().await.unwrap() {
        job = Some(j);
    }
    let job = job.unwrap();
    println!("sync job: {} upserted of {}", job.upserted, job.received);
    assert_eq!(job.upserted, 120, "{job:?}");
    for reco in cluster.of("recommendation") {
        // Each replica answers from its own snapshot: ask it directly.
        let addr = cluster.pods[reco].addr("grpc");
        let mut seen = 0;
        for _ in 0..100 {
            seen = direct_search_total(addr).await;
            if seen == 120 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("recommendation at {addr}: {seen} products");
        assert_eq!(seen, 120, "recommendation at {addr} never saw the feed");
    }

    // Mixed load through both gateways.
    let targets: Vec<Arc<discovery_loadgen::Target>> =
        futures::future::join_all(gateways.iter().map(|g| {
            let key = key.clone();
            async move {
                Arc::new(
                    discovery_loadgen::Target::connect(
                        &format!("http://{g}"),
                        Some(&key),
                        2,
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("connect the load tool"),
                )
            }
        }))
        .await;
    let plan =
        discovery_loadgen::scenario("normal", 100.0, None, Some(Duration::from_secs(5)), None)
            .unwrap();
    let corpus = Arc::new(
        discovery_loadgen::Corpus::build(&targets[0], &plan.mix, None)
            .await
            .expect("corpus"),
    );
    // Set-up calls settle into the report before the baseline is taken.
    let mut before = sla_counts(&mut g0).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sla_counts(&mut g0).await;
        let settled = now == before;
        before = now;
        if settled {
            break;
        }
    }
    let options = discovery_loadgen::RunOptions::default();
    let reports = futures::future::join_all(
        targets
            .iter()
            .map(|t| discovery_loadgen::run(t.clone(), corpus.clone(), &plan, &options)),
    )
    .await;
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        println!("{}", r.to_markdown().lines().next().unwrap_or_default());
        assert_eq!(r.errors, 0, "{:?}", r.first_errors);
        assert_eq!(r.not_sent, 0);
        for m in &r.methods {
            *sent.entry(m.method.clone()).or_default() += m.ok + m.errors.values().sum::<u64>();
        }
    }
    // The report counts what both gateways and both recommendation
    // replicas served (each an `instance` of its own in monitoring).
    let mut counted = BTreeMap::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = sla_counts(&mut g0).await;
        counted = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect::<BTreeMap<_, _>>();
        let all_there = sent.iter().all(|(m, n)| {
            paths(m)
                .iter()
                .all(|k| counted.get(&(k.0.to_string(), k.1.clone())) == Some(n))
        });
        if all_there {
            break;
        }
    }
    println!("load tool sent: {sent:?}");
    println!("monitoring counted: {counted:?}");
    for (method, n) in &sent {
        for (service, path) in paths(method) {
            assert_eq!(
                counted.get(&(service.to_string(), path.clone())),
                Some(n),
                "{service} {path}: the load tool sent {n}"
            );
        }
    }

    // Both replicas of each took their share, and the report is their sum.
    for (service, path) in paths("GetProduct") {
        let per_pod: Vec<u64> = cluster
            .of(service)
            .into_iter()
            .map(|i| served(cluster.pods[i].addr("metrics"), &path))
            .collect();
        println!("{service} {path} per replica: {per_pod:?}");
        assert!(per_pod.iter().all(|n| *n > 0), "{service}: {per_pod:?}");
        assert_eq!(
            per_pod.iter().sum::<u64>()
                - before
                    .get(&(service.to_string(), path))
                    .copied()
                    .unwrap_or(0),
            sent["GetProduct"]
        );
    }

    // Every replica of every service, by address.
    let health = g0
        .get_system_health(pb::GetSystemHealthRequest {})
        .await
        .expect("system health")
        .into_inner();
    for s in &health.services {
        println!(
            "health: {:<15} {:<20} live {} ready {} {}",
            s.service, s.address, s.live, s.ready, s.detail
        );
    }
    for (service, n) in replicas {
        let listed: Vec<_> = health
            .services
            .iter()
            .filter(|s| s.service == service)
            .collect();
        let want = if service == "monitoring" { 1 } else { n };
        assert_eq!(listed.len(), want, "{service}: {listed:?}");
        assert!(
            listed.iter().all(|s| s.live && s.ready),
            "{service}: {listed:?}"
        );
        if service != "monitoring" {
            for i in cluster.of(service) {
                let addr = cluster.pods[i].addr("grpc").to_string();
                assert!(
                    listed.iter().any(|s| s.address == addr),
                    "{service} at {addr} missing from {listed:?}"
                );
            }
        }
    }
    assert!(health.ready);
}

/// Calls of `path` a process counted, from its own `/metrics`.
fn served(metrics: std::net::SocketAddr, path: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics).expect("metrics port");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("discovery_rpc_server_requests_total{")
                && l.contains(&format!("method=\"{path}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Products a recommendation replica holds, asked directly (signed as the
/// gateway, as the chart's internal secret allows).
async fn direct_search_total(addr: std::net::SocketAddr) -> u64 {
    let auth =
        discovery_kit::internal::InternalAuth::new("cluster-test-internal-secret-0123456789abcdef");
    let ch = discovery_kit::client::connect_as(
        "test",
        &format!("http://{addr}"),
        Some(&auth),
        "gateway",
    )
    .unwrap();
    let mut c = discovery_proto::v1::catalog_client::CatalogClient::new(ch);
    c.search_products(pb::SearchProductsRequest {
        query: String::new(),
        page: Some(pb::PageRequest {
            page_size: 1,
            page_token: String::new(),
        }),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().page.map_or(0, |p| p.total_size))
    .unwrap_or(0)
}
