//! Every store operation as a client span (OpenTelemetry database
//! conventions: `db.system.name`, `db.collection.name`,
//! `db.operation.name`), a latency histogram
//! (`discovery_db_operation_duration_seconds`) and, above 100 ms, a slow
//! operation counter and a warning. Wraps whichever store
//! [`super::StoreConfig::connect`] returns.

use std::future::Future;
use std::time::{Duration, Instant};

use super::bson::{Document, RawDocumentBuf};
use tracing::Instrument;

use super::{
    BulkOutcome, ChangeStream, DocumentStore, FindOptions, GuardedOutcome, GuardedSet, IndexSpec,
    ResumeToken, Store, StoreError,
};

/// Operations slower than this are counted and logged.
pub const SLOW: Duration = Duration::from_millis(100);

/// A store whose operations are traced and measured.
#[derive(Debug)]
pub struct Traced {
    inner: Store,
}

impl Traced {
    /// Wraps `inner`.
    pub fn new(inner: Store) -> Self {
        Self { inner }
    }

    async fn observe<T>(
        &self,
        operation: &'static str,
        collection: &str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let system = self.inner.kind();
        let span = tracing::info_span!(
            "db",
            otel.name = %format_args!("{operation} {collection}"),
            otel.kind = "client",
            db.system.name = system,
            db.collection.name = %collection,
            db.operation.name = operation,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = op.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(_) => {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", "store");
                "error"
            }
        };
        metrics::histogram!(
            "discovery_db_operation_duration_seconds",
            "system" => system,
            "operation" => operation,
            "collection" => collection.to_string(),
            "outcome" => outcome,
        )
        .record(elapsed.as_secs_f64());
        if elapsed >= SLOW {
            metrics::counter!(
                "discovery_db_slow_operations_total",
                "system" => system,
                "operation" => operation,
                "collection" => collection.to_string(),
            )
            .increment(1);
            tracing::warn!(
                parent: &span,
                ms = elapsed.as_millis() as u64,
                "slow {operation} on {collection}"
            );
        }
        result
    }
}

#[async_trait::async_trait]
impl DocumentStore for Traced {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.observe("ping", "admin", self.inner.ping()).await
    }

    async fn disk_usage(&self) -> Result<Option<(u64, u64)>, StoreError> {
        self.observe("dbStats", "admin", self.inner.disk_usage())
            .await
    }

    async fn ensure_indexes(
        &self,
        collection: &str,
        indexes: &[IndexSpec],
    ) -> Result<(), StoreError> {
        self.observe(
            "createIndexes",
            collection,
            self.inner.ensure_indexes(collection, indexes),
        )
        .await
    }

    async fn drop_index(&self, collection: &str, name: &str) -> Result<bool, StoreError> {
        self.observe(
            "dropIndexes",
            collection,
            self.inner.drop_index(collection, name),
        )
        .await
    }

    async fn index_names(&self, collection: &str) -> Result<Vec<String>, StoreError> {
        self.observe(
            "listIndexes",
            collection,
            self.inner.index_names(collection),
        )
        .await
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        self.observe("find", collection, self.inner.get(collection, id))
            .await
    }

    async fn put(&self, collection: &str, doc: Document) -> Result<(), StoreError> {
        self.observe("replace", collection, self.inner.put(collection, doc))
            .await
    }

    async fn delete(&self, collection: &str, id: &str) -> Result<bool, StoreError> {
        self.observe("delete", collection, self.inner.delete(collection, id))
            .await
    }

    async fn find(
        &self,
        collection: &str,
        filter: Document,
        options: FindOptions,
    ) -> Result<Vec<Document>, StoreError> {
        self.observe(
            "find",
            collection,
            self.inner.find(collection, filter, options),
        )
        .await
    }

    async fn count(&self, collection: &str, filter: Document) -> Result<u64, StoreError> {
        self.observe("count", collection, self.inner.count(collection, filter))
            .await
    }

    async fn bulk_upsert(
        &self,
        collection: &str,
        docs: Vec<Document>,
    ) -> Result<BulkOutcome, StoreError> {
        self.observe(
            "bulkWrite",
            collection,
            self.inner.bulk_upsert(collection, docs),
        )
        .await
    }

    async fn bulk_upsert_newer(
        &self,
        collection: &str,
        docs: Vec<RawDocumentBuf>,
        guard: &str,
    ) -> Result<GuardedOutcome, StoreError> {
        self.observe(
            "bulkWrite",
            collection,
            self.inner.bulk_upsert_newer(collection, docs, guard),
        )
        .await
    }

    async fn bulk_set_if(
        &self,
        collection: &str,
        sets: Vec<GuardedSet>,
    ) -> Result<u64, StoreError> {
        self.observe(
            "update",
            collection,
            self.inner.bulk_set_if(collection, sets),
        )
        .await
    }

    async fn watch(
        &self,
        collection: &str,
        resume_after: Option<ResumeToken>,
    ) -> Result<ChangeStream, StoreError> {
        // The span covers opening the stream, not its lifetime.
        self.observe(
            "watch",
            collection,
            self.inner.watch(collection, resume_after),
        )
        .await
    }
}

/// `store` with tracing and metrics around every operation.
pub fn traced(store: Store) -> Store {
    std::sync::Arc::new(Traced::new(store))
}
