//! Cache-miss ranking cost: `rank::recommend` over the demo catalogue at 520
//! and 100,000 frames, with and without a face width. Run with
//! `cargo bench -p discovery-recommendation --bench rank`; prints p50/p99 per
//! case (std timing only, no extra dependency).

use std::time::{Duration, Instant};

use discovery_catalog::demo_catalog;
use discovery_proto::v1 as pb;
use discovery_recommendation::rank::recommend;
use discovery_recommendation::snapshot::Catalog;

discovery_kit::global_allocator!();

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn case(name: &str, catalog: &Catalog, req: &pb::RecommendRequest, iters: usize) {
    for _ in 0..iters.min(20) {
        std::hint::black_box(
            recommend(catalog, req, Default::default())
                .map(|r| r.1)
                .unwrap_or(0),
        );
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(
            recommend(catalog, req, Default::default())
                .map(|r| r.1)
                .unwrap_or(0),
        );
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "{name:<40} n={iters:<5} p50={:>10.1?} p99={:>10.1?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    );
}

fn main() {
    let with_face = pb::RecommendRequest {
        face: Some(pb::FaceContext {
            face_shape: pb::FaceShape::Round as i32,
            face_width_mm: 134.0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let anonymous = pb::RecommendRequest::default();
    for (n, iters) in [(520usize, 2000usize), (100_000, 60)] {
        let catalog = Catalog::new(demo_catalog(n), 1);
        case(
            &format!("rank {n} frames, face shape + width"),
            &catalog,
            &with_face,
            iters,
        );
        case(
            &format!("rank {n} frames, anonymous"),
            &catalog,
            &anonymous,
            iters,
        );
    }
}
