//! `discovery-sync`: the sync service binary.

discovery_kit::global_allocator!();
fn main() -> std::process::ExitCode {
    discovery_kit::server::run_binary("sync", |env, shutdown| async move {
        let config = discovery_sync::Config::from_env(&env)?;
        let running = discovery_sync::spawn(config, shutdown).await?;
        running.wait().await
    })
}
