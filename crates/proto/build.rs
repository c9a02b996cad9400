//! Compiles `proto/discovery/v1/*.proto` with `protox` (pure Rust, no system
//! `protoc`) and generates prost messages plus tonic clients and servers.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a build
    // script binary can be reused for the same package at another path (a
    // `git worktree` sharing the target directory).
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "discovery/v1/common.proto",
        "discovery/v1/face_analysis.proto",
        "discovery/v1/recommendation.proto",
        "discovery/v1/sync.proto",
        "discovery/v1/monitoring.proto",
        "discovery/v1/gateway.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by gRPC reflection.
    std::fs::write(out.join("discovery_descriptor.bin"), fds.encode_to_vec())?;
    // Every method path, for metric labels from a closed set.
    let mut paths = String::from("&[\n");
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                paths.push_str(&format!(
                    "    \"/{}.{}/{}\",\n",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths.push(']');
    std::fs::write(out.join("method_paths.rs"), paths)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
