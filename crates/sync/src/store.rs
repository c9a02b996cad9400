//! Sync's collections, their documents and indexes (it also writes
//! `products`, whose shape and indexes `discovery-catalog` owns).

use std::collections::HashMap;

use discovery_catalog::{Embedding, Frame, PRODUCTS};
use discovery_kit::store::{
    Bson, Document, FindOptions, GuardedSet, IndexSpec, RawDocumentBuf, Store, StoreError, bson,
    doc,
};
use discovery_proto::v1 as pb;

use crate::ingest::{Job, ORPHANED_AFTER};
use crate::records::{Format, RecordError};

/// Jobs.
pub const SYNC_JOBS: &str = "sync_jobs";
/// Change-stream resume tokens.
pub const SYNC_CHECKPOINTS: &str = "sync_checkpoints";
/// Rejected records.
pub const SYNC_DEAD_LETTERS: &str = "sync_dead_letters";

/// Embeddings by the text they were computed from (`_id` = model and
/// text hash, [`embedding_key`]): a product re-sent with a newer date but
/// the same text (a price change) gets its embedding back without running
/// the model. One entry per distinct text ever embedded, 400-odd bytes.
pub const PRODUCT_EMBEDDINGS: &str = "product_embeddings";

/// Indexes of the sync collections.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    vec![
        (
            SYNC_JOBS,
            vec![IndexSpec::new("started_at_-1", doc! {"started_at": -1})],
        ),
        (
            SYNC_DEAD_LETTERS,
            vec![
                IndexSpec::new(
                    "job_id_1_rejected_at_-1",
                    doc! {"job_id": 1, "rejected_at": -1},
                ),
                // Listing for a key scoped to its sources.
                IndexSpec::new(
                    "source_1_rejected_at_-1",
                    doc! {"source": 1, "rejected_at": -1},
                ),
            ],
        ),
    ]
}

/// A job as stored in `sync_jobs`.
pub fn job_document(j: &pb::SyncJob) -> Document {
    doc! {
        "_id": &j.job_id,
        "source": &j.source,
        "state": pb::SyncJobState::try_from(j.state).unwrap_or_default().as_str_name(),
        "received": j.received as i64,
        "upserted": j.upserted as i64,
        "unchanged": j.unchanged as i64,
        "rejected": j.rejected as i64,
        "started_at": j.started_at_unix_ms,
        "finished_at": j.finished_at_unix_ms,
        "error": &j.error,
        "stored_at": discovery_kit::now_unix_ms(),
    }
}

/// The stored job, as the API reports it at `now_ms`: one stored as
/// running whose state is older than [`ORPHANED_AFTER`] has no process
/// running it (a live job is stored every [`HEARTBEAT`]) and is reported
/// failed.
pub fn job_at(d: &Document, now_ms: i64) -> pb::SyncJob {
    let mut job = job_from_document(d);
    let stored_at = d.get_i64("stored_at").unwrap_or(job.started_at_unix_ms);
    let silent = now_ms.saturating_sub(stored_at);
    if job.state == pb::SyncJobState::Running as i32 && silent > ORPHANED_AFTER.as_millis() as i64 {
        job.state = pb::SyncJobState::Failed as i32;
        job.finished_at_unix_ms = stored_at;
        job.error = format!(
            "the sync process running this job stopped (nothing stored for {} s); resend the feed with the same idempotency key (records already written count as unchanged)",
            silent / 1000
        );
    }
    job
}

/// A stored job document back to the API view.
pub fn job_from_document(d: &Document) -> pb::SyncJob {
    let n = |k: &str| d.get_i64(k).unwrap_or(0).max(0) as u64;
    pb::SyncJob {
        job_id: d.get_str("_id").unwrap_or_default().to_string(),
        source: d.get_str("source").unwrap_or_default().to_string(),
        state: pb::SyncJobState::from_str_name(d.get_str("state").unwrap_or_default())
            .unwrap_or_default() as i32,
        received: n("received"),
        upserted: n("upserted"),
        unchanged: n("unchanged"),
        rejected: n("rejected"),
        started_at_unix_ms: d.get_i64("started_at").unwrap_or(0),
        finished_at_unix_ms: d.get_i64("finished_at").unwrap_or(0),
        error: d.get_str("error").unwrap_or_default().to_string(),
    }
}

/// An accepted record as its `products` document, carrying the feed's
/// trace context when it has one (the change stream picks it up).
pub fn product_document(f: &Frame, trace: Option<&str>) -> Result<RawDocumentBuf, RecordError> {
    let mut d = bson::to_raw_document_buf(f).map_err(|e| RecordError::Invalid {
        id: f.id.clone(),
        rule: format!("cannot encode: {e}"),
    })?;
    if let Some(tp) = trace {
        d.append(crate::feed::TRACE_FIELD, tp);
    }
    Ok(d)
}

/// A refused record as its dead letter: the payload as received, the
/// reason, and what a replay needs.
pub fn dead_letter_document(
    job: &Job,
    seq: u64,
    reason: &str,
    format: Format,
    payload: Vec<u8>,
) -> Document {
    doc! {
        "_id": format!("{}-{seq:07}", job.id),
        "job_id": &job.id,
        "source": &job.source,
        "reason": reason,
        "format": format.name(),
        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: payload },
        "rejected_at": discovery_kit::now_unix_ms(),
        "replays": 0,
    }
}

/// The change stream's checkpoint: the last sequence delivered and the
/// resume token after it.
pub fn checkpoint_document(id: &str, sequence: u64, token: Option<&bson::Bson>) -> Document {
    let mut d = doc! {
        "_id": id,
        "sequence": sequence as i64,
        "updated_at": discovery_kit::now_unix_ms(),
    };
    if let Some(t) = token {
        d.insert("token", t.clone());
    }
    d
}

/// Which dead letters: given ids, else a job's (else all), within the
/// key's sources.
#[derive(Debug, Clone, Copy)]
pub struct Letters<'a> {
    /// A job's letters (empty: any job).
    pub job_id: &'a str,
    /// These letters (empty: by job).
    pub ids: &'a [String],
    /// Only these sources (`None`: all).
    pub sources: Option<&'a [String]>,
}

impl Letters<'_> {
    fn filter(&self) -> Document {
        let mut f = if !self.ids.is_empty() {
            doc! {"_id": {"$in": self.ids}}
        } else if !self.job_id.is_empty() {
            doc! {"job_id": self.job_id}
        } else {
            doc! {}
        };
        if let Some(l) = self.sources {
            f.insert("source", doc! {"$in": l});
        }
        f
    }
}

/// A stored dead letter: the API's view and the format to replay it in.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// As `ListDeadLetters` shows it.
    pub view: pb::DeadLetter,
    /// How its payload decodes.
    pub format: Format,
}

fn dead_letter_from(d: &Document) -> DeadLetter {
    DeadLetter {
        view: pb::DeadLetter {
            id: d.get_str("_id").unwrap_or_default().into(),
            job_id: d.get_str("job_id").unwrap_or_default().into(),
            source: d.get_str("source").unwrap_or_default().into(),
            reason: d.get_str("reason").unwrap_or_default().into(),
            payload: d.get_binary_generic("payload").cloned().unwrap_or_default(),
            rejected_at_unix_ms: d.get_i64("rejected_at").unwrap_or(0),
            replays: d.get_i32("replays").unwrap_or(0).max(0) as u32,
        },
        format: Format::from_name(d.get_str("format").unwrap_or("shopify"))
            .unwrap_or(Format::Shopify),
    }
}

/// How many dead letters `which` names.
pub async fn count_dead_letters(store: &Store, which: &Letters<'_>) -> Result<u64, StoreError> {
    store.count(SYNC_DEAD_LETTERS, which.filter()).await
}

/// A page of the dead letters `which` names, newest first.
pub async fn dead_letters(
    store: &Store,
    which: &Letters<'_>,
    skip: u64,
    limit: u64,
) -> Result<Vec<DeadLetter>, StoreError> {
    find_letters(store, which, doc! {"rejected_at": -1}, skip, limit).await
}

/// Most letters one replay takes.
pub const MAX_REPLAY: u64 = 100_000;

/// The dead letters `which` names to replay, in id order (the order they
/// were rejected in), at most [`MAX_REPLAY`].
pub async fn dead_letters_to_replay(
    store: &Store,
    which: &Letters<'_>,
) -> Result<Vec<DeadLetter>, StoreError> {
    find_letters(store, which, doc! {"_id": 1}, 0, MAX_REPLAY).await
}

async fn find_letters(
    store: &Store,
    which: &Letters<'_>,
    sort: Document,
    skip: u64,
    limit: u64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let options = FindOptions {
        sort: Some(sort),
        skip,
        limit,
    };
    let docs = store
        .find(SYNC_DEAD_LETTERS, which.filter(), options)
        .await?;
    Ok(docs.iter().map(dead_letter_from).collect())
}

/// The key of a text's embedding in [`PRODUCT_EMBEDDINGS`].
pub fn embedding_key(model: &str, text_hash: i64) -> String {
    format!("{model}:{:016x}", text_hash as u64)
}

/// A product read for embedding, with the guard value it was read at (the
/// embedding is written only while the product still has it).
#[derive(Debug)]
pub struct ToEmbed {
    /// The product.
    pub frame: Frame,
    read_at: Bson,
}

/// A page of products lacking an embedding of `model`.
#[derive(Debug, Default)]
pub struct EmbedPage {
    /// The products that decoded.
    pub products: Vec<ToEmbed>,
    /// Documents read (decoded or not): fewer than asked ends a sweep.
    pub read: usize,
    /// The last `_id` read: the next page starts after it.
    pub last: Option<String>,
}

/// Up to `limit` products after `after` (by `_id`; "" from the start)
/// with no embedding of `model` (none, or another model's). A document
/// that does not decode is skipped with a warning (the next page starts
/// after it, so it cannot stall the sweep). MongoDB walks the `_id` index
/// and filters; no index can serve "not this model" (`$ne` is not
/// selective), and the sweep's pages are what bound its cost.
pub async fn products_to_embed(
    store: &Store,
    model: &str,
    after: &str,
    limit: usize,
) -> Result<EmbedPage, StoreError> {
    let mut filter = doc! {"embedding.model": {"$ne": model}};
    if !after.is_empty() {
        filter.insert("_id", doc! {"$gt": after});
    }
    let options = FindOptions {
        sort: Some(doc! {"_id": 1}),
        skip: 0,
        limit: limit as u64,
    };
    let docs = store.find(PRODUCTS, filter, options).await?;
    let mut page = EmbedPage {
        read: docs.len(),
        last: docs
            .last()
            .and_then(|d| d.get_str("_id").ok())
            .map(String::from),
        products: Vec::with_capacity(docs.len()),
    };
    for d in docs {
        let Some(read_at) =
            discovery_kit::store::filter::get_path(&d, crate::ingest::GUARD).cloned()
        else {
            tracing::warn!(id = ?d.get_str("_id"), "product without {} not embedded", crate::ingest::GUARD);
            continue;
        };
        match Frame::from_document(d) {
            Ok(frame) => page.products.push(ToEmbed { frame, read_at }),
            Err(e) => tracing::warn!(error = %e, "product not embedded"),
        }
    }
    Ok(page)
}

/// The stored embeddings among `keys` ([`embedding_key`]), as codes and scale.
pub async fn cached_embeddings(
    store: &Store,
    keys: &[String],
) -> Result<HashMap<String, (Vec<u8>, f32)>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let docs = store
        .find(
            PRODUCT_EMBEDDINGS,
            doc! {"_id": {"$in": keys}},
            FindOptions::default(),
        )
        .await?;
    Ok(docs
        .into_iter()
        .filter_map(|d| {
            let id = d.get_str("_id").ok()?.to_string();
            let codes = d.get_binary_generic("codes").ok()?.clone();
            let scale = d.get_f64("scale").ok()? as f32;
            Some((id, (codes, scale)))
        })
        .collect())
}

/// Stores new embeddings by their text.
pub async fn cache_embeddings(store: &Store, new: &[&Embedding]) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    let docs = new
        .iter()
        .map(|e| {
            doc! {
                "_id": embedding_key(&e.model, e.text_hash),
                "codes": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: e.codes.clone() },
                "scale": f64::from(e.scale),
            }
        })
        .collect();
    store
        .bulk_upsert(PRODUCT_EMBEDDINGS, docs)
        .await
        .map(|_| ())
}

/// Writes each product's embedding if the product is still as it was read
/// (a newer record written since keeps its own, empty, embedding and is
/// embedded on the next pass). Returns how many were written.
pub async fn set_embeddings(
    store: &Store,
    done: Vec<(ToEmbed, Embedding)>,
) -> Result<u64, StoreError> {
    let sets = done
        .into_iter()
        .map(|(p, e)| {
            // Encoding a struct of strings, numbers and bytes cannot fail.
            let value = bson::to_bson(&e).unwrap_or(Bson::Null);
            GuardedSet {
                id: p.frame.id,
                guard: crate::ingest::GUARD.to_string(),
                expected: p.read_at,
                fields: doc! {"embedding": value},
            }
        })
        .collect();
    store.bulk_set_if(PRODUCTS, sets).await
}
