//! Natural-language query understanding: the parts of a shopper's text
//! that name a price, a shape, a material, a colour, a brand, a face shape,
//! a size, a kind of glasses or stock become filters and preferences; what
//! is left goes to the text search.
//!
//! "lightweight titanium round glasses under $150 for a wide face" is
//! understood as material titanium, shape round, price at most 150.00 USD,
//! size wide, with "lightweight" left for the search. Each understood part
//! is also a [`Chip`] with its span in the text, so a UI can show it and let
//! the shopper remove it.
//!
//! Rules, not a model: the vocabularies are closed (the catalogue's shapes
//! and materials, its brands and colours) and the grammar of prices and
//! negations is small, so rules are exact, explainable and take
//! microseconds. The rules:
//!
//! - prices: "under/below/less than/up to/max/at most/cheaper than N",
//!   "over/above/more than/at least/from N", "between N and M", "N-M" or
//!   "N to M" with a currency mark, "around/about N" (±20 %), a bare "$N"
//!   (a budget: at most N); currencies by symbol, code or name ("$", "usd",
//!   "dollars", "€", "euros", "£", "¥", "yen"...), "1.5k" and "1,200";
//!   without one, the catalogue's currency;
//! - negations ("not", "no", "without", "except", "avoid", "anything but",
//!   "non") exclude the next shape, material, colour or brand within three
//!   words ("not in black");
//! - "<face shape> face" (or "face is <shape>") names the face, not the
//!   frame: "round glasses for a round face" is shape round for face round;
//! - "like"/"similar to" before a brand keeps it out of the filters (the
//!   shopper wants something like it, not it);
//! - "cheap/affordable/budget/cheaper" and "premium/luxury/designer" lean
//!   the ranking by price without a bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use discovery_catalog::{Currency, Material, Money, Shape};

use words::{COLOR_SYNONYMS, FACES, FILLER, MATERIALS, SHAPES, WORDS};

mod words;

/// Longest text understood, bytes (longer is refused by the caller).
pub const MAX_TEXT: usize = 1024;

/// A size class (the frame's front width, for the face it fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Narrow faces, small frames.
    Narrow,
    /// Average.
    Medium,
    /// Wide faces, large frames.
    Wide,
}

impl Size {
    /// The face width this size stands for, mm (the ranking's fit term
    /// reads a face width; these are the usual adult S/M/L bands' middles).
    pub fn face_width_mm(self) -> f32 {
        match self {
            Self::Narrow => 128.0,
            Self::Medium => 138.0,
            Self::Wide => 148.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Narrow => "narrow",
            Self::Medium => "medium",
            Self::Wide => "wide",
        }
    }
}

/// Sunglasses or prescription frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Sunglasses.
    Sunglasses,
    /// Eyeglasses (optical frames).
    Eyeglasses,
}

impl Category {
    /// The catalogue's category name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sunglasses => "sunglasses",
            Self::Eyeglasses => "eyeglasses",
        }
    }
}

/// A lean of the ranking by price, without a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceLean {
    /// Cheaper first.
    Lower,
    /// Dearer first.
    Higher,
}

/// What a chip stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChipKind {
    /// A price bound.
    Price,
    /// A frame shape (or its exclusion).
    Shape,
    /// A material (or its exclusion).
    Material,
    /// A colour (or its exclusion).
    Color,
    /// A brand (or its exclusion).
    Brand,
    /// The face's shape.
    FaceShape,
    /// A size.
    Size,
    /// Sunglasses or eyeglasses.
    Category,
    /// In stock only.
    Stock,
    /// A lean by price.
    PriceLean,
}

impl ChipKind {
    /// Its name in the API (`QueryChip.kind`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Price => "price",
            Self::Shape => "shape",
            Self::Material => "material",
            Self::Color => "color",
            Self::Brand => "brand",
            Self::FaceShape => "face_shape",
            Self::Size => "size",
            Self::Category => "category",
            Self::Stock => "stock",
            Self::PriceLean => "price_lean",
        }
    }
}

/// One understood part of the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Chip {
    /// What it is.
    pub kind: ChipKind,
    /// Shown to the shopper ("under 150.00 USD", "not black").
    pub label: String,
    /// Byte span in the text.
    pub start: usize,
    /// End of the span (exclusive).
    pub end: usize,
}

/// The hard constraints understood.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted {
    /// Lowest price, minor units of `currency`.
    pub min_price_minor: Option<i64>,
    /// Highest price, minor units of `currency`.
    pub max_price_minor: Option<i64>,
    /// The currency of the bounds (named in the text, else the catalogue's).
    pub currency: Option<&'static str>,
    /// Allowed shapes (empty: any).
    pub shapes: Vec<Shape>,
    /// Excluded shapes.
    pub not_shapes: Vec<Shape>,
    /// Allowed materials.
    pub materials: Vec<Material>,
    /// Excluded materials.
    pub not_materials: Vec<Material>,
    /// Allowed colours (a variant in one of them), catalogue names.
    pub colors: Vec<String>,
    /// Excluded colours (no variant in them).
    pub not_colors: Vec<String>,
    /// Allowed brands, catalogue names.
    pub brands: Vec<String>,
    /// Excluded brands.
    pub not_brands: Vec<String>,
    /// Sunglasses or eyeglasses.
    pub category: Option<Category>,
    /// In stock only.
    pub in_stock: bool,
}

/// A text, understood.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Understanding {
    /// Hard constraints.
    pub wanted: Wanted,
    /// The face's shape (catalogue name: "round").
    pub face_shape: Option<&'static str>,
    /// Size class.
    pub size: Option<Size>,
    /// Lean by price.
    pub price_lean: Option<PriceLean>,
    /// The understood parts, in text order.
    pub chips: Vec<Chip>,
    /// The words left for the text search, in order.
    pub rest: String,
}

/// What the catalogue calls things: its brands and colours (any case), and
/// its currency. Built once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    /// Phrase (normalised words) -> meaning; longest phrase first wins.
    phrases: HashMap<Vec<String>, Term>,
    longest: usize,
    currency: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Shape(Shape),
    Materials(Vec<Material>),
    Color(String),
    Brand(String),
    FaceWord,
    Size(Size),
    Category(Category),
    InStock,
    Lean(PriceLean),
    Negation,
    Like,
    Below,
    Above,
    Around,
    Between,
    To,
    Currency(&'static str),
    Filler,
}

impl Lexicon {
    /// The lexicon of a snapshot: its brands, its variants' colours, and
    /// the currency most of its frames are priced in.
    pub fn of(catalog: &crate::snapshot::Catalog) -> Self {
        let mut colors: Vec<&str> = catalog
            .frames
            .iter()
            .flat_map(|f| f.inventory.variants.iter().map(|v| v.color.as_str()))
            .collect();
        colors.sort_unstable();
        colors.dedup();
        let mut currencies: HashMap<&str, usize> = HashMap::new();
        for f in &catalog.frames {
            *currencies.entry(f.currency.as_str()).or_default() += 1;
        }
        let currency = currencies
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(c, _)| c);
        Self::new(
            catalog.vocabs.brands.iter().map(|(_, b)| b),
            colors,
            currency,
        )
    }
}

/// A lexicon and the snapshot version it was built from.
type Versioned = (i64, Arc<Lexicon>);

/// The lexicon of the current snapshot. Building one reads every frame
/// (25 ms at 100,000), so a call never waits for it once one is built:
/// when the snapshot has changed, the call uses the last one and a rebuild
/// runs on a blocking thread (a brand added by a feed is understood a
/// moment later).
#[derive(Debug, Default)]
pub struct Lexicons {
    built: Arc<parking_lot::Mutex<Option<Versioned>>>,
    rebuilding: Arc<AtomicBool>,
}

impl Lexicons {
    /// The lexicon of `catalog` (built here the first time).
    pub fn get(&self, catalog: &Arc<crate::snapshot::Catalog>) -> Arc<Lexicon> {
        let current = self.built.lock().clone();
        match current {
            Some((v, l)) if v == catalog.version => l,
            Some((_, l)) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current()
                    && !self.rebuilding.swap(true, Ordering::AcqRel)
                {
                    let (catalog, built, flag) =
                        (catalog.clone(), self.built.clone(), self.rebuilding.clone());
                    drop(rt.spawn_blocking(move || {
                        let l = Arc::new(Lexicon::of(&catalog));
                        *built.lock() = Some((catalog.version, l));
                        flag.store(false, Ordering::Release);
                    }));
                }
                l
            }
            None => self.build(catalog),
        }
    }

    /// Builds the lexicon of `catalog` now and keeps it.
    pub fn build(&self, catalog: &crate::snapshot::Catalog) -> Arc<Lexicon> {
        let l = Arc::new(Lexicon::of(catalog));
        *self.built.lock() = Some((catalog.version, l.clone()));
        l
    }
}

/// Normalises a phrase the way the text is tokenised.
fn words_of(s: &str) -> Vec<String> {
    tokens(s).into_iter().map(|t| t.text).collect()
}

impl Lexicon {
    /// The lexicon of a catalogue: its brands and colours (any case) and
    /// its currency (prices without one are in it).
    pub fn new<'a>(
        brands: impl IntoIterator<Item = &'a str>,
        colors: impl IntoIterator<Item = &'a str>,
        currency: Option<&str>,
    ) -> Self {
        let mut phrases: HashMap<Vec<String>, Term> = HashMap::new();
        let mut add = |text: &str, term: Term| {
            let w = words_of(text);
            if !w.is_empty() {
                phrases.entry(w).or_insert(term);
            }
        };
        // Order: the earlier entry for a phrase wins ("no more than" is a
        // bound, not a negation, because it is longer; equal phrases keep
        // the first meaning).
        for (w, t) in WORDS {
            add(w, t.clone());
        }
        for (w, s) in SHAPES {
            add(w, Term::Shape(*s));
        }
        for (w, m) in MATERIALS {
            add(w, Term::Materials(m.to_vec()));
        }
        // Face-shape words are not phrases: "round" alone is the frame's
        // shape; next to "face" it is the face's (see `understand`).
        for c in colors {
            let name = c.trim().to_lowercase();
            if !name.is_empty() {
                add(&name, Term::Color(name.clone()));
            }
        }
        for &(w, c) in COLOR_SYNONYMS {
            add(w, Term::Color(c.to_string()));
        }
        for b in brands {
            let name = b.trim().to_string();
            if name.is_empty() {
                continue;
            }
            let w = words_of(&name);
            add(&name, Term::Brand(name.clone()));
            // "rayban" for "Ray-Ban".
            if w.len() > 1 {
                add(&w.concat(), Term::Brand(name.clone()));
            }
        }
        for w in FILLER {
            add(w, Term::Filler);
        }
        let longest = phrases.keys().map(Vec::len).max().unwrap_or(1);
        Self {
            phrases,
            longest,
            currency: currency
                .and_then(|c| Currency::parse(c).ok())
                .map(|c| c.code()),
        }
    }
}

/// A token of the text with its byte span.
#[derive(Debug, Clone)]
struct Token {
    text: String,
    start: usize,
    end: usize,
}

/// Lower-cased words, numbers ("1,200", "1.5k") and the symbols that mean
/// something ("$", "€", "£", "¥", "-", "<", ">", "~"); a hyphen between
/// two words joins them ("cat-eye" is "cat eye").
fn tokens(text: &str) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() {
            let mut end = i + c.len_utf8();
            let mut s = String::new();
            s.extend(c.to_lowercase());
            while let Some(&(j, d)) = chars.peek() {
                let digit_sep = (d == ',' || d == '.')
                    && c.is_ascii_digit()
                    && s.chars()
                        .all(|x| x.is_ascii_digit() || x == '.' || x == ',')
                    && text[j + 1..].starts_with(|x: char| x.is_ascii_digit());
                if d.is_alphanumeric() || d == '\'' || digit_sep {
                    s.extend(d.to_lowercase());
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token {
                text: s,
                start: i,
                end,
            });
        } else if "$€£¥<>~-–".contains(c) {
            let t = if c == '–' { '-' } else { c };
            // A hyphen between two words joins them.
            let joins = t == '-'
                && out
                    .last()
                    .is_some_and(|p| p.end == i && p.text.starts_with(char::is_alphabetic))
                && text[i + 1..].starts_with(char::is_alphabetic);
            if !joins {
                out.push(Token {
                    text: t.to_string(),
                    start: i,
                    end: i + c.len_utf8(),
                });
            }
        }
    }
    out
}

/// A number token's value ("1,200" -> 1200, "1.5k" -> 1500).
fn number(t: &str) -> Option<f64> {
    let (digits, scale) = match t.strip_suffix('k') {
        Some(d) => (d, 1000.0),
        None => (t, 1.0),
    };
    if !digits.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let v: f64 = digits.replace(',', "").parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * scale)
}

/// The text as a list of matched items.
#[derive(Debug, Clone)]
enum Item {
    Term(Term, usize, usize),
    Number(f64, usize, usize),
    Word(String, usize, usize),
}

impl Item {
    fn span(&self) -> (usize, usize) {
        match self {
            Item::Term(_, s, e) | Item::Number(_, s, e) | Item::Word(_, s, e) => (*s, *e),
        }
    }
}

fn items(lex: &Lexicon, toks: &[Token]) -> Vec<Item> {
    // The token texts side by side, so a phrase is looked up by slice
    // (`Vec<String>: Borrow<[String]>`), not built for every length tried.
    let texts: Vec<String> = toks.iter().map(|t| t.text.clone()).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if let Some(v) = number(&texts[i]) {
            out.push(Item::Number(v, toks[i].start, toks[i].end));
            i += 1;
            continue;
        }
        let matched = (1..=lex.longest.min(toks.len() - i))
            .rev()
            .find_map(|n| lex.phrases.get(&texts[i..i + n]).map(|term| (term, n)));
        match matched {
            Some((term, n)) => {
                out.push(Item::Term(term.clone(), toks[i].start, toks[i + n - 1].end));
                i += n;
            }
            None => {
                out.push(Item::Word(texts[i].clone(), toks[i].start, toks[i].end));
                i += 1;
            }
        }
    }
    out
}

fn face_of(item: &Item) -> Option<&'static str> {
    let word = match item {
        Item::Term(Term::Shape(s), ..) => s.name(),
        Item::Word(w, ..) => w.as_str(),
        Item::Term(..) | Item::Number(..) => return None,
    };
    FACES.iter().find(|(w, _)| *w == word).map(|(_, f)| *f)
}

/// Understands a shopper's text against a catalogue's lexicon.
pub fn understand(lex: &Lexicon, text: &str) -> Understanding {
    let toks = tokens(text);
    let items = items(lex, &toks);
    let mut u = Understanding::default();
    let mut used = vec![false; items.len()];
    let mut rest: Vec<String> = Vec::new();
    let chip = |u: &mut Understanding, kind, label: String, s: usize, e: usize| {
        u.chips.push(Chip {
            kind,
            label,
            start: s,
            end: e,
        });
    };

    // 1. Face shapes: "<shape> face", "face is <shape>", "<shape>-shaped face".
    for i in 0..items.len() {
        if !matches!(items[i], Item::Term(Term::FaceWord, ..)) {
            continue;
        }
        let before = i.checked_sub(1).filter(|&j| !used[j]);
        let after = (i + 2 < items.len() && said(text, &items[i + 1]) == "is").then_some(i + 2);
        for j in [before, after].into_iter().flatten() {
            if let Some(f) = face_of(&items[j]) {
                let (s, _) = items[j.min(i)].span();
                let (_, e) = items[j.max(i)].span();
                u.face_shape = Some(f);
                used[i] = true;
                used[j] = true;
                if j > i {
                    used[i + 1] = true;
                }
                chip(&mut u, ChipKind::FaceShape, format!("{f} face"), s, e);
                break;
            }
        }
        // "wide face": the size, said of the face.
        if let Some(j) = before
            && let Item::Term(Term::Size(size), s, _) = items[j]
        {
            u.size = Some(size);
            used[i] = true;
            used[j] = true;
            chip(
                &mut u,
                ChipKind::Size,
                format!("{} face", size.name()),
                s,
                items[i].span().1,
            );
        }
        used[i] = true;
    }

    // 2. Prices.
    let currency_at = |j: usize| match items.get(j) {
        Some(Item::Term(Term::Currency(c), ..)) => Some(*c),
        _ => None,
    };
    // An amount at `j`: optional currency before and after the number.
    let amount_at = |j: usize| -> Option<(f64, Option<&'static str>, usize, usize)> {
        let mut k = j;
        let mut cur = currency_at(k);
        if cur.is_some() {
            k += 1;
        }
        let Some(Item::Number(v, ..)) = items.get(k) else {
            return None;
        };
        let after = currency_at(k + 1);
        cur = cur.or(after);
        let last = if after.is_some() { k + 1 } else { k };
        Some((*v, cur, j, last))
    };
    let mut i = 0;
    while i < items.len() {
        if used[i] {
            i += 1;
            continue;
        }
        let (kind, from) = match &items[i] {
            Item::Term(t @ (Term::Below | Term::Above | Term::Around | Term::Between), ..) => {
                (Some(t.clone()), i + 1)
            }
            _ => (None, i),
        };
        let Some((a, cur_a, _, end_a)) = amount_at(from) else {
            i += 1;
            continue;
        };
        // A range: "N to M", "N-M", "between N and M".
        let range = match items.get(end_a + 1) {
            Some(Item::Term(Term::To, ..)) => amount_at(end_a + 2),
            _ => None,
        };
        // "between N and M", "from N to M"; a bare "N-M" only with a
        // currency (a frame size "52-18" is not a price).
        let is_range = |cur_b: Option<&str>| match &kind {
            Some(Term::Between | Term::Above) => true,
            None => cur_a.or(cur_b).is_some(),
            _ => false,
        };
        let (min, max, cur, last) = match (&kind, range) {
            (_, Some((b, cur_b, _, end_b))) if is_range(cur_b) => {
                (Some(a.min(b)), Some(a.max(b)), cur_a.or(cur_b), end_b)
            }
            (Some(Term::Below), _) => (None, Some(a), cur_a, end_a),
            (Some(Term::Above), _) => (Some(a), None, cur_a, end_a),
            (Some(Term::Around), _) => (Some(a * 0.8), Some(a * 1.2), cur_a, end_a),
            // A bare amount with a currency: a budget.
            (None, _) if cur_a.is_some() => (None, Some(a), cur_a, end_a),
            _ => {
                i += 1;
                continue;
            }
        };
        // Without a currency: the catalogue's (USD for an empty one).
        let code = cur.or(lex.currency).unwrap_or("USD");
        let exp = Currency::exponent_of(code);
        let minor = |v: f64| Money::from_major(v, exp).ok().map(Money::minor);
        let (lo, hi) = (min.and_then(minor), max.and_then(minor));
        if lo.is_none() && hi.is_none() {
            // An amount no price can be (1e308): read, not understood.
            i = last + 1;
            continue;
        }
        if let (Some(l), Some(h)) = (lo, u.wanted.max_price_minor)
            && l > h
        {
            // A second, contradicting bound: keep the first.
            i = last + 1;
            continue;
        }
        if lo.is_some() {
            u.wanted.min_price_minor = lo;
        }
        if hi.is_some() {
            u.wanted.max_price_minor = hi;
        }
        u.wanted.currency = Some(code);
        for u_ in used.iter_mut().take(last + 1).skip(i) {
            *u_ = true;
        }
        let show = |m: Option<i64>| {
            m.map(|v| {
                Money::from_minor(v, exp)
                    .map(|x| format!("{:.*}", exp as usize, x.major()))
                    .unwrap_or_default()
            })
        };
        let label = match (show(lo), show(hi)) {
            (Some(l), Some(h)) => format!("{l}-{h} {code}"),
            (Some(l), None) => format!("from {l} {code}"),
            (None, Some(h)) => format!("under {h} {code}"),
            (None, None) => String::new(),
        };
        let (s, _) = items[i].span();
        let (_, e) = items[last].span();
        chip(&mut u, ChipKind::Price, label, s, e);
        i = last + 1;
    }

    // 3. Attributes, negations, "like".
    let mut negate_until: Option<usize> = None;
    let mut like_until: Option<usize> = None;
    let mut negation_start = 0;
    for i in 0..items.len() {
        if used[i] {
            continue;
        }
        let negated = negate_until.is_some_and(|n| i <= n);
        let liked = like_until.is_some_and(|n| i <= n);
        let (s, e) = items[i].span();
        let (cs, label_prefix) = if negated {
            (negation_start, "not ")
        } else {
            (s, "")
        };
        let mut took = true;
        // A shape, material, colour or brand: its chip, said negated or not.
        let mut attribute: Option<(ChipKind, String)> = None;
        match &items[i] {
            Item::Term(Term::Negation, ..) => {
                negate_until = Some(i + 3);
                negation_start = s;
            }
            Item::Term(Term::Like, ..) => like_until = Some(i + 3),
            Item::Term(Term::Shape(sh), ..) => {
                let w = &mut u.wanted;
                push_new(either(negated, &mut w.shapes, &mut w.not_shapes), *sh);
                attribute = Some((ChipKind::Shape, sh.title()));
            }
            Item::Term(Term::Materials(ms), ..) => {
                let w = &mut u.wanted;
                let target = either(negated, &mut w.materials, &mut w.not_materials);
                for m in ms {
                    push_new(target, *m);
                }
                let names: Vec<&str> = ms.iter().map(|m| m.name()).collect();
                attribute = Some((ChipKind::Material, names.join(" or ")));
            }
            Item::Term(Term::Color(c), ..) => {
                let w = &mut u.wanted;
                push_new(either(negated, &mut w.colors, &mut w.not_colors), c.clone());
                attribute = Some((ChipKind::Color, c.clone()));
            }
            Item::Term(Term::Brand(b), ..) if liked => {
                // "like the Ray-Ban clubmaster": a reference, not a filter.
                rest.push(b.to_lowercase());
                took = false;
            }
            Item::Term(Term::Brand(b), ..) => {
                let w = &mut u.wanted;
                push_new(either(negated, &mut w.brands, &mut w.not_brands), b.clone());
                attribute = Some((ChipKind::Brand, b.clone()));
            }
            Item::Term(Term::Size(sz), ..) if u.size.is_none() => {
                u.size = Some(*sz);
                chip(&mut u, ChipKind::Size, sz.name().to_string(), s, e);
            }
            Item::Term(Term::Category(c), ..) if u.wanted.category.is_none() => {
                u.wanted.category = Some(*c);
                chip(&mut u, ChipKind::Category, c.name().to_string(), s, e);
            }
            Item::Term(Term::InStock, ..) => {
                u.wanted.in_stock = true;
                chip(&mut u, ChipKind::Stock, "in stock".to_string(), s, e);
            }
            Item::Term(Term::Lean(l), ..) if u.price_lean.is_none() && !negated => {
                u.price_lean = Some(*l);
                let label = match l {
                    PriceLean::Lower => "lower prices first",
                    PriceLean::Higher => "premium first",
                };
                chip(&mut u, ChipKind::PriceLean, label.to_string(), s, e);
            }
            Item::Word(w, ..) => {
                rest.push(w.clone());
                took = false;
            }
            Item::Number(..) => {
                rest.push(said(text, &items[i]));
                took = false;
            }
            _ => took = false,
        }
        if let Some((kind, label)) = attribute {
            negate_until = None;
            chip(&mut u, kind, format!("{label_prefix}{label}"), cs, e);
        }
        if took {
            used[i] = true;
        }
        // "not black or brown": the negation carries over a connector.
        if negated
            && negate_until.is_none()
            && items
                .get(i + 1)
                .is_some_and(|n| matches!(said(text, n).as_str(), "or" | "and" | "nor"))
        {
            negate_until = Some(i + 2);
        }
    }
    u.chips.sort_by_key(|c| c.start);
    u.rest = rest.join(" ");
    u
}

/// The list a value goes to: the exclusions when negated.
fn either<'a, T>(
    negated: bool,
    wanted: &'a mut Vec<T>,
    excluded: &'a mut Vec<T>,
) -> &'a mut Vec<T> {
    if negated { excluded } else { wanted }
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, v: T) {
    if !list.contains(&v) {
        list.push(v);
    }
}

/// The text an item was matched on, lower-cased.
fn said(text: &str, item: &Item) -> String {
    let (s, e) = item.span();
    text.get(s..e).unwrap_or_default().to_lowercase()
}

#[cfg(test)]
mod tests;
