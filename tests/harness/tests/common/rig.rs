//! The system the hostile-caller tests attack: the gateway and the
//! services (recommendation, sync, monitoring, optionally face-analysis) on
//! a 3-master Redis Cluster and the MongoDB-compatible server, with
//! internal authentication on, as the chart runs them; and the legitimate
//! caller that works while an attack runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use discovery_gateway::auth::{self, Tier};
use discovery_gateway::routes::Scope;
use discovery_harness::{MongoServer, RedisCluster};
use discovery_kit::CancellationToken;
use discovery_kit::config::Env;
use discovery_kit::server::ServiceHandle;
use discovery_kit::store::{Store, StoreConfig, Workload};
use discovery_loadgen::grpc::frame;
use discovery_loadgen::{CallError, Target};
use discovery_proto::v1 as pb;
use discovery_proto::v1::discovery_client::DiscoveryClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const GET: &str = "/discovery.v1.Discovery/GetProduct";

/// The system under attack.
pub struct Rig {
    pub _redis: RedisCluster,
    pub _mongo: MongoServer,
    pub shutdown: CancellationToken,
    pub store: Store,
    pub gateway: ServiceHandle,
    pub parts: discovery_gateway::Parts,
    pub reco: ServiceHandle,
    pub sync: ServiceHandle,
    pub monitoring: ServiceHandle,
    pub face: Option<ServiceHandle>,
}

impl Rig {
    pub async fn start(name: &str, extra: &[(&str, &str)]) -> Rig {
        Self::start_full(name, extra, false).await
    }

    /// With a face-analysis service too (the models from `make test`).
    pub async fn start_full(name: &str, extra: &[(&str, &str)], with_face: bool) -> Rig {
        let redis = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
            .await
            .unwrap()
            .expect("start redis cluster");
        let mongo = MongoServer::start().await.expect("start mongo");
        let env = Env::from_pairs(mongo.service_vars(&mongo.fresh_db(name)))
            .with_all([
                ("DISCOVERY_GATEWAY_PORT", "0"),
                ("DISCOVERY_RECOMMENDATION_PORT", "0"),
                ("DISCOVERY_SYNC_PORT", "0"),
                ("DISCOVERY_MONITORING_PORT", "0"),
                ("DISCOVERY_DEMO_CATALOG", "200"),
                ("DISCOVERY_WARM_INTERVAL", "0s"),
                ("DISCOVERY_SIGNALS_REFRESH", "0s"),
                ("DISCOVERY_CATALOG_REFRESH", "0s"),
                ("DISCOVERY_HEALTH_INTERVAL", "200ms"),
                ("DISCOVERY_API_KEYS_REFRESH", "1s"),
                ("DISCOVERY_MONITORING_SCRAPE_INTERVAL", "1s"),
                ("DISCOVERY_INTERNAL_SECRET", super::TEST_SECRET),
            ])
            .with("DISCOVERY_REDIS_URLS", redis.urls().join(","))
            .with_all(extra.iter().copied());
        let shutdown = CancellationToken::new();
        let reco = discovery_recommendation::spawn(
            discovery_recommendation::Config::from_env(&env).expect("config"),
            shutdown.clone(),
        )
        .await
        .expect("recommendation starts");
        let env = env.with(
            "DISCOVERY_RECOMMENDATION_URLS",
            format!("http://{}", reco.addr),
        );
        let sync = discovery_sync::spawn(
            discovery_sync::Config::from_env(&env).expect("config"),
            shutdown.clone(),
        )
        .await
        .expect("sync starts");
        let env = env.with("DISCOVERY_SYNC_URLS", format!("http://{}", sync.addr));
        let monitoring = discovery_monitoring::spawn(
            discovery_monitoring::Config::from_env(&env).expect("config"),
            shutdown.clone(),
        )
        .await
        .expect("monitoring starts");
        let mut env = env.with(
            "DISCOVERY_MONITORING_URLS",
            format!("http://{}", monitoring.addr),
        );
        let face = if with_face {
            let face_env = env
                .clone()
                .with("DISCOVERY_FACE_ANALYSIS_PORT", "0")
                .with("DISCOVERY_FACE_WORKERS", "1")
                .with(
                    "DISCOVERY_FACE_MODELS_DIR",
                    discovery_harness::workspace_root()
                        .join("models")
                        .display()
                        .to_string(),
                );
            let f = discovery_face_analysis::spawn(
                discovery_face_analysis::Config::from_env(&face_env).expect("config"),
                shutdown.clone(),
            )
            .await
            .expect("face-analysis starts");
            env = env.with("DISCOVERY_FACE_ANALYSIS_URLS", format!("http://{}", f.addr));
            Some(f)
        } else {
            None
        };
        let store = StoreConfig::from_env(&env)
            .unwrap()
            .connect(Workload::Realtime)
            .await
            .unwrap();
        let (gateway, parts) = discovery_gateway::spawn_with_parts(
            discovery_gateway::Config::from_env(&env).expect("config"),
            shutdown.clone(),
        )
        .await
        .expect("gateway starts");
        // Limits are counted in Redis from the first call.
        super::wait_dependency(gateway.addr, "redis").await;
        Rig {
            _redis: redis,
            _mongo: mongo,
            shutdown,
            store,
            gateway,
            parts,
            reco,
            sync,
            monitoring,
            face,
        }
    }

    /// A new key, loaded by the gateway before this returns.
    pub async fn key(
        &self,
        client: &str,
        tier: Tier,
        scopes: &[Scope],
        sources: &[&str],
    ) -> String {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let (key, _) = auth::create_with_sources(&self.store, client, tier, scopes, &sources)
            .await
            .unwrap();
        self.parts.keys.refresh(&self.store).await.unwrap();
        key
    }

    pub async fn target(&self, key: &str, connections: usize) -> Target {
        Target::connect(
            &format!("http://{}", self.gateway.addr),
            Some(key),
            connections,
            Duration::from_secs(10),
        )
        .await
        .expect("connect to the gateway")
    }

    pub async fn product_ids(&self, key: &str) -> Vec<String> {
        let mut c = client(self.gateway.addr, &[("x-api-key", key)]).await;
        c.search_products(pb::SearchProductsRequest {
            query: String::new(),
            page: Some(pb::PageRequest {
                page_size: 20,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .hits
        .into_iter()
        .filter_map(|h| h.product.map(|p| p.id))
        .collect()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for s in [self.gateway, self.monitoring, self.sync, self.reco]
            .into_iter()
            .chain(self.face)
        {
            let _ = s.wait().await;
        }
    }
}

pub async fn client(
    addr: std::net::SocketAddr,
    headers: &[(&'static str, &str)],
) -> DiscoveryClient<InterceptedService<Channel, super::Headers>> {
    super::client_with(addr, headers).await
}

/// A legitimate caller reading products while an attack runs; counts its
/// calls and failures (with the first few reasons).
pub struct Bystander {
    calls: Arc<AtomicU64>,
    failures: Arc<parking_lot::Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Bystander {
    pub fn start(target: Arc<Target>, ids: Vec<String>) -> Bystander {
        let calls = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (c, f, s) = (calls.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut i = 0usize;
            while !s.is_cancelled() {
                let id = ids[i % ids.len()].clone();
                i += 1;
                let r = target
                    .call(GET, frame(&pb::GetProductRequest { id: id.clone() }), true)
                    .await;
                c.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(a) => {
                        let p = <pb::GetProductResponse as prost::Message>::decode(a.message)
                            .expect("a product");
                        assert_eq!(p.product.map(|p| p.id), Some(id), "no wrong answer");
                    }
                    Err(e) => {
                        let mut f = f.lock();
                        if f.len() < 1000 {
                            f.push(format!("{e:?}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Bystander {
            calls,
            failures,
            stop,
            task,
        }
    }

    pub async fn finish(self, what: &str) {
        self.stop.cancel();
        let _ = self.task.await;
        let calls = self.calls.load(Ordering::Relaxed);
        let failures = self.failures.lock().clone();
        println!(
            "{what}: a legitimate caller made {calls} calls during the attack, {} failed",
            failures.len()
        );
        assert!(calls > 0, "{what}: the bystander made calls");
        assert!(
            failures.is_empty(),
            "{what}: the bystander saw failures: {:?}",
            &failures[..failures.len().min(5)]
        );
    }
}

pub fn code_of(r: &Result<discovery_loadgen::grpc::Answer, CallError>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(CallError::Status(c, _)) => *c,
        Err(_) => -1,
    }
}

/// Series and bytes of the process's `/metrics` page (every service of
/// the rig records into the one process registry).
pub fn metrics_size() -> (usize, usize) {
    let (series, bytes) = metrics_series();
    (series.len(), bytes)
}

/// The series names (with labels) of the process's `/metrics` page.
pub fn metrics_series() -> (std::collections::BTreeSet<String>, usize) {
    let text = discovery_kit::metrics::render();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k.to_string()))
        .collect();
    (series, text.len())
}

/// Calls GetProduct `n` times with `headers`; the codes seen.
pub async fn codes_of(
    t: &Target,
    id: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> std::collections::BTreeMap<i32, usize> {
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = t
            .call_with(
                GET,
                frame(&pb::GetProductRequest { id: id.into() }),
                headers,
            )
            .await;
        *codes.entry(code_of(&r)).or_insert(0) += 1;
    }
    codes
}

/// One Shopify NDJSON line (a valid round acetate frame).
pub fn shopify_line(id: usize, updated_at: &str, price: &str) -> String {
    format!(
        concat!(
            r#"{{"id": {id}, "title": "Hostile Model {id}", "vendor": "Acme", "tags": "shape:round, material:acetate, size:50-20-145, width:130","#,
            r#" "updated_at": "{u}", "variants": [{{"sku": "HOSTILE-{id}", "price": "{p}", "option1": "Black", "inventory_quantity": 3}}]}}"#,
            "\n"
        ),
        id = id,
        u = updated_at,
        p = price
    )
}

/// Ingests `lines` as `source` through the gateway with `key` and follows the
/// job to its final state.
pub async fn feed(
    addr: std::net::SocketAddr,
    key: &str,
    source: &str,
    lines: String,
) -> Result<pb::SyncJob, tonic::Status> {
    let mut c = client(addr, &[("x-api-key", key)]).await;
    let msgs = vec![
        pb::IngestCatalogRequest {
            item: Some(pb::ingest_catalog_request::Item::Header(pb::IngestHeader {
                source: source.into(),
                format: pb::FeedFormat::ShopifyNdjson as i32,
                idempotency_key: String::new(),
            })),
        },
        pb::IngestCatalogRequest {
            item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(
                lines.into_bytes(),
            )),
        },
    ];
    let resp = c
        .ingest_catalog(futures::stream::iter(msgs))
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
    Ok(last.expect("a final state"))
}
