//! The gateway, black-box: a recommendation replica killed and restarted
//! under load (ejection, retries, traffic back), rate limits shared by two
//! gateway replicas through a real Redis Cluster, and a browser-style
//! gRPC-Web call with CORS from a Python client.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use discovery_gateway::auth::{self, Tier};
use discovery_gateway::routes::{Scope, Upstream};
use discovery_harness::RedisCluster;
use discovery_kit::CancellationToken;
use discovery_kit::config::Env;
use discovery_kit::server::ServiceHandle;
use discovery_kit::store::{StoreConfig, Workload};
use discovery_proto::v1 as pb;
use discovery_proto::v1::discovery_client::DiscoveryClient;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

fn base_env() -> Env {
    Env::from_pairs([
        ("DISCOVERY_STORE", "memory"),
        ("DISCOVERY_METRICS_PORT", "0"),
        ("DISCOVERY_SHUTDOWN_GRACE", "0s"),
        ("DISCOVERY_CATALOG_REFRESH", "0s"),
        ("DISCOVERY_SIGNALS_REFRESH", "0s"),
        ("DISCOVERY_WARM_INTERVAL", "0s"),
        ("DISCOVERY_GATEWAY_PORT", "0"),
        ("DISCOVERY_HEALTH_INTERVAL", "200ms"),
        ("DISCOVERY_API_KEYS_REFRESH", "1s"),
    ])
}

async fn key(tier: Tier, scopes: &[Scope]) -> String {
    let store = StoreConfig::Memory
        .connect(Workload::Realtime)
        .await
        .unwrap();
    auth::create(&store, "tests", tier, scopes).await.unwrap().0
}

async fn client(
    addr: std::net::SocketAddr,
    headers: &[(&'static str, &str)],
) -> DiscoveryClient<InterceptedService<Channel, common::Headers>> {
    common::client_with(addr, headers).await
}

async fn recommendation(env: &Env, port: u16, token: &CancellationToken) -> ServiceHandle {
    let env = env
        .clone()
        .with("DISCOVERY_RECOMMENDATION_PORT", port.to_string());
    discovery_recommendation::spawn(
        discovery_recommendation::Config::from_env(&env).unwrap(),
        token.clone(),
    )
    .await
    .expect("recommendation replica starts")
}

fn recommend_request(i: u64) -> pb::RecommendRequest {
    pb::RecommendRequest {
        face: Some(pb::FaceContext {
            face_shape: (1 + (i % 7)) as i32,
            face_width_mm: 125.0 + (i % 20) as f32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_is_ejected_without_failed_calls_and_gets_traffic_when_back() {
    let env = base_env()
        .with("DISCOVERY_DEMO_CATALOG", "520")
        .with("DISCOVERY_LIMITS", "off");
    let token_a = CancellationToken::new();
    let token_b = CancellationToken::new();
    let a = recommendation(&env, 0, &token_a).await;
    let b = recommendation(&env, 0, &token_b).await;
    let port_b = b.addr.port();
    let env = env.with(
        "DISCOVERY_RECOMMENDATION_URLS",
        format!("http://{},http://{}", a.addr, b.addr),
    );
    let key = key(Tier::Partner, &[Scope::Public]).await;
    let gw_token = CancellationToken::new();
    let (gw, parts) = discovery_gateway::spawn_with_parts(
        discovery_gateway::Config::from_env(&env).unwrap(),
        gw_token.clone(),
    )
    .await
    .unwrap();
    let pool = parts.pool(Upstream::Recommendation).unwrap().clone();
    let calls_to = |port: u16| {
        pool.replicas()
            .iter()
            .find(|r| r.url.ends_with(&format!(":{port}")))
            .map_or(0, |r| r.calls.load(Ordering::Relaxed))
    };

    // Load: 4 callers in a loop.
    let stop = CancellationToken::new();
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(failures::Failures::default());
    let mut callers = Vec::new();
    for c in 0..4u64 {
        let mut cl = client(gw.addr, &[("x-api-key", &key)]).await;
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        callers.push(tokio::spawn(async move {
            let mut i = c * 1000;
            while !stop.is_cancelled() {
                i += 1;
                match cl.recommend(recommend_request(i)).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(Instant::now(), e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = calls_to(port_b);
    assert!(
        before_kill > 20,
        "both replicas take traffic: b served {before_kill}"
    );

    // Kill b.
    let killed_at = Instant::now();
    token_b.cancel();
    b.wait().await.ok();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let replica_b = pool
        .replicas()
        .iter()
        .find(|r| r.url.ends_with(&format!(":{port_b}")))
        .cloned()
        .unwrap();
    assert!(
        !replica_b.is_healthy() || replica_b.is_ejected(),
        "b is out of rotation"
    );
    let during = calls_to(port_b);
    let ok_during = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        calls_to(port_b) - during <= 2,
        "no traffic to a dead replica once it is out (health probes aside)"
    );
    assert!(
        ok.load(Ordering::Relaxed) > ok_during + 20,
        "a keeps serving"
    );

    // b comes back on the same port and gets traffic again.
    let token_b2 = CancellationToken::new();
    let b2 = recommendation(&env, port_b, &token_b2).await;
    let back = calls_to(port_b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls_to(port_b) < back + 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        calls_to(port_b) >= back + 20,
        "b gets traffic again after it returns"
    );
    stop.cancel();
    for c in callers {
        c.await.unwrap();
    }
    let f = failures.all();
    let after_ejection: Vec<_> = f
        .iter()
        .filter(|(t, _)| *t > killed_at + Duration::from_millis(1000))
        .collect();
    assert!(
        after_ejection.is_empty(),
        "calls failed after ejection: {after_ejection:?}"
    );
    let total = ok.load(Ordering::Relaxed) + f.len() as u64;
    eprintln!(
        "replica kill: {total} calls, {} failed ({:.3}%; retries on the other replica hide a kill \
         unless it cuts an answer already under way)",
        f.len(),
        f.len() as f64 * 100.0 / total as f64
    );
    // The target is < 0.1%. A crash can cut an answer whose headers the
    // gateway already forwarded; that one call ends UNAVAILABLE (retryable),
    // never INTERNAL or a reset stream.
    assert!(
        f.len() as u64 * 1000 < total,
        "error rate under 0.1%: {f:?}"
    );
    assert!(
        f.iter().all(|(_, e)| e.starts_with("Unavailable")),
        "a cut answer is UNAVAILABLE: {f:?}"
    );
    for t in [gw_token, token_a, token_b2] {
        t.cancel();
    }
    let _ = (gw.wait().await, a.wait().await, b2.wait().await);
}

/// A call that is not idempotent (RecordInteraction) is never repeated
/// after a replica may have run it, but one the replica provably never took
/// (its connection refused: a pod gone, or stopped accepting) goes to
/// another replica, as gRPC's transparent retry does. The gateway starts
/// with one replica address refusing connections, before any health check
/// has taken it out: 8 concurrent interactions, none fails (8: even if
/// every one tries the refused address first, its retries stay within the
/// retry budget's reserve of 10; a CI run with 24 spent it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_no_replica_took_goes_to_another_even_if_not_idempotent() {
    let env = base_env()
        .with("DISCOVERY_DEMO_CATALOG", "50")
        .with("DISCOVERY_LIMITS", "off")
        .with("DISCOVERY_HEALTH_INTERVAL", "60s");
    let token = CancellationToken::new();
    let live = recommendation(&env, 0, &token).await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_addr = refused.local_addr().unwrap();
    drop(refused);
    let env = env.with(
        "DISCOVERY_RECOMMENDATION_URLS",
        format!("http://{refused_addr},http://{}", live.addr),
    );
    let key = key(Tier::Partner, &[Scope::Public]).await;
    let gw_token = CancellationToken::new();
    let gw = discovery_gateway::spawn(
        discovery_gateway::Config::from_env(&env).unwrap(),
        gw_token.clone(),
    )
    .await
    .unwrap();
    // Health checks are a minute apart: the refused address stays in.
    let product = client(gw.addr, &[("x-api-key", &key)])
        .await
        .search_products(pb::SearchProductsRequest::default())
        .await
        .expect("an idempotent read is retried on the live replica")
        .into_inner()
        .hits[0]
        .product
        .as_ref()
        .map(|p| p.id.clone())
        .expect("a product");
    let calls = (0..8).map(|i| {
        let (key, product) = (key.clone(), product.clone());
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut c = client(addr, &[("x-api-key", &key)]).await;
            c.record_interaction(pb::RecordInteractionRequest {
                requester: Some(pb::Requester {
                    session_id: format!("s-{i}"),
                    ..Default::default()
                }),
                product_id: product,
                kind: pb::InteractionKind::View as i32,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
        })
    });
    let results = futures::future::join_all(calls).await;
    let failed: Vec<_> = results
        .into_iter()
        .filter_map(|r| r.unwrap().err())
        .collect();
    println!(
        "8 interactions with one replica refusing connections: {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    gw_token.cancel();
    token.cancel();
    let _ = (gw.wait().await, live.wait().await);
}

/// A small failure log (std only).
mod failures {
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Default)]
    pub struct Failures(Mutex<Vec<(Instant, String)>>);

    impl Failures {
        pub fn push(&self, at: Instant, e: tonic::Status) {
            self.0
                .lock()
                .unwrap()
                .push((at, format!("{:?}: {}", e.code(), e.message())));
        }
        pub fn all(&self) -> Vec<(Instant, String)> {
            self.0.lock().unwrap().clone()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_across_two_gateway_replicas_sharing_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap()
        .expect("start redis cluster");
    let env = base_env().with("DISCOVERY_DEMO_CATALOG", "520");
    let token = CancellationToken::new();
    let reco = recommendation(&env, 0, &token).await;
    let env = env
        .with(
            "DISCOVERY_RECOMMENDATION_URLS",
            format!("http://{}", reco.addr),
        )
        .with("DISCOVERY_REDIS_URLS", cluster.urls().join(","))
        .with("DISCOVERY_LIMIT_REDIS_TIMEOUT", "2s");
    let key = key(Tier::Authenticated, &[Scope::Public]).await;
    let config = discovery_gateway::Config::from_env(&env).unwrap();
    let g1 = discovery_gateway::spawn(config.clone(), token.clone())
        .await
        .unwrap();
    let g2 = discovery_gateway::spawn(config, token.clone())
        .await
        .unwrap();

    // Both gateways reach Redis before the calls: a gateway whose pool is
    // still connecting answers from its local fallback bucket (by design,
    // as when Redis is down), which would let more than the shared 20 in.
    for g in [&g1, &g2] {
        common::wait_dependency(g.addr, "redis").await;
    }

    // Authenticated shopper "alice": 20 Recommend calls a minute, shared by
    // both gateways; 40 calls alternate between them.
    let mut c1 = client(g1.addr, &[("x-api-key", &key), ("x-user-id", "alice")]).await;
    let mut c2 = client(g2.addr, &[("x-api-key", &key), ("x-user-id", "alice")]).await;
    let (mut accepted, mut refused) = (0usize, 0usize);
    let mut retry_after = None;
    let started = Instant::now();
    for i in 0..40 {
        let c = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        match c.recommend(recommend_request(i)).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
                retry_after = e
                    .metadata()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                refused += 1;
            }
        }
    }
    eprintln!(
        "two gateways, one Redis Cluster: {accepted} accepted, {refused} refused (limit 20/min)"
    );
    // 20 at once, then one more every 3 s (GCRA); each gateway alone
    // would have let 20 through (40 in all).
    let refills = (started.elapsed().as_secs_f64() / 3.0).ceil() as usize;
    assert!(
        (20..=20 + refills).contains(&accepted),
        "20 a minute across both replicas (+{refills} refilled while the test ran), got {accepted}"
    );
    assert_eq!(accepted + refused, 40);
    let secs: u64 = retry_after
        .expect("retry-after on refusals")
        .parse()
        .unwrap();
    assert!(
        (1..=3).contains(&secs),
        "one call every 3 s: retry after {secs}"
    );
    // Another shopper has their own allowance.
    let mut bob = client(g2.addr, &[("x-api-key", &key), ("x-user-id", "bob")]).await;
    bob.recommend(recommend_request(1))
        .await
        .expect("bob is not limited by alice");
    // Missing and wrong keys.
    let mut nokey = client(g1.addr, &[]).await;
    assert_eq!(
        nokey
            .recommend(recommend_request(1))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let admin_only = client(g1.addr, &[("x-api-key", &key)]).await;
    let e = admin_only
        .clone()
        .warm_cache(pb::WarmCacheRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    token.cancel();
    let _ = (g1.wait().await, g2.wait().await, reco.wait().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_call_through_grpc_web_with_cors() {
    let env = base_env().with("DISCOVERY_DEMO_CATALOG", "520");
    let token = CancellationToken::new();
    let reco = recommendation(&env, 0, &token).await;
    let env = env
        .with(
            "DISCOVERY_RECOMMENDATION_URLS",
            format!("http://{}", reco.addr),
        )
        .with("DISCOVERY_CORS_ORIGINS", "https://shop.example");
    let key = key(Tier::Anonymous, &[Scope::Public]).await;
    let gw = discovery_gateway::spawn(
        discovery_gateway::Config::from_env(&env).unwrap(),
        token.clone(),
    )
    .await
    .unwrap();
    let id = client(gw.addr, &[("x-api-key", &key)])
        .await
        .search_products(pb::SearchProductsRequest {
            query: "aviator".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits[0]
        .product
        .as_ref()
        .unwrap()
        .id
        .clone();
    let script = workspace_script();
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(gw.addr.to_string())
        .arg(&key)
        .arg(&id)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpc-web client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("preflight ok"), "{stdout}");
    assert!(
        stdout.contains(&format!("grpc-status 0, product {id}")),
        "{stdout}"
    );
    assert!(stdout.contains("no key: grpc-status 16"), "{stdout}");
    token.cancel();
    let _ = (gw.wait().await, reco.wait().await);
}

/// A gRPC-Web client as a browser's fetch() would make the calls: HTTP/1.1,
/// `application/grpc-web+proto`, an Origin, a CORS preflight first.
fn workspace_script() -> &'static str {
    r#"
import http.client, struct, sys
addr, key, pid = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = addr.rsplit(':', 1)
origin = 'https://shop.example'
path = '/discovery.v1.Discovery/GetProduct'

c = http.client.HTTPConnection(host, int(port), timeout=10)
c.request('OPTIONS', path, headers={
    'Origin': origin,
    'Access-Control-Request-Method': 'POST',
    'Access-Control-Request-Headers': 'content-type,x-api-key,x-grpc-web',
})
r = c.getresponse(); r.read()
assert r.status in (200, 204), r.status
assert r.getheader('access-control-allow-origin') == origin, r.getheaders()
print('preflight ok')

def call(headers):
    msg = b'\x0a' + bytes([len(pid)]) + pid.encode()
    body = b'\x00' + struct.pack('>I', len(msg)) + msg
    h = {'Origin': origin, 'Content-Type': 'application/grpc-web+proto', 'X-Grpc-Web': '1', 'Accept': 'application/grpc-web+proto'}
    h.update(headers)
    c.request('POST', path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    assert r.status == 200, r.status
    assert r.getheader('access-control-allow-origin') == origin
    status, message, i = r.getheader('grpc-status'), b'', 0
    while i < len(data):
        flag, n = data[i], struct.unpack('>I', data[i+1:i+5])[0]
        frame = data[i+5:i+5+n]; i += 5 + n
        if flag & 0x80:
            for line in frame.decode().split('\r\n'):
                if line.lower().startswith('grpc-status:'):
                    status = line.split(':', 1)[1].strip()
        else:
            message += frame
    return status, message

status, message = call({'X-Api-Key': key})
assert status == '0', status
assert pid.encode() in message
print(f'grpc-status {status}, product {pid}')
status, _ = call({})
print(f'no key: grpc-status {status}')
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_serves_the_last_good_answer_and_fails_fast_otherwise() {
    let env = base_env()
        .with("DISCOVERY_DEMO_CATALOG", "520")
        .with("DISCOVERY_LIMITS", "off");
    let reco_token = CancellationToken::new();
    let reco = recommendation(&env, 0, &reco_token).await;
    let env = env.with(
        "DISCOVERY_RECOMMENDATION_URLS",
        format!("http://{}", reco.addr),
    );
    let key = key(Tier::Partner, &[Scope::Public]).await;
    let token = CancellationToken::new();
    let (gw, parts) = discovery_gateway::spawn_with_parts(
        discovery_gateway::Config::from_env(&env).unwrap(),
        token.clone(),
    )
    .await
    .unwrap();
    let mut c = client(gw.addr, &[("x-api-key", &key)]).await;
    let search = |q: &str| pb::SearchProductsRequest {
        query: q.into(),
        ..Default::default()
    };
    let good = c
        .search_products(search("aviator"))
        .await
        .unwrap()
        .into_inner();
    assert!(!good.hits.is_empty());
    // The only replica goes away: calls fail until the breaker opens.
    reco_token.cancel();
    reco.wait().await.ok();
    let mut failures = 0;
    while parts.breaker_state("SearchProducts") == Some("closed") && failures < 20 {
        let e = c.search_products(search("round")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
        failures += 1;
    }
    assert_eq!(
        parts.breaker_state("SearchProducts"),
        Some("open"),
        "after {failures} failures"
    );
    // The request answered before is served from the last good answer...
    let resp = c
        .search_products(search("aviator"))
        .await
        .expect("fallback answer");
    assert_eq!(
        resp.metadata()
            .get("x-discovery-fallback")
            .map(|v| v.to_str().unwrap()),
        Some("circuit-open")
    );
    assert_eq!(resp.into_inner(), good);
    // ...any other fails fast, saying when to retry.
    let e = c.search_products(search("square")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("circuit open"), "{}", e.message());
    assert!(e.metadata().get("retry-after").is_some());
    token.cancel();
    gw.wait().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = discovery_harness::TestCerts::make(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let (cert, key_file, ca) = (certs.cert, certs.key, certs.ca);
    let env = base_env().with("DISCOVERY_DEMO_CATALOG", "520");
    let token = CancellationToken::new();
    let reco = recommendation(&env, 0, &token).await;
    let key = key(Tier::Partner, &[Scope::Public]).await;
    let env = env
        .with(
            "DISCOVERY_RECOMMENDATION_URLS",
            format!("http://{}", reco.addr),
        )
        .with("DISCOVERY_TLS_CERT", cert.display().to_string())
        .with("DISCOVERY_TLS_KEY", key_file.display().to_string())
        .with("DISCOVERY_HANDSHAKE_TIMEOUT", "1s");
    let gw = discovery_gateway::spawn(
        discovery_gateway::Config::from_env(&env).unwrap(),
        token.clone(),
    )
    .await
    .unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&ca).unwrap(),
        ))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", gw.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake with the gateway");
    let key_value: tonic::metadata::AsciiMetadataValue = key.parse().unwrap();
    let mut c =
        DiscoveryClient::with_interceptor(channel, common::Headers(vec![("x-api-key", key_value)]));
    let hits = c
        .search_products(pb::SearchProductsRequest {
            query: "aviator".into(),
            ..Default::default()
        })
        .await
        .expect("a call over TLS")
        .into_inner()
        .hits;
    assert!(!hits.is_empty());
    // Plaintext HTTP/2 to the TLS port does not get through.
    let addr = gw.addr;
    let plain_call = tokio::time::timeout(Duration::from_secs(5), async move {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        DiscoveryClient::new(channel)
            .search_products(pb::SearchProductsRequest::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    assert!(
        !matches!(plain_call, Ok(Ok(_))),
        "plaintext must not be served on the TLS port"
    );
    // Slow-loris handshakes: 32 connections that never finish their TLS
    // handshake (half of them send the first byte of a ClientHello) are
    // cut after DISCOVERY_HANDSHAKE_TIMEOUT, and a real client is served
    // meanwhile.
    let started = Instant::now();
    let stalled: Vec<_> = (0..32)
        .map(|i| {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                if i % 2 == 0 {
                    s.write_all(&[0x16]).await.unwrap();
                }
                let mut buf = [0u8; 64];
                let closed = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => continue,
                        }
                    }
                })
                .await;
                closed.is_ok()
            })
        })
        .collect();
    let during = c
        .search_products(pb::SearchProductsRequest {
            query: "round".into(),
            ..Default::default()
        })
        .await;
    let closed = futures::future::join_all(stalled)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    println!(
        "32 stalled TLS handshakes: {closed} cut within {:?}; a real client's call meanwhile: {}",
        started.elapsed(),
        if during.is_ok() { "OK" } else { "failed" }
    );
    assert_eq!(closed, 32, "every stalled handshake is cut");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(during.is_ok(), "{during:?}");
    // Half a configuration is refused up front, naming the variable.
    let half = base_env().with("DISCOVERY_TLS_CERT", cert.display().to_string());
    let e = discovery_gateway::Config::from_env(&half)
        .unwrap_err()
        .to_string();
    assert!(e.contains("DISCOVERY_TLS_KEY"), "{e}");
    token.cancel();
    let _ = (gw.wait().await, reco.wait().await);
}
