//! Sync's domain in its proto form: a job as the API reports it, a feed
//! header's format. (The product's own conversions are
//! `discovery-catalog`'s.)

use std::sync::atomic::Ordering;

use discovery_proto::v1 as pb;

use discovery_catalog::Frame;

use crate::ingest::Job;
use crate::records::{Format, RecordError, namespaced};

/// Maps a typed product into a frame (not yet validated), in the source's
/// id space; its version is its `updated_at` (newer wins).
pub fn decode_typed(source: &str, p: &pb::Product) -> Result<Frame, RecordError> {
    let mut f = Frame::from_proto(p).map_err(RecordError::Product)?;
    f.id = namespaced(source, &f.id);
    f.metadata.version = f.metadata.updated_at;
    Ok(f)
}

impl Job {
    /// The API view.
    pub fn to_proto(&self) -> pb::SyncJob {
        let end = self.end.lock().clone();
        let (state, error, finished) = end.unwrap_or((pb::SyncJobState::Running, String::new(), 0));
        pb::SyncJob {
            job_id: self.id.clone(),
            source: self.source.clone(),
            state: state as i32,
            received: self.received.load(Ordering::Relaxed),
            upserted: self.upserted.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            started_at_unix_ms: self.started_at,
            finished_at_unix_ms: finished,
            error,
        }
    }
}

impl Format {
    /// From the header's enum.
    pub fn from_proto(f: i32) -> Self {
        match pb::FeedFormat::try_from(f) {
            Ok(pb::FeedFormat::Ndjson) => Self::Ndjson,
            Ok(pb::FeedFormat::ShopifyNdjson) => Self::Shopify,
            _ => Self::Typed,
        }
    }
}
