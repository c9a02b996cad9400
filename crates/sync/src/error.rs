//! What sync's calls and jobs fail with, and the gRPC status each becomes.
//! A refused *record* is not an error of the call: it is a dead letter
//! ([`crate::records::RecordError`]) and the job goes on.

use discovery_kit::store::StoreError;
use tonic::Status;

/// A call or job of sync that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The feed header's source name is malformed.
    #[error(
        "header.source: 1-100 characters of letters, digits, ':', '.', '_', '-' (e.g. \"shopify:acme-optics\")"
    )]
    BadSource,
    /// The database stayed unavailable longer than a job retries.
    #[error(
        "{what} failed: database unavailable for {secs:.0} s ({attempts} attempts); resend the feed (upserts are idempotent): {source}"
    )]
    GaveUp {
        /// What was being written.
        what: &'static str,
        /// For how long it was retried.
        secs: f64,
        /// How many times.
        attempts: u32,
        /// The last failure.
        source: StoreError,
    },
    /// A write the database refused for good.
    #[error("{what} failed: {source}")]
    Write {
        /// What was being written.
        what: &'static str,
        /// Why.
        source: StoreError,
    },
    /// A record valid as JSON that the store cannot encode (aborts the
    /// job: it would fail again on replay).
    #[error(transparent)]
    Encode(#[from] crate::records::RecordError),
    /// The job's writers ended (their failure is the job's error).
    #[error("the job's writers stopped (see the job's error)")]
    WritersStopped,
    /// A read or write a call needs failed; the caller may retry.
    #[error("{what} failed; retry later")]
    Unavailable {
        /// What the call was doing.
        what: &'static str,
        /// Why (logged, not sent).
        source: StoreError,
    },
}

impl From<SyncError> for Status {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::BadSource => Status::invalid_argument(e.to_string()),
            SyncError::Unavailable { what, ref source } => {
                tracing::error!(error = %source, "{what} failed");
                Status::unavailable(e.to_string())
            }
            e => Status::unavailable(e.to_string()),
        }
    }
}

/// A failed store call of `what`, as the call's error.
pub fn unavailable(what: &'static str) -> impl FnOnce(StoreError) -> SyncError {
    move |source| SyncError::Unavailable { what, source }
}
