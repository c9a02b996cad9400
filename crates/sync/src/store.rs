//! Sync's collections and their indexes (it also writes `products`, whose
//! shape and indexes `discovery-catalog` owns).

use discovery_kit::store::{IndexSpec, doc};

/// Jobs.
pub const SYNC_JOBS: &str = "sync_jobs";
/// Change-stream resume tokens.
pub const SYNC_CHECKPOINTS: &str = "sync_checkpoints";
/// Rejected records.
pub const SYNC_DEAD_LETTERS: &str = "sync_dead_letters";

/// Indexes of the sync collections.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    vec![
        (
            SYNC_JOBS,
            vec![IndexSpec::new("started_at_-1", doc! {"started_at": -1})],
        ),
        (
            SYNC_DEAD_LETTERS,
            vec![
                IndexSpec::new(
                    "job_id_1_rejected_at_-1",
                    doc! {"job_id": 1, "rejected_at": -1},
                ),
                // Listing for a key scoped to its sources.
                IndexSpec::new(
                    "source_1_rejected_at_-1",
                    doc! {"source": 1, "rejected_at": -1},
                ),
            ],
        ),
    ]
}
