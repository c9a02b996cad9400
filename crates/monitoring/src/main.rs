//! `discovery-monitoring`: the monitoring service binary.

discovery_kit::global_allocator!();
fn main() -> std::process::ExitCode {
    discovery_kit::server::run_binary("monitoring", |env, shutdown| async move {
        let config = discovery_monitoring::Config::from_env(&env)?;
        let running = discovery_monitoring::spawn(config, shutdown).await?;
        running.wait().await
    })
}
