//! `discovery-cluster`: the chart's topology on this machine, for a person
//! or a benchmark. Starts a Redis Cluster (3 masters, 1 replica each), the
//! MongoDB-compatible server (`mongod` if on PATH, else SecantusDB), and
//! `discovery serve` processes configured from `helm template`'s rendering
//! (see `discovery_harness::cluster`); prints the gateways, an API key and
//! the process ids; runs until interrupted, then stops everything.
//!
//! ```text
//! discovery-cluster [--bin target/release/discovery]
//!     [--replicas gateway=2,recommendation=2,face-analysis=2,sync=1,monitoring=1]
//!     [--set KEY=VALUE]...   (helm values, e.g. env.DISCOVERY_LIMITS=off)
//! ```
//! Needs `make test-deps` (Redis, SecantusDB) and `make check-deploy`
//! (Helm, PyPI's YAML parser) once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use discovery_harness::cluster::{Chart, Cluster, Supplied};
use discovery_harness::{MongoServer, RedisCluster, workspace_root};

const USAGE: &str =
    "usage: discovery-cluster [--bin PATH] [--replicas svc=n,...] [--set KEY=VALUE]...";

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("discovery-cluster: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("discovery-cluster: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let mut bin = workspace_root().join("target/release/discovery");
    let mut replicas: Vec<(String, usize)> = [
        ("gateway", 2),
        ("recommendation", 2),
        ("face-analysis", 2),
        ("sync", 1),
        ("monitoring", 1),
    ]
    .iter()
    .map(|(s, n)| (s.to_string(), *n))
    .collect();
    let mut sets: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--bin" => bin = PathBuf::from(value()?),
            "--set" => sets.push(value()?),
            "--replicas" => {
                replicas = value()?
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once('=')
                            .ok_or_else(|| format!("--replicas: {kv:?} is not service=count"))?;
                        let n = v
                            .parse()
                            .map_err(|_| format!("--replicas: {v:?} is not a count"))?;
                        Ok((k.to_string(), n))
                    })
                    .collect::<Result<_, String>>()?;
            }
            _ => return Err(USAGE.into()),
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "{}: no such binary (cargo build --release -p discovery, or --bin)",
            bin.display()
        ));
    }
    let redis = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mongo = MongoServer::start().await.map_err(|e| e.to_string())?;
    let db = mongo.fresh_db("cluster");
    let key = {
        let out = std::process::Command::new(&bin)
            .env("DISCOVERY_STORE", "mongodb")
            .env("DISCOVERY_MONGO_URI", mongo.uri())
            .env("DISCOVERY_MONGO_DATABASE", &db)
            .args(["keys", "create", "--client", "cluster", "--tier", "partner"])
            .args(["--scopes", "public,admin"])
            .output()
            .map_err(|e| format!("discovery keys create: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let set_refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let chart = Chart::render("shop", &set_refs).map_err(|e| e.to_string())?;
    // A secret for this run only (std's randomly keyed hasher, twice).
    let secret: String = {
        use std::hash::BuildHasher;
        let r = || std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        format!("{:016x}{:016x}{:016x}", r(), r(), r())
    };
    let supplied = Supplied {
        mongo_uri: mongo.uri(),
        mongo_database: db,
        redis_urls: redis.urls().join(","),
        internal_secret: secret,
        volumes: BTreeMap::new(),
        extra: [
            (
                "DISCOVERY_FACE_MODELS_DIR".to_string(),
                workspace_root().join("models").display().to_string(),
            ),
            (
                "DISCOVERY_TEXT_MODEL_DIR".to_string(),
                workspace_root()
                    .join("models/all-MiniLM-L6-v2")
                    .display()
                    .to_string(),
            ),
        ]
        .into(),
    };
    let plan: Vec<(&str, usize)> = replicas.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    let mut cluster = Cluster::start(chart, &bin, &plan, &supplied).map_err(|e| e.to_string())?;
    cluster.wait_started(Duration::from_secs(180)).await?;
    let gateways: Vec<String> = cluster
        .of("gateway")
        .into_iter()
        .map(|i| format!("http://{}", cluster.pods[i].addr("grpc")))
        .collect();
    let pids: Vec<String> = cluster
        .pods
        .iter()
        .filter_map(|p| p.pid().map(|p| p.to_string()))
        .collect();
    for p in &cluster.pods {
        println!(
            "  {:<15} {:<22} pid {:<8} metrics {:<22} log {}",
            p.service,
            p.addr("grpc"),
            p.pid().map_or_else(|| "-".to_string(), |p| p.to_string()),
            p.addr("metrics"),
            p.log.display()
        );
    }
    println!("gateways: {}", gateways.join(","));
    println!("pids: {}", pids.join(","));
    println!("export DISCOVERY_API_KEY={key}");
    println!("ready (Ctrl-C or SIGTERM stops everything)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| e.to_string())?,
        _ = term.recv() => {}
    }
    for p in &mut cluster.pods {
        p.terminate(Duration::from_secs(10));
    }
    drop(redis);
    drop(mongo);
    Ok(())
}
