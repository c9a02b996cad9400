//! Monitoring's collections and their indexes.

use discovery_kit::store::{IndexSpec, doc};

use crate::rollup;

/// Alerts collection.
pub const ALERTS: &str = "alerts";
/// Metric rollups collection.
pub const METRICS_ROLLUPS: &str = "metrics_rollups";

/// Indexes of the monitoring collections.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    vec![
        (
            ALERTS,
            vec![IndexSpec::new(
                "state_1_active_since_-1",
                doc! {"state": 1, "active_since": -1},
            )],
        ),
        (
            METRICS_ROLLUPS,
            vec![
                IndexSpec::new(
                    "service_1_window_start_-1",
                    doc! {"service": 1, "window_start": -1},
                ),
                IndexSpec::new("created_at_ttl", doc! {"created_at": 1}).ttl(rollup::KEEP),
            ],
        ),
    ]
}
