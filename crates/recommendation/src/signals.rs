//! Signals learned from recorded interactions, rebuilt in the background.
//!
//! - **Popularity with time decay**: each interaction adds its kind's weight
//!   (view 1, click 2, try-on 3, cart 5, purchase 8) times `0.5^(age / 7 days)`;
//!   scores are normalised by the maximum. The ranking's popularity is
//!   `0.5 * catalogue popularity + 0.5 * decayed score` once there are any
//!   interactions, the catalogue's alone before (cold start).
//! - **Item-item co-occurrence** (the collaborative signal): two products
//!   touched by the same shopper (user id, else session id) co-occur with the
//!   product of their weights; each product keeps its [`NEIGHBOURS`]
//!   strongest neighbours, normalised by the product's own weight (so very
//!   popular items do not neighbour everything).
//! - **Histories**: each user's [`HISTORY`] most recent products, for
//!   personalising requests that carry a user id.
//!
//! Inputs are bounded (the last [`WINDOW_DAYS`] days, at most
//! [`MAX_INTERACTIONS`] documents, [`HISTORY`] items per shopper), so a
//! rebuild costs the same on day one and day one thousand.

use std::collections::HashMap;
use std::sync::Arc;

use discovery_kit::store::Store;

/// Neighbours kept per product.
pub const NEIGHBOURS: usize = 20;
/// Products remembered per shopper.
pub const HISTORY: usize = 20;
/// Interactions older than this are ignored.
pub const WINDOW_DAYS: i64 = 30;
/// At most this many interactions are read per rebuild (newest first).
pub const MAX_INTERACTIONS: u64 = 200_000;
const HALF_LIFE_MS: f64 = 7.0 * 86_400_000.0;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Signals {
    /// Decayed popularity in [0, 1] by product id.
    pub popularity: HashMap<Arc<str>, f32>,
    /// Neighbours by product id, strongest first, weights in (0, 1].
    pub neighbours: HashMap<Arc<str>, Vec<(Arc<str>, f32)>>,
    /// Recent products per user id, most recent first.
    pub history: HashMap<String, Vec<Arc<str>>>,
    /// Interactions the signals were built from.
    pub interactions: usize,
}

fn weight(kind: &str) -> f64 {
    match kind {
        "INTERACTION_KIND_VIEW" => 1.0,
        "INTERACTION_KIND_CLICK" => 2.0,
        "INTERACTION_KIND_TRY_ON" => 3.0,
        "INTERACTION_KIND_ADD_TO_CART" => 5.0,
        "INTERACTION_KIND_PURCHASE" => 8.0,
        _ => 0.0,
    }
}

/// One interaction as the rebuild reads it.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// Shopper (user id, else session id).
    pub shopper: String,
    /// User id, empty when anonymous.
    pub user: String,
    /// Product.
    pub product: String,
    /// Kind name (`INTERACTION_KIND_*`).
    pub kind: String,
    /// When, ms since the epoch.
    pub at: i64,
}

impl Signals {
    /// The ranking's popularity for a product with catalogue popularity `base`.
    pub fn blend(&self, id: &str, base: f32) -> f32 {
        let base = base.clamp(0.0, 1.0);
        if self.popularity.is_empty() {
            return base;
        }
        0.5 * base + 0.5 * self.popularity.get(id).copied().unwrap_or(0.0)
    }

    /// Builds signals from interactions (any order) as of `now_ms`.
    pub fn build(interactions: &[Interaction], now_ms: i64) -> Self {
        let mut pop: HashMap<Arc<str>, f64> = HashMap::new();
        let mut ids: HashMap<String, Arc<str>> = HashMap::new();
        let mut intern = |s: &str| -> Arc<str> {
            ids.entry(s.to_string())
                .or_insert_with(|| Arc::from(s))
                .clone()
        };
        // Per shopper: product -> (weight, last seen).
        let mut baskets: HashMap<&str, HashMap<Arc<str>, (f64, i64)>> = HashMap::new();
        let mut users: HashMap<&str, ()> = HashMap::new();
        for i in interactions {
            let w = weight(&i.kind);
            if w == 0.0 || now_ms - i.at > WINDOW_DAYS * 86_400_000 {
                continue;
            }
            let age = (now_ms - i.at).max(0) as f64;
            let id = intern(&i.product);
            *pop.entry(id.clone()).or_default() += w * 0.5f64.powf(age / HALF_LIFE_MS);
            if !i.shopper.is_empty() {
                let e = baskets
                    .entry(&i.shopper)
                    .or_default()
                    .entry(id)
                    .or_insert((0.0, 0));
                e.0 += w;
                e.1 = e.1.max(i.at);
            }
            if !i.user.is_empty() {
                users.insert(&i.user, ());
            }
        }
        let max = pop.values().copied().fold(0.0, f64::max);
        let popularity = pop
            .iter()
            .map(|(k, v)| (k.clone(), if max > 0.0 { (v / max) as f32 } else { 0.0 }))
            .collect();

        let mut cooc: HashMap<Arc<str>, HashMap<Arc<str>, f64>> = HashMap::new();
        let mut own: HashMap<Arc<str>, f64> = HashMap::new();
        let mut history = HashMap::new();
        for (shopper, basket) in &baskets {
            let mut items: Vec<(&Arc<str>, &(f64, i64))> = basket.iter().collect();
            items.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(b.0)));
            items.truncate(HISTORY);
            if users.contains_key(shopper) {
                history.insert(
                    shopper.to_string(),
                    items.iter().map(|(id, _)| (*id).clone()).collect(),
                );
            }
            for (a, (wa, _)) in &items {
                *own.entry((*a).clone()).or_default() += wa;
                for (b, (wb, _)) in &items {
                    if a != b {
                        *cooc
                            .entry((*a).clone())
                            .or_default()
                            .entry((*b).clone())
                            .or_default() += wa.min(*wb);
                    }
                }
            }
        }
        let neighbours = cooc
            .into_iter()
            .map(|(a, row)| {
                let norm = own.get(&a).copied().unwrap_or(1.0).max(1.0);
                let mut row: Vec<(Arc<str>, f32)> = row
                    .into_iter()
                    .map(|(b, w)| (b, (w / norm).min(1.0) as f32))
                    .collect();
                row.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
                row.truncate(NEIGHBOURS);
                (a, row)
            })
            .collect();
        Self {
            popularity,
            neighbours,
            history,
            interactions: interactions.len(),
        }
    }

    /// Reads recent interactions from the store and builds signals.
    pub async fn load(
        store: &Store,
        now_ms: i64,
    ) -> Result<Self, discovery_kit::store::StoreError> {
        let list = crate::store::recent_interactions(
            store,
            now_ms - WINDOW_DAYS * 86_400_000,
            MAX_INTERACTIONS,
        )
        .await?;
        Ok(Self::build(&list, now_ms))
    }

    /// The collaborative score per product id for `user`: the sum of the
    /// neighbour weights of the user's recent products, normalised to [0, 1].
    /// Empty for unknown or anonymous users (cold start).
    pub fn personal(&self, user: &str) -> Vec<(Arc<str>, f32)> {
        let Some(items) = self.history.get(user) else {
            return Vec::new();
        };
        let mut acc: HashMap<&Arc<str>, f32> = HashMap::new();
        for (rank, item) in items.iter().enumerate() {
            // More recent products count more.
            let recency = 1.0 / (1.0 + rank as f32 * 0.2);
            for (n, w) in self.neighbours.get(item).into_iter().flatten() {
                *acc.entry(n).or_default() += w * recency;
            }
        }
        let max = acc.values().copied().fold(0.0, f32::max);
        if max <= 0.0 {
            return Vec::new();
        }
        acc.into_iter().map(|(k, v)| (k.clone(), v / max)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(shopper: &str, product: &str, kind: &str, at: i64) -> Interaction {
        Interaction {
            shopper: shopper.into(),
            user: shopper.into(),
            product: product.into(),
            kind: format!("INTERACTION_KIND_{kind}"),
            at,
        }
    }

    #[test]
    fn popularity_decays_with_age() {
        let now = 100 * 86_400_000;
        let list = vec![
            i("u1", "old", "PURCHASE", now - 14 * 86_400_000),
            i("u2", "new", "PURCHASE", now),
            i("u3", "ancient", "PURCHASE", now - 60 * 86_400_000),
        ];
        let s = Signals::build(&list, now);
        assert_eq!(s.popularity["new"], 1.0);
        assert!((s.popularity["old"] - 0.25).abs() < 1e-3, "two half-lives");
        assert!(!s.popularity.contains_key("ancient"), "outside the window");
        assert!(s.blend("new", 0.0) > s.blend("old", 0.0));
    }

    #[test]
    fn co_occurrence_recommends_what_similar_shoppers_touched() {
        let now = 1_000_000;
        let mut list = Vec::new();
        for u in 0..10 {
            list.push(i(&format!("u{u}"), "a", "VIEW", now - 10));
            list.push(i(&format!("u{u}"), "b", "ADD_TO_CART", now - 5));
        }
        list.push(i("u99", "c", "VIEW", now));
        list.push(i("me", "a", "VIEW", now));
        let s = Signals::build(&list, now);
        let p = s.personal("me");
        assert_eq!(p.len(), 1);
        assert_eq!(&*p[0].0, "b");
        assert!(s.personal("nobody").is_empty());
    }
}
