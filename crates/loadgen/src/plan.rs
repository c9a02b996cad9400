//! What to send and how fast: the operations of the public API, request
//! mixes, and the scenarios (normal, peak, spike, soak, face).
//!
//! | scenario | load | mix |
//! |---|---|---|
//! | `normal` | open loop, `rate` calls/s for `duration` | browse 40 % (GetProduct), recommend 35 %, search 25 % |
//! | `peak` | open loop: `rate` → 5×`rate` over a quarter, 5×`rate` for half, back over the last quarter (the spec's 1,000 → 5,000 users) | normal mix |
//! | `spike` | open loop: `rate`/100 for a fifth, `rate` at once for three fifths, `rate`/100 again (0 → N → 0, with a trickle to see before and after) | normal mix |
//! | `soak` | open loop, `rate` for `duration` (default 30 min), per-second timeline | normal mix |
//! | `face` | closed loop, one caller per core, each photo a new analysis (new session id, so no cache hit) | AnalyzeFace |
//!
//! Any scenario runs closed-loop instead with `concurrency` callers (each
//! sends its next call when the previous one is answered). Open loop is
//! the honest one for latency: calls leave on schedule whatever the
//! answers do, so a stall shows as latency instead of hiding as fewer
//! calls (coordinated omission).

use std::time::Duration;

use bytes::Bytes;
use discovery_proto::v1 as pb;
use prost::Message;

use crate::grpc::{SetupError, Target, frame};

#[cfg(test)]
use discovery_kit::rng::SplitMix;

/// A public API method the load tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `GetProduct` of a product seen in the catalogue (browsing).
    GetProduct,
    /// `Recommend` for a face shape and width.
    Recommend,
    /// `SearchProducts` with a shopper's query.
    Search,
    /// `AnalyzeFace` of a photo.
    AnalyzeFace,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 4] = [Op::GetProduct, Op::Recommend, Op::Search, Op::AnalyzeFace];

    /// The gateway method path.
    pub fn path(self) -> &'static str {
        match self {
            Op::GetProduct => "/discovery.v1.Discovery/GetProduct",
            Op::Recommend => "/discovery.v1.Discovery/Recommend",
            Op::Search => "/discovery.v1.Discovery/SearchProducts",
            Op::AnalyzeFace => "/discovery.v1.Discovery/AnalyzeFace",
        }
    }

    /// The method name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::GetProduct => "GetProduct",
            Op::Recommend => "Recommend",
            Op::Search => "SearchProducts",
            Op::AnalyzeFace => "AnalyzeFace",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Relative weights of the operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Mix {
    /// Browse 40 %, recommend 35 %, search 25 %.
    pub fn normal() -> Mix {
        Mix {
            weights: [40, 35, 25, 0],
        }
    }

    /// One operation only.
    pub fn only(op: Op) -> Mix {
        let mut weights = [0; 4];
        weights[op.index()] = 1;
        Mix { weights }
    }

    /// The operations with a weight.
    pub fn ops(&self) -> Vec<Op> {
        Op::ALL
            .into_iter()
            .filter(|o| self.weights[o.index()] > 0)
            .collect()
    }

    /// Share of `op`, 0..1.
    pub fn share(&self, op: Op) -> f64 {
        let total: u32 = self.weights.iter().sum();
        f64::from(self.weights[op.index()]) / f64::from(total.max(1))
    }

    /// The operation for a uniform random draw.
    pub fn pick(&self, draw: u64) -> Op {
        let total: u32 = self.weights.iter().sum();
        let mut x = (draw % u64::from(total.max(1))) as u32;
        for op in Op::ALL {
            let w = self.weights[op.index()];
            if x < w {
                return op;
            }
            x -= w;
        }
        Op::GetProduct
    }
}

/// One stretch of an open-loop run: the arrival rate moves linearly from
/// `from_rps` to `to_rps`.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Name in the report.
    pub name: String,
    /// Length.
    pub duration: Duration,
    /// Calls per second at the start.
    pub from_rps: f64,
    /// Calls per second at the end.
    pub to_rps: f64,
}

impl Phase {
    fn steady(name: &str, duration: Duration, rps: f64) -> Phase {
        Phase {
            name: name.into(),
            duration,
            from_rps: rps,
            to_rps: rps,
        }
    }

    /// Calls the phase schedules.
    pub fn calls(&self) -> f64 {
        (self.from_rps + self.to_rps) / 2.0 * self.duration.as_secs_f64()
    }

    /// The rate `t` into the phase.
    pub fn rate_at(&self, t: f64) -> f64 {
        let d = self.duration.as_secs_f64();
        if d <= 0.0 {
            return self.to_rps;
        }
        self.from_rps + (self.to_rps - self.from_rps) * (t / d).clamp(0.0, 1.0)
    }
}

/// How load is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    /// Calls leave on a schedule, whatever the answers do.
    Open(Vec<Phase>),
    /// `concurrency` callers, each sending its next call on an answer.
    Closed {
        /// Callers.
        concurrency: usize,
        /// How long.
        duration: Duration,
    },
}

/// A whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Scenario name.
    pub scenario: String,
    /// The load.
    pub load: Load,
    /// What to call.
    pub mix: Mix,
    /// Stop after this many calls, whatever the schedule says.
    pub max_calls: Option<u64>,
    /// Calls allowed in flight before the tool stops sending and counts
    /// the rest as not sent (open loop only).
    pub max_in_flight: usize,
}

/// The scenario names.
pub const SCENARIOS: [&str; 5] = ["normal", "peak", "spike", "soak", "face"];

/// A scenario with its defaults: `rate` calls/s (open loop) unless
/// `concurrency` asks for a closed loop; `duration` defaults per scenario
/// (60 s; soak 30 min; face 20 s).
pub fn scenario(
    name: &str,
    rate: f64,
    concurrency: Option<usize>,
    duration: Option<Duration>,
    max_calls: Option<u64>,
) -> Result<Plan, SetupError> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(SetupError::Other(format!(
            "--rate must be a positive number of calls per second, not {rate}"
        )));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let d = |default: u64| duration.unwrap_or(Duration::from_secs(default));
    let (mix, load) = match name {
        "normal" => (
            Mix::normal(),
            Load::Open(vec![Phase::steady("normal", d(60), rate)]),
        ),
        "soak" => (
            Mix::normal(),
            Load::Open(vec![Phase::steady("soak", d(1800), rate)]),
        ),
        "peak" => {
            let q = d(60) / 4;
            (
                Mix::normal(),
                Load::Open(vec![
                    Phase {
                        name: "ramp up".into(),
                        duration: q,
                        from_rps: rate,
                        to_rps: 5.0 * rate,
                    },
                    Phase::steady("peak", q * 2, 5.0 * rate),
                    Phase {
                        name: "ramp down".into(),
                        duration: q,
                        from_rps: 5.0 * rate,
                        to_rps: rate,
                    },
                ]),
            )
        }
        "spike" => {
            let fifth = d(60) / 5;
            (
                Mix::normal(),
                Load::Open(vec![
                    Phase::steady("before", fifth, rate / 100.0),
                    Phase::steady("spike", fifth * 3, rate),
                    Phase::steady("after", fifth, rate / 100.0),
                ]),
            )
        }
        "face" => (
            Mix::only(Op::AnalyzeFace),
            Load::Closed {
                concurrency: cores,
                duration: d(20),
            },
        ),
        other => {
            return Err(SetupError::Other(format!(
                "unknown scenario {other:?}: use one of {}",
                SCENARIOS.join(", ")
            )));
        }
    };
    let load = match concurrency {
        Some(0) => {
            return Err(SetupError::Other("--concurrency must be at least 1".into()));
        }
        Some(c) => Load::Closed {
            concurrency: c,
            duration: match &load {
                Load::Open(p) => p.iter().map(|p| p.duration).sum(),
                Load::Closed { duration, .. } => *duration,
            },
        },
        None => load,
    };
    Ok(Plan {
        scenario: name.to_string(),
        load,
        mix,
        max_calls,
        max_in_flight: 20_000,
    })
}

/// Requests ready to send: many distinct ones per operation, so caches
/// see a realistic spread of keys rather than one hot entry.
pub struct Corpus {
    recommend: Vec<Bytes>,
    search: Vec<Bytes>,
    product: Vec<Bytes>,
    photo: Option<Vec<u8>>,
    /// Face sessions: a prefix unique to this corpus (time of set-up) and
    /// a counter over every run that uses it, so no two analyses share a
    /// session id, whether in one run, across runs or across processes.
    face_prefix: String,
    face_seq: std::sync::atomic::AtomicU64,
    /// Products found in the catalogue at set-up.
    pub product_ids: usize,
}

const FACE_SHAPES: [i32; 7] = [1, 2, 3, 4, 5, 6, 7];
const QUERIES: [&str; 20] = [
    "aviator",
    "round",
    "titanium",
    "black acetate",
    "tortoise",
    "cat eye",
    "vintage",
    "ray-ban",
    "gold metal",
    "oversized",
    "wayfarer",
    "lightweight",
    "browline",
    "havana",
    "sunglasses",
    "square bold",
    "crystal",
    "persol",
    "minimal",
    "geometric",
];

fn recommend_request(shape: i32, width: f32, size: u32) -> pb::RecommendRequest {
    pb::RecommendRequest {
        face: Some(pb::FaceContext {
            face_shape: shape,
            face_width_mm: width,
            ..Default::default()
        }),
        page: Some(pb::PageRequest {
            page_size: size,
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Corpus {
    /// Builds the requests `mix` needs. Product ids come from the
    /// catalogue itself (the recommendation answers), so browsing reads
    /// products that exist. `photo` is required for AnalyzeFace.
    pub async fn build(
        target: &Target,
        mix: &Mix,
        photo: Option<Vec<u8>>,
    ) -> Result<Corpus, SetupError> {
        let ops = mix.ops();
        let mut recommend = Vec::new();
        for shape in FACE_SHAPES {
            for w in (120..=150).step_by(2) {
                for size in [10, 20] {
                    recommend.push(frame(&recommend_request(shape, w as f32, size)));
                }
            }
        }
        let search = QUERIES
            .iter()
            .map(|q| {
                frame(&pb::SearchProductsRequest {
                    query: q.to_string(),
                    page: Some(pb::PageRequest {
                        page_size: 10,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        if ops.contains(&Op::GetProduct) {
            for shape in FACE_SHAPES {
                let body = frame(&recommend_request(shape, 0.0, 50));
                let answer = target
                    .call(Op::Recommend.path(), body, true)
                    .await
                    .map_err(|e| SetupError::Call {
                        method: "Recommend",
                        reason: e.to_string(),
                    })?;
                let resp = pb::RecommendResponse::decode(answer.message).map_err(|e| {
                    SetupError::Call {
                        method: "Recommend",
                        reason: format!("undecodable answer: {e}"),
                    }
                })?;
                ids.extend(
                    resp.items
                        .into_iter()
                        .filter_map(|i| i.product.map(|p| p.id)),
                );
            }
            if ids.is_empty() {
                return Err(SetupError::Other(
                    "the catalogue is empty: nothing to browse (load a feed, or set DISCOVERY_DEMO_CATALOG)"
                        .into(),
                ));
            }
        }
        let product_ids = ids.len();
        let product = ids
            .into_iter()
            .map(|id| frame(&pb::GetProductRequest { id }))
            .collect();
        let photo = if ops.contains(&Op::AnalyzeFace) {
            Some(photo.ok_or_else(|| {
                SetupError::Other(
                    "the face scenario needs --photo (a JPEG, PNG or WebP with one face)".into(),
                )
            })?)
        } else {
            None
        };
        Ok(Corpus {
            recommend,
            search,
            product,
            photo,
            face_prefix: format!(
                "load-{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            ),
            face_seq: std::sync::atomic::AtomicU64::new(0),
            product_ids,
        })
    }

    /// The request body of a call of `op`, `draw` choosing among the
    /// variants.
    pub fn body(&self, op: Op, draw: u64) -> Bytes {
        let pick = |v: &Vec<Bytes>| v[(draw % v.len().max(1) as u64) as usize].clone();
        match op {
            Op::Recommend => pick(&self.recommend),
            Op::Search => pick(&self.search),
            Op::GetProduct => pick(&self.product),
            Op::AnalyzeFace => {
                // A session id of its own per call: the face cache is keyed
                // by session and content, so every call is a real analysis.
                let image = self.photo.clone().unwrap_or_default();
                let seq = self
                    .face_seq
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                frame(&pb::AnalyzeFaceRequest {
                    requester: Some(pb::Requester {
                        session_id: format!("{}-{seq}", self.face_prefix),
                        ..Default::default()
                    }),
                    input: Some(pb::analyze_face_request::Input::Image(image)),
                    include_landmarks: false,
                })
            }
        }
    }

    /// Every distinct cacheable request once, so a run measures warm
    /// caches (what a shop sees after its first minutes of traffic).
    pub async fn warm(&self, target: &Target, mix: &Mix) -> Result<u64, SetupError> {
        let mut calls = 0;
        for op in mix.ops() {
            let bodies = match op {
                Op::Recommend => &self.recommend,
                Op::Search => &self.search,
                Op::GetProduct => &self.product,
                Op::AnalyzeFace => continue,
            };
            for b in bodies {
                target
                    .call(op.path(), b.clone(), false)
                    .await
                    .map_err(|e| SetupError::Call {
                        method: op.name(),
                        reason: e.to_string(),
                    })?;
                calls += 1;
            }
        }
        Ok(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_mix_has_its_shares() {
        let mix = Mix::normal();
        let mut counts = std::collections::HashMap::new();
        let mut d = SplitMix(7);
        for _ in 0..100_000 {
            *counts.entry(mix.pick(d.next_u64())).or_insert(0u32) += 1;
        }
        for op in mix.ops() {
            let got = f64::from(counts[&op]) / 100_000.0;
            assert!((got - mix.share(op)).abs() < 0.01, "{op:?}: {got}");
        }
        assert!(!counts.contains_key(&Op::AnalyzeFace));
    }

    #[test]
    fn scenarios_schedule_what_they_say() {
        let p = scenario("peak", 1000.0, None, Some(Duration::from_secs(40)), None).unwrap();
        let Load::Open(phases) = &p.load else {
            panic!("open loop")
        };
        // 10 s ramp 1k→5k (30k), 20 s at 5k (100k), 10 s ramp down (30k).
        let total: f64 = phases.iter().map(Phase::calls).sum();
        assert!((total - 160_000.0).abs() < 1.0, "{total}");
        assert_eq!(phases[0].rate_at(5.0), 3000.0);
        let s = scenario("spike", 10_000.0, None, None, None).unwrap();
        let Load::Open(phases) = &s.load else {
            panic!("open loop")
        };
        assert_eq!(
            phases.iter().map(|p| p.to_rps).collect::<Vec<_>>(),
            [100.0, 10_000.0, 100.0]
        );
        let c = scenario("normal", 1.0, Some(8), Some(Duration::from_secs(5)), None).unwrap();
        assert_eq!(
            c.load,
            Load::Closed {
                concurrency: 8,
                duration: Duration::from_secs(5)
            }
        );
        assert!(scenario("nope", 1.0, None, None, None).is_err());
        assert!(scenario("normal", f64::NAN, None, None, None).is_err());
        assert!(scenario("normal", 1.0, Some(0), None, None).is_err());
    }
}
