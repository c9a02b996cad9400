//! Search suggestions: completions of what a shopper is typing.
//!
//! Built from the catalogue's vocabulary (brands, shapes, materials,
//! colours, style keywords, and brand + shape pairs that exist, each
//! weighted by how many frames have it) and this replica's popular
//! searches (queries that found something, seen at least
//! [`POPULAR_MIN`] times), kept sorted by their lower-cased text so a
//! prefix is a binary search and a short scan. A call only reads the built
//! set; one older than [`REBUILD`] (the seed's 30 minutes), or made from a
//! catalogue that has changed since and older than [`CHANGED_REBUILD`], is
//! rebuilt on a blocking thread while calls go on reading the old one
//! (building reads every frame: tens of milliseconds at 100,000).
//!
//! Popular searches are what callers typed, so they are bounded: at most
//! [`POPULAR_CAP`] distinct queries are counted (later new ones are not),
//! each at most [`MAX_POPULAR_TEXT`] bytes and six words, and only queries
//! that found products count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::snapshot::Catalog;

/// Longest prefix accepted, bytes.
pub const MAX_PREFIX: usize = 64;
/// Most suggestions one call returns.
pub const MAX_LIMIT: usize = 20;
/// Suggestions when the caller names no number.
pub const DEFAULT_LIMIT: usize = 8;
/// How long a built set serves (seed 002: popular queries precomputed, 30 min).
pub const REBUILD: Duration = Duration::from_secs(30 * 60);
/// A set built from an older catalogue is rebuilt once this old.
pub const CHANGED_REBUILD: Duration = Duration::from_secs(60);
/// A popular search is suggested once seen this many times.
pub const POPULAR_MIN: u64 = 3;
/// Most distinct searches counted.
pub const POPULAR_CAP: usize = 10_000;
/// Longest search counted, bytes.
pub const MAX_POPULAR_TEXT: usize = 64;

/// Where a suggestion comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A brand (or a brand and a shape).
    Brand,
    /// A frame shape.
    Shape,
    /// A material.
    Material,
    /// A colour.
    Color,
    /// A style keyword.
    Style,
    /// A popular search.
    Popular,
}

impl Kind {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Brand => "brand",
            Self::Shape => "shape",
            Self::Material => "material",
            Self::Color => "color",
            Self::Style => "style",
            Self::Popular => "popular",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    kind: Kind,
    weight: f64,
}

/// A built set of suggestions.
#[derive(Debug, Default)]
pub struct Suggester {
    entries: Vec<Entry>,
}

/// A prefix as entries are keyed: lower case, single spaces.
fn normal(s: &str) -> String {
    s.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Suggester {
    /// The suggestions of a catalogue and the popular searches.
    pub fn build(catalog: &Catalog, popular: &HashMap<String, u64>) -> Self {
        let mut weights: HashMap<(String, u8), (Kind, f64)> = HashMap::new();
        let mut add = |text: &str, kind: Kind, w: f64| {
            let key = normal(text);
            if !key.is_empty() {
                weights.entry((key, kind as u8)).or_insert((kind, 0.0)).1 += w;
            }
        };
        for f in &catalog.frames {
            add(&f.brand, Kind::Brand, 1.0);
            if f.shape != discovery_catalog::Shape::Unspecified {
                let shape = f.shape.title();
                add(&shape, Kind::Shape, 1.0);
                add(&format!("{} {shape}", f.brand), Kind::Brand, 0.5);
            }
            if f.material != discovery_catalog::Material::Unspecified {
                add(f.material.name(), Kind::Material, 1.0);
            }
            for k in &f.ai_enhanced.style_keywords {
                add(k, Kind::Style, 1.0);
            }
            for v in &f.inventory.variants {
                add(&v.color, Kind::Color, 1.0);
            }
        }
        for (q, &n) in popular {
            if n >= POPULAR_MIN {
                add(q, Kind::Popular, n as f64 * 2.0);
            }
        }
        let mut entries: Vec<Entry> = weights
            .into_iter()
            .map(|((key, _), (kind, weight))| Entry { key, kind, weight })
            .collect();
        entries.sort_unstable_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.weight.total_cmp(&a.weight))
                .then((a.kind as u8).cmp(&(b.kind as u8)))
        });
        // One entry per text: the heaviest kind.
        entries.dedup_by(|b, a| a.key == b.key);
        Self { entries }
    }

    /// Up to `limit` completions of `prefix`, heaviest first (ties by text).
    pub fn suggest(&self, prefix: &str, limit: usize) -> Vec<(&str, Kind)> {
        let p = normal(prefix);
        let start = self
            .entries
            .partition_point(|e| e.key.as_str() < p.as_str());
        let mut hits: Vec<&Entry> = self.entries[start..]
            .iter()
            .take_while(|e| e.key.starts_with(&p))
            .collect();
        hits.sort_unstable_by(|a, b| b.weight.total_cmp(&a.weight).then(a.key.cmp(&b.key)));
        hits.into_iter()
            .take(limit)
            .map(|e| (e.key.as_str(), e.kind))
            .collect()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The suggestions of a replica: the popular-search counts and the set
/// built from them and the catalogue.
#[derive(Debug, Default)]
pub struct Suggestions {
    popular: Mutex<HashMap<String, u64>>,
    built: Mutex<Option<Built>>,
    rebuilding: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
struct Built {
    version: i64,
    at: Instant,
    set: Arc<Suggester>,
}

impl Suggestions {
    /// Counts a search that found something.
    pub fn record(&self, query: &str) {
        let q = normal(query);
        if q.is_empty() || q.len() > MAX_POPULAR_TEXT || q.split(' ').count() > 6 {
            return;
        }
        let mut p = self.popular.lock();
        let full = p.len() >= POPULAR_CAP;
        match p.get_mut(&q) {
            Some(n) => *n += 1,
            None if !full => {
                p.insert(q, 1);
            }
            None => {}
        }
    }

    /// The built set (built here the first time); starts a rebuild in the
    /// background when it is due.
    pub fn get(self: &Arc<Self>, catalog: &Arc<Catalog>) -> Arc<Suggester> {
        let current = self.built.lock().clone();
        let Some(b) = current else {
            return self.build(catalog);
        };
        let due = b.at.elapsed() >= REBUILD
            || (b.version != catalog.version && b.at.elapsed() >= CHANGED_REBUILD);
        if due
            && !self
                .rebuilding
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let (me, catalog) = (self.clone(), catalog.clone());
            tokio::task::spawn_blocking(move || {
                me.build(&catalog);
                me.rebuilding
                    .store(false, std::sync::atomic::Ordering::Release);
            });
        }
        b.set
    }

    /// Builds the set for `catalog` now and keeps it.
    pub fn build(&self, catalog: &Catalog) -> Arc<Suggester> {
        let popular = self.popular.lock().clone();
        let set = Arc::new(Suggester::build(catalog, &popular));
        *self.built.lock() = Some(Built {
            version: catalog.version,
            at: Instant::now(),
            set: set.clone(),
        });
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery_catalog::demo_catalog;

    #[tokio::test]
    async fn completes_from_the_vocabulary_and_popular_searches() {
        let c = Arc::new(Catalog::new(demo_catalog(300), 1));
        let s = Arc::new(Suggestions::default());
        for _ in 0..POPULAR_MIN {
            s.record("Round  Tortoise glasses");
        }
        s.record("rare query");
        let set = s.get(&c);
        let got = set.suggest("Ray", 5);
        assert_eq!(got[0], ("ray-ban", Kind::Brand), "{got:?}");
        assert!(got.iter().all(|(t, _)| t.starts_with("ray")));
        let round = set.suggest("round t", 5);
        assert!(
            round.contains(&("round tortoise glasses", Kind::Popular)),
            "{round:?}"
        );
        assert!(
            set.suggest("rare", 5).is_empty(),
            "seen once: not yet popular"
        );
        assert!(set.suggest("zzzz", 5).is_empty());
        assert_eq!(set.suggest("", 3).len(), 3);
    }

    #[test]
    fn the_popular_counts_are_bounded() {
        let s = Suggestions::default();
        for i in 0..POPULAR_CAP + 500 {
            s.record(&format!("query {i}"));
        }
        s.record(&"long ".repeat(40));
        s.record("a b c d e f g h");
        assert_eq!(s.popular.lock().len(), POPULAR_CAP);
    }
}
