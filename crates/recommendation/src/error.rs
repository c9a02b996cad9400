//! What recommendation's calls fail with, and the gRPC status each
//! becomes. The domain's own errors ([`RankError`], [`SearchError`],
//! [`ExperimentError`]) are the caller's mistakes: INVALID_ARGUMENT with
//! the field named. A store that cannot be read or written is UNAVAILABLE
//! (the cause is logged, not sent).

use discovery_kit::store::StoreError;
use tonic::Status;

use crate::experiments::ExperimentError;
use crate::rank::RankError;
use crate::search::SearchError;

/// A call of recommendation that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum RecommendationError {
    /// A ranking request the ranking refuses.
    #[error(transparent)]
    Rank(#[from] RankError),
    /// A search request the search refuses.
    #[error(transparent)]
    Search(#[from] SearchError),
    /// An experiment that cannot run.
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    /// Experiments cannot be read or written.
    #[error("experiments cannot be read or written right now; retry later")]
    ExperimentsUnavailable(StoreError),
}

impl From<RecommendationError> for Status {
    fn from(e: RecommendationError) -> Self {
        match e {
            RecommendationError::Rank(_)
            | RecommendationError::Search(_)
            | RecommendationError::Experiment(_) => Status::invalid_argument(e.to_string()),
            RecommendationError::ExperimentsUnavailable(ref source) => {
                tracing::error!(error = %source, "experiments store failed");
                Status::unavailable(e.to_string())
            }
        }
    }
}

impl From<RankError> for Status {
    fn from(e: RankError) -> Self {
        RecommendationError::from(e).into()
    }
}

impl From<SearchError> for Status {
    fn from(e: SearchError) -> Self {
        RecommendationError::from(e).into()
    }
}

impl From<ExperimentError> for Status {
    fn from(e: ExperimentError) -> Self {
        RecommendationError::from(e).into()
    }
}

/// A failed experiments read or write, as the call's status.
pub fn experiments_unavailable(e: StoreError) -> Status {
    RecommendationError::ExperimentsUnavailable(e).into()
}
