//! The impressions' collections: served pages (`recommendations`) and
//! per-replica rollups, their documents, indexes and the report's read.

use std::time::Duration;

use discovery_kit::store::{Bson, Document, FindOptions, IndexSpec, Store, bson, doc};

use super::{
    COARSE, FINE, Impression, MID, RETENTION_MS, Window, id_string, kept_for, page_section_ids,
};
use crate::report::{self, Dims, Totals};

/// Collection of served pages (seed spec `recommendations`).
pub const RECOMMENDATIONS: &str = "recommendations";
/// Collection of per-replica rollups.
pub const ROLLUPS: &str = "recommendation_rollups";

/// Indexes on `recommendations` (the seed's, and a TTL) and the rollups.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    vec![
        (
            RECOMMENDATIONS,
            vec![
                IndexSpec::new(
                    "userId_1_timestamp_-1_relevanceScore_-1",
                    doc! {"userId": 1, "timestamp": -1, "relevanceScore": -1},
                ),
                // Serves the fallback attribution of anonymous shoppers
                // (`productId` is the page's array of products).
                IndexSpec::new(
                    "sessionId_1_productId_1",
                    doc! {"sessionId": 1, "productId": 1},
                ),
                IndexSpec::new(
                    "context.faceShape_1_context.stylePreferences_1",
                    doc! {"context.faceShape": 1, "context.stylePreferences": 1},
                ),
                IndexSpec::new("userId_sparse", doc! {"userId": 1}).sparse(),
                IndexSpec::new("createdAt_ttl", doc! {"createdAt": 1})
                    .ttl(Duration::from_millis(RETENTION_MS as u64)),
            ],
        ),
        (
            ROLLUPS,
            vec![
                IndexSpec::new("gran_1_bucket_1", doc! {"gran": 1, "bucket": 1}),
                IndexSpec::new("expireAt_ttl", doc! {"expireAt": 1}).ttl(Duration::ZERO),
            ],
        ),
    ]
}

/// The stored form of an impression (seed field names; `productId` is the
/// page's products in order).
pub fn impression_document(i: &Impression, placement: &str) -> Document {
    let a = &i.assignment;
    let mut d = doc! {
        "_id": id_string(i.id),
        "timestamp": i.at,
        "createdAt": bson::DateTime::from_millis(i.at),
        "sessionId": &i.session_id,
        "client": i.client.as_deref().unwrap_or(""),
        "placement": placement,
        "experiment": &a.experiment,
        "variant": &a.variant,
        "context": {"faceShape": i.face_shape},
        "productId": page_section_ids(&i.page),
        "catalogVersion": i.catalog_version,
    };
    if !i.user_id.is_empty() {
        d.insert("userId", &i.user_id);
    }
    d
}

/// One replica's rollup document: the full totals of a bucket and group
/// (replaced on every flush), expiring after the granularity's retention.
pub fn rollup_document(replica: &str, gran: &str, bucket: i64, d: &Dims, t: &Totals) -> Document {
    let keep = kept_for(gran);
    let revenue: Document = t
        .revenue_minor
        .iter()
        .map(|(c, v)| (c.clone(), Bson::Int64(*v)))
        .collect();
    doc! {
        "_id": format!(
            "{replica}|{gran}|{bucket}|{}|{}|{}|{}",
            d.experiment, d.variant, d.placement, d.face_shape
        ),
        "replica": replica,
        "gran": gran,
        "bucket": bucket,
        "expireAt": bson::DateTime::from_millis(bucket + keep),
        "experiment": &d.experiment,
        "variant": &d.variant,
        "placement": &d.placement,
        "faceShape": &d.face_shape,
        "impressions": t.impressions as i64,
        "clicked": t.clicked as i64,
        "addedToCart": t.added_to_cart as i64,
        "purchased": t.purchased as i64,
        "revenue": revenue,
    }
}

/// Reads every replica's rollups of the window and builds the report;
/// returns it with the window's start.
pub async fn read_report(
    store: &Store,
    window: Window,
    experiment: &str,
    now: i64,
) -> Result<(report::Report, i64), discovery_kit::store::StoreError> {
    let ((gran, width, _), span) = match window {
        Window::Hour => (FINE, 3_600_000),
        Window::Day => (MID, 24 * 3_600_000),
        Window::Week => (COARSE, 7 * 24 * 3_600_000),
    };
    let from = (now - span) - (now - span).rem_euclid(width);
    let mut filter = doc! {"gran": gran, "bucket": {"$gte": from}};
    if !experiment.is_empty() {
        filter.insert("experiment", experiment);
    }
    let docs = store.find(ROLLUPS, filter, FindOptions::default()).await?;
    let rows: Vec<(Dims, Totals)> = docs.iter().map(rollup_from).collect();
    Ok((report::build(rows.iter().map(|(d, t)| (d, t))), from))
}

fn rollup_from(d: &Document) -> (Dims, Totals) {
    let s = |k: &str| d.get_str(k).unwrap_or("").to_string();
    let n = |k: &str| match d.get(k) {
        Some(Bson::Int64(v)) => (*v).max(0) as u64,
        Some(Bson::Int32(v)) => (*v).max(0) as u64,
        Some(Bson::Double(v)) => v.max(0.0) as u64,
        _ => 0,
    };
    let revenue = d
        .get_document("revenue")
        .map(|r| {
            r.iter()
                .filter_map(|(c, v)| match v {
                    Bson::Int64(v) => Some((c.clone(), *v)),
                    Bson::Int32(v) => Some((c.clone(), *v as i64)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (
        Dims {
            experiment: s("experiment"),
            variant: s("variant"),
            placement: s("placement"),
            face_shape: s("faceShape"),
        },
        Totals {
            impressions: n("impressions"),
            clicked: n("clicked"),
            added_to_cart: n("addedToCart"),
            purchased: n("purchased"),
            revenue_minor: revenue,
        },
    )
}
