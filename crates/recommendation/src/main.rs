//! `discovery-recommendation`: the recommendation service binary.

discovery_kit::global_allocator!();
fn main() -> std::process::ExitCode {
    discovery_kit::server::run_binary("recommendation", |env, shutdown| async move {
        let config = discovery_recommendation::Config::from_env(&env)?;
        let running = discovery_recommendation::spawn(config, shutdown).await?;
        running.wait().await
    })
}
