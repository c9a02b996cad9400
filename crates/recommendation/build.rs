//! Generates this crate's own server for `discovery.v1.Recommendation`.
//!
//! It is wire-identical to the one `discovery-proto` generates (same service,
//! method and message names), with one difference: `Recommend` answers with
//! [`crate::fast::Reply`], which can carry an already-encoded response, so a
//! cache hit is written to the wire without decoding and re-encoding it.
//! Clients (the gateway, other services) keep using `discovery-proto`.

fn main() {
    use tonic_build::manual::{Method, Service};
    let prost = "tonic_prost::ProstCodec";
    let method = |name: &str, route: &str, input: &str, output: &str, codec: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("discovery_proto::v1::{input}"))
            .output_type(output)
            .codec_path(codec)
            .build()
    };
    let service = Service::builder()
        .name("Recommendation")
        .package("discovery.v1")
        .method(method(
            "recommend",
            "Recommend",
            "RecommendRequest",
            "crate::fast::Reply",
            "crate::fast::RecommendCodec",
        ))
        .method(method(
            "record_interaction",
            "RecordInteraction",
            "RecordInteractionRequest",
            "discovery_proto::v1::RecordInteractionResponse",
            prost,
        ))
        .method(method(
            "get_session",
            "GetSession",
            "GetSessionRequest",
            "discovery_proto::v1::GetSessionResponse",
            prost,
        ))
        .method(method(
            "update_session",
            "UpdateSession",
            "UpdateSessionRequest",
            "discovery_proto::v1::UpdateSessionResponse",
            prost,
        ))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
