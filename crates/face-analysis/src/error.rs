//! What face analysis' calls fail with, and the gRPC status each becomes
//! (a rejection's stable reason code rides in `x-discovery-reason`).

use discovery_kit::store::StoreError;
use tonic::{Code, Status};

use crate::models::ModelError;
use crate::pipeline::Rejection;

/// A call of face analysis that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    /// The photo or landmarks were refused (or no model could run).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Neither a photo nor landmarks.
    #[error("input: send an image (JPEG, PNG or WebP bytes) or client landmarks")]
    NoInput,
    /// Not an id this service gives out.
    #[error("analysis_id: give the id AnalyzeFace returned (24 hex characters)")]
    BadId,
    /// No such analysis (or it expired).
    #[error("analysis_id: no analysis {0:?} (they are kept 24 h)")]
    NotFound(String),
    /// Stored, but not readable as a result.
    #[error("analysis {0:?} is stored but unreadable")]
    Unreadable(String),
    /// The store could not be read.
    #[error("analyses cannot be read right now; retry later")]
    Unavailable(StoreError),
}

impl From<FaceError> for Status {
    fn from(e: FaceError) -> Self {
        match e {
            FaceError::Rejected(r) => status(&r),
            FaceError::NoInput | FaceError::BadId => Status::invalid_argument(e.to_string()),
            FaceError::NotFound(_) => Status::not_found(e.to_string()),
            FaceError::Unreadable(_) => Status::data_loss(e.to_string()),
            FaceError::Unavailable(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// Rejection → gRPC status, with the reason code in `x-discovery-reason`.
pub fn status(r: &Rejection) -> Status {
    let code = match r {
        Rejection::NoFace(_) => Code::NotFound,
        Rejection::Model(ModelError::Missing(_)) => Code::FailedPrecondition,
        Rejection::Model(_) => Code::Internal,
        _ => Code::InvalidArgument,
    };
    let mut s = Status::new(code, r.to_string());
    if let Ok(v) = r.reason().parse() {
        s.metadata_mut().insert("x-discovery-reason", v);
    }
    s
}
