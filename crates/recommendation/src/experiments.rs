//! Ranking experiments: variants as data, deterministic assignment.
//!
//! An experiment is a list of variants, each a share of shoppers and a
//! [`Ranking`] (score weights and a diversity cap). A shopper (user id, or
//! session id when anonymous) is assigned by a hash of the experiment id and
//! their id, so the same shopper sees the same variant on every replica and
//! every call, and a new experiment id reshuffles everyone. Shoppers with
//! neither id get the default ranking and are reported as `default`.
//!
//! At most one experiment runs at a time; it lives in the `experiments`
//! collection and every replica reloads it when told over the bus and every
//! [`REFRESH`] (the safety net), so starting or stopping one needs no
//! restart.
//!
//! Invariant: assignment is a pure function of (experiment id, variant
//! shares, shopper id); a test checks it is stable and matches the shares.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::rank::{BRAND_WINDOW, Ranking};

/// Collection of experiments (owned by recommendation).
pub const EXPERIMENTS: &str = "experiments";
/// Bus channel telling replicas to reload the running experiment.
pub const CHANNEL: &str = "discovery:experiments";
/// Reload period when no bus message arrives (missed messages, no Redis).
pub const REFRESH: Duration = Duration::from_secs(5);
/// Most variants in one experiment.
pub const MAX_VARIANTS: usize = 8;
/// Label of shoppers outside any experiment.
pub const DEFAULT_LABEL: &str = "default";

/// An experiment's definition is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExperimentError {
    /// Bad id.
    #[error("experiment.id: {0:?} is not 1-64 lower-case letters, digits, '_' or '-'")]
    Id(String),
    /// Wrong number of variants.
    #[error("experiment.variants: give 2 to {MAX_VARIANTS} variants, not {0}")]
    Count(usize),
    /// Bad variant name.
    #[error(
        "experiment.variants[{0}].name: {1:?} is not 1-32 lower-case letters, digits, '_' or '-'"
    )]
    Name(usize, String),
    /// Two variants with one name.
    #[error("experiment.variants[{0}].name: {1:?} is used twice")]
    Duplicate(usize, String),
    /// Shares do not add up.
    #[error("experiment.variants[].share_percent: the shares add up to {0}, not 100")]
    Shares(u32),
    /// Bad weights.
    #[error(
        "experiment.variants[{0}].weights: each weight must be a number in [0, 10] and not all 0"
    )]
    Weights(usize),
    /// Bad diversity cap.
    #[error("experiment.variants[{0}].brand_cap: {1} is not 0 (default) or 1-{BRAND_WINDOW}")]
    BrandCap(usize, u32),
}

/// One variant as defined.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Name.
    pub name: String,
    /// Share of shoppers, percent.
    pub share_percent: u32,
    /// Weights as given (not normalised), `None` for the default ones.
    pub weights: Option<[f32; 5]>,
    /// Brand cap as given (0: default).
    pub brand_cap: u32,
}

impl Variant {
    /// The ranking this variant applies (weights normalised to sum 1).
    pub fn ranking(&self) -> Ranking {
        let weights = self.weights.map(|w| {
            let sum: f32 = w.iter().sum();
            w.map(|x| x / sum)
        });
        Ranking {
            weights,
            brand_cap: if self.brand_cap == 0 {
                Ranking::default().brand_cap
            } else {
                self.brand_cap as usize
            },
        }
    }
}

/// An experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Id.
    pub id: String,
    /// Variants.
    pub variants: Vec<Variant>,
    /// Start, ms since the epoch.
    pub started_at: i64,
    /// Stop, ms since the epoch (0 while running).
    pub stopped_at: i64,
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `s` is a valid placement ("" allowed: the default).
pub fn is_placement(s: &str) -> bool {
    s.is_empty() || is_name(s, 32)
}

impl Experiment {
    /// Checks a definition.
    pub fn validate(&self) -> Result<(), ExperimentError> {
        if !is_name(&self.id, 64) {
            return Err(ExperimentError::Id(self.id.clone()));
        }
        let n = self.variants.len();
        if !(2..=MAX_VARIANTS).contains(&n) {
            return Err(ExperimentError::Count(n));
        }
        for (i, v) in self.variants.iter().enumerate() {
            if !is_name(&v.name, 32) {
                return Err(ExperimentError::Name(i, v.name.clone()));
            }
            if self.variants[..i].iter().any(|o| o.name == v.name) {
                return Err(ExperimentError::Duplicate(i, v.name.clone()));
            }
            if let Some(w) = v.weights
                && (w
                    .iter()
                    .any(|x| !x.is_finite() || !(0.0..=10.0).contains(x))
                    || w.iter().sum::<f32>() <= 0.0)
            {
                return Err(ExperimentError::Weights(i));
            }
            if v.brand_cap as usize > BRAND_WINDOW {
                return Err(ExperimentError::BrandCap(i, v.brand_cap));
            }
        }
        let total: u32 = self.variants.iter().map(|v| v.share_percent.min(101)).sum();
        if total != 100 {
            return Err(ExperimentError::Shares(total));
        }
        Ok(())
    }

    /// The variant index of `shopper` (a user or session id, not empty).
    pub fn assign(&self, shopper: &str) -> usize {
        let bucket = (bucket_hash(&self.id, shopper) % 100) as u32;
        let mut upto = 0;
        for (i, v) in self.variants.iter().enumerate() {
            upto += v.share_percent;
            if bucket < upto {
                return i;
            }
        }
        self.variants.len() - 1
    }
}

/// FNV-1a over `exp`, a separator and `shopper`, then a SplitMix64
/// finaliser so that the low digits are well mixed.
fn bucket_hash(exp: &str, shopper: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in exp.bytes().chain([0u8]).chain(shopper.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// What a shopper gets: the ranking, and the labels impressions carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Experiment id ("" outside experiments).
    pub experiment: String,
    /// Variant name ([`DEFAULT_LABEL`] outside experiments).
    pub variant: String,
    /// `experiment/variant`, or [`DEFAULT_LABEL`]: what responses and
    /// reports show, and what separates cache entries.
    pub label: String,
    /// Ranking to apply.
    pub ranking: Ranking,
}

impl Assignment {
    fn default_ranking() -> Self {
        Self {
            experiment: String::new(),
            variant: DEFAULT_LABEL.into(),
            label: DEFAULT_LABEL.into(),
            ranking: Ranking::default(),
        }
    }

    /// Whether this is the default ranking outside experiments.
    pub fn is_default(&self) -> bool {
        self.experiment.is_empty()
    }
}

/// The running experiment with its assignments prepared.
#[derive(Debug)]
struct Running {
    experiment: Experiment,
    assignments: Vec<Arc<Assignment>>,
}

/// The running experiment of this replica (shared by the handlers).
#[derive(Debug)]
pub struct Live {
    running: RwLock<Option<Arc<Running>>>,
    default: Arc<Assignment>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            running: RwLock::new(None),
            default: Arc::new(Assignment::default_ranking()),
        }
    }
}

impl Live {
    /// Replaces the running experiment (`None`: none runs).
    pub fn set(&self, experiment: Option<Experiment>) {
        let running = experiment.map(|e| {
            let assignments = e
                .variants
                .iter()
                .map(|v| {
                    Arc::new(Assignment {
                        experiment: e.id.clone(),
                        variant: v.name.clone(),
                        label: format!("{}/{}", e.id, v.name),
                        ranking: v.ranking(),
                    })
                })
                .collect();
            Arc::new(Running {
                experiment: e,
                assignments,
            })
        });
        let mut cur = self.running.write();
        let changed =
            cur.as_ref().map(|r| &r.experiment) != running.as_ref().map(|r| &r.experiment);
        if changed {
            tracing::info!(
                experiment = running.as_ref().map_or("", |r| r.experiment.id.as_str()),
                "running experiment changed"
            );
        }
        *cur = running;
    }

    /// The running experiment.
    pub fn current(&self) -> Option<Experiment> {
        self.running.read().as_ref().map(|r| r.experiment.clone())
    }

    /// The assignment of a shopper (user id first, else session id).
    pub fn assign(&self, user_id: &str, session_id: &str) -> Arc<Assignment> {
        let shopper = if user_id.is_empty() {
            session_id
        } else {
            user_id
        };
        let running = self.running.read();
        match running.as_ref() {
            Some(r) if !shopper.is_empty() => r.assignments[r.experiment.assign(shopper)].clone(),
            _ => self.default.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two(a: u32, b: u32) -> Experiment {
        Experiment {
            id: "fit-heavy".into(),
            variants: vec![
                Variant {
                    name: "control".into(),
                    share_percent: a,
                    weights: None,
                    brand_cap: 0,
                },
                Variant {
                    name: "fit".into(),
                    share_percent: b,
                    weights: Some([1.0, 3.0, 1.0, 1.0, 0.0]),
                    brand_cap: 3,
                },
            ],
            started_at: 0,
            stopped_at: 0,
        }
    }

    #[test]
    fn assignment_is_stable_and_follows_the_shares() {
        let e = two(30, 70);
        e.validate().unwrap();
        let n = 20_000;
        let fit = (0..n)
            .filter(|i| e.assign(&format!("session-{i}")) == 1)
            .count();
        let share = fit as f64 / n as f64;
        // 70% within 4 standard errors (sd = sqrt(.21 / 20000) = 0.0032).
        assert!((share - 0.70).abs() < 0.013, "share {share}");
        for i in 0..100 {
            let s = format!("u{i}");
            assert_eq!(e.assign(&s), e.assign(&s));
        }
        // A new id reshuffles: not everyone keeps their variant.
        let mut other = e.clone();
        other.id = "fit-heavy-2".into();
        let moved = (0..1000)
            .filter(|i| e.assign(&format!("u{i}")) != other.assign(&format!("u{i}")))
            .count();
        assert!(moved > 200, "{moved}");
    }

    #[test]
    fn bad_definitions_name_the_field() {
        assert_eq!(two(30, 60).validate(), Err(ExperimentError::Shares(90)));
        let mut e = two(50, 50);
        e.variants[1].name = "control".into();
        assert!(
            e.validate()
                .unwrap_err()
                .to_string()
                .contains("variants[1].name")
        );
        let mut e = two(50, 50);
        e.variants[1].weights = Some([f32::NAN, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(e.validate(), Err(ExperimentError::Weights(1)));
        let mut e = two(50, 50);
        e.variants[0].weights = Some([0.0; 5]);
        assert_eq!(e.validate(), Err(ExperimentError::Weights(0)));
        let mut e = two(50, 50);
        e.id = "Bad Id".into();
        assert!(matches!(e.validate(), Err(ExperimentError::Id(_))));
        let mut e = two(50, 50);
        e.variants[0].brand_cap = 9;
        assert_eq!(e.validate(), Err(ExperimentError::BrandCap(0, 9)));
        let mut e = two(50, 50);
        e.variants.truncate(1);
        assert_eq!(e.validate(), Err(ExperimentError::Count(1)));
        // Shares over u32 cannot wrap around to 100.
        assert!(two(u32::MAX, 101).validate().is_err());
    }

    #[test]
    fn live_assigns_only_identified_shoppers() {
        let live = Live::default();
        assert!(live.assign("u1", "").is_default());
        live.set(Some(two(0, 100)));
        let a = live.assign("u1", "");
        assert_eq!(a.label, "fit-heavy/fit");
        let w = a.ranking.weights.unwrap();
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(a.ranking.brand_cap, 3);
        assert!(live.assign("", "").is_default());
        live.set(None);
        assert!(live.assign("u1", "").is_default());
    }
}
