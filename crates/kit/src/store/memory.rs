//! The embedded, in-process store used by `discovery up` and unit tests.
//!
//! Collections are ordered maps keyed by `_id`. Every write appends a change
//! event with a process-wide sequence number to the collection's history
//! (the last [`HISTORY`] events) and broadcasts it, so change streams can
//! resume from a token as long as it is still in the history, like a MongoDB
//! oplog window. Nothing is persisted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tokio::sync::broadcast;

use super::filter::{compare, get_path, matches, sort_cmp};
use super::multikey;
use super::{
    Bson, BulkOutcome, ChangeEvent, ChangeOp, ChangeStream, Document, DocumentStore, FindOptions,
    GuardedOutcome, GuardedSet, IndexSpec, RawDocumentBuf, ResumeToken, Store, StoreError, doc_id,
};

/// Change events kept per collection for resuming.
pub const HISTORY: usize = 100_000;

#[derive(Debug)]
struct Collection {
    docs: BTreeMap<String, Document>,
    indexes: Vec<String>,
    /// Compound indexes, for MongoDB's parallel-array rule ([`multikey`]).
    compound: Vec<IndexSpec>,
    history: VecDeque<ChangeEvent>,
    tx: broadcast::Sender<ChangeEvent>,
}

impl Collection {
    fn new() -> Self {
        Self {
            docs: BTreeMap::new(),
            indexes: vec!["_id_".to_string()],
            compound: Vec::new(),
            history: VecDeque::new(),
            tx: broadcast::channel(4096).0,
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct MemoryStore {
    collections: RwLock<HashMap<String, Collection>>,
    seq: std::sync::atomic::AtomicU64,
}

static SHARED: OnceLock<Arc<MemoryStore>> = OnceLock::new();

impl MemoryStore {
    /// A new, empty, private store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The process-wide store every service of `discovery up` shares (each
    /// still touches only its own collections).
    pub fn shared() -> Store {
        SHARED.get_or_init(MemoryStore::new).clone()
    }

    fn write(&self, collection: &str, op: ChangeOp, id: String, document: Option<Document>) {
        let mut cols = self.collections.write();
        let col = cols
            .entry(collection.to_string())
            .or_insert_with(Collection::new);
        self.write_in(col, op, id, document);
    }

    /// [`Self::write`] under a lock the caller holds.
    fn write_in(&self, col: &mut Collection, op: ChangeOp, id: String, document: Option<Document>) {
        match (&op, &document) {
            (ChangeOp::Delete, _) => {
                col.docs.remove(&id);
            }
            (_, Some(d)) => {
                col.docs.insert(id.clone(), d.clone());
            }
            _ => {}
        }
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let ev = ChangeEvent {
            op,
            id,
            document,
            token: ResumeToken(Bson::Int64(seq as i64)),
        };
        if col.history.len() == HISTORY {
            col.history.pop_front();
        }
        col.history.push_back(ev.clone());
        let _ = col.tx.send(ev);
    }

    /// Refuses a document MongoDB would refuse under the collection's
    /// indexes (two arrays in one compound index), as MongoDB does.
    fn check_indexes(
        &self,
        op: &'static str,
        collection: &str,
        doc: &Document,
    ) -> Result<(), StoreError> {
        let cols = self.collections.read();
        let Some(col) = cols.get(collection) else {
            return Ok(());
        };
        multikey::check(&col.compound, doc).map_err(|p| StoreError::Database {
            op,
            collection: collection.to_string(),
            reason: p.to_string(),
        })
    }

    /// Writes one document, returning whether it was new, changed or equal.
    fn upsert_one(&self, collection: &str, doc: Document) -> Result<BulkOutcome, StoreError> {
        let id = doc_id(collection, &doc)?;
        self.check_indexes("upsert", collection, &doc)?;
        let existing = self
            .collections
            .read()
            .get(collection)
            .and_then(|c| c.docs.get(&id).cloned());
        let mut out = BulkOutcome::default();
        match existing {
            Some(old) if old == doc => out.matched = 1,
            Some(_) => {
                out.matched = 1;
                out.modified = 1;
                self.write(collection, ChangeOp::Replace, id, Some(doc));
            }
            None => {
                out.upserted = 1;
                self.write(collection, ChangeOp::Insert, id, Some(doc));
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl DocumentStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn ensure_indexes(
        &self,
        collection: &str,
        indexes: &[IndexSpec],
    ) -> Result<(), StoreError> {
        let mut cols = self.collections.write();
        let col = cols
            .entry(collection.to_string())
            .or_insert_with(Collection::new);
        for ix in indexes {
            if col.indexes.contains(&ix.name) {
                continue;
            }
            // MongoDB fails an index build over documents it cannot index.
            if ix.keys.len() > 1 {
                if let Some(p) = col
                    .docs
                    .values()
                    .find_map(|d| multikey::parallel_arrays(ix, d))
                {
                    return Err(StoreError::Database {
                        op: "create_index",
                        collection: collection.to_string(),
                        reason: p.to_string(),
                    });
                }
                col.compound.push(ix.clone());
            }
            col.indexes.push(ix.name.clone());
        }
        Ok(())
    }

    async fn drop_index(&self, collection: &str, name: &str) -> Result<bool, StoreError> {
        let mut cols = self.collections.write();
        let Some(col) = cols.get_mut(collection) else {
            return Ok(false);
        };
        let before = col.indexes.len();
        col.indexes.retain(|n| n != name);
        col.compound.retain(|ix| ix.name != name);
        Ok(col.indexes.len() < before)
    }

    async fn index_names(&self, collection: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .collections
            .read()
            .get(collection)
            .map(|c| c.indexes.clone())
            .unwrap_or_default())
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        Ok(self
            .collections
            .read()
            .get(collection)
            .and_then(|c| c.docs.get(id).cloned()))
    }

    async fn put(&self, collection: &str, doc: Document) -> Result<(), StoreError> {
        self.upsert_one(collection, doc).map(|_| ())
    }

    async fn delete(&self, collection: &str, id: &str) -> Result<bool, StoreError> {
        let exists = self
            .collections
            .read()
            .get(collection)
            .is_some_and(|c| c.docs.contains_key(id));
        if exists {
            self.write(collection, ChangeOp::Delete, id.to_string(), None);
        }
        Ok(exists)
    }

    async fn find(
        &self,
        collection: &str,
        filter: Document,
        options: FindOptions,
    ) -> Result<Vec<Document>, StoreError> {
        let cols = self.collections.read();
        let Some(col) = cols.get(collection) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for d in col.docs.values() {
            if matches(d, &filter)? {
                out.push(d.clone());
            }
        }
        drop(cols);
        if let Some(sort) = &options.sort {
            out.sort_by(|a, b| sort_cmp(a, b, sort));
        }
        let skip = options.skip as usize;
        let out: Vec<Document> = out.into_iter().skip(skip).collect();
        Ok(if options.limit > 0 {
            out.into_iter().take(options.limit as usize).collect()
        } else {
            out
        })
    }

    async fn count(&self, collection: &str, filter: Document) -> Result<u64, StoreError> {
        let cols = self.collections.read();
        let Some(col) = cols.get(collection) else {
            return Ok(0);
        };
        let mut n = 0;
        for d in col.docs.values() {
            if matches(d, &filter)? {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn bulk_upsert(
        &self,
        collection: &str,
        docs: Vec<Document>,
    ) -> Result<BulkOutcome, StoreError> {
        let mut total = BulkOutcome::default();
        for d in docs {
            let o = self.upsert_one(collection, d)?;
            total.matched += o.matched;
            total.modified += o.modified;
            total.upserted += o.upserted;
        }
        Ok(total)
    }

    async fn bulk_upsert_newer(
        &self,
        collection: &str,
        docs: Vec<RawDocumentBuf>,
        guard: &str,
    ) -> Result<GuardedOutcome, StoreError> {
        let mut total = GuardedOutcome::default();
        for raw in docs {
            let d = raw
                .to_document()
                .map_err(|e| StoreError::Filter(format!("undecodable document: {e}")))?;
            let id = doc_id(collection, &d)?;
            self.check_indexes("bulk_upsert_newer", collection, &d)?;
            let existing = self
                .collections
                .read()
                .get(collection)
                .and_then(|c| c.docs.get(&id).cloned());
            match existing {
                None => {
                    total.inserted += 1;
                    self.write(collection, ChangeOp::Insert, id, Some(d));
                }
                Some(old) => {
                    let newer = match (get_path(&old, guard), get_path(&d, guard)) {
                        (None, _) => true,
                        (Some(o), Some(n)) => compare(o, n) == std::cmp::Ordering::Less,
                        (Some(_), None) => false,
                    };
                    if newer {
                        total.replaced += 1;
                        self.write(collection, ChangeOp::Replace, id, Some(d));
                    } else {
                        total.stale += 1;
                    }
                }
            }
        }
        Ok(total)
    }

    async fn bulk_set_if(
        &self,
        collection: &str,
        sets: Vec<GuardedSet>,
    ) -> Result<u64, StoreError> {
        let mut matched = 0;
        // Check and write under one lock: a replace cannot slip in between.
        let mut cols = self.collections.write();
        let Some(col) = cols.get_mut(collection) else {
            return Ok(0);
        };
        for s in sets {
            let Some(mut d) = col.docs.get(&s.id).cloned() else {
                continue;
            };
            if get_path(&d, &s.guard).is_none_or(|v| compare(v, &s.expected).is_ne()) {
                continue;
            }
            for (k, v) in s.fields {
                d.insert(k, v);
            }
            multikey::check(&col.compound, &d).map_err(|p| StoreError::Database {
                op: "bulk_set_if",
                collection: collection.to_string(),
                reason: p.to_string(),
            })?;
            matched += 1;
            self.write_in(col, ChangeOp::Update, s.id, Some(d));
        }
        Ok(matched)
    }

    async fn watch(
        &self,
        collection: &str,
        resume_after: Option<ResumeToken>,
    ) -> Result<ChangeStream, StoreError> {
        let mut cols = self.collections.write();
        let col = cols
            .entry(collection.to_string())
            .or_insert_with(Collection::new);
        // Subscribe before copying the backlog so nothing falls in between.
        let rx = col.tx.subscribe();
        let after = match resume_after {
            None => None,
            Some(ResumeToken(Bson::Int64(seq))) => Some(seq),
            Some(other) => {
                return Err(StoreError::ResumeLost {
                    collection: collection.to_string(),
                    reason: format!("{other:?} is not a token of the embedded store"),
                });
            }
        };
        let backlog: Vec<ChangeEvent> = match after {
            None => Vec::new(),
            Some(seq) => {
                let oldest = col.history.front().map(|e| token_seq(&e.token));
                if let Some(oldest) = oldest
                    && seq + 1 < oldest
                {
                    return Err(StoreError::ResumeLost {
                        collection: collection.to_string(),
                        reason: format!("token {seq} is older than the kept history"),
                    });
                }
                col.history
                    .iter()
                    .filter(|e| token_seq(&e.token) > seq)
                    .cloned()
                    .collect()
            }
        };
        let last_backlog = backlog.last().map(|e| token_seq(&e.token)).or(after);
        let name = collection.to_string();
        let live = futures::stream::unfold(rx, move |mut rx| {
            let name = name.clone();
            async move {
                match rx.recv().await {
                    Ok(ev) => Some((Ok(ev), rx)),
                    Err(broadcast::error::RecvError::Closed) => None,
                    Err(broadcast::error::RecvError::Lagged(n)) => Some((
                        Err(StoreError::ResumeLost {
                            collection: name,
                            reason: format!(
                                "watcher fell {n} events behind; resume from its last token"
                            ),
                        }),
                        rx,
                    )),
                }
            }
        });
        use futures::StreamExt;
        let live = live.filter(move |r| {
            let keep = match (r, last_backlog) {
                (Ok(ev), Some(seq)) => token_seq(&ev.token) > seq,
                _ => true,
            };
            futures::future::ready(keep)
        });
        Ok(Box::pin(
            futures::stream::iter(backlog.into_iter().map(Ok)).chain(live),
        ))
    }
}

fn token_seq(t: &ResumeToken) -> i64 {
    match t.0 {
        Bson::Int64(s) => s,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::store::doc;

    #[tokio::test]
    async fn refuses_what_mongodb_refuses_parallel_arrays() {
        let s = MemoryStore::new();
        s.put("p", doc! {"_id": "old", "a": [1], "b": [2]})
            .await
            .unwrap();
        let ix = IndexSpec::new("a_b", doc! {"a": 1, "b": 1});
        // The build fails over a document it cannot index, as MongoDB's does.
        let err = s.ensure_indexes("p", std::slice::from_ref(&ix)).await;
        assert!(err.unwrap_err().to_string().contains("parallel arrays"));
        s.delete("p", "old").await.unwrap();
        s.ensure_indexes("p", &[ix]).await.unwrap();
        let err = s
            .bulk_upsert("p", vec![doc! {"_id": "x", "a": [1], "b": [2]}])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("[a] [b]"), "{err}");
        assert_eq!(s.get("p", "x").await.unwrap(), None, "nothing written");
        s.put("p", doc! {"_id": "y", "a": [1], "b": 2})
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn round_trip_bulk_and_resume() {
        let s = MemoryStore::new();
        let mut w = s.watch("p", None).await.unwrap();
        let out = s
            .bulk_upsert(
                "p",
                vec![doc! {"_id": "a", "v": 1}, doc! {"_id": "b", "v": 2}],
            )
            .await
            .unwrap();
        assert_eq!(out.upserted, 2);
        let again = s
            .bulk_upsert(
                "p",
                vec![doc! {"_id": "a", "v": 1}, doc! {"_id": "b", "v": 3}],
            )
            .await
            .unwrap();
        assert_eq!((again.matched, again.modified, again.upserted), (2, 1, 0));
        let first = w.next().await.unwrap().unwrap();
        assert_eq!(first.id, "a");
        // Resume after the first event: the next two come, in order.
        let mut r = s.watch("p", Some(first.token)).await.unwrap();
        let ids: Vec<String> = vec![
            r.next().await.unwrap().unwrap().id,
            r.next().await.unwrap().unwrap().id,
        ];
        assert_eq!(ids, ["b", "b"]);
        assert_eq!(
            s.find("p", doc! {"v": {"$gte": 2}}, FindOptions::default())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(s.delete("p", "a").await.unwrap());
        assert_eq!(s.get("p", "a").await.unwrap(), None);
    }
}
