//! Recommendation's collections, their documents and indexes: it reads
//! `products` (owned by `discovery-catalog`, written by sync) into the
//! snapshot and seeds the demo catalogue; it owns `ai_sessions`,
//! `interactions` and `experiments` (here) and the impressions'
//! `recommendations` and `recommendation_rollups` (`impressions::store`).

use std::time::Duration;

use discovery_catalog::{Frame, PRODUCTS, RETIRED_INDEXES, product_indexes};
use discovery_kit::server::BoxError;
use discovery_kit::store::{Bson, Document, FindOptions, IndexSpec, Store, StoreError, doc};
use discovery_proto::v1 as pb;

pub use crate::experiments::EXPERIMENTS;
use crate::experiments::{Experiment, Variant};
use crate::impressions;
use crate::signals::Interaction;
use crate::snapshot::Catalog;

/// Interactions (clicks, carts, purchases), the signals' input.
pub const INTERACTIONS: &str = "interactions";
/// Session snapshots for analytics (seed spec), 24 h.
pub const AI_SESSIONS: &str = "ai_sessions";

/// Indexes on `ai_sessions` (seed spec), with the 24 h TTL on `createdAt`.
pub fn session_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new(
            "sessionId_1_timestamp_-1",
            doc! {"sessionId": 1, "timestamp": -1},
        ),
        IndexSpec::new("userId_1_completed_1", doc! {"userId": 1, "completed": 1}),
        IndexSpec::new(
            "faceAnalysis.faceShape_1_timestamp_-1",
            doc! {"faceAnalysis.faceShape": 1, "timestamp": -1},
        ),
        IndexSpec::new("createdAt_ttl", doc! {"createdAt": 1}).ttl(Duration::from_secs(86_400)),
    ]
}

/// Indexes on `interactions` (signal rebuilds read the newest first).
pub fn interaction_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new("at_-1", doc! {"at": -1}),
        IndexSpec::new("userId_1_at_-1", doc! {"userId": 1, "at": -1}),
    ]
}

/// Loads every product into a new snapshot version.
pub async fn load_catalog(store: &Store, version: i64) -> Result<Catalog, BoxError> {
    let docs = store
        .find(PRODUCTS, doc! {}, FindOptions::default())
        .await?;
    let mut frames = Vec::with_capacity(docs.len());
    for d in docs {
        match Frame::from_document(d) {
            Ok(f) => frames.push(f),
            // A bad document must not take the catalogue down; sync validates on the way in.
            Err(e) => tracing::warn!(error = %e, "skipping undecodable product"),
        }
    }
    Ok(Catalog::new(frames, version))
}

/// Every collection this service indexes, with its indexes.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    let mut all = vec![
        (PRODUCTS, product_indexes()),
        (AI_SESSIONS, session_indexes()),
        (INTERACTIONS, interaction_indexes()),
        (
            EXPERIMENTS,
            vec![IndexSpec::new(
                "running_1_startedAt_-1",
                doc! {"running": 1, "startedAt": -1},
            )],
        ),
    ];
    all.extend(impressions::indexes());
    all
}

/// Drops the retired indexes, then creates this version's (idempotent).
pub async fn ensure_schema(store: &Store) -> Result<(), StoreError> {
    for (coll, name) in RETIRED_INDEXES {
        if store.drop_index(coll, name).await? {
            tracing::info!(collection = coll, index = name, "dropped a retired index");
        }
    }
    for (coll, ix) in indexes() {
        store.ensure_indexes(coll, &ix).await?;
    }
    Ok(())
}

/// Seeds `n` demo frames when the catalogue is empty.
pub async fn seed_demo(store: &Store, n: usize) -> Result<(), StoreError> {
    if store.count(PRODUCTS, doc! {}).await? > 0 {
        return Ok(());
    }
    let frames = discovery_catalog::demo_catalog(n);
    for chunk in frames.chunks(1000) {
        store
            .bulk_upsert(PRODUCTS, chunk.iter().map(Frame::to_document).collect())
            .await?;
    }
    tracing::info!(frames = frames.len(), "seeded the demo catalogue");
    Ok(())
}

/// A session's analytics snapshot in `ai_sessions` (the cache holds the
/// session itself).
pub fn session_document(s: &pb::SessionContext) -> Document {
    doc! {
        "_id": &s.session_id,
        "sessionId": &s.session_id,
        "userId": &s.user_id,
        "faceAnalysis": {"faceShape": discovery_catalog::face_shape_name(
            s.face.as_ref().and_then(|f| pb::FaceShape::try_from(f.face_shape).ok()).unwrap_or_default())},
        "timestamp": discovery_kit::now_unix_ms(),
        "createdAt": discovery_kit::store::bson::DateTime::now(),
        "completed": false,
    }
}

/// An experiment as stored in `experiments`.
pub fn experiment_document(e: &Experiment, running: bool) -> Document {
    let variants: Vec<Document> = e
        .variants
        .iter()
        .map(|v| {
            let mut d = doc! {
                "name": &v.name,
                "share": v.share_percent as i64,
                "brandCap": v.brand_cap as i64,
            };
            if let Some(w) = v.weights {
                d.insert(
                    "weights",
                    w.iter()
                        .map(|x| Bson::Double(*x as f64))
                        .collect::<Vec<_>>(),
                );
            }
            d
        })
        .collect();
    doc! {
        "_id": &e.id,
        "variants": variants,
        "startedAt": e.started_at,
        "stoppedAt": e.stopped_at,
        "running": running,
    }
}

/// A stored experiment, if it is valid (a document edited by hand into
/// nonsense is not run).
pub fn experiment_from_document(d: &Document) -> Option<Experiment> {
    let num = |d: &Document, k: &str| match d.get(k) {
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(*v as i64),
        _ => None,
    };
    let variants = d
        .get_array("variants")
        .ok()?
        .iter()
        .map(|v| {
            let v = v.as_document()?;
            let weights = match v.get_array("weights") {
                Ok(a) if a.len() == 5 => {
                    let mut w = [0f32; 5];
                    for (o, x) in w.iter_mut().zip(a) {
                        *o = x.as_f64()? as f32;
                    }
                    Some(w)
                }
                _ => None,
            };
            Some(Variant {
                name: v.get_str("name").ok()?.to_string(),
                share_percent: num(v, "share")?.clamp(0, 100) as u32,
                weights,
                brand_cap: num(v, "brandCap").unwrap_or(0).clamp(0, 100) as u32,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let e = Experiment {
        id: d.get_str("_id").ok()?.to_string(),
        variants,
        started_at: num(d, "startedAt").unwrap_or(0),
        stopped_at: num(d, "stoppedAt").unwrap_or(0),
    };
    // A document edited by hand into nonsense is not run.
    e.validate().ok().map(|_| e)
}

/// The running experiment as stored (`None`: none runs).
pub async fn load_running(store: &Store) -> Result<Option<Experiment>, StoreError> {
    let docs = store
        .find(
            EXPERIMENTS,
            doc! {"running": true},
            FindOptions {
                sort: Some(doc! {"startedAt": -1}),
                limit: 1,
                ..Default::default()
            },
        )
        .await?;
    Ok(docs.first().and_then(experiment_from_document))
}

/// Saves an experiment (running or stopped).
pub async fn save_experiment(
    store: &Store,
    e: &Experiment,
    running: bool,
) -> Result<(), StoreError> {
    store
        .put(EXPERIMENTS, experiment_document(e, running))
        .await
}

/// Every experiment stored as running (valid ones).
pub async fn running_experiments(store: &Store) -> Result<Vec<Experiment>, StoreError> {
    let docs = store
        .find(EXPERIMENTS, doc! {"running": true}, FindOptions::default())
        .await?;
    Ok(docs.iter().filter_map(experiment_from_document).collect())
}

/// The newest `n` experiments, the running one first.
pub async fn recent_experiments(store: &Store, n: u64) -> Result<Vec<Experiment>, StoreError> {
    let docs = store
        .find(
            EXPERIMENTS,
            doc! {},
            FindOptions {
                sort: Some(doc! {"running": -1, "startedAt": -1}),
                limit: n,
                ..Default::default()
            },
        )
        .await?;
    Ok(docs.iter().filter_map(experiment_from_document).collect())
}

/// A recorded interaction in `interactions` (the signals' input, and the
/// impressions' outcome log).
pub fn interaction_document(
    id: &str,
    requester: &pb::Requester,
    product_id: &str,
    kind: &str,
    at: i64,
    impression_id: &str,
) -> Document {
    doc! {
        "_id": id,
        "userId": &requester.user_id,
        "sessionId": &requester.session_id,
        "productId": product_id,
        "kind": kind,
        "at": at,
        "impressionId": impression_id,
    }
}

/// Interactions since `since_ms`, newest first, at most `limit`.
pub async fn recent_interactions(
    store: &Store,
    since_ms: i64,
    limit: u64,
) -> Result<Vec<Interaction>, StoreError> {
    let docs = store
        .find(
            INTERACTIONS,
            doc! {"at": {"$gte": since_ms}},
            FindOptions {
                sort: Some(doc! {"at": -1}),
                skip: 0,
                limit,
            },
        )
        .await?;
    Ok(docs.iter().filter_map(interaction_from).collect())
}

/// An interaction as the signals' rebuild reads it.
fn interaction_from(d: &Document) -> Option<Interaction> {
    let user = d.get_str("userId").unwrap_or("").to_string();
    let session = d.get_str("sessionId").unwrap_or("");
    let shopper = if user.is_empty() {
        session.to_string()
    } else {
        user.clone()
    };
    Some(Interaction {
        shopper,
        user,
        product: d.get_str("productId").ok()?.to_string(),
        kind: d.get_str("kind").ok()?.to_string(),
        at: d.get_i64("at").ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiments_survive_their_document() {
        let e = Experiment {
            id: "fit".into(),
            variants: vec![
                Variant {
                    name: "a".into(),
                    share_percent: 50,
                    weights: None,
                    brand_cap: 0,
                },
                Variant {
                    name: "b".into(),
                    share_percent: 50,
                    weights: Some([1.0, 2.0, 0.5, 0.25, 0.0]),
                    brand_cap: 3,
                },
            ],
            started_at: 5,
            stopped_at: 0,
        };
        assert_eq!(
            experiment_from_document(&experiment_document(&e, true)),
            Some(e.clone())
        );
        let mut bad = experiment_document(&e, true);
        bad.insert("variants", Vec::<Document>::new());
        assert_eq!(
            experiment_from_document(&bad),
            None,
            "an invalid stored experiment is not run"
        );
    }
}
