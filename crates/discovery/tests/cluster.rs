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
//! of every service; crashes (recommendation, sync, a gateway) and rolling
//! restarts (recommendation, gateway, face-analysis) under load; one trace
//! from an ingest call to every recommendation replica; recommendations by
//! a face analysis's id.

use std::collections::BTreeMap;

use futures::StreamExt;
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
    feed_from(0, n, "")
}

fn feed_from(first: usize, n: usize, idempotency_key: &str) -> Vec<pb::IngestCatalogRequest> {
    feed_described(first, n, idempotency_key, 0)
}

/// Records `first..first + n` of the cluster's feed, one chunk per 50, each
/// with a description of `description` bytes.
fn feed_described(
    first: usize,
    n: usize,
    idempotency_key: &str,
    description: usize,
) -> Vec<pb::IngestCatalogRequest> {
    let body_html = "b".repeat(description);
    let mut chunks = Vec::new();
    let mut body = String::new();
    for i in first..first + n {
        body.push_str(&format!(
            concat!(
                r#"{{"id": {i}, "title": "Cluster Model {i}", "vendor": "Acme", "body_html": "{body_html}", "tags": "shape:round, material:acetate, size:50-20-145, width:{w}","#,
                r#" "updated_at": "2026-01-01T00:00:00Z", "variants": [{{"sku": "CL-{i}", "price": "{p}.00", "option1": "Black", "inventory_quantity": 3}}]}}"#,
                "\n"
            ),
            i = i,
            body_html = body_html,
            w = 120 + i % 30,
            p = 80 + i % 90
        ));
        if (i + 1 - first).is_multiple_of(50) {
            chunks.push(std::mem::take(&mut body));
        }
    }
    if !body.is_empty() {
        chunks.push(body);
    }
    std::iter::once(pb::IngestCatalogRequest {
        item: Some(pb::ingest_catalog_request::Item::Header(pb::IngestHeader {
            source: "shopify:cluster".into(),
            format: pb::FeedFormat::ShopifyNdjson as i32,
            idempotency_key: idempotency_key.into(),
        })),
    })
    .chain(chunks.into_iter().map(|c| pb::IngestCatalogRequest {
        item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(
            c.into_bytes(),
        )),
    }))
    .collect()
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

/// Every probe of every pod, as the kubelet runs it.
async fn every_probe_passes(cluster: &Cluster) {
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
}

/// A cluster and what it runs on.
struct Running {
    cluster: Cluster,
    key: String,
    _redis: RedisCluster,
    _mongo: MongoServer,
}

impl Running {
    /// `replicas` of each service from the chart's default values, plus
    /// what an operator sets for a test run: limits off (the load here is
    /// not about them) and a 1 s scrape; on a Redis Cluster of 3 masters and
    /// 3 replicas and the MongoDB-compatible server.
    async fn start(replicas: &[(&str, usize)]) -> Running {
        Self::start_with(replicas, &["env.DISCOVERY_LIMITS=off"], &[]).await
    }

    /// As [`Running::start`], with these `--set` values instead of limits
    /// off, and Secret volumes: the chart's mount path and the local
    /// directory holding its files.
    async fn start_with(
        replicas: &[(&str, usize)],
        sets: &[&str],
        volumes: &[(&str, &std::path::Path)],
    ) -> Running {
        Self::start_images(replicas, sets, volumes, false).await
    }

    /// As [`Running::start_with`]; `text_model`: the recommendation and
    /// sync images carry the sentence-embedding model (the Dockerfile's
    /// `text-model` target), which only the tests of semantic search pay
    /// for (a debug build embeds slowly).
    async fn start_images(
        replicas: &[(&str, usize)],
        sets: &[&str],
        volumes: &[(&str, &std::path::Path)],
        text_model: bool,
    ) -> Running {
        let redis = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .unwrap()
            .expect("start a Redis Cluster of 3 masters and 3 replicas");
        let mongo = MongoServer::start().await.expect("start mongo");
        let db = mongo.fresh_db("cluster");
        let key = create_key(&mongo, &db, "public,ingest,admin", "shopify:cluster");
        let mut all = vec!["env.DISCOVERY_MONITORING_SCRAPE_INTERVAL=1s"];
        all.extend_from_slice(sets);
        let chart = Chart::render("shop", &all).expect("helm template");
        let supplied = Supplied {
            mongo_uri: mongo.uri(),
            mongo_database: db.clone(),
            redis_urls: redis.urls().join(","),
            internal_secret: SECRET.into(),
            volumes: volumes
                .iter()
                .map(|(mount, dir)| (mount.to_string(), dir.to_path_buf()))
                .collect(),
            extra: [(
                "DISCOVERY_FACE_MODELS_DIR".to_string(),
                workspace_root().join("models").display().to_string(),
            )]
            .into_iter()
            .chain(text_model.then(|| {
                (
                    "DISCOVERY_TEXT_MODEL_DIR".to_string(),
                    workspace_root()
                        .join("models/all-MiniLM-L6-v2")
                        .display()
                        .to_string(),
                )
            }))
            .collect(),
        };
        let mut cluster = Cluster::start(chart, std::path::Path::new(BIN), replicas, &supplied)
            .expect("start the processes");
        println!("DISCOVERY_HOSTS={}", cluster.hosts());
        cluster
            .wait_started(Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Running {
            cluster,
            key,
            _redis: redis,
            _mongo: mongo,
        }
    }
}

const SECRET: &str = "cluster-test-internal-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_topology_runs_as_processes_and_monitoring_sees_every_replica() {
    let replicas = [
        ("gateway", 2),
        ("recommendation", 2),
        ("face-analysis", 2),
        ("sync", 1),
        ("monitoring", 1),
    ];
    let run = Running::start(&replicas).await;
    let (cluster, key) = (&run.cluster, &run.key);

    // Every probe, as the kubelet runs it.
    every_probe_passes(cluster).await;

    // A feed through the first gateway reaches both recommendation
    // replicas (sync's change feed and the fan-out between replicas).
    let gateways: Vec<std::net::SocketAddr> = cluster
        .of("gateway")
        .into_iter()
        .map(|i| cluster.pods[i].addr("grpc"))
        .collect();
    let mut g0 = client(gateways[0], key).await;
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

    // 400 products with 12 KB descriptions: one change-stream batch of
    // about 5 MB, over the 4 MiB a gRPC server takes in one request. The
    // feed delivers it in parts; every replica serves every product.
    let (job, _) = ingest_until_done(&mut g0, feed_described(5000, 400, "", 12_000)).await;
    assert_eq!(job.upserted, 400, "{job:?}");
    let ids: Vec<String> = (5000..5400)
        .map(|i| format!("shopify:cluster:{i}"))
        .collect();
    for reco in cluster.of("recommendation") {
        let addr = cluster.pods[reco].addr("grpc");
        let missing = wait_served(addr, &ids, Duration::from_secs(20)).await;
        println!(
            "recommendation at {addr}: {} of 400 long-description products from the feed",
            400 - missing.len()
        );
        assert!(
            missing.is_empty(),
            "the feed stalled: {} missing at {addr}",
            missing.len()
        );
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
    // Set-up calls settle into the report before the baseline is taken:
    // the same counts across more than one scrape (1 s).
    let mut before = sla_counts(&mut g0).await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
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

    // The dashboard's health panel, from monitoring's metrics port on
    // loopback (as `kubectl port-forward` reaches it): every replica.
    let m = cluster.of("monitoring")[0];
    let board = discovery_harness::http::curl(
        &[],
        &format!("http://{}/api/health", cluster.pods[m].addr("metrics")),
        None,
    );
    assert_eq!(board.status, 200, "{}", board.body);
    let board = board.json();
    for (service, n) in replicas {
        let listed = board["services"][service]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let want = if service == "monitoring" { 1 } else { n };
        assert_eq!(listed.len(), want, "{service} on the dashboard: {board}");
        assert!(
            listed.iter().all(|r| r["ready"] == true),
            "{service}: {board}"
        );
    }
}

/// Calls of `path` a process counted, from its own `/metrics`.
fn served(metrics: std::net::SocketAddr, path: &str) -> u64 {
    metrics_text(metrics)
        .lines()
        .filter(|l| {
            l.starts_with("discovery_rpc_server_requests_total{")
                && l.contains(&format!("method=\"{path}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A process's `/metrics` page.
fn metrics_text(metrics: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics).expect("metrics port");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Products a recommendation replica holds, asked directly (signed as the
/// gateway, as the chart's internal secret allows).
async fn direct_search_total(addr: std::net::SocketAddr) -> u64 {
    let ch = as_gateway(addr);
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

/// Products the store holds from the cluster's feed source.
async fn stored_products(c: &mut Client) -> u64 {
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

/// Sends a feed until it succeeds (a BFF retrying with the same
/// idempotency key while sync is away): the job it ends with.
async fn ingest_until_done(
    c: &mut Client,
    msgs: Vec<pb::IngestCatalogRequest>,
) -> (pb::SyncJob, u32) {
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt = async {
            let resp = c
                .ingest_catalog(futures::stream::iter(msgs.clone()))
                .await?
                .into_inner();
            let mut watch = c
                .watch_sync_job(pb::WatchSyncJobRequest {
                    job_id: resp.job_id,
                })
                .await?
                .into_inner();
            let mut last = None;
            while let Some(j) = watch.message().await? {
                last = Some(j);
            }
            Ok::<_, tonic::Status>(last)
        };
        match attempt.await {
            Ok(Some(job)) if job.state == pb::SyncJobState::Succeeded as i32 => {
                return (job, tries);
            }
            other => {
                println!("feed attempt {tries}: {other:?}");
                assert!(tries < 60, "the feed never went through");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Replicas die and restart under load, as on Kubernetes: a recommendation
/// process killed (SIGKILL) and started again, the sync process killed while
/// a feed is sent, then every recommendation replica restarted one at a time
/// (SIGTERM, drain, start, ready). Calls through both gateways barely notice
/// and no record is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_and_restarted_replicas_lose_no_calls_or_records() {
    let replicas = [
        ("gateway", 2),
        ("recommendation", 2),
        ("sync", 1),
        ("monitoring", 1),
    ];
    let mut run = Running::start(&replicas).await;
    let key = run.key.clone();
    let gateways: Vec<std::net::SocketAddr> = run
        .cluster
        .of("gateway")
        .into_iter()
        .map(|i| run.cluster.pods[i].addr("grpc"))
        .collect();
    let mut g0 = client(gateways[0], &key).await;
    let (job, _) = ingest_until_done(&mut g0, feed(120)).await;
    assert_eq!(job.upserted, 120);
    discovery_harness::eventually(Duration::from_secs(10), async || {
        stored_products(&mut g0).await == 120
    })
    .await;

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
        discovery_loadgen::scenario("normal", 100.0, None, Some(Duration::from_secs(40)), None)
            .unwrap();
    let corpus = Arc::new(
        discovery_loadgen::Corpus::build(&targets[0], &plan.mix, None)
            .await
            .expect("corpus"),
    );
    let load: Vec<_> = targets
        .iter()
        .map(|t| {
            let (t, corpus, plan) = (t.clone(), corpus.clone(), plan.clone());
            tokio::spawn(async move {
                discovery_loadgen::run(t, corpus, &plan, &discovery_loadgen::RunOptions::default())
                    .await
            })
        })
        .collect();
    let recos = run.cluster.of("recommendation");
    let sync = run.cluster.of("sync")[0];
    let grace = Duration::from_secs(30); // terminationGracePeriodSeconds

    // A recommendation replica crashes; Kubernetes starts it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "kill -9 recommendation at {}",
        run.cluster.pods[recos[0]].ip
    );
    run.cluster.pods[recos[0]].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.cluster.restart(recos[0]).unwrap();
    run.cluster
        .wait_pod_started(
            recos[0],
            std::time::Instant::now() + Duration::from_secs(60),
        )
        .await
        .unwrap();

    // Sync dies while a feed of 300 new records is being sent; the sender
    // retries with the same idempotency key until it goes through.
    let feeding = tokio::spawn({
        let mut g = client(gateways[1], &key).await;
        async move { ingest_until_done(&mut g, feed_from(1000, 300, "cluster-kill-feed")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("kill -9 sync");
    run.cluster.pods[sync].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.cluster.restart(sync).unwrap();
    run.cluster
        .wait_pod_started(sync, std::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    let (job, tries) = feeding.await.unwrap();
    println!(
        "feed through a sync crash: {tries} attempt(s), job {:?}: {} received, {} upserted, {} unchanged",
        pb::SyncJobState::try_from(job.state),
        job.received,
        job.upserted,
        job.unchanged
    );

    // A rolling restart of recommendation, one replica at a time.
    for &i in &recos {
        println!(
            "rolling: SIGTERM recommendation at {}",
            run.cluster.pods[i].ip
        );
        run.cluster.pods[i].terminate(grace);
        run.cluster.restart(i).unwrap();
        run.cluster
            .wait_pod_started(i, std::time::Instant::now() + Duration::from_secs(60))
            .await
            .unwrap();
    }

    let mut sent = 0;
    let mut failed = 0;
    for l in load {
        let r = l.await.unwrap();
        println!(
            "{}: sent {} ok {} errors {} {:?} {:?}",
            r.target, r.sent, r.ok, r.errors, r.errors_by_code, r.first_errors
        );
        sent += r.sent;
        failed += r.errors + r.not_sent;
    }
    let rate = failed as f64 / sent.max(1) as f64;
    println!(
        "through a crash, a sync crash and a rolling restart: {failed} of {sent} calls failed ({:.3} %)",
        rate * 100.0
    );
    assert!(rate < 0.001, "{failed} of {sent} failed");

    // No record lost: each recommendation replica serves every one of the
    // 420 products (asked by id: a cached search page made before a feed
    // may not list new products yet, which issue 17 is about).
    let ids: Vec<String> = (0..120)
        .chain(1000..1300)
        .map(|i| format!("shopify:cluster:{i}"))
        .collect();
    for &i in &recos {
        let addr = run.cluster.pods[i].addr("grpc");
        let missing = wait_served(addr, &ids, Duration::from_secs(10)).await;
        println!(
            "recommendation at {addr}: {} of {} products served",
            ids.len() - missing.len(),
            ids.len()
        );
        assert!(missing.is_empty(), "records lost at {addr}: {missing:?}");
    }
}

/// A channel straight to one replica, signed as the gateway (the harness
/// holds the chart's internal secret), to ask each replica on its own.
fn as_gateway(addr: std::net::SocketAddr) -> discovery_kit::client::TracedChannel {
    let auth = discovery_kit::internal::InternalAuth::new(SECRET);
    discovery_kit::client::connect_as("test", &format!("http://{addr}"), Some(&auth), "gateway")
        .unwrap()
}

/// Asks the recommendation replica at `addr` for `ids` every 200 ms until
/// it serves them all or `within` passes: the ids still missing.
async fn wait_served(addr: std::net::SocketAddr, ids: &[String], within: Duration) -> Vec<String> {
    let until = std::time::Instant::now() + within;
    loop {
        let missing = direct_missing(addr, ids).await;
        if missing.is_empty() || std::time::Instant::now() > until {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ids a recommendation replica does not serve (asked directly, signed
/// as the gateway).
async fn direct_missing(addr: std::net::SocketAddr, ids: &[String]) -> Vec<String> {
    let ch = as_gateway(addr);
    let c = discovery_proto::v1::catalog_client::CatalogClient::new(ch);
    let asks = ids.iter().map(|id| {
        let mut c = c.clone();
        async move {
            let r = c
                .get_product(pb::GetProductRequest { id: id.clone() })
                .await;
            (id.clone(), r.is_ok())
        }
    });
    futures::stream::iter(asks)
        .buffer_unordered(16)
        .filter_map(|(id, ok)| async move { (!ok).then_some(id) })
        .collect()
        .await
}

/// One trace follows a catalogue feed across every asynchronous hop, as an
/// operator reads it in Jaeger: the gateway's call (its key check and rate
/// limit as spans), sync's call, the job's bulk writes, the change feed's
/// delivery (through the change stream, by the `traceparent` stamped on
/// each record), `ApplyCatalogChange` on one recommendation replica and
/// the fan-out over Redis to the other. Every span names its pod, namespace
/// and version, from the chart's `OTEL_RESOURCE_ATTRIBUTES`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_follows_a_feed_from_the_gateway_to_every_replica() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let otlp = discovery_harness::otlp::Receiver::start()
        .await
        .expect("OTLP receiver");
    let endpoint = format!("otlp.endpoint={}", otlp.endpoint());
    let replicas = [("gateway", 1), ("recommendation", 2), ("sync", 1)];
    // The chart's default limits stay on: the limiter's span is checked.
    let mut run = Running::start_with(&replicas, &[&endpoint, "otlp.samplerRatio=1"], &[]).await;
    let gateway = run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc");
    let mut g = client(gateway, &run.key).await;
    let (job, _) = ingest_until_done(&mut g, feed_from(9000, 30, "traced")).await;
    assert_eq!(job.upserted, 30, "{job:?}");
    // Asked by id: a search page cached mid-feed may not list them yet.
    let ids: Vec<String> = (9000..9030)
        .map(|i| format!("shopify:cluster:{i}"))
        .collect();
    for reco in run.cluster.of("recommendation") {
        let addr = run.cluster.pods[reco].addr("grpc");
        let missing = wait_served(addr, &ids, Duration::from_secs(20)).await;
        assert!(
            missing.is_empty(),
            "recommendation at {addr} lacks {missing:?}"
        );
    }
    // SIGTERM: each process flushes its spans as it exits.
    for pod in &mut run.cluster.pods {
        pod.terminate(Duration::from_secs(10));
    }
    let spans = otlp.spans();
    println!("{} spans received", spans.len());

    let root = spans
        .iter()
        .find(|s| {
            s.service == "gateway"
                && s.kind == SpanKind::Server as i32
                && s.attrs.get("rpc.method").map(String::as_str) == Some("IngestCatalog")
        })
        .expect("the gateway's IngestCatalog span");
    assert!(root.parent.is_empty(), "the gateway's span is the root");
    let trace: Vec<&discovery_harness::otlp::Span> =
        spans.iter().filter(|s| s.trace == root.trace).collect();
    let ids: std::collections::HashSet<&[u8]> = trace.iter().map(|s| s.id.as_slice()).collect();
    for s in &trace {
        assert!(
            s.parent.is_empty() || ids.contains(s.parent.as_slice()),
            "{} ({}) hangs off a span outside the trace",
            s.name,
            s.service
        );
    }
    let find = |what: &str, pred: &dyn Fn(&discovery_harness::otlp::Span) -> bool| {
        let found: Vec<&discovery_harness::otlp::Span> =
            trace.iter().copied().filter(|s| pred(s)).collect();
        assert!(
            !found.is_empty(),
            "{what} is not in the ingest's trace: {:#?}",
            trace
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        println!("in the trace: {what} ({} span(s))", found.len());
        found
    };
    let parent_of = |s: &discovery_harness::otlp::Span| {
        trace
            .iter()
            .copied()
            .find(|p| p.id == s.parent)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    let auth = find("gateway.auth", &|s| s.name == "gateway.auth");
    assert_eq!(auth[0].parent, root.id);
    assert_eq!(
        auth[0].attrs.get("discovery.tier").map(String::as_str),
        Some("partner")
    );
    find("gateway.limit", &|s| s.name == "gateway.limit");
    find("sync's IngestCatalog", &|s| {
        s.service == "sync" && s.kind == SpanKind::Server as i32
    });
    let jobs = find("sync.job", &|s| s.name == "sync.job");
    let writes = find("sync.write_batch", &|s| s.name == "sync.write_batch");
    assert!(writes.iter().all(|w| w.parent == jobs[0].id));
    let db = find("the bulk write of products", &|s| {
        s.service == "sync"
            && s.attrs.get("db.collection.name").map(String::as_str) == Some("products")
    });
    assert!(db.iter().any(|d| parent_of(d) == "sync.write_batch"));
    let deliveries = find("sync.feed.deliver", &|s| s.name == "sync.feed.deliver");
    assert!(
        deliveries.iter().all(|d| d.parent == jobs[0].id),
        "a delivery of one job's records is that job's child"
    );
    let applied = find("ApplyCatalogChange on a recommendation replica", &|s| {
        s.service == "recommendation"
            && s.kind == SpanKind::Server as i32
            && s.attrs.get("rpc.method").map(String::as_str) == Some("ApplyCatalogChange")
    });
    assert!(applied.iter().all(|a| parent_of(a) == "sync.feed.deliver"));
    let fanned = find("the fan-out to the other replica", &|s| {
        s.name == "recommendation.apply_published"
    });
    let pod = |s: &discovery_harness::otlp::Span| {
        s.resource
            .get("service.instance.id")
            .cloned()
            .unwrap_or_default()
    };
    for f in &fanned {
        let from = trace.iter().find(|p| p.id == f.parent).expect("its parent");
        assert_eq!(
            from.attrs.get("rpc.method").map(String::as_str),
            Some("ApplyCatalogChange")
        );
        assert_ne!(pod(f), pod(from), "the fan-out runs on the other replica");
    }

    // Resource attributes: the pod, its namespace, the build.
    for s in &trace {
        let r = &s.resource;
        let instance = pod(s);
        assert!(
            instance.starts_with(&format!("discovery-{}-", s.service)),
            "{}: service.instance.id {instance:?}",
            s.name
        );
        assert_eq!(r.get("k8s.pod.name"), Some(&instance));
        assert_eq!(
            r.get("k8s.namespace.name").map(String::as_str),
            Some("shop")
        );
        assert_eq!(
            r.get("service.version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
    let pods: std::collections::BTreeSet<String> = trace.iter().map(|s| pod(s)).collect();
    println!("pods in the trace: {pods:?}");
    assert_eq!(
        pods.len(),
        4,
        "gateway, sync and both recommendation replicas"
    );
}

/// Runs `plan` through `target` in the background.
fn load(
    target: &Arc<discovery_loadgen::Target>,
    corpus: &Arc<discovery_loadgen::Corpus>,
    plan: &discovery_loadgen::Plan,
) -> tokio::task::JoinHandle<discovery_loadgen::Report> {
    let (t, c, p) = (target.clone(), corpus.clone(), plan.clone());
    tokio::spawn(async move {
        discovery_loadgen::run(t, c, &p, &discovery_loadgen::RunOptions::default()).await
    })
}

/// Calls sent and failed (errors and calls the tool could not send).
fn outcome(what: &str, r: &discovery_loadgen::Report) -> (u64, u64) {
    println!(
        "{what}: sent {} ok {} errors {} not sent {} {:?} {:?}",
        r.sent, r.ok, r.errors, r.not_sent, r.errors_by_code, r.first_errors
    );
    (r.sent, r.errors + r.not_sent)
}

/// A shop's BFF calls the gateways through their Service: a cluster IP
/// that spreads connections over the ready pods, as kube-proxy does
/// (`ServiceIp`). A gateway crashes (SIGKILL) and comes back: fewer than
/// 0.1% of calls fail (those in flight on the dead process). Then, as
/// rolling updates do, each gateway and each face-analysis replica is
/// stopped (SIGTERM: not ready, drain) and started again, one at a time,
/// under recommendation traffic and face analyses: not one call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_crash_and_rolling_restarts_behind_the_service_ip() {
    let replicas = [
        ("gateway", 2),
        ("recommendation", 2),
        ("face-analysis", 2),
        ("sync", 1),
    ];
    let mut run = Running::start(&replicas).await;
    let key = run.key.clone();
    let gateways = run.cluster.of("gateway");
    let service = discovery_harness::cluster::ServiceIp::start(
        gateways
            .iter()
            .map(|&i| {
                let pod = &run.cluster.pods[i];
                (pod.addr("grpc"), pod.deployment.readiness.clone())
            })
            .collect(),
    )
    .await
    .expect("the gateway Service's IP");
    println!("the gateway Service at {}", service.addr());
    let mut g = client(service.addr(), &key).await;
    let (job, _) = ingest_until_done(&mut g, feed(120)).await;
    assert_eq!(job.upserted, 120);
    discovery_harness::eventually(Duration::from_secs(10), async || {
        stored_products(&mut g).await == 120
    })
    .await;
    let target = Arc::new(
        discovery_loadgen::Target::connect(
            &format!("http://{}", service.addr()),
            Some(&key),
            4,
            Duration::from_secs(10),
        )
        .await
        .expect("connect the load tool"),
    );
    let normal = |rate: f64, secs: u64| {
        discovery_loadgen::scenario("normal", rate, None, Some(Duration::from_secs(secs)), None)
            .unwrap()
    };
    let corpus = Arc::new(
        discovery_loadgen::Corpus::build(&target, &normal(1.0, 1).mix, None)
            .await
            .expect("corpus"),
    );
    let grace = Duration::from_secs(30); // terminationGracePeriodSeconds
    let started = |i: usize| (i, std::time::Instant::now() + Duration::from_secs(120));

    // A gateway crashes under 250 calls/s; Kubernetes starts it again.
    let crash = load(&target, &corpus, &normal(250.0, 24));
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("kill -9 gateway at {}", run.cluster.pods[gateways[0]].ip);
    run.cluster.pods[gateways[0]].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.cluster.restart(gateways[0]).unwrap();
    let (i, until) = started(gateways[0]);
    run.cluster.wait_pod_started(i, until).await.unwrap();
    let (sent, failed) = outcome("through a gateway crash", &crash.await.unwrap());
    println!(
        "gateway crash: {failed} of {sent} calls failed ({:.3} %)",
        failed as f64 * 100.0 / sent.max(1) as f64
    );
    assert!(
        (failed as f64) < 0.001 * sent as f64,
        "{failed} of {sent} calls failed through a gateway crash"
    );

    // Rolling restarts under load. What makes them clean: each pod keeps
    // serving, unready, for the chart's DISCOVERY_SHUTDOWN_DELAY while the
    // Service drops it; calls a draining server never took (above its
    // GOAWAY, refused) are sent again, by the load tool as gRPC clients do
    // and by the gateway to another face-analysis replica. Without the
    // delay, 4-50 of ~6,500 calls failed in 2 runs of 3 under CPU load.
    // Rolling restarts under 100 calls/s and a face analysis at a time.
    let photo = std::fs::read(workspace_root().join("models/testdata/astronaut.png"))
        .expect("models/testdata/astronaut.png: run scripts/fetch-models.sh --test-data");
    let face_plan =
        discovery_loadgen::scenario("face", 1.0, Some(1), Some(Duration::from_secs(60)), None)
            .unwrap();
    let face_corpus = Arc::new(
        discovery_loadgen::Corpus::build(&target, &face_plan.mix, Some(photo))
            .await
            .expect("face corpus"),
    );
    let rolling = load(&target, &corpus, &normal(100.0, 60));
    let faces = load(&target, &face_corpus, &face_plan);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for service in ["gateway", "face-analysis"] {
        for i in run.cluster.of(service) {
            println!("rolling: SIGTERM {service} at {}", run.cluster.pods[i].ip);
            run.cluster.pods[i].terminate(grace);
            run.cluster.restart(i).unwrap();
            let (i, until) = started(i);
            run.cluster.wait_pod_started(i, until).await.unwrap();
            // Ready before the next one goes, as maxUnavailable 0 waits.
            let pod = &run.cluster.pods[i];
            discovery_harness::eventually(Duration::from_secs(10), async || {
                pod.deployment.readiness.check(pod.ip).await.is_ok()
            })
            .await;
        }
    }
    let (sent, failed) = outcome("recommendation traffic", &rolling.await.unwrap());
    let (face_sent, face_failed) = outcome("face analyses", &faces.await.unwrap());
    println!(
        "rolling restarts of gateway and face-analysis: {failed} of {sent} calls and {face_failed} of {face_sent} face analyses failed"
    );
    assert!(face_sent > 0, "no face analysis was made");
    assert_eq!(
        (failed, face_failed),
        (0, 0),
        "calls failed during rolling restarts"
    );
}

/// The journey's hand-off, on the chart's topology: a photo analysed
/// through the gateway, then `Recommend` with only the analysis id gives
/// exactly the ranking of the same face passed field by field (each
/// recommendation replica asks face-analysis for the stored analysis); an
/// id no analysis has is NOT_FOUND naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recommend_by_analysis_id_ranks_as_the_face_it_names() {
    let replicas = [
        ("gateway", 1),
        ("recommendation", 2),
        ("face-analysis", 1),
        ("sync", 1),
    ];
    let run = Running::start(&replicas).await;
    let gateway = run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc");
    let mut g = client(gateway, &run.key).await;
    let (job, _) = ingest_until_done(&mut g, feed(120)).await;
    assert_eq!(job.upserted, 120);
    for reco in run.cluster.of("recommendation") {
        let addr = run.cluster.pods[reco].addr("grpc");
        discovery_harness::eventually(Duration::from_secs(20), async || {
            direct_search_total(addr).await == 120
        })
        .await;
    }
    let photo = std::fs::read(workspace_root().join("models/testdata/astronaut.png"))
        .expect("models/testdata/astronaut.png: run scripts/fetch-models.sh --test-data");
    let analysis = g
        .analyze_face(pb::AnalyzeFaceRequest {
            input: Some(pb::analyze_face_request::Input::Image(photo.clone())),
            ..Default::default()
        })
        .await
        .expect("the photo is analysed")
        .into_inner()
        .result
        .expect("a result");
    let m = analysis.measurements.unwrap_or_default();
    let explicit = pb::FaceContext {
        face_shape: analysis.face_shape,
        face_width_mm: m.face_width.map_or(0.0, |x| x.value_mm),
        pupillary_distance_mm: m.pupillary_distance.map_or(0.0, |x| x.value_mm),
        nose_bridge_width_mm: m.nose_bridge_width.map_or(0.0, |x| x.value_mm),
        analysis_id: String::new(),
    };
    println!(
        "analysis {}: shape {} width {:.1} mm PD {:.1} mm bridge {:.1} mm",
        analysis.analysis_id,
        analysis.face_shape,
        explicit.face_width_mm,
        explicit.pupillary_distance_mm,
        explicit.nose_bridge_width_mm
    );
    let ask = |face: pb::FaceContext| pb::RecommendRequest {
        face: Some(face),
        page: Some(pb::PageRequest {
            page_size: 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    let ranking = |r: pb::RecommendResponse| -> Vec<(String, u32, Vec<String>)> {
        r.items
            .into_iter()
            .map(|i| {
                (
                    i.product.unwrap_or_default().id,
                    i.score.to_bits(),
                    i.reasons,
                )
            })
            .collect()
    };
    let by_fields = ranking(
        g.recommend(ask(explicit.clone()))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(
        by_fields
            .iter()
            .any(|(_, _, why)| why.iter().any(|w| w.contains("face"))),
        "the explicit face shapes the reasons: {by_fields:?}"
    );
    // Through the gateway, and on each replica directly (each resolves the
    // id itself; the gateway's answer may come from either).
    let by_id = pb::FaceContext {
        analysis_id: analysis.analysis_id.clone(),
        ..Default::default()
    };
    let through_gateway = ranking(g.recommend(ask(by_id.clone())).await.unwrap().into_inner());
    assert_eq!(
        through_gateway, by_fields,
        "Recommend by analysis id through the gateway"
    );
    for reco in run.cluster.of("recommendation") {
        let addr = run.cluster.pods[reco].addr("grpc");
        let ch = as_gateway(addr);
        let mut direct = discovery_proto::v1::recommendation_client::RecommendationClient::new(ch);
        let got = ranking(
            direct
                .recommend(ask(by_id.clone()))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(got, by_fields, "recommendation at {addr}");
    }
    println!(
        "Recommend{{analysis_id}} = Recommend{{explicit face}}: {} items, top {:?}",
        by_fields.len(),
        by_fields.first()
    );
    let unknown = g
        .recommend(ask(pb::FaceContext {
            analysis_id: "0123456789abcdef01234567".into(),
            ..Default::default()
        }))
        .await
        .expect_err("an unknown analysis id");
    println!("unknown id: {:?} {}", unknown.code(), unknown.message());
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().starts_with("face.analysis_id:"),
        "{unknown:?}"
    );

    // The one-call journey for a BFF: the photo in, its analysis and the
    // same first page out; or a stored analysis's id in.
    let journey = |analyze: Option<pb::AnalyzeFaceRequest>, face: pb::FaceContext| {
        pb::AnalyzeAndRecommendRequest {
            analyze,
            recommend: Some(pb::RecommendRequest {
                placement: "after_analysis".into(),
                ..ask(face)
            }),
        }
    };
    let one = g
        .analyze_and_recommend(journey(
            Some(pb::AnalyzeFaceRequest {
                input: Some(pb::analyze_face_request::Input::Image(photo)),
                ..Default::default()
            }),
            pb::FaceContext::default(),
        ))
        .await
        .expect("analyse and recommend in one call")
        .into_inner();
    let found = one.analysis.unwrap().result.unwrap();
    assert_eq!(found.face_shape, analysis.face_shape);
    let page = one.recommendations.unwrap();
    assert_eq!(page.impression_id.len(), 32);
    assert_eq!(ranking(page), by_fields, "AnalyzeAndRecommend{{photo}}");
    let stored = g
        .analyze_and_recommend(journey(None, by_id.clone()))
        .await
        .expect("recommend for a stored analysis in one call")
        .into_inner();
    let result = stored.analysis.unwrap().result.unwrap();
    assert_eq!(result.analysis_id, analysis.analysis_id);
    assert!(result.landmarks.is_empty(), "no landmarks unless asked");
    assert_eq!(
        ranking(stored.recommendations.unwrap()),
        by_fields,
        "AnalyzeAndRecommend{{analysis_id}}"
    );
    let neither = g
        .analyze_and_recommend(journey(None, pb::FaceContext::default()))
        .await
        .expect_err("no photo and no id");
    assert_eq!(neither.code(), tonic::Code::InvalidArgument);
    println!(
        "AnalyzeAndRecommend: photo -> shape {} and the same {} items; by id -> the same; neither -> {:?} {}",
        found.face_shape,
        by_fields.len(),
        neither.code(),
        neither.message()
    );

    // Try-on placement on the same (golden) photo: each of the top three
    // frames centred between the pupils (within the bridge adjustment),
    // at its printed width on the photo's scale, rolled as the eye line.
    let top: Vec<String> = by_fields
        .iter()
        .take(3)
        .map(|(id, _, _)| id.clone())
        .collect();
    let placed = g
        .get_try_on_placement(pb::GetTryOnPlacementRequest {
            analysis_id: analysis.analysis_id.clone(),
            product_ids: top.clone(),
        })
        .await
        .expect("placements")
        .into_inner()
        .placements;
    assert_eq!(placed.len(), 3);
    let (r, l) = (&analysis.iris_centers[0], &analysis.iris_centers[1]);
    let mid = ((r.x + l.x) / 2.0, (r.y + l.y) / 2.0);
    let roll = (l.y - r.y).atan2(l.x - r.x).to_degrees();
    let px_per_mm = 1.0 / analysis.mm_per_px;
    for (p, id) in placed.iter().zip(&top) {
        let product = g
            .get_product(pb::GetProductRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap();
        let width_mm = product.dimensions.map_or(0.0, |d| d.total_width_mm);
        let c = p.center.unwrap();
        println!(
            "try-on {id}: centre ({:.1}, {:.1}) (pupils' middle ({:.1}, {:.1})), width {:.1} px ({width_mm} mm at {px_per_mm:.2} px/mm), rotation {:.2} deg",
            c.x, c.y, mid.0, mid.1, p.width_px, p.rotation_deg
        );
        assert_eq!(&p.product_id, id);
        assert!((p.width_px - width_mm * px_per_mm).abs() < 0.5, "{p:?}");
        assert!((p.rotation_deg - roll).abs() < 0.01, "{p:?}");
        let off = ((c.x - mid.0).powi(2) + (c.y - mid.1).powi(2)).sqrt();
        assert!(off <= 6.0 * px_per_mm + 0.5, "{p:?}");
    }
    let missing = g
        .get_try_on_placement(pb::GetTryOnPlacementRequest {
            analysis_id: analysis.analysis_id.clone(),
            product_ids: vec!["shopify:cluster:99999".into()],
        })
        .await
        .expect_err("an unknown product");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(
        missing.message().starts_with("product_ids[0]:"),
        "{missing:?}"
    );
}

/// One record of the cluster's feed source: id, vendor, price (whole
/// units), stock, and its `updated_at` second (later wins).
fn one_record(id: usize, vendor: &str, price: u32, stock: u32, second: u32) -> String {
    format!(
        concat!(
            r#"{{"id": {id}, "title": "Cluster Model {id}", "vendor": "{vendor}", "tags": "shape:round, material:acetate, size:50-20-145, width:130","#,
            r#" "updated_at": "2026-02-01T00:{m:02}:{s:02}Z", "variants": [{{"sku": "CL-{id}", "price": "{price}.00", "option1": "Black", "inventory_quantity": {stock}}}]}}"#,
            "\n"
        ),
        id = id,
        vendor = vendor,
        m = second / 60,
        s = second % 60,
        price = price,
        stock = stock
    )
}

fn records_feed(body: String) -> Vec<pb::IngestCatalogRequest> {
    chunked_feed(vec![body])
}

/// A feed of NDJSON chunks.
fn chunked_feed(chunks: Vec<String>) -> Vec<pb::IngestCatalogRequest> {
    std::iter::once(pb::IngestCatalogRequest {
        item: Some(pb::ingest_catalog_request::Item::Header(pb::IngestHeader {
            source: "shopify:cluster".into(),
            format: pb::FeedFormat::ShopifyNdjson as i32,
            idempotency_key: String::new(),
        })),
    })
    .chain(chunks.into_iter().map(|c| pb::IngestCatalogRequest {
        item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(
            c.into_bytes(),
        )),
    }))
    .collect()
}

/// Issue 17's fresh results, on the chart's topology (two recommendation
/// replicas, Redis Cluster, the change feed and the fan-out): with the
/// Acme in-stock page cached on both replicas (Recommend and
/// SearchProducts), a new Acme frame, a restocked one and a price change
/// each show in that page on each replica as soon as the replica has the
/// change (its GetProduct answers with it): the delay between the two is
/// printed per kind (p50, p99, max of the trials) and must stay under
/// 200 ms. Before, a new or restocked frame stayed out of a cached page for
/// its fresh window (60 s, search 5 min).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_pages_take_in_new_restocked_and_repriced_frames_on_every_replica() {
    const TRIALS: usize = 6;
    let replicas = [("gateway", 1), ("recommendation", 2), ("sync", 1)];
    let run = Running::start(&replicas).await;
    let gateway = run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc");
    let mut g = client(gateway, &run.key).await;
    // 40 Acme frames in stock, TRIALS out of stock, 20 of another brand.
    let mut base = String::new();
    for i in 0..40 {
        base.push_str(&one_record(i, "Acme", 100 + i as u32, 3, 0));
    }
    for k in 0..TRIALS {
        base.push_str(&one_record(900 + k, "Acme", 150, 0, 0));
    }
    for i in 0..20 {
        base.push_str(&one_record(500 + i, "Other", 90, 3, 0));
    }
    let (job, _) = ingest_until_done(&mut g, records_feed(base)).await;
    assert_eq!(job.upserted as usize, 60 + TRIALS);
    let id = |i: usize| format!("shopify:cluster:{i}");
    let all: Vec<String> = (0..40).chain(900..900 + TRIALS).map(id).collect();
    let replicas: Vec<std::net::SocketAddr> = run
        .cluster
        .of("recommendation")
        .into_iter()
        .map(|i| run.cluster.pods[i].addr("grpc"))
        .collect();
    for &addr in &replicas {
        assert!(
            wait_served(addr, &all, Duration::from_secs(20))
                .await
                .is_empty()
        );
    }
    let direct = |addr: std::net::SocketAddr| {
        let ch = as_gateway(addr);
        (
            discovery_proto::v1::catalog_client::CatalogClient::new(ch.clone()),
            discovery_proto::v1::recommendation_client::RecommendationClient::new(ch),
        )
    };
    let filter = || {
        Some(pb::ProductFilter {
            brands: vec!["Acme".into()],
            in_stock_only: true,
            ..Default::default()
        })
    };
    let page = Some(pb::PageRequest {
        page_size: 100,
        ..Default::default()
    });
    // The page as each replica serves it: product id -> price (minor).
    type Page = BTreeMap<String, i64>;
    async fn pages(
        catalog: &mut discovery_proto::v1::catalog_client::CatalogClient<
            discovery_kit::client::TracedChannel,
        >,
        reco: &mut discovery_proto::v1::recommendation_client::RecommendationClient<
            discovery_kit::client::TracedChannel,
        >,
        filter: Option<pb::ProductFilter>,
        page: Option<pb::PageRequest>,
    ) -> (Page, Page, bool) {
        let price = |p: &pb::Product| p.price.as_ref().map_or(0, |m| m.amount_minor);
        let r = reco
            .recommend(pb::RecommendRequest {
                filter: filter.clone(),
                page: page.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let s = catalog
            .search_products(pb::SearchProductsRequest {
                filter,
                page,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (
            r.items
                .iter()
                .filter_map(|i| i.product.as_ref())
                .map(|p| (p.id.clone(), price(p)))
                .collect(),
            s.hits
                .iter()
                .filter_map(|h| h.product.as_ref())
                .map(|p| (p.id.clone(), price(p)))
                .collect(),
            r.cached,
        )
    }
    let mut clients: Vec<_> = replicas.iter().map(|&a| direct(a)).collect();
    // Warm: each replica's page cached (L1 and L2).
    for (c, r) in clients.iter_mut() {
        pages(c, r, filter(), page.clone()).await;
        let (_, _, cached) = pages(c, r, filter(), page.clone()).await;
        assert!(cached, "the page is cached before the trials");
    }
    let mut delays: BTreeMap<&str, Vec<u128>> = BTreeMap::new();
    for k in 0..TRIALS {
        let second = 1 + k as u32;
        for (kind, record, wanted_id, wanted_price) in [
            (
                "new frame",
                one_record(1000 + k, "Acme", 120, 3, second),
                id(1000 + k),
                12_000,
            ),
            (
                "restock",
                one_record(900 + k, "Acme", 150, 3, second),
                id(900 + k),
                15_000,
            ),
            (
                "price change",
                one_record(k, "Acme", 300, 3, second),
                id(k),
                30_000,
            ),
        ] {
            // The page is cached on each replica right before the change.
            for (c, r) in clients.iter_mut() {
                pages(c, r, filter(), page.clone()).await;
            }
            let (job, _) = ingest_until_done(&mut g, records_feed(record)).await;
            assert_eq!(job.upserted, 1, "{kind}");
            for (n, (c, r)) in clients.iter_mut().enumerate() {
                // When the replica has the change...
                let until = std::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let p = c
                        .get_product(pb::GetProductRequest {
                            id: wanted_id.clone(),
                        })
                        .await;
                    let has = p.is_ok_and(|p| {
                        let p = p.into_inner().product.unwrap_or_default();
                        p.in_stock
                            && p.price
                                .as_ref()
                                .is_some_and(|m| m.amount_minor == wanted_price)
                    });
                    if has {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < until,
                        "replica {n} never had the {kind}"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let applied = std::time::Instant::now();
                // ...its cached page shows it.
                loop {
                    let (reco_page, search_page, _) = pages(c, r, filter(), page.clone()).await;
                    let shows = |p: &Page| p.get(&wanted_id) == Some(&wanted_price);
                    if shows(&reco_page) && shows(&search_page) {
                        break;
                    }
                    assert!(
                        applied.elapsed() < Duration::from_secs(10),
                        "replica {n}: the {kind} is not in the cached page: recommend {} search {}",
                        shows(&reco_page),
                        shows(&search_page)
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                delays
                    .entry(kind)
                    .or_default()
                    .push(applied.elapsed().as_millis());
            }
        }
    }
    for (kind, mut d) in delays {
        d.sort_unstable();
        let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
        println!(
            "{kind}: in the cached page {} ms (p50), {} ms (p99), {} ms (max) after the replica had it, {} trials on 2 replicas",
            at(0.5),
            at(0.99),
            d[d.len() - 1],
            d.len()
        );
        assert!(d[d.len() - 1] < 200, "{kind}: {d:?} ms");
    }
}

/// One shopper cannot steer popularity by spreading interactions over
/// replicas: the per-minute bound (`DISCOVERY_INTERACTIONS_PER_MINUTE`,
/// 120 by default) is counted in Redis Cluster for every replica. 130
/// interactions of one session, alternating between the two replicas:
/// exactly 120 recorded, 10 refused with RESOURCE_EXHAUSTED; another
/// session is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_interaction_bound_holds_across_replicas() {
    let run = Running::start(&[("gateway", 1), ("recommendation", 2), ("sync", 1)]).await;
    let mut g = client(
        run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc"),
        &run.key,
    )
    .await;
    let (job, _) = ingest_until_done(&mut g, feed(5)).await;
    assert_eq!(job.upserted, 5);
    let mut replicas = Vec::new();
    for reco in run.cluster.of("recommendation") {
        let addr = run.cluster.pods[reco].addr("grpc");
        assert!(
            wait_served(
                addr,
                &["shopify:cluster:0".to_string()],
                Duration::from_secs(20)
            )
            .await
            .is_empty()
        );
        let ch = as_gateway(addr);
        replicas.push(discovery_proto::v1::recommendation_client::RecommendationClient::new(ch));
    }
    // The 130 calls stay inside one wall-clock minute (the counting window).
    while discovery_kit::now_unix_ms() % 60_000 > 45_000 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let interaction = |session: &str| pb::RecordInteractionRequest {
        requester: Some(pb::Requester {
            session_id: session.into(),
            ..Default::default()
        }),
        product_id: "shopify:cluster:0".into(),
        kind: pb::InteractionKind::Click as i32,
        ..Default::default()
    };
    let (mut recorded, mut refused) = (0, 0);
    for i in 0..130 {
        match replicas[i % 2]
            .record_interaction(interaction("greedy-session"))
            .await
        {
            Ok(_) => recorded += 1,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("interaction {i}: {e:?}"),
        }
    }
    println!("one session over two replicas: {recorded} recorded, {refused} refused");
    assert_eq!((recorded, refused), (120, 10));
    replicas[1]
        .record_interaction(interaction("calm-session"))
        .await
        .expect("another shopper is not affected");
}

/// A shop's nightly full export arriving while shoppers browse: a
/// 50,000-record feed over a 50,000-frame catalogue in which 1 record in 20
/// changed (a new price, a third of those also a stock flip) and the rest
/// are as stored, through the gateway onto two recommendation replicas.
/// The pages shoppers ask for (7 face shapes and none x 4 filters: none, in stock,
/// a price cap, a brand) stay mostly served from cache during the feed and
/// are all cached again after it: the changes are applied per batch, and a
/// page is dropped only when a product of the batch could enter it or
/// changed in it.
/// Asks for every page once, to fill the replicas' caches. The first
/// computation of a page over 50,000 frames can miss the gateway's 2 s
/// deadline on a loaded 2-core CI machine (CI caught it once: the ingest,
/// the test server and another cluster test share the cores); filling is
/// not what is measured, so a late page is asked again, a few times.
async fn fill(g: &mut Client, pages: &[pb::RecommendRequest], what: &str) {
    for p in pages {
        let mut tries = 0;
        loop {
            match g.recommend(p.clone()).await {
                Ok(_) => break,
                Err(e) if e.code() == tonic::Code::DeadlineExceeded && tries < 5 => {
                    tries += 1;
                    println!("{what}: a page missed the deadline ({tries})");
                }
                Err(e) => panic!("{what}: {e:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_feed_leaves_most_pages_cached_on_both_replicas() {
    const N: usize = 50_000;
    let run = Running::start(&[("gateway", 1), ("recommendation", 2), ("sync", 1)]).await;
    let gateway = run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc");
    let mut g = client(gateway, &run.key).await;
    let vendors = ["Acme", "Bolt", "Cora", "Dune", "Echo"];
    let export = |changed: bool| {
        let mut chunks = Vec::new();
        let mut body = String::new();
        for i in 0..N {
            let (price, stock, second) = if changed && i % 20 == 0 {
                (81 + i % 90, if i % 60 == 0 { 0 } else { 3 }, 1)
            } else {
                (80 + i % 90, 3, 0)
            };
            body.push_str(&one_record(i, vendors[i % 5], price as u32, stock, second));
            if (i + 1) % 2_000 == 0 {
                chunks.push(std::mem::take(&mut body));
            }
        }
        chunked_feed(chunks)
    };
    let t = std::time::Instant::now();
    let (job, _) = ingest_until_done(&mut g, export(false)).await;
    // A batch the store failed and sync retried counts as unchanged.
    assert_eq!(
        (job.upserted + job.unchanged, job.rejected),
        (N as u64, 0),
        "{job:?}"
    );
    println!(
        "catalogue of {N} frames ingested in {:.1?}: {job:?}",
        t.elapsed()
    );
    for reco in run.cluster.of("recommendation") {
        let addr = run.cluster.pods[reco].addr("grpc");
        // Generous: on a loaded CI machine a replica takes minutes to
        // apply 50,000 changes beside another cluster test.
        let until = std::time::Instant::now() + Duration::from_secs(600);
        while direct_search_total(addr).await != N as u64 {
            assert!(
                std::time::Instant::now() < until,
                "{addr} never had the catalogue"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let filters = [
        None,
        Some(pb::ProductFilter {
            in_stock_only: true,
            ..Default::default()
        }),
        Some(pb::ProductFilter {
            max_price_minor: Some(12_000),
            ..Default::default()
        }),
        Some(pb::ProductFilter {
            brands: vec!["Cora".into()],
            ..Default::default()
        }),
    ];
    let pages: Vec<pb::RecommendRequest> = (0..=7)
        .flat_map(|shape| {
            filters.iter().map(move |f| pb::RecommendRequest {
                face: Some(pb::FaceContext {
                    face_shape: shape,
                    ..Default::default()
                }),
                filter: f.clone(),
                ..Default::default()
            })
        })
        .collect();
    // Both replicas warm (the gateway balances; twice over is plenty).
    for _ in 0..4 {
        fill(&mut g, &pages, "warm").await;
    }
    let browse = |g: Client,
                  stop: Arc<std::sync::atomic::AtomicBool>,
                  pages: Vec<pb::RecommendRequest>| async move {
        let mut g = g;
        let (mut calls, mut hits, mut late, mut i) = (0u64, 0u64, 0u64, 0usize);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            i += 7;
            let r = match g.recommend(pages[(i - 7) % pages.len()].clone()).await {
                Ok(r) => r.into_inner(),
                // This test measures the cache, not latency: on a 2-core CI
                // machine running the 50,000-record ingest, the test server
                // and another cluster test, a recomputed page can miss the
                // gateway's 2 s deadline. Counted, and bounded below.
                Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
                    late += 1;
                    continue;
                }
                Err(e) => panic!("recommend during the feed: {e:?}"),
            };
            calls += 1;
            hits += u64::from(r.cached);
        }
        assert!(
            late * 100 <= calls.max(1),
            "{late} of {} calls missed the deadline (over 1 %)",
            calls + late
        );
        if late > 0 {
            println!("{late} of {} calls missed the 2 s deadline", calls + late);
        }
        (calls, hits)
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn(browse(g.clone(), stop.clone(), pages.clone()));
    let t = std::time::Instant::now();
    let (job, _) = ingest_until_done(&mut g, export(true)).await;
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, hits) = reader.await.unwrap();
    assert_eq!(
        (job.upserted + job.unchanged, job.rejected),
        (N as u64, 0),
        "{job:?}"
    );
    assert!(job.upserted <= (N / 20) as u64, "{job:?}");
    // Both replicas have the last change before "after" is measured.
    let last = format!("shopify:cluster:{}", N - 20);
    for reco in run.cluster.of("recommendation") {
        let addr = run.cluster.pods[reco].addr("grpc");
        let mut c = discovery_proto::v1::catalog_client::CatalogClient::new(as_gateway(addr));
        let until = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let p = c
                .get_product(pb::GetProductRequest { id: last.clone() })
                .await
                .expect("the last changed frame")
                .into_inner()
                .product
                .unwrap();
            if p.price.unwrap().amount_minor == (81 + (N - 20) % 90) as i64 * 100 {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "{addr} never applied the feed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Each page once on each replica to refill, then as much browsing as
    // during the feed.
    for _ in 0..2 {
        fill(&mut g, &pages, "refill").await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn(browse(g.clone(), stop.clone(), pages.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls_after, hits_after) = reader.await.unwrap();
    let during = hits as f64 / calls as f64;
    let after = hits_after as f64 / calls_after as f64;
    println!(
        "{N}-record feed ({} changed) in {took:.1?}: hit ratio {during:.3} during ({calls} calls over {} pages), {after:.3} after ({calls_after} calls)",
        job.upserted,
        pages.len()
    );
    assert!(during >= 0.5, "hit ratio during the feed {during:.3}");
    assert!(after >= 0.95, "hit ratio after the feed {after:.3}");
}

/// Two ranking variants at known rates, through the gateway onto two
/// recommendation replicas: an experiment started by an admin call reaches
/// both replicas without a restart; 600 shoppers get pages, click and buy
/// at rates fixed per variant (some clicks twice, on either replica; some
/// purchases without the impression id, attributed by the fallback
/// window); the report gives back exactly the counts sent, and the true
/// rates inside its 95% intervals. Stopping the experiment takes everyone
/// back to the default ranking.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_ranking_variants_report_the_rates_their_shoppers_had() {
    let run = Running::start(&[("gateway", 1), ("recommendation", 2), ("sync", 1)]).await;
    let mut g = client(
        run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc"),
        &run.key,
    )
    .await;
    let (job, _) = ingest_until_done(&mut g, feed(60)).await;
    assert_eq!(job.upserted, 60);
    let replicas: Vec<_> = run
        .cluster
        .of("recommendation")
        .into_iter()
        .map(|r| run.cluster.pods[r].addr("grpc"))
        .collect();
    for addr in &replicas {
        assert!(
            wait_served(
                *addr,
                &["shopify:cluster:59".to_string()],
                Duration::from_secs(20)
            )
            .await
            .is_empty()
        );
    }
    let started = g
        .start_experiment(pb::StartExperimentRequest {
            experiment: Some(pb::Experiment {
                id: "known-rates".into(),
                variants: vec![
                    pb::RankingVariant {
                        name: "control".into(),
                        share_percent: 50,
                        ..Default::default()
                    },
                    pb::RankingVariant {
                        name: "fit".into(),
                        share_percent: 50,
                        weights: Some(pb::RankingWeights {
                            face_shape: 1.0,
                            fit: 3.0,
                            preference: 1.0,
                            popularity: 0.5,
                            collaborative: 0.0,
                        }),
                        brand_cap: 3,
                    },
                ],
                ..Default::default()
            }),
        })
        .await
        .expect("start the experiment")
        .into_inner();
    assert!(started.experiment.unwrap().started_at_unix_ms > 0);
    // Both replicas assign (the other one heard it over the bus).
    let page_on = |addr, session: String| async move {
        let mut c =
            discovery_proto::v1::recommendation_client::RecommendationClient::new(as_gateway(addr));
        c.recommend(pb::RecommendRequest {
            requester: Some(pb::Requester {
                session_id: session,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("recommend on a replica")
        .into_inner()
    };
    let mut probe = String::new();
    for addr in &replicas {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let variant = page_on(*addr, "probe".into()).await.variant;
            if variant.starts_with("known-rates/") {
                probe = variant;
                break;
            }
            assert!(std::time::Instant::now() < until, "{addr} never assigned");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Per variant: click and purchase probabilities.
    let rates = BTreeMap::from([
        ("known-rates/control", (0.30, 0.08)),
        ("known-rates/fit", (0.12, 0.20)),
    ]);
    #[derive(Default, Debug)]
    struct Sent {
        impressions: u64,
        clicked: u64,
        purchased: u64,
        revenue: i64,
    }
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut rng = discovery_kit::rng::SplitMix(17);
    let shapes = [
        pb::FaceShape::Round,
        pb::FaceShape::Oval,
        pb::FaceShape::Square,
    ];
    let (mut duplicates, mut fallbacks) = (0, 0);
    for i in 0..600 {
        let session = format!("shopper-{i}");
        let requester = Some(pb::Requester {
            session_id: session.clone(),
            ..Default::default()
        });
        let page = g
            .recommend(pb::RecommendRequest {
                requester: requester.clone(),
                face: Some(pb::FaceContext {
                    face_shape: shapes[i % 3] as i32,
                    ..Default::default()
                }),
                placement: if i % 2 == 0 { "home" } else { "after_analysis" }.into(),
                ..Default::default()
            })
            .await
            .expect("recommend")
            .into_inner();
        assert_eq!(page.impression_id.len(), 32, "{page:?}");
        let (p_click, p_buy) = rates[page.variant.as_str()];
        let tally = sent.entry(page.variant.clone()).or_default();
        tally.impressions += 1;
        let interact = |kind: pb::InteractionKind, item: usize, with_id: bool| {
            let product = page.items[item].product.clone().unwrap();
            (
                pb::RecordInteractionRequest {
                    requester: requester.clone(),
                    product_id: product.id,
                    kind: kind as i32,
                    impression_id: if with_id {
                        page.impression_id.clone()
                    } else {
                        String::new()
                    },
                    at_unix_ms: 0,
                },
                product.price.unwrap().amount_minor,
            )
        };
        if (rng.unit() as f64) < p_click {
            tally.clicked += 1;
            let (click, _) = interact(pb::InteractionKind::Click, 0, true);
            g.record_interaction(click.clone()).await.expect("click");
            if i % 5 == 0 {
                // The same click again (a double tap): counted once.
                duplicates += 1;
                g.record_interaction(click).await.expect("click again");
            }
        }
        if (rng.unit() as f64) < p_buy {
            tally.purchased += 1;
            let with_id = i % 7 != 0;
            fallbacks += usize::from(!with_id);
            let (buy, price) = interact(pb::InteractionKind::Purchase, 1, with_id);
            tally.revenue += price;
            g.record_interaction(buy).await.expect("purchase");
        }
    }
    println!(
        "sent {sent:?} ({duplicates} clicks sent twice, {fallbacks} purchases without impression id)"
    );
    // The probe pages, one per replica once it assigned, are impressions too.
    sent.entry(probe).or_default().impressions += 2;

    // The report (rollups every 250 ms; a purchase may wait for the other
    // replica to write its impression, one without an id 5 s).
    let until = std::time::Instant::now() + Duration::from_secs(90);
    let report = loop {
        let r = g
            .get_recommendation_report(pb::GetRecommendationReportRequest {
                window: pb::ReportWindow::Hour as i32,
                experiment_id: "known-rates".into(),
            })
            .await
            .expect("report")
            .into_inner();
        let done = r.by_variant.iter().all(|row| {
            let s = &sent[&row.key];
            (row.impressions, row.clicked, row.purchased) == (s.impressions, s.clicked, s.purchased)
        }) && r.by_variant.len() == 2;
        if done || std::time::Instant::now() > until {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for row in &report.by_variant {
        let s = &sent[&row.key];
        let (p_click, p_buy) = rates[row.key.as_str()];
        let (ctr, conv) = (row.ctr.unwrap(), row.conversion.unwrap());
        println!(
            "{}: {} impressions, CTR {:.3} [{:.3}, {:.3}] (true {p_click}), conversion {:.3} \
             [{:.3}, {:.3}] (true {p_buy}), revenue {:?}",
            row.key,
            row.impressions,
            ctr.value,
            ctr.low,
            ctr.high,
            conv.value,
            conv.low,
            conv.high,
            row.revenue_minor
        );
        assert_eq!(
            row.impressions, s.impressions,
            "{}: every page shown",
            row.key
        );
        assert_eq!(row.clicked, s.clicked, "{}: every click, once", row.key);
        assert_eq!(row.purchased, s.purchased, "{}: every purchase", row.key);
        assert_eq!(
            row.revenue_minor.values().sum::<i64>(),
            s.revenue,
            "{}: revenue",
            row.key
        );
        assert!(
            ctr.low <= p_click && p_click <= ctr.high,
            "{}: CTR interval",
            row.key
        );
        assert!(
            conv.low <= p_buy && p_buy <= conv.high,
            "{}: conversion interval",
            row.key
        );
    }
    let total: u64 = report.by_variant.iter().map(|r| r.impressions).sum();
    assert_eq!(total, 602, "600 shoppers and the two probes");
    assert_eq!(
        report
            .by_placement
            .iter()
            .map(|r| r.impressions)
            .sum::<u64>(),
        total
    );
    assert_eq!(report.total.unwrap().impressions, total);

    g.stop_experiment(pb::StopExperimentRequest {})
        .await
        .expect("stop");
    for addr in &replicas {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while page_on(*addr, "probe-2".into()).await.variant != "default" {
            assert!(
                std::time::Instant::now() < until,
                "{addr} kept the experiment"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The chart with TLS on the gateway (`services.gateway.tlsSecret`): every
/// probe passes as the kubelet runs it (a gateway's readiness on `/readyz`:
/// the kubelet's gRPC probe has no TLS), a shop calls it over TLS, and
/// monitoring sees every gateway replica ready through the same endpoint
/// (its gRPC health is not reachable in plain text).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_gateway_passes_its_probes_and_monitoring_sees_every_replica() {
    let secret = tempfile::tempdir().unwrap();
    let certs = discovery_harness::TestCerts::make(secret.path()).unwrap_or_else(|e| panic!("{e}"));
    // The Secret's keys, as Kubernetes mounts a kubernetes.io/tls Secret.
    std::fs::copy(&certs.cert, secret.path().join("tls.crt")).unwrap();
    std::fs::copy(&certs.key, secret.path().join("tls.key")).unwrap();
    let replicas = [("gateway", 2), ("recommendation", 1), ("monitoring", 1)];
    let run = Running::start_with(
        &replicas,
        &[
            "env.DISCOVERY_LIMITS=off",
            "services.gateway.tlsSecret=shop-tls",
        ],
        &[("/etc/discovery/tls", secret.path())],
    )
    .await;
    every_probe_passes(&run.cluster).await;
    for i in run.cluster.of("gateway") {
        let probe = &run.cluster.pods[i].deployment.readiness;
        assert!(
            matches!(probe, discovery_harness::cluster::Probe::Http { path, .. } if path == "/readyz"),
            "a TLS gateway is probed on /readyz: {probe:?}"
        );
    }
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&certs.ca).unwrap(),
        ))
        .domain_name("localhost");
    let gateway = run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc");
    let channel = Channel::from_shared(format!("https://{gateway}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake with a gateway");
    let mut c = DiscoveryClient::with_interceptor(channel, Key(run.key.parse().unwrap()));
    let health = c
        .get_system_health(pb::GetSystemHealthRequest {})
        .await
        .expect("GetSystemHealth over TLS")
        .into_inner();
    let gateways: Vec<_> = health
        .services
        .iter()
        .filter(|s| s.service == "gateway")
        .collect();
    for s in &gateways {
        println!(
            "health: gateway {:<20} live {} ready {} {}",
            s.address, s.live, s.ready, s.detail
        );
    }
    assert_eq!(gateways.len(), 2, "{gateways:?}");
    assert!(gateways.iter().all(|s| s.live && s.ready), "{gateways:?}");
    for i in run.cluster.of("gateway") {
        let metrics = run.cluster.pods[i].addr("metrics").to_string();
        assert!(
            gateways.iter().any(|s| s.address == metrics),
            "gateway at {metrics} missing from {gateways:?}"
        );
    }
}

/// Sync and monitoring run one replica each (the chart's defaults). Their
/// rolling update, as Kubernetes runs it with the chart's strategy
/// (`maxSurge: 1`, `maxUnavailable: 0`, `minReadySeconds`): the new pod
/// starts, is ready, stays ready for `minReadySeconds` while callers learn
/// it from DNS, and only then is the old one stopped (SIGTERM). Calls to
/// both through the gateway all the while: not one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_services_roll_without_a_failed_call() {
    // A second slot per service for the surge pod, stopped until the
    // update starts it. Its address is in the hosts table from the start
    // (Kubernetes DNS lists ready pods only): until the gateway ejects it,
    // a feed sent there is refused, and the sender retries.
    let replicas = [
        ("gateway", 1),
        ("recommendation", 1),
        ("sync", 2),
        ("monitoring", 2),
    ];
    let mut run = Running::start(&replicas).await;
    let (syncs, monitors) = (run.cluster.of("sync"), run.cluster.of("monitoring"));
    let grace = Duration::from_secs(30);
    run.cluster.pods[syncs[1]].terminate(grace);
    run.cluster.pods[monitors[1]].terminate(grace);
    let min_ready = run.cluster.pods[syncs[0]].deployment.min_ready;
    println!("minReadySeconds: {min_ready:?}");
    assert!(
        min_ready >= Duration::from_secs(10),
        "the chart must wait at least the callers' 10 s DNS interval"
    );
    let gateway = run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc");
    let mut g = client(gateway, &run.key).await;
    let (job, _) = ingest_until_done(&mut g, feed(40)).await;
    let job_id = job.job_id.clone();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = {
        let (stop, g, job_id) = (stop.clone(), g.clone(), job_id.clone());
        tokio::spawn(async move {
            let mut counts: BTreeMap<&'static str, (u64, Vec<String>)> = BTreeMap::new();
            let mut tick = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut c = g.clone();
                let mut note = |what: &'static str, r: Result<(), tonic::Status>| {
                    let e = counts.entry(what).or_default();
                    e.0 += 1;
                    if let Err(s) = r {
                        e.1.push(format!("{:?} {}", s.code(), s.message()));
                    }
                };
                let r = c
                    .get_sync_job(pb::GetSyncJobRequest {
                        job_id: job_id.clone(),
                    })
                    .await
                    .map(|_| ());
                note("GetSyncJob", r);
                let r = c
                    .list_dead_letters(pb::ListDeadLettersRequest::default())
                    .await
                    .map(|_| ());
                note("ListDeadLetters", r);
                if tick.is_multiple_of(5) {
                    let r = c
                        .get_sla_report(pb::GetSlaReportRequest::default())
                        .await
                        .map(|_| ());
                    note("GetSlaReport", r);
                }
                if tick.is_multiple_of(25) {
                    let r = c
                        .get_system_health(pb::GetSystemHealthRequest {})
                        .await
                        .map(|_| ());
                    note("GetSystemHealth", r);
                }
                tick += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            counts
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, pods) in [("sync", &syncs), ("monitoring", &monitors)] {
        println!("rolling {name}: start the new pod, ready, wait {min_ready:?}, stop the old one");
        run.cluster
            .roll(pods[0], pods[1], grace)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counts = calls.await.unwrap();
    let mut failed = 0;
    for (what, (n, errors)) in &counts {
        println!(
            "{what}: {n} calls, {} failed {:?}",
            errors.len(),
            errors.iter().take(3).collect::<Vec<_>>()
        );
        failed += errors.len();
        assert!(*n > 0, "no {what} call was made");
    }
    assert_eq!(failed, 0, "calls failed while sync and monitoring rolled");
    // The job is still there, from the store, through the new sync.
    let again = g
        .get_sync_job(pb::GetSyncJobRequest { job_id })
        .await
        .expect("the job after the update")
        .into_inner();
    assert_eq!(
        again.job.map(|j| j.state),
        Some(pb::SyncJobState::Succeeded as i32)
    );
}

/// Semantic search as deployed: sync embeds what a feed wrote (off the
/// ingest path), the change stream carries each embedding to both
/// recommendation replicas, and a shopper's words that match no product's
/// find the right one by meaning, through the gateway and on each replica,
/// with the understood parts as chips. A restarted replica has the
/// embeddings from the store (sync computed each text once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fed_product_is_found_by_meaning_on_every_replica() {
    let replicas = [("gateway", 1), ("recommendation", 2), ("sync", 1)];
    let mut run = Running::start_images(&replicas, &["env.DISCOVERY_LIMITS=off"], &[], true).await;
    let gateway = run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc");
    let mut g = client(gateway, &run.key).await;
    let mut body = String::new();
    for i in 0..30 {
        body.push_str(&one_record(i, "Acme", 100 + i as u32, 3, 0));
    }
    let described = [
        (
            700,
            "Gala",
            "A glamorous, daring statement frame to wear at weddings, galas and black-tie parties",
            "cat-eye",
        ),
        (
            701,
            "Trail",
            "Wraparound sports frame for running, cycling and hiking in bright sun",
            "rectangle",
        ),
        (
            702,
            "Desk",
            "Light, understated frame for reading and long days at the office",
            "round",
        ),
    ];
    for (id, title, text, shape) in described {
        body.push_str(&format!(
            concat!(
                r#"{{"id": {id}, "title": "{title}", "vendor": "Lumen", "body_html": "{text}", "tags": "shape:{shape}, material:acetate, size:52-18-140, width:134","#,
                r#" "updated_at": "2026-02-01T00:00:00Z", "variants": [{{"sku": "LU-{id}", "price": "120.00", "option1": "Tortoise", "inventory_quantity": 5}}]}}"#,
                "\n"
            ),
            id = id, title = title, text = text, shape = shape
        ));
    }
    let (job, _) = ingest_until_done(&mut g, records_feed(body)).await;
    assert_eq!(job.upserted, 33);
    let search = |q: &str| pb::SearchProductsRequest {
        query: q.into(),
        ..Default::default()
    };
    let first_id = |r: &pb::SearchProductsResponse| {
        r.hits
            .first()
            .and_then(|h| h.product.as_ref())
            .map(|p| p.id.clone())
            .unwrap_or_default()
    };
    let wedding = "something daring to wear to a wedding under $200";
    let until = std::time::Instant::now() + Duration::from_secs(180);
    let found = loop {
        let r = g
            .search_products(search(wedding))
            .await
            .expect("search")
            .into_inner();
        if first_id(&r) == "shopify:cluster:700" {
            break r;
        }
        assert!(
            std::time::Instant::now() < until,
            "never found by meaning: {:?}",
            r.hits
                .iter()
                .map(|h| (h.product.as_ref().map(|p| p.id.clone()), h.why))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(found.mode, pb::SearchMode::Hybrid as i32);
    assert!(found.note.is_empty(), "{}", found.note);
    let why = found.hits[0].why.expect("why");
    assert_eq!(
        why.lexical_rank, None,
        "no word of the query is the product's"
    );
    assert_eq!(why.semantic_rank, Some(0));
    let chips: Vec<(&str, &str)> = found
        .understood
        .iter()
        .map(|c| (c.kind.as_str(), &wedding[c.start as usize..c.end as usize]))
        .collect();
    assert_eq!(chips, [("price", "under $200")]);
    // Every replica holds the embeddings (asked directly).
    let reco: Vec<usize> = run.cluster.of("recommendation");
    for &i in &reco {
        let addr = run.cluster.pods[i].addr("grpc");
        let mut c = discovery_proto::v1::catalog_client::CatalogClient::new(as_gateway(addr));
        for (q, want) in [
            ("for running and cycling", "shopify:cluster:701"),
            ("something to read with at work", "shopify:cluster:702"),
        ] {
            let until = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let r = c
                    .search_products(search(q))
                    .await
                    .expect("search")
                    .into_inner();
                if first_id(&r) == want {
                    break;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "replica {addr}: {q:?} -> {}",
                    first_id(&r)
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    // A restarted replica reads them back from the store.
    let i = reco[0];
    run.cluster.pods[i].terminate(Duration::from_secs(10));
    run.cluster.restart(i).expect("restart");
    run.cluster
        .wait_pod_started(i, std::time::Instant::now() + Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = run.cluster.pods[i].addr("grpc");
    let mut c = discovery_proto::v1::catalog_client::CatalogClient::new(as_gateway(addr));
    let r = c
        .search_products(search(wedding))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(first_id(&r), "shopify:cluster:700");
    // Sync ran the model once per text.
    let sync = run.cluster.pods[run.cluster.of("sync")[0]].addr("metrics");
    assert_eq!(
        counter(sync, "discovery_sync_embeddings_total{source=\"model\"}"),
        33
    );
}

/// A counter's value from a process's `/metrics` (0 when absent).
fn counter(metrics: std::net::SocketAddr, series: &str) -> u64 {
    metrics_text(metrics)
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A catalogue for the conversation: 128 frames over four shapes, colours,
/// materials, styles (with what each style is for in its description),
/// prices from 60 to 299 and widths from 126 to 151 mm.
fn conversation_catalogue() -> String {
    let shapes = ["round", "aviator", "cat-eye", "rectangle"];
    let colors = ["Black", "Tortoise", "Red", "Gold"];
    let materials = ["acetate", "metal", "titanium"];
    let styles = [
        (
            "Bold",
            "A daring statement frame for parties, galas and weddings",
        ),
        ("Classic", "A timeless everyday frame for the office"),
        ("Sport", "A grippy frame for running, cycling and hiking"),
        ("Minimal", "An understated, featherweight frame for all day"),
    ];
    let mut body = String::new();
    for i in 0..128usize {
        let (style, about) = styles[(i / 16) % 4];
        body.push_str(&format!(
            concat!(
                r#"{{"id": {id}, "title": "{style} {shape} {id}", "vendor": "{vendor}", "body_html": "{about}", "tags": "shape:{shape}, material:{material}, size:50-20-145, width:{width}","#,
                r#" "updated_at": "2026-03-01T00:00:00Z", "variants": [{{"sku": "CV-{id}", "price": "{price}.00", "option1": "{color}", "inventory_quantity": 4}}]}}"#,
                "\n"
            ),
            id = 1000 + i,
            style = style,
            shape = shapes[i % 4],
            vendor = ["Lumen", "Optica"][i % 2],
            about = about,
            material = materials[i % 3],
            width = 126 + (i * 7) % 26,
            price = 60 + (i * 37) % 240,
            color = colors[(i / 4) % 4],
        ));
    }
    body
}

/// One turn's three events, in order.
struct Turn {
    interpretation: pb::ConverseInterpretation,
    results: pb::SearchProductsResponse,
    reply: String,
}

async fn turn(
    g: &mut Client,
    session: &str,
    utterance: &str,
    face: f32,
) -> Result<Turn, tonic::Status> {
    use pb::converse_event::Event;
    let mut stream = g
        .converse(pb::ConverseRequest {
            session_id: session.into(),
            utterance: utterance.into(),
            face: (face > 0.0).then(|| pb::FaceContext {
                face_width_mm: face,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await? {
        events.push(e.event.expect("an event"));
    }
    match <[Event; 3]>::try_from(events) {
        Ok([Event::Interpretation(i), Event::Results(r), Event::Reply(t)]) => Ok(Turn {
            interpretation: i,
            results: r,
            reply: t,
        }),
        Ok(other) => panic!("{utterance:?}: events out of order: {other:?}"),
        Err(v) => panic!("{utterance:?}: {} events, not 3: {v:?}", v.len()),
    }
}

fn products(r: &pb::SearchProductsResponse) -> Vec<&pb::Product> {
    r.hits.iter().filter_map(|h| h.product.as_ref()).collect()
}

fn price_of(p: &pb::Product) -> i64 {
    p.price.as_ref().map_or(0, |m| m.amount_minor)
}

/// A scripted 20-turn conversation through the gateway, on the chart's
/// topology with the text model: searches, refinements ("cheaper", "in
/// black", "bigger"), comparisons and fit questions about what was shown,
/// each checked against the catalogue; and the refusals: an empty and a
/// 10 KB utterance, a turn that refers to an unknown session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scripted_conversation_refines_compares_and_answers() {
    use pb::ConverseIntent as I;
    let replicas = [("gateway", 1), ("recommendation", 2), ("sync", 1)];
    let run = Running::start_images(&replicas, &["env.DISCOVERY_LIMITS=off"], &[], true).await;
    let gateway = run.cluster.pods[run.cluster.of("gateway")[0]].addr("grpc");
    let mut g = client(gateway, &run.key).await;
    let (job, _) = ingest_until_done(&mut g, records_feed(conversation_catalogue())).await;
    assert_eq!(job.upserted, 128);
    // Wait until the embeddings are in (a search by meaning finds a Sport frame).
    let embedded = discovery_harness::eventually(Duration::from_secs(120), async || {
        let Ok(r) = g
            .search_products(pb::SearchProductsRequest {
                query: "something for jogging".into(),
                mode: pb::SearchMode::Semantic as i32,
                ..Default::default()
            })
            .await
        else {
            return false;
        };
        products(r.get_ref())
            .first()
            .is_some_and(|p| p.name.starts_with("Sport"))
    })
    .await;
    assert!(embedded, "embedded and delivered");

    let s = "chat-1";
    let mut turns = 0;
    let mut say = async |g: &mut Client, utterance: &str, face: f32, want: I| {
        let t = turn(g, s, utterance, face)
            .await
            .unwrap_or_else(|e| panic!("{utterance:?}: {e}"));
        assert_eq!(
            t.interpretation.intent, want as i32,
            "{utterance:?} understood as {:?}",
            t.interpretation
        );
        turns += 1;
        println!(
            "{turns:>2} {utterance:<45} -> {:?} {:?}: {}",
            want, t.interpretation.query, t.reply
        );
        t
    };
    // 1. A new search.
    let t = say(&mut g, "show me round glasses", 0.0, I::NewSearch).await;
    assert!(!t.results.hits.is_empty());
    assert!(
        products(&t.results)
            .iter()
            .all(|p| p.shape == pb::FrameShape::Round as i32)
    );
    assert!(t.reply.starts_with("I found"), "{}", t.reply);
    let median = {
        let mut p: Vec<i64> = products(&t.results).iter().map(|p| price_of(p)).collect();
        p.sort();
        p[p.len() / 2]
    };
    // 2. Cheaper: under 80 % of the median shown, still round.
    let t = say(&mut g, "show me cheaper ones", 0.0, I::Refine).await;
    assert!(
        t.interpretation
            .understood
            .iter()
            .any(|c| c.kind == "price")
    );
    assert!(!t.results.hits.is_empty());
    for p in products(&t.results) {
        assert!(
            price_of(p) * 10 <= median * 8 + 100,
            "{} at {} after a median of {median}",
            p.name,
            price_of(p)
        );
        assert_eq!(p.shape, pb::FrameShape::Round as i32);
    }
    // 3. In black: the colour added, the rest kept.
    let t = say(&mut g, "in black", 0.0, I::Refine).await;
    assert!(
        t.interpretation
            .understood
            .iter()
            .any(|c| c.kind == "color")
    );
    for p in products(&t.results) {
        assert!(p.variants.iter().any(|v| v.color == "Black"), "{}", p.name);
        assert_eq!(p.shape, pb::FrameShape::Round as i32);
    }
    let shown: Vec<String> = products(&t.results).iter().map(|p| p.id.clone()).collect();
    // 4. Compare the first two shown.
    let (a, b) = if shown.len() >= 2 {
        let t = say(&mut g, "compare the first and the second", 0.0, I::Compare).await;
        assert_eq!(t.interpretation.product_ids, shown[..2].to_vec());
        assert_eq!(t.results.hits.len(), 2);
        let names: Vec<String> = products(&t.results)
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert!(
            t.reply.contains(&names[0]) && t.reply.contains(&names[1]),
            "{}",
            t.reply
        );
        (names[0].clone(), names[1].clone())
    } else {
        panic!("turn 3 showed {} frames", shown.len())
    };
    // 5. Fit of the second, with the face's width.
    let t = say(&mut g, "does the second one fit my face", 136.0, I::AskFit).await;
    assert_eq!(t.interpretation.product_ids, vec![shown[1].clone()]);
    assert!(
        t.reply.contains(&b) && t.reply.contains("136 mm face"),
        "{}",
        t.reply
    );
    // 6. Fit without a face width: asks for one.
    let t = say(&mut g, "will the first one fit me", 0.0, I::AskFit).await;
    assert!(
        t.reply.contains(&a) && t.reply.contains("Analyse a photo"),
        "{}",
        t.reply
    );
    // 7. Bigger: a size chip, the query keeps round and black.
    let t = say(&mut g, "bigger please", 0.0, I::Refine).await;
    assert!(t.interpretation.understood.iter().any(|c| c.kind == "size"));
    assert!(
        t.interpretation
            .understood
            .iter()
            .any(|c| c.kind == "color")
    );
    // 8. A new search by meaning replaces the query.
    let t = say(
        &mut g,
        "find me something bold for a wedding",
        0.0,
        I::NewSearch,
    )
    .await;
    assert!(!t.interpretation.query.contains("black"));
    assert!(
        products(&t.results)[0].name.starts_with("Bold"),
        "{:?}",
        products(&t.results)[0].name
    );
    // 9. Refine by colour.
    let t = say(&mut g, "do you have these in tortoise", 0.0, I::Refine).await;
    for p in products(&t.results) {
        assert!(
            p.variants.iter().any(|v| v.color == "Tortoise"),
            "{}",
            p.name
        );
    }
    // 10. Compare by numbers.
    let shown: Vec<String> = products(&t.results).iter().map(|p| p.id.clone()).collect();
    if shown.len() >= 3 {
        let t = say(&mut g, "compare 1 and 3", 0.0, I::Compare).await;
        assert_eq!(
            t.interpretation.product_ids,
            vec![shown[0].clone(), shown[2].clone()]
        );
    } else {
        let t = say(&mut g, "compare these two", 0.0, I::Compare).await;
        assert_eq!(t.interpretation.product_ids.len(), 2);
    }
    // 11. Too wide? With a narrow face.
    let t = say(&mut g, "is the first one too wide for me", 124.0, I::AskFit).await;
    assert!(t.reply.contains("124 mm face"), "{}", t.reply);
    // 12. Another new search.
    let t = say(
        &mut g,
        "I am looking for titanium aviators",
        0.0,
        I::NewSearch,
    )
    .await;
    for p in products(&t.results) {
        assert_eq!(p.shape, pb::FrameShape::Aviator as i32);
        assert_eq!(p.material, pb::FrameMaterial::Titanium as i32);
    }
    // 13. A price bound in words.
    let t = say(&mut g, "something less expensive", 0.0, I::Refine).await;
    assert!(
        t.interpretation
            .understood
            .iter()
            .any(|c| c.kind == "price")
    );
    // 14. Not in red.
    let t = say(&mut g, "without the red ones", 0.0, I::Refine).await;
    for p in products(&t.results) {
        assert!(!p.variants.iter().any(|v| v.color == "Red"), "{}", p.name);
    }
    // 15. Fit of "it" (the first shown).
    let t = say(&mut g, "does it fit me", 140.0, I::AskFit).await;
    assert_eq!(t.interpretation.product_ids.len(), 1);
    // 16-18. A new search and two refinements in a row.
    say(
        &mut g,
        "show me sporty frames for running",
        0.0,
        I::NewSearch,
    )
    .await;
    let t = say(&mut g, "in gold", 0.0, I::Refine).await;
    for p in products(&t.results) {
        assert!(p.variants.iter().any(|v| v.color == "Gold"), "{}", p.name);
    }
    let t = say(&mut g, "a bit smaller", 0.0, I::Refine).await;
    assert!(
        t.interpretation
            .understood
            .iter()
            .any(|c| c.kind == "color"),
        "gold kept"
    );
    // 19. Compare the first and the last.
    let t = say(&mut g, "compare the first and the last", 0.0, I::Compare).await;
    assert_eq!(t.results.hits.len(), 2);
    // 20. Start over.
    let t = say(&mut g, "start over with cat eye frames", 0.0, I::NewSearch).await;
    for p in products(&t.results) {
        assert_eq!(p.shape, pb::FrameShape::CatEye as i32);
    }
    assert_eq!(turns, 20);
    // The session keeps the conversation (30 minutes sliding).
    let session = g
        .get_session(pb::GetSessionRequest {
            session_id: s.into(),
        })
        .await
        .expect("session")
        .into_inner()
        .session
        .expect("a session");
    assert_eq!(session.conversation.expect("a conversation").turns, 20);

    // Bad input gets a clear status.
    let refused = |r: Result<Turn, tonic::Status>| r.err().expect("refused");
    let e = refused(turn(&mut g, s, "   ", 0.0).await);
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("utterance:"), "{}", e.message());
    let e = refused(turn(&mut g, s, &"glasses ".repeat(1280), 0.0).await);
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("over the maximum"), "{}", e.message());
    let e = refused(turn(&mut g, "never-started", "compare the first two", 0.0).await);
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().starts_with("session_id:"), "{}", e.message());
    let e = refused(turn(&mut g, "bad id!", "round glasses", 0.0).await);
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}
