//! The in-memory serving snapshot of the catalogue.
//!
//! Invariants:
//! - The request path reads only the snapshot, never the database.
//! - A [`Catalog`] is immutable; changes build a new one and swap the `Arc`,
//!   so readers never block writers and always see one consistent version.
//! - Frames are kept in id order, so an index comparison is an id comparison
//!   (ranking ties break by id without touching strings).
//! - Next to the frames sit column arrays ([`Features`]) of everything the
//!   ranking reads, so scoring 100,000 frames is a tight loop over plain
//!   numbers and bit masks.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::signals::Signals;
use discovery_catalog::{FACE_SHAPES, Frame};
use discovery_embed::quant::Matrix;

/// Interned lower-case strings (brands, style keywords, colour words, search words).
#[derive(Debug, Default, Clone)]
pub struct Vocab {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

impl Vocab {
    /// The id of `s` (lower-cased), adding it if new.
    pub fn intern(&mut self, s: &str) -> u32 {
        let s = s.to_lowercase();
        if let Some(&id) = self.ids.get(s.as_str()) {
            return id;
        }
        let id = self.names.len() as u32;
        let s: Arc<str> = Arc::from(s);
        self.names.push(s.clone());
        self.ids.insert(s, id);
        id
    }
    /// The id of `s` (lower-cased), if known.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s.to_lowercase().as_str()).copied()
    }
    /// All entries with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.names.iter().enumerate().map(|(i, s)| (i as u32, &**s))
    }
    /// The string of an id.
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |s| s)
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.names.len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The vocabularies the features refer to.
#[derive(Debug, Default, Clone)]
pub struct Vocabs {
    /// Brands.
    pub brands: Vocab,
    /// Style keywords (ids < 64 are bits of [`Features::styles`]).
    pub styles: Vocab,
    /// Colour words (ids < 64 are bits of [`Features::colors`]).
    pub colors: Vocab,
    /// Whole colour names, their words joined by one space (ids < 64 are
    /// bits of [`Features::color_names`]).
    pub color_names: Vocab,
    /// Search words.
    pub words: Vocab,
}

/// Column arrays, one entry per frame, in frame order.
#[derive(Debug, Clone)]
pub struct Features {
    /// Compatibility with each face shape, one column per shape in
    /// [`FACE_SHAPES`] order (a request reads one column only).
    pub compat: [Vec<f32>; 7],
    /// Total front width, mm.
    pub total_width: Vec<f32>,
    /// Bridge, mm.
    pub bridge: Vec<f32>,
    /// Price in minor units.
    pub price_minor: Vec<i64>,
    /// In stock.
    pub in_stock: Vec<bool>,
    /// `FrameShape` value.
    pub shape: Vec<u8>,
    /// `FrameMaterial` value.
    pub material: Vec<u8>,
    /// Brand id.
    pub brand: Vec<u32>,
    /// Style keyword bits (ids < 64).
    pub styles: Vec<u64>,
    /// Colour word bits (ids < 64).
    pub colors: Vec<u64>,
    /// Colour name bits (ids < 64): which whole colours the variants have.
    pub color_names: Vec<u64>,
    /// Category bits, bit `k` for [`CATEGORIES`]`[k]` (any case).
    pub categories: Vec<u8>,
    /// Effective popularity in [0, 1]: catalogue popularity blended with
    /// time-decayed interactions ([`Signals`]).
    pub popularity: Vec<f32>,
    /// Search word ids (name, brand, model, keywords, summary), sorted, unique.
    pub words: Vec<Arc<[u32]>>,
    /// Content stamps ([`Frame::stamp`]).
    pub stamp: Vec<u64>,
    /// Text embeddings, quantised (a row without a current one scores 0
    /// and is not a semantic candidate).
    pub vectors: Matrix,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            compat: Default::default(),
            total_width: Vec::new(),
            bridge: Vec::new(),
            price_minor: Vec::new(),
            in_stock: Vec::new(),
            shape: Vec::new(),
            material: Vec::new(),
            brand: Vec::new(),
            styles: Vec::new(),
            colors: Vec::new(),
            color_names: Vec::new(),
            categories: Vec::new(),
            popularity: Vec::new(),
            words: Vec::new(),
            stamp: Vec::new(),
            vectors: Matrix::new(discovery_embed::DIM),
        }
    }
}

/// What a cached page needs to know to tell whether a product could have
/// entered or left it since it was made: when this catalogue version was
/// installed and, per entry tag ([`entry_tags`]), when this replica last
/// applied a change to a product carrying it. Times are this replica's
/// clock in Unix milliseconds; `as_of` strictly increases per version.
#[derive(Debug, Default, Clone)]
pub struct Freshness {
    /// When this version was installed.
    pub as_of: i64,
    /// When the catalogue was loaded whole (every page made before is
    /// suspect: the load may hold anything).
    pub loaded_at: i64,
    /// Entry tag -> the last change applied to a product carrying it.
    pub changed: Arc<HashMap<String, i64>>,
}

/// The entry tags of a product: `any` (every page without a brand filter
/// could show it) and `brand:{name}` (pages filtered to its brand). A page
/// carries the tags of what could enter it ([`page_entry_tags`]); a change
/// to a product with one of them may change the page even if the page does
/// not show the product (a new frame, a restock, a product leaving).
pub fn entry_tags(f: &Frame) -> [String; 2] {
    [
        ANY.to_string(),
        format!("brand:{}", f.brand.trim().to_lowercase()),
    ]
}

/// The entry tag every page without a brand filter carries.
pub const ANY: &str = "any";
/// The entry tag of pages a price change alone can alter: those with a
/// price filter, and search pages with facets (price bands). Ranking and
/// search scores do not read the price.
pub const PRICE: &str = "price";
/// The entry tag of pages a stock flip alone can alter: those with
/// `in_stock_only` (stock is a filter, never a score).
pub const STOCK: &str = "stock";

/// What could enter a page: its brand filter (none: [`ANY`]), and whether
/// a price or stock change alone could alter it.
#[derive(Debug, Default, Clone, Copy)]
pub struct PageInputs<'a> {
    /// The brands it is filtered to.
    pub brands: &'a [String],
    /// It filters on price or shows price facets.
    pub price: bool,
    /// It shows in-stock frames only.
    pub stock: bool,
}

/// The entry tags of a page ([`entry_tags`]).
pub fn page_entry_tags(page: PageInputs<'_>) -> Vec<String> {
    let mut tags: Vec<String> = if page.brands.is_empty() {
        vec![ANY.to_string()]
    } else {
        page.brands
            .iter()
            .map(|b| format!("brand:{}", b.trim().to_lowercase()))
            .collect()
    };
    if page.price {
        tags.push(PRICE.to_string());
    }
    if page.stock {
        tags.push(STOCK.to_string());
    }
    tags.sort();
    tags.dedup();
    tags
}

/// The entry tags an upsert of a held frame touches: a change of price
/// and/or stock only touches [`PRICE`] / [`STOCK`] (most feed records are
/// such updates: pages without those filters cannot change, except those
/// showing the frame, which its stamp covers); any other change, both
/// versions' [`entry_tags`].
fn changed_tags(old: &Frame, new: &Frame) -> Vec<String> {
    let mut same = old.clone();
    same.price = new.price;
    same.inventory = new.inventory.clone();
    same.metadata = new.metadata.clone();
    if same != *new {
        return entry_tags(old).into_iter().chain(entry_tags(new)).collect();
    }
    let mut tags = Vec::new();
    if old.price != new.price {
        tags.push(PRICE.to_string());
    }
    if old.inventory.is_in_stock != new.inventory.is_in_stock {
        tags.push(STOCK.to_string());
    }
    tags
}

/// One immutable version of the catalogue.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Frames, in id order.
    pub frames: Vec<Arc<Frame>>,
    /// Index by id into `frames`.
    pub by_id: HashMap<Arc<str>, u32>,
    /// Ranking columns.
    pub features: Features,
    /// Vocabularies.
    pub vocabs: Vocabs,
    /// Interaction signals the popularity column was blended with.
    pub signals: Arc<Signals>,
    /// Version, bumped on each change applied.
    pub version: i64,
    /// What cached pages are checked against.
    pub fresh: Freshness,
}

fn words_of(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// The categories with a bit in [`Features::categories`].
pub const CATEGORIES: [&str; 2] = ["sunglasses", "eyeglasses"];

/// A category's bit in [`Features::categories`] (any case), if it has one.
pub fn category_bit(name: &str) -> Option<u8> {
    CATEGORIES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|k| 1 << k)
}

fn bit(id: u32) -> u64 {
    if id < 64 { 1u64 << id } else { 0 }
}

impl Features {
    fn push(&mut self, f: &Frame, vocabs: &mut Vocabs, signals: &Signals) {
        let row = self.total_width.len();
        self.compat.iter_mut().for_each(|c| c.push(0.0));
        self.total_width.push(0.0);
        self.bridge.push(0.0);
        self.price_minor.push(0);
        self.in_stock.push(false);
        self.shape.push(0);
        self.material.push(0);
        self.brand.push(0);
        self.styles.push(0);
        self.colors.push(0);
        self.color_names.push(0);
        self.categories.push(0);
        self.popularity.push(0.0);
        self.words.push(Arc::from(Vec::new()));
        self.stamp.push(0);
        self.vectors.push(None);
        self.set(row, f, vocabs, signals);
    }

    fn set(&mut self, row: usize, f: &Frame, vocabs: &mut Vocabs, signals: &Signals) {
        for (i, shape) in FACE_SHAPES.iter().enumerate() {
            self.compat[i][row] = f.compat(shape).clamp(0.0, 1.0);
        }
        self.total_width[row] = f.total_width_mm;
        self.bridge[row] = f.bridge_mm;
        self.price_minor[row] = f.price_minor();
        self.in_stock[row] = f.inventory.is_in_stock;
        self.shape[row] = f.shape.code();
        self.material[row] = f.material.code();
        self.brand[row] = vocabs.brands.intern(&f.brand);
        self.styles[row] = f
            .ai_enhanced
            .style_keywords
            .iter()
            .fold(0, |m, k| m | bit(vocabs.styles.intern(k)));
        self.colors[row] = f
            .inventory
            .variants
            .iter()
            .flat_map(|v| words_of(&v.color))
            .fold(0, |m, w| m | bit(vocabs.colors.intern(w)));
        self.categories[row] = f
            .categories
            .iter()
            .filter_map(|c| category_bit(c))
            .fold(0, |m, b| m | b);
        self.color_names[row] = f.inventory.variants.iter().fold(0, |m, v| {
            let name = words_of(&v.color).collect::<Vec<_>>().join(" ");
            m | bit(vocabs.color_names.intern(&name))
        });
        self.popularity[row] = signals.blend(&f.id, f.popularity);
        let mut words: Vec<u32> = words_of(&f.name)
            .chain(words_of(&f.brand))
            .chain(words_of(&f.model))
            .chain(words_of(&f.ai_enhanced.feature_summary))
            .chain(
                f.ai_enhanced
                    .style_keywords
                    .iter()
                    .flat_map(|k| words_of(k)),
            )
            .map(|w| vocabs.words.intern(w))
            .collect();
        words.sort_unstable();
        words.dedup();
        self.words[row] = Arc::from(words);
        self.stamp[row] = f.stamp();
        self.vectors.set_codes(
            row,
            f.current_embedding()
                .filter(|e| e.model == discovery_embed::MODEL_DIR)
                .map(|e| (e.codes.as_slice(), e.scale)),
        );
    }
}

/// A catalogue change to apply.
#[derive(Debug, Clone)]
pub enum Change {
    /// Create or replace (ignored if older than the frame held).
    Upsert(Box<Frame>),
    /// Remove.
    Delete(String),
}

/// What applying changes did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// Changes that altered the catalogue.
    pub applied: u64,
    /// Upserts ignored because the held frame was as new or newer.
    pub ignored: u64,
    /// Tags whose cached entries the change makes wrong (`product:{id}`).
    pub tags: Vec<String>,
}

impl Catalog {
    /// Builds a catalogue from frames.
    pub fn new(frames: Vec<Frame>, version: i64) -> Self {
        Self::build(
            frames.into_iter().map(Arc::new).collect(),
            version,
            Arc::default(),
            Vocabs::default(),
        )
    }

    fn build(
        mut frames: Vec<Arc<Frame>>,
        version: i64,
        signals: Arc<Signals>,
        mut vocabs: Vocabs,
    ) -> Self {
        frames.sort_by(|a, b| a.id.cmp(&b.id));
        frames.dedup_by(|a, b| a.id == b.id);
        let mut features = Features::default();
        features.vectors.reserve(frames.len());
        let mut by_id = HashMap::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            features.push(f, &mut vocabs, &signals);
            by_id.insert(Arc::from(f.id.as_str()), i as u32);
        }
        let now = discovery_kit::now_unix_ms();
        Self {
            frames,
            by_id,
            features,
            vocabs,
            signals,
            version,
            fresh: Freshness {
                as_of: now,
                loaded_at: now,
                changed: Arc::default(),
            },
        }
    }

    /// A frame by id.
    pub fn get(&self, id: &str) -> Option<&Frame> {
        self.index(id).map(|i| &*self.frames[i])
    }

    /// The position of a frame by id.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).map(|&i| i as usize)
    }

    /// A new catalogue with `changes` applied (in order). Upserts of existing
    /// frames patch their row; inserts and deletes rebuild the order.
    pub fn apply(&self, changes: Vec<Change>) -> (Self, Applied) {
        let mut out = Applied::default();
        let mut frames = self.frames.clone();
        let mut features = self.features.clone();
        let mut vocabs = self.vocabs.clone();
        let mut by_id = self.by_id.clone();
        let mut reorder = false;
        let mut deleted = std::collections::HashSet::new();
        let mut appended: HashMap<String, usize> = HashMap::new();
        let as_of = discovery_kit::now_unix_ms().max(self.fresh.as_of + 1);
        let mut changed = HashMap::new();
        for change in changes {
            match change {
                Change::Upsert(f) => {
                    let id = f.id.clone();
                    let held = by_id
                        .get(id.as_str())
                        .map(|&i| i as usize)
                        .filter(|_| !deleted.contains(&id))
                        .or_else(|| appended.get(&id).copied());
                    match held {
                        Some(i) => {
                            let old = &frames[i];
                            // Older than what we hold, or identical: nothing to do.
                            if (old.metadata.version, old.metadata.updated_at)
                                > (f.metadata.version, f.metadata.updated_at)
                                || **old == *f
                            {
                                out.ignored += 1;
                                continue;
                            }
                            features.set(i, &f, &mut vocabs, &self.signals);
                            for t in changed_tags(old, &f) {
                                changed.insert(t, as_of);
                            }
                            frames[i] = Arc::from(f);
                        }
                        None => {
                            deleted.remove(&id);
                            for t in entry_tags(&f) {
                                changed.insert(t, as_of);
                            }
                            appended.insert(id.clone(), frames.len());
                            features.push(&f, &mut vocabs, &self.signals);
                            frames.push(Arc::from(f));
                            reorder = true;
                        }
                    }
                    out.applied += 1;
                    out.tags.push(format!("product:{id}"));
                }
                Change::Delete(id) => {
                    let gone = by_id
                        .remove(id.as_str())
                        .map(|i| i as usize)
                        .or_else(|| appended.remove(&id));
                    if let Some(i) = gone {
                        for t in entry_tags(&frames[i]) {
                            changed.insert(t, as_of);
                        }
                        deleted.insert(id.clone());
                        reorder = true;
                        out.applied += 1;
                        out.tags.push(format!("product:{id}"));
                    }
                }
            }
        }
        let version = self.version + i64::from(out.applied > 0);
        let fresh = if changed.is_empty() {
            self.fresh.clone()
        } else {
            let mut all = (*self.fresh.changed).clone();
            all.extend(changed);
            Freshness {
                as_of,
                loaded_at: self.fresh.loaded_at,
                changed: Arc::new(all),
            }
        };
        if reorder {
            let keep: Vec<Arc<Frame>> = frames
                .into_iter()
                .filter(|f| !deleted.contains(&f.id))
                .collect();
            let mut next = Self::build(keep, version, self.signals.clone(), vocabs);
            next.fresh = fresh;
            return (next, out);
        }
        by_id.shrink_to_fit();
        (
            Self {
                frames,
                by_id,
                features,
                vocabs,
                signals: self.signals.clone(),
                version,
                fresh,
            },
            out,
        )
    }

    /// A new catalogue with the popularity column re-blended from `signals`.
    pub fn with_signals(&self, signals: Arc<Signals>) -> Self {
        let mut features = self.features.clone();
        for (i, f) in self.frames.iter().enumerate() {
            features.popularity[i] = signals.blend(&f.id, f.popularity);
        }
        Self {
            frames: self.frames.clone(),
            by_id: self.by_id.clone(),
            features,
            vocabs: self.vocabs.clone(),
            signals,
            version: self.version,
            fresh: self.fresh.clone(),
        }
    }
}

/// The swappable current catalogue.
///
/// Writers are serialised by their own lock and build the next version
/// without blocking readers; the read lock is held only to clone an `Arc`.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    current: Arc<RwLock<Arc<Catalog>>>,
    writer: Arc<Mutex<()>>,
}

impl Snapshot {
    /// The current version (cheap: one `Arc` clone).
    pub fn load(&self) -> Arc<Catalog> {
        self.current.read().clone()
    }

    /// Replaces the catalogue.
    pub fn replace(&self, catalog: Catalog) {
        let _w = self.writer.lock();
        *self.current.write() = Arc::new(catalog);
    }

    /// Applies changes atomically with respect to other writers.
    pub fn apply(&self, changes: Vec<Change>) -> Applied {
        let _w = self.writer.lock();
        let (next, applied) = self.load().apply(changes);
        if applied.applied > 0 {
            *self.current.write() = Arc::new(next);
        }
        applied
    }

    /// Re-blends popularity from new signals.
    pub fn set_signals(&self, signals: Arc<Signals>) {
        let _w = self.writer.lock();
        let next = self.load().with_signals(signals);
        *self.current.write() = Arc::new(next);
    }
}
