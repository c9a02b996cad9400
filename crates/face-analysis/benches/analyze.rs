//! Per-image latency of the face pipeline (decode → detectors → mesh →
//! irises → measurements) on one core, and throughput with one engine per
//! core. Run with `cargo bench -p discovery-face-analysis --bench analyze`
//! after `scripts/fetch-models.sh --test-data`. Prints p50/p95 and the
//! median time per stage.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use discovery_face_analysis::detect::{FULL_RANGE, SHORT_RANGE};
use discovery_face_analysis::image::{Limits, Orientation, Photo, Roi};
use discovery_face_analysis::models::Engine;
use discovery_face_analysis::pipeline::{self, Gates, Scratch, Timings};

discovery_kit::global_allocator!();

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn run(engine: &mut Engine, bytes: &[u8], scratch: &mut Scratch) -> (Duration, Timings, bool) {
    let mut t = Timings::default();
    let start = Instant::now();
    let ok = pipeline::analyze_bytes(
        engine,
        bytes,
        &Limits::default(),
        &Gates::default(),
        scratch,
        &mut t,
    )
    .is_ok();
    (start.elapsed(), t, ok)
}

fn case(engine: &mut Engine, name: &str, bytes: &[u8], iters: usize) {
    let mut scratch = Scratch::default();
    for _ in 0..5 {
        run(engine, bytes, &mut scratch);
    }
    let mut total = Vec::with_capacity(iters);
    let mut stages: Vec<Vec<Duration>> = vec![Vec::new(); 5];
    let mut ok = true;
    for _ in 0..iters {
        let (d, t, success) = run(engine, bytes, &mut scratch);
        ok = success;
        total.push(d);
        for (i, (_, s)) in t.stages().iter().enumerate() {
            stages[i].push(*s);
        }
    }
    total.sort();
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        pct(v, 0.5)
    };
    let names = ["decode", "detect", "mesh", "iris", "measure"];
    let breakdown: Vec<String> = names
        .iter()
        .zip(stages.iter_mut())
        .map(|(n, v)| format!("{n} {:.2?}", med(v)))
        .collect();
    println!(
        "{name:<34} n={iters:<4} p50={:>9.2?} p95={:>9.2?} ({}) [{}]",
        pct(&total, 0.5),
        pct(&total, 0.95),
        if ok { "face" } else { "rejected" },
        breakdown.join(", ")
    );
}

fn throughput(threads: usize, bytes: &[u8], per_thread: usize) -> f64 {
    let engines: Vec<Engine> = (0..threads).map(|_| common::engine()).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for mut e in engines {
            s.spawn(move || {
                let mut scratch = Scratch::default();
                for _ in 0..per_thread {
                    run(&mut e, bytes, &mut scratch);
                }
            });
        }
    });
    (threads * per_thread) as f64 / start.elapsed().as_secs_f64()
}

/// Which detector finds the astronaut's face at which size (the basis of
/// `pipeline::SHORT_RANGE_FLOOR`), and each model's own time.
fn detector_sweep(engine: &mut Engine) {
    let face = common::crop(&common::raster("astronaut.png"), 110, 20, 220, 220);
    for (cw, ch) in [(640u32, 480u32), (1280, 720)] {
        let mut line = format!("detector floor {cw}x{ch}:");
        for size in [80u32, 100, 120, 140, 160, 200, 240, 300] {
            let c = common::canvas(
                &common::resize(&face, size, size),
                cw,
                ch,
                cw / 2 - size / 2,
                ch / 2 - size / 2,
            );
            let p = Photo::from_raster(c, Orientation::NORMAL);
            let roi = Roi {
                center: [cw as f32 / 2.0, ch as f32 / 2.0],
                size: cw as f32,
                rotation: 0.0,
            };
            let mut buf = Vec::new();
            p.sample(&roi, 128, (-1.0, 1.0), false, &mut buf);
            let (r, l) = engine.short_range(&buf).expect("model runs");
            let short = !SHORT_RANGE.decode(&r, &l, &roi, 0.5).is_empty();
            p.sample(&roi, 192, (-1.0, 1.0), false, &mut buf);
            let (r, l) = engine.full_range(&buf).expect("model runs");
            let full = !FULL_RANGE.decode(&r, &l, &roi, 0.5).is_empty();
            let pct = 100.0 * size as f32 * 95.0 / 220.0 / cw as f32;
            line += &format!(
                " {pct:.1}%:{}{}",
                if short { "S" } else { "-" },
                if full { "F" } else { "-" }
            );
        }
        println!("{line}  (S short-range, F full-range found it)");
    }
    let inputs = [
        vec![0.1f32; 3 * 128 * 128],
        vec![0.1f32; 3 * 192 * 192],
        vec![0.1f32; 3 * 64 * 64],
    ];
    let mut time = |name: &str, f: &mut dyn FnMut(&mut Engine)| {
        for _ in 0..10 {
            f(engine);
        }
        let t = Instant::now();
        for _ in 0..100 {
            f(engine);
        }
        format!("{name} {:.2?}", t.elapsed() / 100)
    };
    let parts = [
        time("short-range", &mut |e| drop(e.short_range(&inputs[0]))),
        time("full-range", &mut |e| drop(e.full_range(&inputs[1]))),
        time("mesh", &mut |e| drop(e.mesh(&inputs[1]))),
        time("iris", &mut |e| drop(e.iris(&inputs[2]))),
    ];
    println!("model runs: {}", parts.join(", "));
}

fn main() {
    let mut engine = common::engine();
    let selfie = common::selfie_640();
    let twelve = common::photo_12mp();
    let none = common::no_face_640();
    let astronaut = common::photo_bytes("astronaut.png");
    let cat = common::photo_bytes("chelsea.png");
    println!("one core (one engine, one intra-op thread):");
    case(&mut engine, "selfie 640x480 JPEG", &selfie, 200);
    case(&mut engine, "astronaut 512x512 PNG", &astronaut, 100);
    case(&mut engine, "12 MP JPEG (4000x3000)", &twelve, 40);
    case(&mut engine, "no face 640x480 JPEG (coffee)", &none, 200);
    case(&mut engine, "no face 451x300 PNG (cat)", &cat, 200);
    detector_sweep(&mut engine);
    drop(engine);
    let one = throughput(1, &selfie, 150);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let all = throughput(cores, &selfie, 150);
    println!(
        "throughput, selfie 640x480: 1 engine {one:.0}/s, {cores} engines {all:.0}/s ({:.2}x)",
        all / one
    );
}
