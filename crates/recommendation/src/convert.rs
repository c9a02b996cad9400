//! Recommendation's proto ↔ domain conversions that are not on the hot
//! path (the ranking and search read their requests directly, and the
//! product's own live in `discovery-catalog`): experiments and the report.

use discovery_proto::v1 as pb;

use crate::experiments::{Experiment, Variant};
use crate::report;

/// An experiment as the API sends it (its times are set by the service).
pub fn experiment_from_proto(e: &pb::Experiment) -> Experiment {
    Experiment {
        id: e.id.clone(),
        variants: e
            .variants
            .iter()
            .map(|v| Variant {
                name: v.name.clone(),
                share_percent: v.share_percent,
                weights: v.weights.map(|w| {
                    [
                        w.face_shape,
                        w.fit,
                        w.preference,
                        w.popularity,
                        w.collaborative,
                    ]
                }),
                brand_cap: v.brand_cap,
            })
            .collect(),
        started_at: 0,
        stopped_at: 0,
    }
}

/// An experiment as the API reports it.
pub fn experiment_to_proto(e: &Experiment) -> pb::Experiment {
    pb::Experiment {
        id: e.id.clone(),
        variants: e
            .variants
            .iter()
            .map(|v| pb::RankingVariant {
                name: v.name.clone(),
                share_percent: v.share_percent,
                weights: v.weights.map(|w| pb::RankingWeights {
                    face_shape: w[0],
                    fit: w[1],
                    preference: w[2],
                    popularity: w[3],
                    collaborative: w[4],
                }),
                brand_cap: v.brand_cap,
            })
            .collect(),
        started_at_unix_ms: e.started_at,
        stopped_at_unix_ms: e.stopped_at,
    }
}

fn rate(r: report::Rate) -> Option<pb::Rate> {
    Some(pb::Rate {
        value: r.value,
        low: r.low,
        high: r.high,
    })
}

/// One row of the recommendation report.
pub fn report_row(r: &report::Row) -> pb::ReportRow {
    pb::ReportRow {
        key: r.key.clone(),
        impressions: r.totals.impressions,
        clicked: r.totals.clicked,
        added_to_cart: r.totals.added_to_cart,
        purchased: r.totals.purchased,
        ctr: rate(r.ctr()),
        add_to_cart_rate: rate(r.add_to_cart_rate()),
        conversion: rate(r.conversion()),
        revenue_minor: r.totals.revenue_minor.clone().into_iter().collect(),
    }
}

/// An understood part of a query as the API's chip.
pub fn chip_to_proto(c: &crate::understand::Chip) -> pb::QueryChip {
    pb::QueryChip {
        kind: c.kind.name().to_string(),
        label: c.label.clone(),
        start: c.start as u32,
        end: c.end as u32,
    }
}

/// Why a hit matched, as the API says it.
pub fn why_to_proto(w: &crate::semantic::Why) -> pb::HitReason {
    pb::HitReason {
        lexical_rank: w.lexical_rank.map(|r| r as u32),
        semantic_rank: w.semantic_rank.map(|r| r as u32),
        similarity: w.similarity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiments_survive_the_api_form() {
        let e = Experiment {
            id: "fit".into(),
            variants: vec![Variant {
                name: "b".into(),
                share_percent: 100,
                weights: Some([1.0, 2.0, 0.5, 0.25, 0.0]),
                brand_cap: 3,
            }],
            started_at: 5,
            stopped_at: 0,
        };
        assert_eq!(
            experiment_from_proto(&experiment_to_proto(&e)).variants,
            e.variants
        );
    }
}
