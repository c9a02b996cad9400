//! Argument parsing and the subcommands.

use clap::{Parser, Subcommand};
use discovery_kit::CancellationToken;
use discovery_kit::config::Env;
use discovery_kit::server::BoxError;
use discovery_proto::topology::GATEWAY;
use discovery_proto::v1 as pb;
use discovery_proto::v1::discovery_client::DiscoveryClient;

fn env_help() -> String {
    let mut s = String::from("Environment variables (all optional):\n");
    for v in crate::variables::all() {
        let default = if v.default.is_empty() {
            "unset".to_string()
        } else {
            v.default.to_string()
        };
        s.push_str(&format!(
            "  {:<32} {} [default: {}]\n",
            v.name, v.help, default
        ));
    }
    s
}

/// discovery: face analysis and frame recommendations for eyewear shops.
#[derive(Debug, Parser)]
#[command(name = "discovery", version, after_long_help = env_help(), after_help = "Run `discovery --help` for the environment variables.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all five services in one process on localhost, with the embedded
    /// store, an in-process cache and a demo catalogue (no MongoDB or Redis needed).
    Up,
    /// Run one service, configured from the environment (what each container runs).
    Serve {
        /// gateway, face-analysis, recommendation, sync or monitoring
        /// (container images set DISCOVERY_SERVICE).
        #[arg(env = "DISCOVERY_SERVICE", value_parser = ["gateway", "face-analysis", "recommendation", "sync", "monitoring"])]
        service: String,
    },
    /// Ask a running gateway for recommendations and print them (exit
    /// status as for admin).
    Try {
        /// Face shape: oval, round, square, heart, oblong, diamond, triangle.
        #[arg(long, default_value = "oval")]
        face_shape: String,
        /// Face width in millimetres.
        #[arg(long, default_value_t = 138.0)]
        face_width_mm: f32,
        /// How many results.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// A photo (JPEG, PNG or WebP): analyse the face first and use its
        /// shape and measurements instead of --face-shape/--face-width-mm.
        #[arg(long)]
        photo: Option<std::path::PathBuf>,
        #[command(flatten)]
        gateway: crate::admin::GatewayArgs,
    },
    /// Send a catalogue feed file to a running gateway and show the job's
    /// progress (a key with the ingest scope; exit status as for admin).
    Sync {
        /// The feed: one JSON object per line.
        file: std::path::PathBuf,
        /// Source name; namespaces product ids ("shopify:acme-optics").
        #[arg(long)]
        source: String,
        /// shopify (Shopify product JSON) or ndjson (our product documents).
        #[arg(long, default_value = "shopify", value_parser = ["shopify", "ndjson"])]
        format: String,
        #[command(flatten)]
        gateway: crate::admin::GatewayArgs,
    },
    /// Load a running gateway with one of the spec's scenarios and report
    /// latency (HDR: p50 ... p99.9, max), throughput and errors by gRPC code.
    /// Only loopback targets; every run stops by itself.
    Bench(BenchArgs),
    /// Create, list or revoke API keys (in the configured MongoDB).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Operator commands against a running gateway (a key with the admin
    /// scope): system health, alerts, the SLA report, the recommendation cache.
    /// Exit status: 0 answered, 3 refused (key, scope, arguments, limits),
    /// 4 unavailable (no gateway, no replica, deadline), 1 anything else.
    Admin {
        #[command(subcommand)]
        action: crate::admin::AdminAction,
        #[command(flatten)]
        gateway: crate::admin::GatewayArgs,
    },
    /// The alert rules file, offline: check one, or render Prometheus'
    /// copy (alerts.yml).
    Rules {
        #[command(subcommand)]
        action: crate::rules::RulesAction,
    },
    /// The chart's autoscaling, simulated (a model, no load): a day, a 10x
    /// spike and a surge replayed against the HPA policies (seed 000's
    /// and the chart's) and the measured per-pod capacity: pods over time,
    /// time to 20 pods, predicted p99. Markdown; --json: every minute.
    Autoscale {
        /// Per scenario, policy and service, one entry per minute.
        #[arg(long)]
        json: bool,
    },
    /// List the environment variables with their defaults.
    Env {
        /// A JSON array of {name, default, help} instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// normal (browse/recommend/search mix at --rate), peak (ramp to 5x),
    /// spike (0 -> --rate -> 0), soak (--rate for 30 min), face (AnalyzeFace,
    /// one caller per core).
    #[arg(long, default_value = "normal", value_parser = discovery_loadgen::plan::SCENARIOS)]
    scenario: String,
    /// Calls per second (open loop: calls leave on schedule whatever the answers do).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Closed loop instead: this many callers, each waiting for its answer.
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long (60s; soak 30m; face 20s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Stop after this many calls.
    #[arg(long)]
    max_calls: Option<u64>,
    /// Gateway URL (loopback only); several, comma-separated, for a
    /// multi-process system: the connections are spread over them.
    #[arg(long, default_value = GATEWAY.default_url)]
    gateway: String,
    /// API key (`discovery up` prints one).
    #[arg(long, env = "DISCOVERY_API_KEY", hide_env_values = true)]
    api_key: String,
    /// HTTP/2 connections to the gateway (spread over its workers).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Threads the load tool's runtime uses.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-call timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Photo for the face scenario.
    #[arg(long)]
    photo: Option<std::path::PathBuf>,
    /// Skip warming the caches (one call per distinct request) before the run.
    #[arg(long)]
    no_warm: bool,
    /// The server's process ids (comma-separated for a multi-process
    /// system): their CPU per call goes in the report.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Write bench-SCENARIO.json and bench-SCENARIO.md here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Exit with status 1 if any call failed or was not sent.
    #[arg(long)]
    strict: bool,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    discovery_kit::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 500ms, 60s, 30m)"))
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Create a key; prints it once (only its hash is stored).
    Create {
        /// Client name (the shop or integration).
        #[arg(long)]
        client: String,
        /// anonymous, authenticated or partner.
        #[arg(long, default_value = "authenticated", value_parser = ["anonymous", "authenticated", "partner"])]
        tier: String,
        /// Comma-separated: public, ingest, admin.
        #[arg(long, default_value = "public")]
        scopes: String,
        /// With the ingest scope: the feed sources the key may write and
        /// read, comma-separated (e.g. shopify:acme-optics), or * for all.
        #[arg(long, default_value = "")]
        sources: String,
    },
    /// List keys (ids, clients, tiers, scopes; never secrets).
    List {
        /// One JSON array instead of a line per key.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; gateways drop it at their next refresh.
    Revoke {
        /// The key id (the part after `dk_`).
        id: String,
    },
}

/// Entry point: parses arguments and runs the subcommand.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Env { json: false } => {
            print!("{}", env_help());
            std::process::ExitCode::SUCCESS
        }
        Command::Env { json: true } => {
            let vars: Vec<_> = crate::variables::all()
                .into_iter()
                .map(
                    |v| serde_json::json!({ "name": v.name, "default": v.default, "help": v.help }),
                )
                .collect();
            println!("{}", serde_json::Value::from(vars));
            std::process::ExitCode::SUCCESS
        }
        Command::Up => discovery_kit::server::run_binary("discovery", up),
        Command::Serve { service } => {
            let name: &'static str = match service.as_str() {
                "gateway" => "gateway",
                "face-analysis" => "face-analysis",
                "recommendation" => "recommendation",
                "sync" => "sync",
                _ => "monitoring",
            };
            discovery_kit::server::run_binary(name, move |env, shutdown| serve(name, env, shutdown))
        }
        Command::Try {
            gateway,
            face_shape,
            face_width_mm,
            count,
            photo,
        } => client_command(
            "try",
            try_it(&gateway, &face_shape, face_width_mm, count, photo),
        ),
        Command::Sync {
            file,
            source,
            format,
            gateway,
        } => client_command("sync", sync_file(file, source, format, gateway)),
        Command::Keys { action } => client_command("keys", keys(action)),
        Command::Rules { action } => match crate::rules::run(action) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("discovery rules: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Admin { action, gateway } => {
            client_command("admin", crate::admin::admin(action, gateway))
        }
        Command::Bench(args) => bench_command(args),
        Command::Autoscale { json } => crate::admin::autoscale(json),
    }
}

/// `discovery bench`: on a runtime of `--threads` workers; the report goes
/// to stdout as Markdown (and to `--out` as JSON and Markdown).
fn bench_command(args: BenchArgs) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("discovery bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let strict = args.strict;
    match rt.block_on(bench(args)) {
        Ok(report) if strict && !report.clean() => {
            eprintln!(
                "discovery bench: {} errors, {} calls not sent",
                report.errors, report.not_sent
            );
            std::process::ExitCode::FAILURE
        }
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("discovery bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(args: BenchArgs) -> Result<discovery_loadgen::Report, BoxError> {
    use std::sync::Arc;
    let plan = discovery_loadgen::scenario(
        &args.scenario,
        args.rate,
        args.concurrency,
        args.duration,
        args.max_calls,
    )?;
    let photo = match &args.photo {
        Some(p) => Some(
            std::fs::read(p).map_err(|e| format!("cannot read the photo {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let target = Arc::new(
        discovery_loadgen::Target::connect(
            &args.gateway,
            Some(&args.api_key),
            args.connections,
            args.timeout,
        )
        .await?,
    );
    let corpus = Arc::new(discovery_loadgen::Corpus::build(&target, &plan.mix, photo).await?);
    if !args.no_warm {
        let n = corpus.warm(&target, &plan.mix).await?;
        eprintln!("discovery bench: warmed the caches with {n} calls");
    }
    eprintln!(
        "discovery bench: {} against {} ({:?})",
        plan.scenario, args.gateway, plan.load
    );
    let options = discovery_loadgen::RunOptions {
        progress: true,
        server_pids: args.server_pid,
    };
    let report = discovery_loadgen::run(target, corpus, &plan, &options).await;
    let md = report.to_markdown();
    println!("{md}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let base = dir.join(format!("bench-{}", plan.scenario));
        std::fs::write(base.with_extension("json"), report.to_json())?;
        std::fs::write(base.with_extension("md"), md)?;
        eprintln!("discovery bench: report in {}.{{json,md}}", base.display());
    }
    Ok(report)
}

/// Runs a client subcommand on a small runtime; errors become one line and exit 1.
fn client_command(
    name: &str,
    work: impl std::future::Future<Output = Result<(), BoxError>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("discovery: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("discovery {name}: {:?}: {}", s.code(), s.message()),
                None => eprintln!("discovery {name}: {e}"),
            }
            std::process::ExitCode::from(exit_code(&*e))
        }
    }
}

/// 3 when the gateway refused the call (the caller must change something),
/// 4 when nothing could answer (trying later may work), else 1.
fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    use tonic::Code::*;
    match e.downcast_ref::<tonic::Status>().map(tonic::Status::code) {
        Some(
            Unauthenticated | PermissionDenied | InvalidArgument | ResourceExhausted | NotFound
            | FailedPrecondition | OutOfRange | AlreadyExists,
        ) => 3,
        Some(Unavailable | DeadlineExceeded) => 4,
        _ => 1,
    }
}

/// Streams a feed file through the gateway in 64 KiB chunks, then follows
/// the job, redrawing one progress line.
async fn sync_file(
    file: std::path::PathBuf,
    source: String,
    format: String,
    gateway: crate::admin::GatewayArgs,
) -> Result<(), BoxError> {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(&file)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let total = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut client = crate::admin::client(&gateway).await?;
    let header = pb::IngestCatalogRequest {
        item: Some(pb::ingest_catalog_request::Item::Header(pb::IngestHeader {
            source,
            format: if format == "ndjson" {
                pb::FeedFormat::Ndjson
            } else {
                pb::FeedFormat::ShopifyNdjson
            } as i32,
            idempotency_key: String::new(),
        })),
    };
    // Read the file as the gRPC stream asks for it (bounded memory).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header).await?;
    let reader = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            buf.truncate(n);
            sent += n as u64;
            eprint!(
                "\rsending {:>5.1}%",
                100.0 * sent as f64 / total.max(1) as f64
            );
            let chunk = pb::IngestCatalogRequest {
                item: Some(pb::ingest_catalog_request::Item::NdjsonChunk(buf)),
            };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    });
    let resp = client
        .ingest_catalog(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    reader.await??;
    eprintln!();
    let mut watch = client
        .watch_sync_job(pb::WatchSyncJobRequest {
            job_id: resp.job_id.clone(),
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(j) = watch.message().await? {
        let done = j.upserted + j.unchanged + j.rejected;
        let width = 30usize;
        let filled = (width as u64 * done / j.received.max(1)) as usize;
        eprint!(
            "\r{} [{}{}] {done}/{} written {} unchanged {} rejected {}",
            j.job_id,
            "#".repeat(filled.min(width)),
            " ".repeat(width - filled.min(width)),
            j.received,
            j.upserted,
            j.unchanged,
            j.rejected
        );
        let _ = std::io::stderr().flush();
        last = Some(j);
    }
    eprintln!();
    let job = last.ok_or("the job stream ended without a state")?;
    if gateway.json {
        use prost::Message;
        crate::admin::print_message("SyncJob", &job.encode_to_vec(), true)?;
    }
    match pb::SyncJobState::try_from(job.state) {
        Ok(pb::SyncJobState::Succeeded) if gateway.json => Ok(()),
        Ok(pb::SyncJobState::Succeeded) => {
            println!(
                "job {} succeeded: {} received, {} written, {} unchanged, {} rejected{}",
                job.job_id,
                job.received,
                job.upserted,
                job.unchanged,
                job.rejected,
                if job.rejected > 0 {
                    " (see ListDeadLetters for the reasons)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        _ => Err(format!("job {} failed: {}", job.job_id, job.error).into()),
    }
}

async fn up(env: Env, shutdown: CancellationToken) -> Result<(), BoxError> {
    crate::up::check(&env)?;
    let system = crate::up::start(env, shutdown).await?;
    let gw = system.gateway();
    println!();
    println!(
        "discovery is up: all five services run in this process (embedded store, in-process cache, demo catalogue)."
    );
    for s in &system.services {
        println!("  {:<15} grpc://{}", s.name, s.addr);
    }
    if let Some(m) = system.metrics_addr {
        println!("  {:<15} http://{}/metrics", "metrics", m);
        println!("  {:<15} http://{}/dashboard", "dashboard", m);
    }
    println!(
        "  (the services' own ports answer health checks to anyone and everything else only to each other: docs/security.md)"
    );
    println!();
    println!("Public API (gateway): {gw}. API keys for this run:");
    println!("  development (all scopes): {}", system.api_key);
    println!(
        "  browser (public scope, anonymous limits): {}",
        system.browser_key
    );
    println!("Try it:");
    println!("  export DISCOVERY_API_KEY={}", system.api_key);
    println!(
        "  cargo run -q -p discovery -- try --gateway http://{gw} --face-shape round --face-width-mm 132"
    );
    println!(
        "  cargo run -q -p discovery -- try --gateway http://{gw} --photo your-selfie.jpg   # analyse a face, then recommend"
    );
    println!("or with grpcurl:");
    println!(
        "  grpcurl -plaintext -H \"x-api-key: $DISCOVERY_API_KEY\" -d '{{\"face\":{{\"face_shape\":\"FACE_SHAPE_ROUND\",\"face_width_mm\":132}},\"page\":{{\"page_size\":3}}}}' {gw} discovery.v1.Discovery/Recommend"
    );
    println!("Press ctrl-c to stop.");
    system.wait().await
}

async fn serve(name: &'static str, env: Env, shutdown: CancellationToken) -> Result<(), BoxError> {
    let handle = match name {
        "gateway" => {
            discovery_gateway::spawn(discovery_gateway::Config::from_env(&env)?, shutdown).await?
        }
        "face-analysis" => {
            discovery_face_analysis::spawn(
                discovery_face_analysis::Config::from_env(&env)?,
                shutdown,
            )
            .await?
        }
        "recommendation" => {
            discovery_recommendation::spawn(
                discovery_recommendation::Config::from_env(&env)?,
                shutdown,
            )
            .await?
        }
        "sync" => discovery_sync::spawn(discovery_sync::Config::from_env(&env)?, shutdown).await?,
        _ => {
            discovery_monitoring::spawn(discovery_monitoring::Config::from_env(&env)?, shutdown)
                .await?
        }
    };
    handle.wait().await
}

/// Sends the API key on every call.
#[derive(Clone)]
pub(crate) struct WithKey(pub(crate) tonic::metadata::AsciiMetadataValue);

impl tonic::service::Interceptor for WithKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("x-api-key", self.0.clone());
        Ok(req)
    }
}

pub(crate) type GatewayClient = DiscoveryClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, WithKey>,
>;

async fn keys(action: KeysAction) -> Result<(), BoxError> {
    use discovery_gateway::auth::{self, Tier};
    use discovery_gateway::routes::Scope;
    let env = Env::process();
    let config = discovery_kit::store::StoreConfig::from_env(&env)?;
    if matches!(config, discovery_kit::store::StoreConfig::Memory) {
        return Err("keys live in MongoDB: set DISCOVERY_STORE=mongodb and DISCOVERY_MONGO_URI (`discovery up` prints keys for its embedded store)".into());
    }
    let store = config
        .connect(discovery_kit::store::Workload::Realtime)
        .await?;
    match action {
        KeysAction::Create {
            client,
            tier,
            scopes,
            sources,
        } => {
            let tier = Tier::parse(&tier).ok_or("--tier: anonymous, authenticated or partner")?;
            let scopes = scopes
                .split(',')
                .map(|s| {
                    Scope::parse(s.trim())
                        .ok_or(format!("--scopes: {s:?} is not public, ingest or admin"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let sources: Vec<String> = sources
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if scopes.contains(&Scope::Ingest) && sources.is_empty() {
                return Err("--sources: an ingest key needs the feed sources it may write (e.g. --sources shopify:acme-optics), or * for every source".into());
            }
            let (key, id) =
                auth::create_with_sources(&store, &client, tier, &scopes, &sources).await?;
            println!("{key}");
            eprintln!(
                "created key {id} for {client} ({}); it is shown only now",
                tier.name()
            );
        }
        KeysAction::List { json } => {
            let mut all = Vec::new();
            for d in auth::list(&store).await? {
                let (id, client, tier) = (
                    d.get_str("_id").unwrap_or("?"),
                    d.get_str("client").unwrap_or("?"),
                    d.get_str("tier").unwrap_or("?"),
                );
                let scopes: Vec<&str> = d
                    .get_array("scopes")
                    .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                    .unwrap_or_default();
                let state = if d.get_datetime("revokedAt").is_ok() {
                    "revoked"
                } else {
                    "active"
                };
                if json {
                    all.push(serde_json::json!({ "id": id, "client": client, "tier": tier, "scopes": scopes, "state": state }));
                } else {
                    println!(
                        "{id}  client={client}  tier={tier}  scopes={}  {state}",
                        scopes.join(",")
                    );
                }
            }
            if json {
                println!("{}", serde_json::Value::from(all));
            }
        }
        KeysAction::Revoke { id } => {
            if !auth::revoke(&store, &id).await? {
                return Err(format!("no key {id:?}").into());
            }
            println!("revoked {id}; gateways drop it within DISCOVERY_API_KEYS_REFRESH (10 s)");
        }
    }
    Ok(())
}

async fn try_it(
    gateway: &crate::admin::GatewayArgs,
    face_shape: &str,
    face_width_mm: f32,
    count: u32,
    photo: Option<std::path::PathBuf>,
) -> Result<(), BoxError> {
    let shape = pb::FaceShape::from_str_name(&format!("FACE_SHAPE_{}", face_shape.to_ascii_uppercase()))
        .ok_or_else(|| format!("--face-shape: {face_shape:?} is not one of oval, round, square, heart, oblong, diamond, triangle"))?;
    let mut client = crate::admin::client(gateway).await?;
    let mut face = pb::FaceContext {
        face_shape: shape as i32,
        face_width_mm,
        ..Default::default()
    };
    use prost::Message;
    let mut analysis = serde_json::Value::Null;
    if let Some(path) = photo {
        let image = std::fs::read(&path).map_err(|e| format!("--photo {}: {e}", path.display()))?;
        let r = client
            .analyze_face(pb::AnalyzeFaceRequest {
                input: Some(pb::analyze_face_request::Input::Image(image)),
                ..Default::default()
            })
            .await
            .map_err(|s| {
                tonic::Status::new(s.code(), format!("{}: {}", path.display(), s.message()))
            })?
            .into_inner()
            .result
            .unwrap_or_default();
        let m = r.measurements.unwrap_or_default();
        let mm = |v: Option<pb::Measurement>| v.unwrap_or_default();
        let name = |s: i32| {
            pb::FaceShape::try_from(s)
                .map_or("unknown", |s| {
                    s.as_str_name().trim_start_matches("FACE_SHAPE_")
                })
                .to_ascii_lowercase()
        };
        let (pd, width) = (mm(m.pupillary_distance), mm(m.face_width));
        if gateway.json {
            analysis = crate::admin::message_json("FaceAnalysisResult", &r.encode_to_vec())?;
        } else {
            println!(
                "Face: {} ({:.0}%, then {} {:.0}%), PD {:.1} mm (confidence {:.2}), face width {:.1} mm, analysed in {:.1} ms",
                name(r.face_shape),
                r.face_shape_confidence * 100.0,
                name(r.runner_up_shape),
                r.runner_up_confidence * 100.0,
                pd.value_mm,
                pd.confidence,
                width.value_mm,
                r.processing_time_us as f64 / 1000.0
            );
        }
        face = pb::FaceContext {
            face_shape: r.face_shape,
            face_width_mm: width.value_mm,
            pupillary_distance_mm: pd.value_mm,
            nose_bridge_width_mm: mm(m.nose_bridge_width).value_mm,
            analysis_id: r.analysis_id,
        };
    }
    let (face_shape, face_width_mm) = (
        pb::FaceShape::try_from(face.face_shape)
            .map_or("unknown", |s| {
                s.as_str_name().trim_start_matches("FACE_SHAPE_")
            })
            .to_ascii_lowercase(),
        face.face_width_mm,
    );
    let resp = client
        .recommend(pb::RecommendRequest {
            face: Some(face),
            page: Some(pb::PageRequest {
                page_size: count,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    if gateway.json {
        let recommendations =
            crate::admin::message_json("RecommendResponse", &resp.encode_to_vec())?;
        let out = serde_json::json!({ "analysis": analysis, "recommendations": recommendations });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "Top {} frames for a {face_shape} face, {face_width_mm:.0} mm wide (catalogue version {}):",
        resp.items.len(),
        resp.catalog_version
    );
    for (i, item) in resp.items.iter().enumerate() {
        let p = item.product.clone().unwrap_or_default();
        let d = p.dimensions.unwrap_or_default();
        let price = p.price.unwrap_or_default();
        println!(
            "{:>2}. {:<44} {:>5.0} mm  {:>8.2} {}  score {:.3}  ({})",
            i + 1,
            p.name,
            d.total_width_mm,
            discovery_catalog::Money::from_minor(
                price.amount_minor,
                discovery_catalog::Currency::exponent_of(&price.currency)
            )
            .map_or(0.0, |m| m.major()),
            price.currency,
            item.score,
            item.reasons.join(", ")
        );
    }
    Ok(())
}
