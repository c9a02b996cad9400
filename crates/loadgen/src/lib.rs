//! The load tool of discovery (`discovery bench`): open- and closed-loop
//! gRPC load on the public API with the spec's scenarios, HDR histograms,
//! errors by gRPC code, a live progress line, and JSON + Markdown reports.
//!
//! - [`grpc`]: unary calls on raw HTTP/2 with pre-encoded requests, so the
//!   tool's own cost per call stays small; loopback targets only.
//! - [`plan`]: operations, mixes and scenarios; the request corpus.
//! - [`run`]: the engine (dispatcher thread for open loop, callers for
//!   closed loop) and its recording.
//! - [`report`]: what a run measured.
//! - [`autoscale`]: the HPA policies replayed against a traffic trace and
//!   the measured per-pod capacity (`discovery bench autoscale`).
//!
//! Every run is bounded in time (and optionally in calls) and stops by itself.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod autoscale;
pub mod grpc;
pub mod plan;
pub mod report;
pub mod run;

pub use grpc::{CallError, SetupError, Target};
pub use plan::{Corpus, Load, Mix, Op, Phase, Plan, scenario};
pub use report::Report;
pub use run::{RunOptions, run};
