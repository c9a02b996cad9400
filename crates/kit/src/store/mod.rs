//! Document storage: one trait, a MongoDB implementation and an embedded one.
//!
//! Services own their collections and talk to them through [`DocumentStore`]:
//! documents are BSON with a string `_id`; filters use a documented subset of
//! the MongoDB query language (equality on dotted paths, `$eq $ne $gt $gte $lt
//! $lte $in $nin $exists`, and `$and`/`$or`) that both implementations honour,
//! so a service behaves the same embedded and in production.
//!
//! - [`mongo::MongoStore`]: the official driver, with pool sizes, timeouts,
//!   write concern and read preference per [`Workload`] from the seed spec.
//! - [`memory::MemoryStore`]: in-process, for `discovery up` and unit tests;
//!   no persistence; change streams with resumable sequence tokens.
//!
//! Invariant: writes that return `Ok` are acknowledged by the store under the
//! workload's write concern (majority + journal for MongoDB); nothing is
//! buffered in the kit.

pub mod filter;
pub mod memory;
pub mod mongo;
pub mod multikey;
pub mod traced;

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
pub use mongodb::bson::{self, Bson, Document, RawDocumentBuf, doc};

use crate::config::{ConfigError, Env};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (start-up or while running).
    #[error("{var}: cannot reach MongoDB at {target}: {reason}")]
    Unreachable {
        /// Variable holding the URI.
        var: &'static str,
        /// Hosts tried (credentials removed).
        target: String,
        /// Driver message.
        reason: String,
    },
    /// A document lacks a string `_id`.
    #[error("document in {collection} has no string _id")]
    MissingId {
        /// Collection.
        collection: String,
    },
    /// A filter uses something outside the supported subset.
    #[error("unsupported filter: {0}")]
    Filter(String),
    /// The change stream cannot resume from the given token (history gone).
    #[error("change stream on {collection} cannot resume: {reason}")]
    ResumeLost {
        /// Collection.
        collection: String,
        /// Why.
        reason: String,
    },
    /// The database is unreachable or changing primaries right now: the
    /// operation may be retried (every write here is an idempotent upsert).
    #[error("{op} on {collection}: database unavailable ({reason}); retrying may succeed")]
    Unavailable {
        /// Operation.
        op: &'static str,
        /// Collection.
        collection: String,
        /// Driver message.
        reason: String,
    },
    /// Any other database error.
    #[error("{op} on {collection}: {reason}")]
    Database {
        /// Operation ("find", "bulk_upsert"...).
        op: &'static str,
        /// Collection.
        collection: String,
        /// Driver message.
        reason: String,
    },
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (the database
    /// was unreachable, not the request wrong).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Unreachable { .. }
        )
    }

    pub(crate) fn db(op: &'static str, collection: &str, e: impl std::fmt::Display) -> Self {
        StoreError::Database {
            op,
            collection: collection.to_string(),
            reason: e.to_string(),
        }
    }
}

/// The read/write profile of a caller, mapping to driver options (seed spec
/// `readPreferences` and `writeOptimization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Sessions, jobs, checkpoints: primary reads, majority+journal writes.
    Realtime,
    /// Rollups and reports: secondaryPreferred, max staleness 300 s.
    Analytics,
    /// Large reads that tolerate a minute's lag (recommendation's catalogue
    /// snapshot loads): secondaryPreferred, max staleness 60 s (the spec
    /// says `secondary`; preferred keeps single-node replica sets working).
    ReadMostly,
}

/// An index to create. Mirrors MongoDB index options.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    /// Index name (stable, so creation is idempotent).
    pub name: String,
    /// Keys, e.g. `{brand: 1, price: 1}` or `{feature_summary: "text"}`.
    pub keys: Document,
    /// Unique constraint.
    pub unique: bool,
    /// Sparse index.
    pub sparse: bool,
    /// Partial filter expression.
    pub partial_filter: Option<Document>,
    /// TTL: documents expire this long after the indexed date field.
    pub expire_after: Option<Duration>,
    /// When the server cannot build it, warn and go on instead of failing
    /// start-up (for indexes no request path depends on, such as the text
    /// index, which some MongoDB-compatible servers lack).
    pub optional: bool,
}

impl IndexSpec {
    /// A plain index named `name` on `keys`.
    pub fn new(name: &str, keys: Document) -> Self {
        Self {
            name: name.to_string(),
            keys,
            unique: false,
            sparse: false,
            partial_filter: None,
            expire_after: None,
            optional: false,
        }
    }
    /// Marks it optional (see the field).
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
    /// Makes it unique.
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }
    /// Makes it sparse.
    pub fn sparse(mut self) -> Self {
        self.sparse = true;
        self
    }
    /// Adds a partial filter.
    pub fn partial(mut self, filter: Document) -> Self {
        self.partial_filter = Some(filter);
        self
    }
    /// Makes it a TTL index.
    pub fn ttl(mut self, after: Duration) -> Self {
        self.expire_after = Some(after);
        self
    }
}

/// Options of a find.
#[derive(Debug, Clone, Default)]
pub struct FindOptions {
    /// Sort, e.g. `{updated_at: -1}`; ties broken by `_id`.
    pub sort: Option<Document>,
    /// Skip this many.
    pub skip: u64,
    /// At most this many (0 = no limit).
    pub limit: u64,
}

/// Most document bytes one write command carries: MongoDB bounds a command
/// (a BSON document) at 16 MiB; the rest is room for the command's own
/// fields and each update's filter.
pub const MAX_COMMAND_DOCS_BYTES: usize = (16 << 20) - (1 << 20);

/// Counts from a bulk upsert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Documents that matched an existing one.
    pub matched: u64,
    /// Of those, how many changed.
    pub modified: u64,
    /// Documents inserted.
    pub upserted: u64,
}

/// The `_id` of an encoded document, and the value at a dotted `path`.
pub fn raw_id_and_path(
    collection: &str,
    d: &RawDocumentBuf,
    path: &str,
) -> Result<(String, Option<bson::RawBson>), StoreError> {
    let id = d
        .get_str("_id")
        .map_err(|_| StoreError::MissingId {
            collection: collection.to_string(),
        })?
        .to_string();
    let mut cur: &bson::RawDocument = d;
    let mut parts = path.split('.').peekable();
    let mut value = None;
    while let Some(p) = parts.next() {
        match cur.get(p).ok().flatten() {
            Some(bson::RawBsonRef::Document(inner)) if parts.peek().is_some() => cur = inner,
            Some(v) if parts.peek().is_none() => value = Some(v.to_raw_bson()),
            _ => break,
        }
    }
    Ok((id, value))
}

/// Counts from a guarded bulk upsert ([`DocumentStore::bulk_upsert_newer`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardedOutcome {
    /// New documents inserted.
    pub inserted: u64,
    /// Stored documents replaced by newer ones.
    pub replaced: u64,
    /// Documents not written because the stored one is as new or newer
    /// (includes re-sending the same document).
    pub stale: u64,
}

/// One guarded partial update ([`DocumentStore::bulk_set_if`]): set
/// `fields` on the document `id` only while its `guard` path still holds
/// `expected`.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardedSet {
    /// `_id` of the document.
    pub id: String,
    /// Dotted path checked for equality.
    pub guard: String,
    /// The value the guard must still have.
    pub expected: Bson,
    /// Top-level fields to set.
    pub fields: Document,
}

/// Kind of a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// New document.
    Insert,
    /// Partial update.
    Update,
    /// Whole-document replacement.
    Replace,
    /// Removal.
    Delete,
}

/// Where a change stream can resume. Opaque; persist it as BSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeToken(pub Bson);

/// One change on a watched collection.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    /// What happened.
    pub op: ChangeOp,
    /// `_id` of the changed document.
    pub id: String,
    /// The document after the change (None for deletes).
    pub document: Option<Document>,
    /// Resume after this event.
    pub token: ResumeToken,
}

/// A stream of change events.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<ChangeEvent, StoreError>> + Send>>;

/// Document storage. See the module docs for the filter subset.
#[async_trait::async_trait]
pub trait DocumentStore: Send + Sync + Debug + 'static {
    /// "mongodb" or "memory".
    fn kind(&self) -> &'static str;
    /// Round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The database's volume, (used, size) in bytes, where the server says
    /// (MongoDB's `dbStats` with `freeStorage`); `None` when it does not.
    async fn disk_usage(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(None)
    }
    /// Creates the indexes if missing (idempotent).
    async fn ensure_indexes(
        &self,
        collection: &str,
        indexes: &[IndexSpec],
    ) -> Result<(), StoreError>;
    /// Drops the index `name` if it exists; true when one was dropped
    /// (retired indexes: one MongoDB refuses documents under must go).
    async fn drop_index(&self, collection: &str, name: &str) -> Result<bool, StoreError>;
    /// Index names on the collection (including `_id_` for MongoDB).
    async fn index_names(&self, collection: &str) -> Result<Vec<String>, StoreError>;
    /// One document by `_id`.
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError>;
    /// Inserts or replaces the document with the `_id` it carries.
    async fn put(&self, collection: &str, doc: Document) -> Result<(), StoreError>;
    /// Deletes by `_id`; true when something was deleted.
    async fn delete(&self, collection: &str, id: &str) -> Result<bool, StoreError>;
    /// Documents matching `filter`.
    async fn find(
        &self,
        collection: &str,
        filter: Document,
        options: FindOptions,
    ) -> Result<Vec<Document>, StoreError>;
    /// How many documents match.
    async fn count(&self, collection: &str, filter: Document) -> Result<u64, StoreError>;
    /// Unordered bulk replace-or-insert by `_id` (one round trip per batch).
    async fn bulk_upsert(
        &self,
        collection: &str,
        docs: Vec<Document>,
    ) -> Result<BulkOutcome, StoreError>;
    /// Unordered bulk upsert where newer wins: each document replaces the
    /// stored one with its `_id` only if the stored `guard` (a dotted path to
    /// a number) is absent or lower than the document's; otherwise it is
    /// counted `stale` and not written. One round trip per batch. On
    /// MongoDB this is an upsert whose filter carries the guard; a stale
    /// document's upsert collides with the existing `_id` (duplicate key),
    /// which is how it is recognised.
    ///
    /// Documents come as encoded BSON ([`RawDocumentBuf`]): one allocation
    /// per document instead of one per field, which is what bulk ingestion
    /// spends its time on otherwise.
    async fn bulk_upsert_newer(
        &self,
        collection: &str,
        docs: Vec<RawDocumentBuf>,
        guard: &str,
    ) -> Result<GuardedOutcome, StoreError>;
    /// Unordered guarded partial updates: each sets its fields on its
    /// document only if the document exists and its guard still equals the
    /// expected value (a document replaced since it was read is left
    /// alone); never inserts. Returns how many documents matched. One
    /// round trip per batch; on MongoDB, an `update` with `$set` whose
    /// filter carries the guard.
    async fn bulk_set_if(&self, collection: &str, sets: Vec<GuardedSet>)
    -> Result<u64, StoreError>;
    /// Watches a collection, from now or after `resume_after`.
    async fn watch(
        &self,
        collection: &str,
        resume_after: Option<ResumeToken>,
    ) -> Result<ChangeStream, StoreError>;
}

/// A shared store handle.
pub type Store = Arc<dyn DocumentStore>;

/// Which store to use, from `DISCOVERY_STORE`.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The process-wide embedded store.
    Memory,
    /// MongoDB.
    Mongo(mongo::MongoConfig),
}

impl StoreConfig {
    /// Reads `DISCOVERY_STORE` and the `DISCOVERY_MONGO_*` variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        match env.string("DISCOVERY_STORE", "memory").as_str() {
            "memory" => Ok(StoreConfig::Memory),
            "mongodb" | "mongo" => Ok(StoreConfig::Mongo(mongo::MongoConfig::from_env(env)?)),
            other => Err(ConfigError::new(
                "DISCOVERY_STORE",
                format!("{other:?} is not a store (use memory or mongodb)"),
            )),
        }
    }

    /// Connects (MongoDB: fails fast when unreachable) for `workload`.
    pub async fn connect(&self, workload: Workload) -> Result<Store, StoreError> {
        match self {
            StoreConfig::Memory => Ok(traced::traced(memory::MemoryStore::shared())),
            StoreConfig::Mongo(c) => Ok(traced::traced(Arc::new(
                mongo::MongoStore::connect(c, workload).await?,
            ))),
        }
    }
}

/// The `_id` of a document as a string.
pub fn doc_id(collection: &str, doc: &Document) -> Result<String, StoreError> {
    match doc.get("_id") {
        Some(Bson::String(s)) => Ok(s.clone()),
        _ => Err(StoreError::MissingId {
            collection: collection.to_string(),
        }),
    }
}
