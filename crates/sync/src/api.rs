//! Sync's gRPC adapter: `discovery.v1.Sync` (ingest, jobs, dead letters,
//! the change feed), decoding requests and calling [`crate::ingest`] and
//! [`crate::feed`].

use std::pin::Pin;
use std::sync::Arc;

use discovery_kit::store::Store;
use discovery_proto::v1 as pb;
use discovery_proto::v1::sync_server::Sync;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::store::{self, SYNC_DEAD_LETTERS, SYNC_JOBS};
use crate::{feed, ingest};

#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) store: Store,
    pub(crate) jobs: Arc<ingest::Jobs>,
    pub(crate) watchers: Arc<feed::Watchers>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what} failed");
    Status::unavailable(format!("{what} failed; retry later"))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Sync for Service {
    async fn ingest_catalog(
        &self,
        req: Request<Streaming<pb::IngestCatalogRequest>>,
    ) -> Result<Response<pb::IngestCatalogResponse>, Status> {
        use pb::ingest_catalog_request::Item;
        let sources = Sources::of(&req);
        let mut stream = req.into_inner();
        let header = match stream.message().await? {
            Some(pb::IngestCatalogRequest {
                item: Some(Item::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a header (source, format)",
                ));
            }
        };
        ingest::check_source(&header.source)?;
        sources.check_write(&header.source)?;
        let id = ingest::job_id(&header);
        if !header.idempotency_key.is_empty()
            && let Some(existing) = self
                .store
                .get(SYNC_JOBS, &id)
                .await
                .map_err(|e| unavailable("reading jobs", e))?
        {
            // Same key again. A job that succeeded, or is still running in
            // this process, is not ingested twice. One that failed, or whose
            // sync process stopped mid-feed (its stored state says running,
            // but nothing here runs it), is what the sender is retrying:
            // ingest again under the same id (every write is an upsert
            // guarded by `updated_at`, so records already written are
            // unchanged, not doubled).
            let job = ingest::job_at(&existing, discovery_kit::now_unix_ms());
            let running_here = self.jobs.get(&id).is_some_and(|j| !j.is_done());
            if job.state == pb::SyncJobState::Succeeded as i32 || running_here {
                return Ok(Response::new(pb::IngestCatalogResponse {
                    job_id: job.job_id,
                    received: job.received,
                }));
            }
            tracing::info!(job = %id, state = job.state, "the same idempotency key after the job did not finish: ingesting again");
        }
        let mut intake = self
            .jobs
            .start(self.store.clone(), id, &header)
            .await
            .map_err(|e| unavailable("creating the job", e))?;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    let reason = format!("the feed stream broke: {e}");
                    intake.abort(reason.clone());
                    return Err(Status::aborted(reason));
                }
            };
            let step = match msg.item {
                Some(Item::Record(r)) => intake.record(r).await,
                Some(Item::NdjsonChunk(c)) => intake.chunk(&c).await,
                Some(Item::Header(_)) => {
                    intake.abort("a second header arrived".into());
                    return Err(Status::invalid_argument(
                        "header: only the first message may be a header",
                    ));
                }
                None => Ok(()),
            };
            if let Err(e) = step {
                let id = intake.job().id.clone();
                intake.abort(e.to_string());
                return Err(Status::unavailable(format!("job {id}: {e}")));
            }
        }
        let job = intake.finish().await?;
        Ok(Response::new(pb::IngestCatalogResponse {
            job_id: job.id.clone(),
            received: job.to_proto().received,
        }))
    }

    async fn get_sync_job(
        &self,
        req: Request<pb::GetSyncJobRequest>,
    ) -> Result<Response<pb::GetSyncJobResponse>, Status> {
        let sources = Sources::of(&req);
        let id = req.into_inner().job_id;
        Ok(Response::new(pb::GetSyncJobResponse {
            job: Some(self.job(&sources, &id).await?),
        }))
    }

    type WatchSyncJobStream = BoxStream<pb::SyncJob>;

    async fn watch_sync_job(
        &self,
        req: Request<pb::WatchSyncJobRequest>,
    ) -> Result<Response<Self::WatchSyncJobStream>, Status> {
        let sources = Sources::of(&req);
        let id = req.into_inner().job_id;
        // One look: the view and the live job it came from (a job leaves
        // the live set once its end is stored).
        let (first, live) = self.job_and_live(&sources, &id).await?;
        let stream = futures::stream::unfold(
            (Some(first), live.map(|j| (j.subscribe(), j)), false),
            |(first, live, done)| async move {
                if done {
                    return None;
                }
                if let Some(f) = first {
                    let ended = f.state != pb::SyncJobState::Running as i32;
                    return Some((Ok(f), (None, if ended { None } else { live }, ended)));
                }
                let (mut rx, job) = live?;
                // Progress at most every 100 ms, and the final state.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if rx.changed().await.is_err() {
                    return None;
                }
                let view = job.to_proto();
                let ended = job.is_done();
                Some((Ok(view), (None, Some((rx, job)), ended)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let sources = Sources::of(&req);
        let req = req.into_inner();
        let page = req.page.unwrap_or_default();
        if page.page_size > 500 {
            return Err(Status::invalid_argument(format!(
                "page.page_size: {} is over the maximum of 500",
                page.page_size
            )));
        }
        let size = if page.page_size == 0 {
            50
        } else {
            page.page_size as u64
        };
        let offset: u64 = if page.page_token.is_empty() {
            0
        } else {
            page.page_token
                .strip_prefix("o:")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    Status::invalid_argument("page.page_token: not a token returned by this API")
                })?
        };
        let which = store::Letters {
            job_id: &req.job_id,
            ids: &[],
            sources: sources.only(),
        };
        let total = store::count_dead_letters(&self.store, &which)
            .await
            .map_err(|e| unavailable("counting dead letters", e))?;
        let letters = store::dead_letters(&self.store, &which, offset, size)
            .await
            .map_err(|e| unavailable("reading dead letters", e))?;
        let next = offset + letters.len() as u64;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.into_iter().map(|l| l.view).collect(),
            page: Some(pb::PageResponse {
                next_page_token: if next < total {
                    format!("o:{next}")
                } else {
                    String::new()
                },
                total_size: total,
            }),
        }))
    }

    async fn replay_dead_letters(
        &self,
        req: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let sources = Sources::of(&req);
        let req = req.into_inner();
        if req.ids.is_empty() && req.job_id.is_empty() {
            return Err(Status::invalid_argument(
                "give dead letter ids, or a job_id to replay all of that job's",
            ));
        }
        if req.ids.len() > 10_000 {
            return Err(Status::invalid_argument("ids: at most 10,000 per call"));
        }
        let which = store::Letters {
            job_id: &req.job_id,
            ids: &req.ids,
            sources: sources.only(),
        };
        let letters = store::dead_letters_to_replay(&self.store, &which)
            .await
            .map_err(|e| unavailable("reading dead letters", e))?;
        let Some(first) = letters.first() else {
            return Err(Status::not_found(
                "no dead letters match; list them with ListDeadLetters",
            ));
        };
        let header = pb::IngestHeader {
            source: first.view.source.clone(),
            format: pb::FeedFormat::Unspecified as i32,
            idempotency_key: String::new(),
        };
        let id = format!("replay-{}", ingest::job_id(&header));
        let mut intake = self
            .jobs
            .start(self.store.clone(), id, &header)
            .await
            .map_err(|e| unavailable("creating the replay job", e))?;
        for l in &letters {
            let (source, format) = (l.view.source.as_str(), l.format);
            let payload = l.view.payload.clone();
            if let Err(e) = intake.replay(source, format, payload).await {
                let job = intake.job().id.clone();
                intake.abort(e.to_string());
                return Err(Status::unavailable(format!("job {job}: {e}")));
            }
        }
        let job = intake.finish().await?;
        // Once the replay job has succeeded, each replayed record is its:
        // written, or a new dead letter with today's reason. Only then do
        // the originals go; if the job fails they stay.
        let ids: Vec<String> = letters.into_iter().map(|l| l.view.id).collect();
        let (store, done) = (self.store.clone(), job.clone());
        tokio::spawn(async move {
            let mut rx = done.subscribe();
            while !done.is_done() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            if done.to_proto().state != pb::SyncJobState::Succeeded as i32 {
                return;
            }
            for id in ids {
                if let Err(e) = store.delete(SYNC_DEAD_LETTERS, &id).await {
                    tracing::warn!(error = %e, id, "replayed dead letter not removed");
                }
            }
        });
        Ok(Response::new(pb::ReplayDeadLettersResponse {
            job_id: job.id.clone(),
        }))
    }

    type WatchCatalogChangesStream = BoxStream<pb::CatalogChange>;

    async fn watch_catalog_changes(
        &self,
        req: Request<pb::WatchCatalogChangesRequest>,
    ) -> Result<Response<Self::WatchCatalogChangesStream>, Status> {
        let after = req.into_inner().after_sequence;
        let (backlog, rx) = self.watchers.subscribe(after).map_err(|oldest| {
            Status::out_of_range(format!(
                "after_sequence: {after} is older than the kept window (oldest {oldest}); reload the catalogue and watch from 0"
            ))
        })?;
        let last = backlog.last().map_or(after, |c| c.sequence);
        let live =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| async move {
                match r {
                    Ok(c) if c.sequence > last => Some(Ok(c)),
                    Ok(_) => None,
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        Some(Err(Status::data_loss(format!(
                            "this watcher fell {n} changes behind; resume with after_sequence"
                        ))))
                    }
                }
            });
        let stream = futures::stream::iter(backlog.into_iter().map(Ok)).chain(live);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The feed sources a call may touch. The gateway names them
/// (`x-discovery-sources`, from the API key: a comma-separated list, or
/// `*`) on every call it forwards (`x-discovery-client`); a call without a
/// client is a direct internal one and may touch any. Jobs, dead letters
/// and idempotency keys of other sources are invisible (NOT_FOUND, or not
/// listed), and writing another source is PERMISSION_DENIED.
#[derive(Debug, Clone, PartialEq)]
pub enum Sources {
    /// Every source.
    Any,
    /// Only these.
    Only(Vec<String>),
}

impl Sources {
    /// The sources of a call, from its metadata.
    pub fn of<T>(req: &Request<T>) -> Self {
        let md = req.metadata();
        if md.get("x-discovery-client").is_none() {
            return Sources::Any;
        }
        let list = md
            .get("x-discovery-sources")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let list: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if list.iter().any(|s| s == "*") {
            Sources::Any
        } else {
            Sources::Only(list)
        }
    }

    /// May the call touch `source`?
    pub fn allows(&self, source: &str) -> bool {
        match self {
            Sources::Any => true,
            Sources::Only(l) => l.iter().any(|s| s == source),
        }
    }

    #[allow(clippy::result_large_err)]
    fn check_write(&self, source: &str) -> Result<(), Status> {
        match self {
            _ if self.allows(source) => Ok(()),
            Sources::Only(l) if l.is_empty() => Err(Status::permission_denied(format!(
                "header.source: this API key may not write any source; create an ingest key with `discovery keys create --sources {source}`"
            ))),
            Sources::Only(l) => Err(Status::permission_denied(format!(
                "header.source: this API key may write {}; {source:?} is not one of them",
                l.join(", ")
            ))),
            Sources::Any => Ok(()),
        }
    }

    /// The sources this key is limited to (`None`: all).
    fn only(&self) -> Option<&[String]> {
        match self {
            Sources::Only(l) => Some(l),
            Sources::Any => None,
        }
    }
}

impl Service {
    async fn job(&self, sources: &Sources, id: &str) -> Result<pb::SyncJob, Status> {
        self.job_and_live(sources, id).await.map(|(j, _)| j)
    }

    /// The job's view and, while this process runs it, the live job.
    async fn job_and_live(
        &self,
        sources: &Sources,
        id: &str,
    ) -> Result<(pb::SyncJob, Option<Arc<ingest::Job>>), Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "job_id: give the id IngestCatalog returned",
            ));
        }
        let not_found = || Status::not_found(format!("job_id: no job {id:?}"));
        let live = self.jobs.get(id);
        let job = match &live {
            Some(j) => j.to_proto(),
            None => match self.store.get(SYNC_JOBS, id).await {
                Ok(Some(d)) => ingest::job_at(&d, discovery_kit::now_unix_ms()),
                Ok(None) => return Err(not_found()),
                Err(e) => return Err(unavailable("reading jobs", e)),
            },
        };
        if !sources.allows(&job.source) {
            return Err(not_found());
        }
        Ok((job, live))
    }
}
