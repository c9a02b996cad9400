//! `discovery-face-analysis`: the face-analysis service binary.

discovery_kit::global_allocator!();
fn main() -> std::process::ExitCode {
    discovery_kit::server::run_binary("face-analysis", |env, shutdown| async move {
        let config = discovery_face_analysis::Config::from_env(&env)?;
        let running = discovery_face_analysis::spawn(config, shutdown).await?;
        running.wait().await
    })
}
