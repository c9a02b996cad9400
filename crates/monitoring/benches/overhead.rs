//! Monitoring's own cost on a service, side by side in one run:
//! - the work per call that exists for monitoring: the RPC layer's counter
//!   and latency histogram (same labels as `kit::server::RpcLayer`) and its
//!   in-flight gauge (the autoscaler's queue signal);
//! - the scrape: rendering the registry and parsing it, every 10 s,
//!   amortised over the calls served in 10 s;
//!
//! against the CPU a real unary gRPC call costs on this machine (a kit
//! server's health check over loopback, 32 callers, client in-process).
//!
//!   cargo bench -p discovery-monitoring --bench overhead
use std::time::{Duration, Instant};

use discovery_kit::CancellationToken;
use discovery_kit::server::GrpcServer;
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

discovery_kit::global_allocator!();

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // utime, stime (fields 14-15 overall; 12-13 after the state letter).
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
}

fn main() {
    discovery_kit::metrics::handle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. Recording one call's metrics, as the RPC layer does.
    let n = 2_000_000u64;
    let methods = [
        "/discovery.v1.Discovery/Recommend",
        "/discovery.v1.Discovery/SearchProducts",
        "/discovery.v1.Discovery/GetProduct",
    ];
    let started = Instant::now();
    for i in 0..n {
        let path = methods[(i % 3) as usize].to_string();
        metrics::counter!("discovery_rpc_server_requests_total", "service" => "bench", "method" => path.clone(), "code" => "OK").increment(1);
        metrics::histogram!("discovery_rpc_server_duration_seconds", "service" => "bench", "method" => path)
            .record(0.000_250 + (i % 100) as f64 * 1e-6);
    }
    let record_ns = started.elapsed().as_nanos() as f64 / n as f64;

    // 1b. The in-flight gauge the RPC layer keeps (up on arrival, down on
    // the answer), through the kit's handle family as the layer does.
    static IN_FLIGHT: discovery_kit::metrics::Gauges<1> =
        discovery_kit::metrics::Gauges::new("discovery_rpc_server_in_flight", ["service"]);
    let started = Instant::now();
    for _ in 0..n {
        IN_FLIGHT.add(["bench"], 1.0);
        IN_FLIGHT.add(["bench"], -1.0);
    }
    let in_flight_ns = started.elapsed().as_nanos() as f64 / n as f64;
    let record_ns = record_ns + in_flight_ns;

    // 2. One scrape: render + parse.
    let rounds = 200;
    let started = Instant::now();
    let mut kept = 0;
    for _ in 0..rounds {
        kept = discovery_monitoring::window::parse(&discovery_kit::metrics::render()).len();
    }
    let scrape_us = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;

    // 3. A real unary call's CPU cost.
    let (calls, cpu_per_call_us, rps) = rt.block_on(async {
        let server = GrpcServer::bind("bench", "BENCH_PORT", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let token = CancellationToken::new();
        let running = server
            .serve(
                Routes::default(),
                &[],
                token.clone(),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        let url = format!("http://{}", running.addr);
        let run_for = Duration::from_secs(4);
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let ch = discovery_kit::client::connect_lazy("BENCH", &url).unwrap();
                    let mut c = HealthClient::new(ch);
                    let mut done = 0u64;
                    let start = Instant::now();
                    while start.elapsed() < run_for {
                        c.check(HealthCheckRequest::default()).await.unwrap();
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut calls = 0;
        for t in tasks {
            calls += t.await.unwrap();
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        token.cancel();
        (calls, cpu * 1e6 / calls as f64, calls as f64 / wall)
    });

    let scrape_per_call_ns = scrape_us * 1000.0 / (rps * 10.0);
    let overhead = (record_ns + scrape_per_call_ns) / (cpu_per_call_us * 1000.0);
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| recording one call's metrics (counter + histogram, 3 labels; in-flight gauge up and down) | {record_ns:.0} ns (gauge: {in_flight_ns:.0} ns) |"
    );
    println!("| one scrape: render + parse ({kept} series kept) | {scrape_us:.0} µs |");
    println!(
        "| unary gRPC call (health check, 32 callers, loopback): calls / rate | {calls} / {rps:.0} per s |"
    );
    println!("| CPU per call (server + in-process client) | {cpu_per_call_us:.1} µs |");
    println!("| scrape every 10 s, per call at that rate | {scrape_per_call_ns:.1} ns |");
    println!(
        "| **monitoring's share of a call's CPU** | **{:.2} %** |",
        overhead * 100.0
    );
}
