//! `discovery-gateway`: the gateway service binary.

discovery_kit::global_allocator!();
fn main() -> std::process::ExitCode {
    discovery_kit::server::run_binary("gateway", |env, shutdown| async move {
        let config = discovery_gateway::Config::from_env(&env)?;
        let running = discovery_gateway::spawn(config, shutdown).await?;
        running.wait().await
    })
}
