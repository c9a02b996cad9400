//! MongoDB implementation of [`DocumentStore`] on the official driver.
//!
//! Pool and timeouts come from the seed spec (`connectionPooling`: min 5,
//! max 50, idle 30 s, wait 5 s), writes use `w: majority, j: true,
//! wtimeout: 5 s`, and reads follow the caller's [`Workload`]. Bulk upserts
//! are one unordered `update` command per batch, which every MongoDB version
//! and wire-compatible server supports.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mongodb::options::{
    ClientOptions, CollectionOptions, FullDocumentType, ReadPreference, ReadPreferenceOptions,
    SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{
    Bson, BulkOutcome, ChangeEvent, ChangeOp, ChangeStream, Document, DocumentStore, FindOptions,
    GuardedOutcome, GuardedSet, IndexSpec, RawDocumentBuf, ResumeToken, StoreError, Workload, doc,
    doc_id,
};
use crate::config::{ConfigError, Env};

const URI_VAR: &str = "DISCOVERY_MONGO_URI";

/// MongoDB connection settings.
#[derive(Clone)]
pub struct MongoConfig {
    /// Connection string (`DISCOVERY_MONGO_URI`, or the file
    /// `DISCOVERY_MONGO_URI_FILE` names when it carries credentials).
    pub uri: String,
    /// User and password given apart from the URI
    /// (`DISCOVERY_MONGO_USERNAME`, `DISCOVERY_MONGO_PASSWORD[_FILE]`),
    /// so the URI can sit in a ConfigMap and the password in a Secret.
    pub credentials: Option<(String, String)>,
    /// Database name.
    pub database: String,
    /// Minimum pooled connections per host.
    pub min_pool: u32,
    /// Maximum pooled connections per host.
    pub max_pool: u32,
    /// Idle connections are closed after this.
    pub max_idle: Duration,
    /// Server selection and connect timeout.
    pub timeout: Duration,
    /// Application name reported to the server.
    pub app_name: String,
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri", &redact(&self.uri))
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl MongoConfig {
    /// Reads the `DISCOVERY_MONGO_*` variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let uri = crate::cache::secret(env, URI_VAR)?
            .unwrap_or_else(|| "mongodb://127.0.0.1:27017/?replicaSet=rs0".to_string());
        let credentials = match (
            env.raw("DISCOVERY_MONGO_USERNAME")
                .filter(|u| !u.is_empty()),
            crate::cache::secret(env, "DISCOVERY_MONGO_PASSWORD")?,
        ) {
            (None, None) => None,
            (Some(u), Some(p)) => Some((u, p)),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "DISCOVERY_MONGO_PASSWORD",
                    "DISCOVERY_MONGO_USERNAME is set: give the password (or DISCOVERY_MONGO_PASSWORD_FILE)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "DISCOVERY_MONGO_USERNAME",
                    "a password is set: give the user name too",
                ));
            }
        };
        if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
            return Err(ConfigError::new(
                URI_VAR,
                format!(
                    "{:?} is not a MongoDB URI (mongodb://host:port/...)",
                    redact(&uri)
                ),
            ));
        }
        let min_pool = env.parse("DISCOVERY_MONGO_MIN_POOL", 5u32, "a whole number")?;
        let max_pool = env.parse("DISCOVERY_MONGO_MAX_POOL", 50u32, "a whole number")?;
        if max_pool == 0 || min_pool > max_pool {
            return Err(ConfigError::new(
                "DISCOVERY_MONGO_MAX_POOL",
                format!(
                    "{max_pool} must be at least 1 and at least DISCOVERY_MONGO_MIN_POOL ({min_pool})"
                ),
            ));
        }
        Ok(Self {
            uri,
            credentials,
            database: env.string("DISCOVERY_MONGO_DATABASE", "discovery"),
            min_pool,
            max_pool,
            max_idle: env.duration("DISCOVERY_MONGO_MAX_IDLE", Duration::from_secs(30))?,
            timeout: env.duration("DISCOVERY_MONGO_TIMEOUT", Duration::from_secs(5))?,
            app_name: "discovery".to_string(),
        })
    }

    /// Settings for a test database on `uri`.
    pub fn for_tests(uri: &str, database: &str) -> Self {
        Self {
            uri: uri.to_string(),
            credentials: None,
            database: database.to_string(),
            min_pool: 0,
            max_pool: 20,
            max_idle: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            app_name: "discovery-tests".to_string(),
        }
    }
}

/// The URI without credentials, for messages.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &uri[..s + 3], &uri[at..]),
        _ => uri.to_string(),
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct MongoStore {
    client: Client,
    db: Database,
    options: CollectionOptions,
    target: String,
}

/// MongoDB's codes for "this node is shutting down, stepping down or not
/// (yet) primary": the operation may succeed on a retry.
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// A driver error, classified: unreachable servers, timeouts, closed
/// connections and failovers are [`StoreError::Unavailable`] (retryable).
fn driver(op: &'static str, collection: &str, e: mongodb::error::Error) -> StoreError {
    use mongodb::error::{ErrorKind, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR};
    let transient = e.contains_label(RETRYABLE_WRITE_ERROR)
        || e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || match e.kind.as_ref() {
            ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. } => true,
            ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
            _ => false,
        };
    if transient {
        StoreError::Unavailable {
            op,
            collection: collection.to_string(),
            reason: e.to_string(),
        }
    } else {
        StoreError::db(op, collection, e)
    }
}

/// The writes were applied on the primary but not (yet) acknowledged by a
/// majority: retryable, as every bulk write here is an idempotent upsert.
fn write_concern(op: &'static str, collection: &str, wce: &Document) -> StoreError {
    StoreError::Unavailable {
        op,
        collection: collection.to_string(),
        reason: format!("write concern not satisfied: {wce}"),
    }
}

fn unreachable(config: &MongoConfig, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unreachable {
        var: URI_VAR,
        target: redact(&config.uri),
        reason: e.to_string(),
    }
}

impl MongoStore {
    /// One unordered `update` command of `updates` under the workload's
    /// write concern; any write error fails it, naming the first.
    async fn update(
        &self,
        op: &'static str,
        collection: &str,
        updates: Vec<Bson>,
    ) -> Result<Document, StoreError> {
        let n = updates.len();
        let reply = self
            .db
            .run_command(doc! {
                "update": collection,
                "updates": updates,
                "ordered": false,
                "writeConcern": {"w": "majority", "j": true, "wtimeout": 5000},
            })
            .await
            .map_err(|e| driver(op, collection, e))?;
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(write_concern(op, collection, wce));
        }
        if let Ok(errs) = reply.get_array("writeErrors")
            && let Some(first) = errs.first()
        {
            return Err(StoreError::db(
                op,
                collection,
                format!("{} of {n} writes failed; first: {first:?}", errs.len()),
            ));
        }
        Ok(reply)
    }

    /// One guarded `update` command over `docs` (see `bulk_upsert_newer`).
    async fn update_newer(
        &self,
        collection: &str,
        docs: Vec<RawDocumentBuf>,
        guard: &str,
    ) -> Result<GuardedOutcome, StoreError> {
        use bson::{RawArrayBuf, RawBson, rawdoc};
        if docs.is_empty() {
            return Ok(GuardedOutcome::default());
        }
        let mut updates = RawArrayBuf::new();
        for d in docs {
            let (id, value) = super::raw_id_and_path(collection, &d, guard)?;
            let mut q = rawdoc! {"_id": id};
            // `$not: {$gte}` also matches a missing field, without an `$or`
            // (which keeps the `_id` index usable on every server).
            q.append(
                guard,
                rawdoc! {"$not": {"$gte": value.unwrap_or(RawBson::Null)}},
            );
            updates.push(rawdoc! {"q": q, "u": d, "upsert": true, "multi": false});
        }
        let command = rawdoc! {
            "update": collection,
            "updates": updates,
            "ordered": false,
            "writeConcern": {"w": "majority", "j": true, "wtimeout": 5000},
        };
        let reply = self
            .db
            .run_raw_command(command)
            .await
            .map_err(|e| driver("bulk_upsert_newer", collection, e))?;
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(write_concern("bulk_upsert_newer", collection, wce));
        }
        let mut stale = 0u64;
        if let Ok(errs) = reply.get_array("writeErrors") {
            for e in errs {
                let code = e
                    .as_document()
                    .and_then(|d| d.get("code"))
                    .map(|c| as_u64(Some(c)));
                if code == Some(11000) {
                    stale += 1;
                } else {
                    return Err(StoreError::db(
                        "bulk_upsert_newer",
                        collection,
                        format!("{} writes failed; first: {e:?}", errs.len()),
                    ));
                }
            }
        }
        let inserted = reply
            .get_array("upserted")
            .map(|a| a.len() as u64)
            .unwrap_or(0);
        let matched = as_u64(reply.get("n")).saturating_sub(inserted);
        Ok(GuardedOutcome {
            inserted,
            replaced: matched,
            stale,
        })
    }

    /// Connects and pings; fails within `config.timeout` when unreachable.
    pub async fn connect(config: &MongoConfig, workload: Workload) -> Result<Self, StoreError> {
        let mut opts = ClientOptions::parse(&config.uri)
            .await
            .map_err(|e| unreachable(config, e))?;
        opts.app_name = Some(config.app_name.clone());
        if let Some((user, password)) = &config.credentials {
            // The auth source and mechanism the URI names (authSource=...)
            // still apply; the default is the admin database.
            let mut credential = opts.credential.take().unwrap_or_default();
            credential.username = Some(user.clone());
            credential.password = Some(password.clone());
            opts.credential = Some(credential);
        }
        opts.min_pool_size = Some(config.min_pool);
        opts.max_pool_size = Some(config.max_pool);
        opts.max_idle_time = Some(config.max_idle);
        opts.server_selection_timeout = Some(config.timeout);
        opts.connect_timeout = Some(config.timeout);
        let client = Client::with_options(opts).map_err(|e| unreachable(config, e))?;
        let db = client.database(&config.database);
        db.run_command(doc! {"ping": 1})
            .await
            .map_err(|e| unreachable(config, e))?;
        Ok(Self {
            client,
            db,
            options: collection_options(workload),
            target: redact(&config.uri),
        })
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection_with_options(name, self.options.clone())
    }

    /// The driver's database handle, for what the trait does not cover
    /// (aggregations in benchmarks, transactions).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The driver client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Driver options for a workload.
pub fn collection_options(workload: Workload) -> CollectionOptions {
    let write = WriteConcern::builder()
        .w(mongodb::options::Acknowledgment::Majority)
        .journal(true)
        .w_timeout(Duration::from_secs(5))
        .build();
    let read = match workload {
        Workload::Realtime => ReadPreference::Primary,
        Workload::Analytics => ReadPreference::SecondaryPreferred {
            options: Some(
                ReadPreferenceOptions::builder()
                    .max_staleness(Duration::from_secs(300))
                    .build(),
            ),
        },
        Workload::ReadMostly => ReadPreference::SecondaryPreferred {
            options: Some(
                ReadPreferenceOptions::builder()
                    .max_staleness(Duration::from_secs(90))
                    .build(),
            ),
        },
    };
    CollectionOptions::builder()
        .write_concern(write)
        .selection_criteria(SelectionCriteria::ReadPreference(read))
        .build()
}

fn to_index_model(spec: &IndexSpec) -> IndexModel {
    let mut o = mongodb::options::IndexOptions::default();
    o.name = Some(spec.name.clone());
    if spec.unique {
        o.unique = Some(true);
    }
    if spec.sparse {
        o.sparse = Some(true);
    }
    o.partial_filter_expression = spec.partial_filter.clone();
    o.expire_after = spec.expire_after;
    IndexModel::builder()
        .keys(spec.keys.clone())
        .options(o)
        .build()
}

#[async_trait::async_trait]
impl DocumentStore for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unreachable {
                var: URI_VAR,
                target: self.target.clone(),
                reason: e.to_string(),
            })
    }

    async fn disk_usage(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let stats = self
            .db
            .run_command(doc! {"dbStats": 1, "freeStorage": 1})
            .await
            .map_err(|e| StoreError::Unreachable {
                var: URI_VAR,
                target: self.target.clone(),
                reason: e.to_string(),
            })?;
        // Numbers come as doubles or integers depending on the server.
        let number = |k: &str| match stats.get(k) {
            Some(mongodb::bson::Bson::Double(v)) => Some(*v),
            Some(mongodb::bson::Bson::Int64(v)) => Some(*v as f64),
            Some(mongodb::bson::Bson::Int32(v)) => Some(f64::from(*v)),
            _ => None,
        };
        Ok(match (number("fsUsedSize"), number("fsTotalSize")) {
            (Some(used), Some(total)) if total > 0.0 && used >= 0.0 => {
                Some((used as u64, total as u64))
            }
            _ => None,
        })
    }

    async fn ensure_indexes(
        &self,
        collection: &str,
        indexes: &[IndexSpec],
    ) -> Result<(), StoreError> {
        let coll = self.coll(collection);
        let required: Vec<IndexModel> = indexes
            .iter()
            .filter(|i| !i.optional)
            .map(to_index_model)
            .collect();
        if !required.is_empty() {
            coll.create_indexes(required)
                .await
                .map_err(|e| driver("create_indexes", collection, e))?;
        }
        for spec in indexes.iter().filter(|i| i.optional) {
            if let Err(e) = coll.create_index(to_index_model(spec)).await {
                tracing::warn!(collection, index = %spec.name, error = %e, "optional index not created; continuing without it");
            }
        }
        Ok(())
    }

    async fn drop_index(&self, collection: &str, name: &str) -> Result<bool, StoreError> {
        match self.coll(collection).drop_index(name).await {
            Ok(()) => Ok(true),
            Err(e) => match e.kind.as_ref() {
                // IndexNotFound, NamespaceNotFound: nothing to drop.
                mongodb::error::ErrorKind::Command(c) if c.code == 27 || c.code == 26 => Ok(false),
                _ => Err(driver("drop_index", collection, e)),
            },
        }
    }

    async fn index_names(&self, collection: &str) -> Result<Vec<String>, StoreError> {
        self.coll(collection)
            .list_index_names()
            .await
            .map_err(|e| driver("list_indexes", collection, e))
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        self.coll(collection)
            .find_one(doc! {"_id": id})
            .await
            .map_err(|e| driver("find_one", collection, e))
    }

    async fn put(&self, collection: &str, doc: Document) -> Result<(), StoreError> {
        let id = doc_id(collection, &doc)?;
        self.coll(collection)
            .replace_one(doc! {"_id": id}, doc)
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(|e| driver("replace_one", collection, e))
    }

    async fn delete(&self, collection: &str, id: &str) -> Result<bool, StoreError> {
        self.coll(collection)
            .delete_one(doc! {"_id": id})
            .await
            .map(|r| r.deleted_count > 0)
            .map_err(|e| driver("delete_one", collection, e))
    }

    async fn find(
        &self,
        collection: &str,
        filter: Document,
        options: FindOptions,
    ) -> Result<Vec<Document>, StoreError> {
        let mut sort = options.sort.unwrap_or_default();
        if !sort.contains_key("_id") {
            sort.insert("_id", 1);
        }
        let coll = self.coll(collection);
        let mut find = coll.find(filter).sort(sort);
        if options.skip > 0 {
            find = find.skip(options.skip);
        }
        if options.limit > 0 {
            find = find.limit(options.limit as i64);
        }
        let cursor = find.await.map_err(|e| driver("find", collection, e))?;
        cursor
            .try_collect()
            .await
            .map_err(|e| driver("find", collection, e))
    }

    async fn count(&self, collection: &str, filter: Document) -> Result<u64, StoreError> {
        self.coll(collection)
            .count_documents(filter)
            .await
            .map_err(|e| driver("count", collection, e))
    }

    async fn bulk_upsert(
        &self,
        collection: &str,
        docs: Vec<Document>,
    ) -> Result<BulkOutcome, StoreError> {
        if docs.is_empty() {
            return Ok(BulkOutcome::default());
        }
        let mut updates = Vec::with_capacity(docs.len());
        for d in docs {
            let id = doc_id(collection, &d)?;
            updates.push(Bson::Document(
                doc! {"q": {"_id": id}, "u": d, "upsert": true, "multi": false},
            ));
        }
        let reply = self.update("bulk_upsert", collection, updates).await?;
        let upserted = reply
            .get_array("upserted")
            .map(|a| a.len() as u64)
            .unwrap_or(0);
        let matched_total = as_u64(reply.get("n")).saturating_sub(upserted);
        Ok(BulkOutcome {
            matched: matched_total,
            modified: as_u64(reply.get("nModified")),
            upserted,
        })
    }

    async fn bulk_upsert_newer(
        &self,
        collection: &str,
        docs: Vec<RawDocumentBuf>,
        guard: &str,
    ) -> Result<GuardedOutcome, StoreError> {
        // One `update` command is one BSON document, which MongoDB bounds at
        // 16 MiB: a batch of large documents goes as several commands.
        let mut total = GuardedOutcome::default();
        let mut docs = docs.into_iter().peekable();
        while docs.peek().is_some() {
            let mut part = Vec::new();
            let mut bytes = 0;
            // Each update also carries its filter (`_id`, the guard) and
            // flags: counted at 256 bytes, more than they take.
            let size = |d: &RawDocumentBuf| d.as_bytes().len() + 256;
            while let Some(d) = docs
                .next_if(|d| part.is_empty() || bytes + size(d) <= super::MAX_COMMAND_DOCS_BYTES)
            {
                bytes += size(&d);
                part.push(d);
            }
            let o = self.update_newer(collection, part, guard).await?;
            total.inserted += o.inserted;
            total.replaced += o.replaced;
            total.stale += o.stale;
        }
        Ok(total)
    }

    async fn bulk_set_if(
        &self,
        collection: &str,
        sets: Vec<GuardedSet>,
    ) -> Result<u64, StoreError> {
        if sets.is_empty() {
            return Ok(0);
        }
        let mut updates = Vec::with_capacity(sets.len());
        for s in sets {
            let mut q = doc! {"_id": s.id};
            q.insert(s.guard, s.expected);
            updates.push(Bson::Document(
                doc! {"q": q, "u": {"$set": s.fields}, "upsert": false, "multi": false},
            ));
        }
        let reply = self.update("bulk_set_if", collection, updates).await?;
        Ok(as_u64(reply.get("n")))
    }

    async fn watch(
        &self,
        collection: &str,
        resume_after: Option<ResumeToken>,
    ) -> Result<ChangeStream, StoreError> {
        let coll = self.coll(collection);
        let mut w = coll.watch().full_document(FullDocumentType::UpdateLookup);
        if let Some(ResumeToken(b)) = resume_after {
            let token: mongodb::change_stream::event::ResumeToken =
                bson::from_bson(b).map_err(|e| StoreError::ResumeLost {
                    collection: collection.to_string(),
                    reason: format!("token does not decode: {e}"),
                })?;
            w = w.resume_after(token);
        }
        let stream = w.await.map_err(|e| driver("watch", collection, e))?;
        let name = collection.to_string();
        Ok(Box::pin(stream.filter_map(move |r| {
            let name = name.clone();
            async move {
                match r {
                    Err(e) => Some(Err(driver("watch", &name, e))),
                    Ok(ev) => convert_event(ev).map(Ok),
                }
            }
        })))
    }
}

use mongodb::bson;

fn convert_event(
    ev: mongodb::change_stream::event::ChangeStreamEvent<Document>,
) -> Option<ChangeEvent> {
    use mongodb::change_stream::event::OperationType;
    let op = match ev.operation_type {
        OperationType::Insert => ChangeOp::Insert,
        OperationType::Update => ChangeOp::Update,
        OperationType::Replace => ChangeOp::Replace,
        OperationType::Delete => ChangeOp::Delete,
        _ => return None,
    };
    let id = match ev.document_key.as_ref().and_then(|k| k.get("_id")) {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => return None,
    };
    let token = bson::to_bson(&ev.id).ok()?;
    Some(ChangeEvent {
        op,
        id,
        document: ev.full_document,
        token: ResumeToken(token),
    })
}

fn as_u64(b: Option<&Bson>) -> u64 {
    match b {
        Some(Bson::Int32(v)) => (*v).max(0) as u64,
        Some(Bson::Int64(v)) => (*v).max(0) as u64,
        Some(Bson::Double(v)) => v.max(0.0) as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact("mongodb://user:secret@db:27017/x"),
            "mongodb://***@db:27017/x"
        );
    }

    #[test]
    fn non_mongo_uri_is_rejected_with_variable() {
        let env = Env::from_pairs([("DISCOVERY_MONGO_URI", "postgres://x")]);
        let e = MongoConfig::from_env(&env).unwrap_err();
        assert!(e.to_string().starts_with("DISCOVERY_MONGO_URI:"), "{e}");
    }
}
