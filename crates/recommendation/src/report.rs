//! What recommendations sell: outcome totals per group and their rates.
//!
//! The counting unit is the impression (one served page): CTR is the share
//! of impressions with at least one click, add-to-cart rate and conversion
//! likewise; revenue sums the purchases attributed to them. Each rate comes
//! with a 95% Wilson score interval, which stays inside [0, 1] and is sound
//! for small samples and rates near 0 (unlike the normal approximation).
//!
//! Pure: [`crate::impressions`] reads the rollups and hands them here.

use std::collections::BTreeMap;

/// The dimensions an impression is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dims {
    /// Experiment id ("" outside experiments).
    pub experiment: String,
    /// Variant name ("default" outside experiments).
    pub variant: String,
    /// Placement ("default" when not given).
    pub placement: String,
    /// Face shape of the request ("any" when none).
    pub face_shape: String,
}

impl Dims {
    /// `experiment/variant`, or the variant alone outside experiments.
    pub fn variant_label(&self) -> String {
        if self.experiment.is_empty() {
            self.variant.clone()
        } else {
            format!("{}/{}", self.experiment, self.variant)
        }
    }
}

/// Counts for a group of impressions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Impressions.
    pub impressions: u64,
    /// Impressions clicked at least once.
    pub clicked: u64,
    /// Impressions with a cart add.
    pub added_to_cart: u64,
    /// Impressions with a purchase.
    pub purchased: u64,
    /// Revenue in minor units per currency.
    pub revenue_minor: BTreeMap<String, i64>,
}

impl Totals {
    /// Adds another group's counts.
    pub fn add(&mut self, o: &Totals) {
        self.impressions += o.impressions;
        self.clicked += o.clicked;
        self.added_to_cart += o.added_to_cart;
        self.purchased += o.purchased;
        for (c, v) in &o.revenue_minor {
            *self.revenue_minor.entry(c.clone()).or_default() += v;
        }
    }
}

/// A proportion and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// successes / trials.
    pub value: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// The 95% Wilson score interval of `k` successes in `n` trials (all zero
/// without trials).
pub fn wilson(k: u64, n: u64) -> Rate {
    if n == 0 {
        return Rate {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        };
    }
    let z = 1.959_963_984_540_054_f64;
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2n = z * z / n;
    let centre = (p + z2n / 2.0) / (1.0 + z2n);
    let half = z * (p * (1.0 - p) / n + z2n / (4.0 * n)).sqrt() / (1.0 + z2n);
    // At 0 and at n the bounds are exactly 0 and 1 (rounding aside).
    Rate {
        value: p,
        low: if k == 0.0 { 0.0 } else { centre - half },
        high: if k == n { 1.0 } else { centre + half },
    }
}

/// One group's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The group's key.
    pub key: String,
    /// Its counts.
    pub totals: Totals,
}

impl Row {
    /// CTR.
    pub fn ctr(&self) -> Rate {
        wilson(self.totals.clicked, self.totals.impressions)
    }
    /// Add-to-cart rate.
    pub fn add_to_cart_rate(&self) -> Rate {
        wilson(self.totals.added_to_cart, self.totals.impressions)
    }
    /// Conversion.
    pub fn conversion(&self) -> Rate {
        wilson(self.totals.purchased, self.totals.impressions)
    }
}

/// The report's groups.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Everything.
    pub total: Totals,
    /// Per `experiment/variant`.
    pub by_variant: Vec<Row>,
    /// Per placement.
    pub by_placement: Vec<Row>,
    /// Per face shape.
    pub by_face_shape: Vec<Row>,
}

/// Groups rollup rows (any number per dims) into the report, keys sorted.
pub fn build<'a>(rows: impl IntoIterator<Item = (&'a Dims, &'a Totals)>) -> Report {
    let mut total = Totals::default();
    let mut variant: BTreeMap<String, Totals> = BTreeMap::new();
    let mut placement: BTreeMap<String, Totals> = BTreeMap::new();
    let mut shape: BTreeMap<String, Totals> = BTreeMap::new();
    for (d, t) in rows {
        total.add(t);
        variant.entry(d.variant_label()).or_default().add(t);
        placement.entry(d.placement.clone()).or_default().add(t);
        shape.entry(d.face_shape.clone()).or_default().add(t);
    }
    let rows = |m: BTreeMap<String, Totals>| {
        m.into_iter()
            .map(|(key, totals)| Row { key, totals })
            .collect()
    };
    Report {
        total,
        by_variant: rows(variant),
        by_placement: rows(placement),
        by_face_shape: rows(shape),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_reference_values() {
        // Reference: statsmodels proportion_confint(method="wilson").
        let r = wilson(30, 100);
        assert!(
            (r.low - 0.2189).abs() < 1e-3 && (r.high - 0.3958).abs() < 1e-3,
            "{r:?}"
        );
        let r = wilson(0, 50);
        assert_eq!(r.low, 0.0);
        assert!((r.high - 0.0713).abs() < 1e-3, "{r:?}");
        let r = wilson(50, 50);
        assert!((r.low - 0.9287).abs() < 1e-3 && r.high == 1.0, "{r:?}");
        assert_eq!(wilson(3, 0).value, 0.0);
        // More successes than trials (never recorded so) are capped.
        assert_eq!(wilson(9, 5).value, 1.0);
    }

    #[test]
    fn groups_sum_their_rows() {
        let d = |v: &str, p: &str, s: &str| Dims {
            experiment: "e".into(),
            variant: v.into(),
            placement: p.into(),
            face_shape: s.into(),
        };
        let t = |i, c, r: i64| Totals {
            impressions: i,
            clicked: c,
            revenue_minor: [("EUR".to_string(), r)].into(),
            ..Default::default()
        };
        let rows = [
            (d("a", "home", "round"), t(10, 2, 100)),
            (d("a", "pdp", "oval"), t(5, 1, 0)),
            (d("b", "home", "round"), t(20, 1, 50)),
            (d("a", "home", "round"), t(1, 1, 1)),
        ];
        let r = build(rows.iter().map(|(d, t)| (d, t)));
        assert_eq!(r.total.impressions, 36);
        assert_eq!(r.total.revenue_minor["EUR"], 151);
        assert_eq!(r.by_variant[0].key, "e/a");
        assert_eq!(r.by_variant[0].totals.impressions, 16);
        assert_eq!(r.by_variant[0].totals.clicked, 4);
        assert_eq!(r.by_placement[0].key, "home");
        assert_eq!(r.by_placement[0].totals.impressions, 31);
        assert_eq!(r.by_face_shape[1].key, "round");
        assert_eq!(r.by_variant[1].ctr().value, 1.0 / 20.0);
    }
}
