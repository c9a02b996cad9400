//! Ingestion jobs: records in, batches of validated documents out to the
//! store, rejected records to dead letters, counts and progress throughout.
//!
//! Pipeline (bounded at every step, so a producer faster than the database
//! is slowed down instead of buffered):
//!
//! ```text
//! gRPC stream -> decode + map + validate (the handler task)
//!             -> batches of BATCH documents, a queue of QUEUE_BATCHES
//!             -> WRITERS concurrent unordered newer-wins bulk upserts
//!             -> counts, job document, dead letters
//! ```
//!
//! When the queue is full the handler stops reading the stream, and HTTP/2
//! flow control pushes back on the client.
//!
//! Invariants: every received record ends up counted exactly once as
//! upserted, unchanged or rejected (or the job is FAILED with the reason);
//! a record is never dropped silently; rejected records keep their original
//! payload and a reason naming the field.
//!
//! When the database is unreachable or failing over, a batch is retried
//! with backoff (100 ms doubling to 5 s) for up to `retry_for` (default
//! 5 min), the job stays RUNNING and the stream is not read meanwhile (so
//! the client is paused by flow control, not answered with an error).
//! Retrying is safe: the writes are newer-wins upserts, so a batch that was
//! partly applied before the failure counts those records as unchanged the
//! second time. Only after `retry_for` does the job fail, naming the cause.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use discovery_catalog::{Frame, PRODUCTS, fnv1a};
use discovery_kit::store::{Document, RawDocumentBuf, Store, StoreError};
use discovery_proto::v1 as pb;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::error::SyncError;
use crate::records::{self, Format, RecordError};
use crate::store::{self, SYNC_DEAD_LETTERS, SYNC_JOBS, job_document};

pub use crate::store::job_at;

/// Records per bulk write (seed spec).
pub const BATCH: usize = 1000;
/// Bytes per bulk write: a batch is cut at [`BATCH`] records or this many
/// bytes of documents, whichever comes first. The store sends a batch as one
/// `update` command, a BSON document MongoDB bounds at 16 MiB; 1,000 records
/// of 20 KB (long Shopify descriptions) would pass it and fail the job.
pub const BATCH_BYTES: usize = 8 << 20;
/// Batches waiting for a writer (seed spec queue: 1,000 records).
pub const QUEUE_BATCHES: usize = 1;
/// Concurrent bulk writes per job (seed spec: 10 sync workers).
pub const WRITERS: usize = 10;
/// How often a running job's state is stored even without progress (a
/// sender between batches): a job whose stored state is older than
/// [`ORPHANED_AFTER`] has no process running it.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A job stored as running but not stored for this long was left by a
/// process that stopped (crash, OOM kill, node loss): it is reported
/// failed, and the sender may resend (see the idempotency rule in
/// `IngestCatalog`).
pub const ORPHANED_AFTER: Duration = Duration::from_secs(120);

/// The guard field: newer `metadata.updated_at` wins.
pub const GUARD: &str = "metadata.updated_at";

/// A job's live state.
#[derive(Debug)]
pub struct Job {
    /// Id.
    pub id: String,
    /// Source.
    pub source: String,
    pub(crate) started_at: i64,
    pub(crate) received: AtomicU64,
    pub(crate) upserted: AtomicU64,
    pub(crate) unchanged: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) end: Mutex<Option<(pb::SyncJobState, String, i64)>>,
    changed: watch::Sender<u64>,
    /// Held while the job's state is stored: the heartbeat never writes
    /// "running" over the final state.
    storing: tokio::sync::Mutex<()>,
}

impl Job {
    fn new(id: String, source: String) -> Arc<Self> {
        Arc::new(Self {
            id,
            source,
            started_at: discovery_kit::now_unix_ms(),
            received: AtomicU64::new(0),
            upserted: AtomicU64::new(0),
            unchanged: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            end: Mutex::new(None),
            changed: watch::channel(0).0,
            storing: tokio::sync::Mutex::new(()),
        })
    }

    /// Stores the job's current state.
    async fn store(&self, store: &Store) -> Result<(), StoreError> {
        let _one = self.storing.lock().await;
        store.put(SYNC_JOBS, job_document(&self.to_proto())).await
    }

    /// Stores the job's state every [`HEARTBEAT`] until it ends.
    async fn heartbeat(self: Arc<Self>, store: Store) {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let _one = self.storing.lock().await;
            if self.is_done() {
                return;
            }
            if let Err(e) = store.put(SYNC_JOBS, job_document(&self.to_proto())).await {
                tracing::debug!(job = %self.id, error = %e, "job heartbeat not stored");
            }
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Whether the job has ended.
    pub fn is_done(&self) -> bool {
        self.end.lock().is_some()
    }

    fn finish(&self, state: pb::SyncJobState, error: String) {
        let mut end = self.end.lock();
        if end.is_none() {
            *end = Some((state, error, discovery_kit::now_unix_ms()));
        }
        drop(end);
        self.bump();
    }

    /// A notification each time the counts or the state change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// One unit of work for the writers.
#[derive(Debug, Default)]
struct Batch {
    docs: Vec<RawDocumentBuf>,
    dead: Vec<Document>,
    /// Encoded size of `docs` and of the dead letters' payloads.
    bytes: usize,
}

/// Live jobs of this process.
#[derive(Debug)]
pub struct Jobs {
    live: Mutex<HashMap<String, Arc<Job>>>,
    /// Notified when a job ends (the embedder looks for new products).
    written: Arc<tokio::sync::Notify>,
    retry_for: Duration,
    max_future: Duration,
}

impl Default for Jobs {
    fn default() -> Self {
        Self::new(DEFAULT_RETRY_FOR)
    }
}

/// How long a batch is retried while the database is unavailable.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(300);

/// How far in the future a record's `updated_at` may be (clock skew).
pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(24 * 3600);

impl Jobs {
    /// No jobs yet; batches retried for `retry_for` while the database is
    /// unavailable.
    pub fn new(retry_for: Duration) -> Self {
        Self {
            live: Mutex::default(),
            written: Arc::default(),
            retry_for,
            max_future: DEFAULT_MAX_FUTURE,
        }
    }

    /// Records dated more than `d` ahead are dead letters.
    pub fn with_max_future(mut self, d: Duration) -> Self {
        self.max_future = d;
        self
    }

    /// Notified each time a job of this process ends.
    pub fn written(&self) -> Arc<tokio::sync::Notify> {
        self.written.clone()
    }

    /// A live job by id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.live.lock().get(id).cloned()
    }
}

/// Checks a source name.
pub fn check_source(source: &str) -> Result<(), SyncError> {
    if source.is_empty()
        || source.len() > 100
        || !source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":._-".contains(c))
    {
        return Err(SyncError::BadSource);
    }
    Ok(())
}

/// The job id for a header: stable for an idempotency key, unique otherwise.
pub fn job_id(header: &pb::IngestHeader) -> String {
    if header.idempotency_key.is_empty() {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "job-{}-{:04}",
            discovery_kit::now_unix_ms(),
            N.fetch_add(1, Ordering::Relaxed) % 10_000
        )
    } else {
        format!(
            "job-{:016x}",
            fnv1a(format!("{}\n{}", header.source, header.idempotency_key).as_bytes())
        )
    }
}

/// The receiving side of a job: turns records into batches.
pub struct Intake {
    job: Arc<Job>,
    format: Format,
    batch: Batch,
    skus: HashSet<String>,
    tx: mpsc::Sender<Batch>,
    line: Vec<u8>,
    dead_seq: u64,
    max_future: Duration,
    /// The job span's `traceparent`, stamped on every product written
    /// ([`crate::feed::TRACE_FIELD`]) so the change feed can join the trace.
    trace: Option<String>,
}

impl Jobs {
    /// Starts a job: registers it, persists it, and spawns its writers.
    /// Feed records through the returned [`Intake`], then call
    /// [`Intake::finish`].
    pub async fn start(
        self: &Arc<Self>,
        store: Store,
        id: String,
        header: &pb::IngestHeader,
    ) -> Result<Intake, discovery_kit::store::StoreError> {
        let job = Job::new(id, header.source.clone());
        job.store(&store).await?;
        self.live.lock().insert(job.id.clone(), job.clone());
        tokio::spawn(job.clone().heartbeat(store.clone()));
        let (tx, rx) = mpsc::channel::<Batch>(QUEUE_BATCHES);
        // The writers outlive the call that started them: their span is a
        // child of the call's, so the bulk writes stay in its trace.
        let span = tracing::info_span!("sync.job", job.id = %job.id, job.source = %job.source);
        let trace = discovery_kit::telemetry::traceparent(&span);
        let jobs = Arc::downgrade(self);
        tokio::spawn(write_all(store, job.clone(), rx, self.retry_for, jobs).instrument(span));
        Ok(Intake {
            job,
            format: Format::from_proto(header.format),
            batch: Batch::default(),
            skus: HashSet::new(),
            tx,
            line: Vec::new(),
            dead_seq: 0,
            max_future: self.max_future,
            trace,
        })
    }
}

impl Intake {
    /// The job.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// A dead letter's payload again, decoded as it was the first time.
    pub async fn replay(
        &mut self,
        source: &str,
        format: Format,
        payload: Vec<u8>,
    ) -> Result<(), SyncError> {
        let decoded = match format {
            Format::Typed => {
                use prost::Message;
                pb::Product::decode(&payload[..])
                    .map_err(|e| RecordError::NotAProduct(e.to_string()))
                    .and_then(|p| crate::convert::decode_typed(source, &p))
            }
            f => records::decode_raw(f, source, &payload),
        };
        let kept = self.format;
        self.format = format;
        let r = self.accept(decoded, payload).await;
        self.format = kept;
        r
    }

    /// One record from the stream.
    pub async fn record(&mut self, r: pb::CatalogRecord) -> Result<(), SyncError> {
        let source = self.job.source.clone();
        match r.record {
            Some(pb::catalog_record::Record::Product(p)) => {
                let payload = {
                    use prost::Message;
                    p.encode_to_vec()
                };
                let decoded = crate::convert::decode_typed(&source, &p);
                let kept = self.format;
                self.format = Format::Typed;
                let r = self.accept(decoded, payload).await;
                self.format = kept;
                r
            }
            Some(pb::catalog_record::Record::RawJson(raw)) => {
                let decoded = records::decode_raw(self.format, &source, &raw);
                self.accept(decoded, raw).await
            }
            None => self.accept(Err(RecordError::Empty), Vec::new()).await,
        }
    }

    /// A chunk of NDJSON; lines may span chunks.
    pub async fn chunk(&mut self, bytes: &[u8]) -> Result<(), SyncError> {
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            self.line.extend_from_slice(head);
            rest = &tail[1..];
            self.flush_line().await?;
        }
        if self.line.len() + rest.len() > records::MAX_RECORD {
            // An endless line: keep what fits for the dead letter, drop the rest until newline.
            let room = (records::MAX_RECORD + 1).saturating_sub(self.line.len());
            self.line.extend_from_slice(&rest[..rest.len().min(room)]);
        } else {
            self.line.extend_from_slice(rest);
        }
        Ok(())
    }

    async fn flush_line(&mut self) -> Result<(), SyncError> {
        let line = std::mem::take(&mut self.line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let decoded = records::decode_raw(self.format, &self.job.source, &line);
        self.accept(decoded, line).await
    }

    async fn accept(
        &mut self,
        decoded: Result<Frame, RecordError>,
        payload: Vec<u8>,
    ) -> Result<(), SyncError> {
        self.job.received.fetch_add(1, Ordering::Relaxed);
        let checked = decoded.and_then(|f| {
            records::validate(&f)?;
            records::check_not_future(&f, discovery_kit::now_unix_ms(), self.max_future)?;
            for v in &f.inventory.variants {
                if self.skus.contains(&v.sku) {
                    return Err(RecordError::Invalid {
                        id: f.id.clone(),
                        rule: format!("sku {} appears in another record of this batch", v.sku),
                    });
                }
            }
            Ok(f)
        });
        match checked {
            Ok(f) => {
                for v in &f.inventory.variants {
                    self.skus.insert(v.sku.clone());
                }
                let d = store::product_document(&f, self.trace.as_deref())?;
                self.batch.bytes += d.as_bytes().len();
                self.batch.docs.push(d);
            }
            Err(reason) => {
                self.dead_seq += 1;
                let reason = reason.to_string();
                self.batch.bytes += payload.len() + reason.len();
                self.batch.dead.push(store::dead_letter_document(
                    &self.job,
                    self.dead_seq,
                    &reason,
                    self.format,
                    payload,
                ));
            }
        }
        if self.batch.docs.len() + self.batch.dead.len() >= BATCH || self.batch.bytes >= BATCH_BYTES
        {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<(), SyncError> {
        let batch = std::mem::take(&mut self.batch);
        self.skus.clear();
        self.job.bump();
        self.tx
            .send(batch)
            .await
            .map_err(|_| SyncError::WritersStopped)
    }

    /// Flushes what is left; the writers finish the job in the background.
    pub async fn finish(mut self) -> Result<Arc<Job>, SyncError> {
        if !self.line.is_empty() {
            self.flush_line().await?;
        }
        if !self.batch.docs.is_empty() || !self.batch.dead.is_empty() {
            self.send().await?;
        }
        Ok(self.job)
    }

    /// The stream broke: what was queued is still written; the job fails.
    pub fn abort(self, reason: String) {
        let job = self.job.clone();
        drop(self);
        job.finish(pb::SyncJobState::Failed, reason);
    }
}

/// Runs `op` until it succeeds, fails for a reason retrying cannot help,
/// or the database has been unavailable for `retry_for`.
async fn retrying<T, F, Fut>(
    job: &Job,
    what: &'static str,
    retry_for: Duration,
    mut op: F,
) -> Result<T, SyncError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 1u32;
    loop {
        match op().await {
            Ok(v) => {
                if attempts > 1 {
                    tracing::info!(job = %job.id, what, attempts, "write went through after retries");
                }
                return Ok(v);
            }
            Err(e) if e.is_transient() && started.elapsed() < retry_for => {
                metrics::counter!("discovery_sync_write_retries_total").increment(1);
                tracing::warn!(job = %job.id, what, attempts, ?backoff, error = %e, "database unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                attempts += 1;
            }
            Err(source) if source.is_transient() => {
                return Err(SyncError::GaveUp {
                    what,
                    secs: started.elapsed().as_secs_f64(),
                    attempts,
                    source,
                });
            }
            Err(source) => return Err(SyncError::Write { what, source }),
        }
    }
}

async fn write_batch(
    store: &Store,
    job: &Job,
    batch: Batch,
    retry_for: Duration,
) -> Result<(), SyncError> {
    if !batch.dead.is_empty() {
        let n = batch.dead.len() as u64;
        retrying(job, "writing dead letters", retry_for, || {
            store.bulk_upsert(SYNC_DEAD_LETTERS, batch.dead.clone())
        })
        .await?;
        job.rejected.fetch_add(n, Ordering::Relaxed);
    }
    if !batch.docs.is_empty() {
        let o = retrying(job, "writing products", retry_for, || {
            store.bulk_upsert_newer(PRODUCTS, batch.docs.clone(), GUARD)
        })
        .await?;
        job.upserted
            .fetch_add(o.inserted + o.replaced, Ordering::Relaxed);
        job.unchanged.fetch_add(o.stale, Ordering::Relaxed);
        metrics::counter!("discovery_sync_records_total", "outcome" => "upserted")
            .increment(o.inserted + o.replaced);
        metrics::counter!("discovery_sync_records_total", "outcome" => "unchanged")
            .increment(o.stale);
    }
    Ok(())
}

/// Writes a job's batches, then stores its final state and forgets it (a
/// finished job is read from the store).
async fn write_all(
    store: Store,
    job: Arc<Job>,
    rx: mpsc::Receiver<Batch>,
    retry_for: Duration,
    jobs: std::sync::Weak<Jobs>,
) {
    let failed: Mutex<Option<SyncError>> = Mutex::new(None);
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .for_each_concurrent(WRITERS, |batch| {
            let (store, job, failed) = (&store, &job, &failed);
            async move {
                if failed.lock().is_some() {
                    return;
                }
                let span = tracing::info_span!(
                    "sync.write_batch",
                    records = batch.docs.len(),
                    rejected = batch.dead.len(),
                    bytes = batch.bytes,
                );
                match write_batch(store, job, batch, retry_for)
                    .instrument(span)
                    .await
                {
                    Ok(()) => {
                        job.bump();
                        let _ = job.store(store).await;
                    }
                    Err(e) => {
                        tracing::error!(job = %job.id, error = %e, "sync batch failed");
                        *failed.lock() = Some(e);
                    }
                }
            }
        })
        .await;
    match failed.into_inner() {
        Some(e) => job.finish(pb::SyncJobState::Failed, e.to_string()),
        None => job.finish(pb::SyncJobState::Succeeded, String::new()),
    }
    let view = job.to_proto();
    let stored = retrying(&job, "storing the final job state", retry_for, || {
        job.store(&store)
    })
    .await;
    match stored {
        // Readers find it in the store from now on.
        Ok(()) => {
            if let Some(jobs) = jobs.upgrade() {
                jobs.live.lock().remove(&job.id);
                jobs.written.notify_one();
            }
        }
        // Kept here: this process's answer is the only record of its end.
        Err(e) => tracing::error!(job = %job.id, error = %e, "storing the final job state failed"),
    }
    tracing::info!(
        job = %view.job_id, received = view.received, upserted = view.upserted,
        unchanged = view.unchanged, rejected = view.rejected, "sync job ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(state: pb::SyncJobState, stored_ago: Duration) -> Document {
        let now = discovery_kit::now_unix_ms();
        let mut d = job_document(&pb::SyncJob {
            job_id: "job-1".into(),
            source: "shopify:a".into(),
            state: state as i32,
            started_at_unix_ms: now - 600_000,
            ..Default::default()
        });
        d.insert("stored_at", now - stored_ago.as_millis() as i64);
        d
    }

    #[test]
    fn a_running_job_nobody_stores_any_more_is_reported_failed() {
        let now = discovery_kit::now_unix_ms();
        let fresh = job_at(&stored(pb::SyncJobState::Running, HEARTBEAT), now);
        assert_eq!(fresh.state, pb::SyncJobState::Running as i32);
        let left = job_at(
            &stored(pb::SyncJobState::Running, ORPHANED_AFTER + HEARTBEAT),
            now,
        );
        assert_eq!(left.state, pb::SyncJobState::Failed as i32);
        assert!(left.error.contains("resend the feed"), "{}", left.error);
        let done = job_at(
            &stored(pb::SyncJobState::Succeeded, Duration::from_secs(3600)),
            now,
        );
        assert_eq!(done.state, pb::SyncJobState::Succeeded as i32);
        assert!(done.error.is_empty());
    }

    #[tokio::test]
    async fn a_finished_job_leaves_the_live_set_once_its_end_is_stored() {
        let store: Store = discovery_kit::store::memory::MemoryStore::new();
        let jobs = Arc::new(Jobs::default());
        let header = pb::IngestHeader {
            source: "shopify:a".into(),
            ..Default::default()
        };
        let intake = jobs
            .start(store.clone(), "job-x".into(), &header)
            .await
            .unwrap();
        assert!(jobs.get("job-x").is_some());
        let job = intake.finish().await.unwrap();
        let mut changes = job.subscribe();
        while !job.is_done() {
            changes.changed().await.unwrap();
        }
        for _ in 0..200 {
            if jobs.get("job-x").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(jobs.get("job-x").is_none(), "still live after its end");
        let d = store
            .get(SYNC_JOBS, "job-x")
            .await
            .unwrap()
            .expect("stored");
        let view = job_at(&d, discovery_kit::now_unix_ms());
        assert_eq!(view.state, pb::SyncJobState::Succeeded as i32);
    }
}
