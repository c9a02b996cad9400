//! What monitoring's calls fail with, and the gRPC status each becomes.

use discovery_kit::store::StoreError;
use tonic::Status;

/// A call of monitoring that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    /// Not one of the report windows.
    #[error("window: {0} is not a window (1 = 1 min, 2 = 5 min, 3 = 1 h, 4 = 24 h, 0 = all)")]
    BadWindow(i32),
    /// Asked for more alerts than a page holds.
    #[error("limit: {0} is over the maximum of 1000")]
    TooMany(u32),
    /// Nothing to report yet.
    #[error("no metrics scraped yet; retry after the first scrape interval")]
    NothingScraped,
    /// The alert history cannot be read.
    #[error("alerts cannot be read right now; retry later")]
    AlertsUnavailable(StoreError),
    /// A request that cannot be right.
    #[error("{0}")]
    BadRequest(String),
    /// No alert with that id.
    #[error("no alert {0:?}")]
    NoSuchAlert(String),
    /// The alert is not firing (any more).
    #[error("alert {0:?} is not firing: only a firing alert can be acknowledged")]
    NotFiring(String),
    /// No silence with that id.
    #[error("no silence {0:?}")]
    NoSuchSilence(String),
    /// The stored hourly history cannot be read.
    #[error("the stored history cannot be read right now; retry later")]
    HistoryUnavailable(StoreError),
    /// Not enough history for a forecast.
    #[error(transparent)]
    NoForecast(#[from] crate::forecast::ForecastError),
}

impl From<MonitoringError> for Status {
    fn from(e: MonitoringError) -> Self {
        match e {
            MonitoringError::BadWindow(_)
            | MonitoringError::TooMany(_)
            | MonitoringError::BadRequest(_) => Status::invalid_argument(e.to_string()),
            MonitoringError::NoSuchAlert(_) | MonitoringError::NoSuchSilence(_) => {
                Status::not_found(e.to_string())
            }
            MonitoringError::NotFiring(_) | MonitoringError::NoForecast(_) => {
                Status::failed_precondition(e.to_string())
            }
            MonitoringError::NothingScraped => Status::unavailable(e.to_string()),
            MonitoringError::HistoryUnavailable(ref source) => {
                tracing::error!(error = %source, "reading the hourly history failed");
                Status::unavailable(e.to_string())
            }
            MonitoringError::AlertsUnavailable(ref source) => {
                tracing::error!(error = %source, "listing alerts failed");
                Status::unavailable(e.to_string())
            }
        }
    }
}
