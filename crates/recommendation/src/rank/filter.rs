//! The hard filter: a request's `ProductFilter` compiled to bit masks and
//! bounds over the snapshot's columns (exact: a frame passes or not).

use discovery_catalog::{Material, Shape};

use super::*;

/// A compiled hard filter (the default passes every frame).
#[derive(Debug, Clone)]
pub struct Filter {
    min_price: i64,
    max_price: i64,
    in_stock_only: bool,
    shapes: u32,
    materials: u32,
    /// Allowed brands as a table indexed by brand id.
    brands: Option<Vec<bool>>,
    currency: Option<String>,
    /// What a query's text added ([`Filter::narrow`]).
    text: Option<std::sync::Arc<TextConditions>>,
}

/// The conditions a query's text adds to a filter: exclusions, and what
/// has no column of its own in the filter (colours and category have
/// columns of the snapshot's, read here).
#[derive(Debug, Clone, Default)]
struct TextConditions {
    /// Nothing can pass (the text contradicts the filter: "round" with a
    /// filter allowing only aviators).
    nothing: bool,
    not_shapes: u32,
    not_materials: u32,
    not_brands: Vec<u32>,
    /// Each a colour name's words: a variant whose colour has them all.
    colors: Vec<Color>,
    not_colors: Vec<Color>,
    /// The category's bit in `Features::categories`.
    category: Option<u8>,
}

/// A colour name of a query: its words, the bits of the snapshot's
/// colour-word column a frame must have for a variant of it to have them
/// all (`None` when a word has no bit: checked on the frame alone), and the
/// catalogue's colour names that have them all.
#[derive(Debug, Clone)]
struct Color {
    words: Vec<String>,
    bits: Option<u64>,
    /// The colour names having all the words, as bits of
    /// `Features::color_names`, when the catalogue has at most 64 names.
    names: Option<u64>,
    /// A word no frame's colour has: nothing has this colour.
    nowhere: bool,
}

impl Color {
    fn new(catalog: &Catalog, name: &str) -> Self {
        let words = crate::search::query_words(name);
        let ids: Vec<Option<u32>> = words.iter().map(|w| catalog.vocabs.colors.get(w)).collect();
        let nowhere = ids.iter().any(Option::is_none);
        let bits = ids.iter().try_fold(0u64, |m, id| {
            let id = (*id)?;
            (id < 64).then_some(m | 1 << id)
        });
        let all_names = &catalog.vocabs.color_names;
        let names = (all_names.len() <= 64).then(|| {
            all_names
                .iter()
                .filter(|(_, n)| words.iter().all(|w| n.split(' ').any(|x| x == w)))
                .fold(0u64, |m, (id, _)| m | 1 << id)
        });
        Self {
            words,
            bits,
            names,
            nowhere,
        }
    }

    /// Whether a variant of frame `i` has this colour (all its words in
    /// one variant's colour). With at most 64 colour names in the
    /// catalogue, the names column answers exactly; beyond, the words'
    /// bits rule most frames out and answer a one-word colour (the column
    /// is the union of the variants' words), and only a colour of several
    /// words is read from the variants' strings.
    fn on(&self, catalog: &Catalog, i: usize) -> bool {
        if self.nowhere {
            return false;
        }
        if let Some(m) = self.names {
            return catalog.features.color_names[i] & m != 0;
        }
        if let Some(b) = self.bits {
            if catalog.features.colors[i] & b != b {
                return false;
            }
            if self.words.len() == 1 {
                return true;
            }
        }
        catalog.frames[i].inventory.variants.iter().any(|v| {
            self.words.iter().all(|w| {
                v.color
                    .split(|c: char| !c.is_alphanumeric())
                    .any(|x| x.eq_ignore_ascii_case(w))
            })
        })
    }
}

impl TextConditions {
    fn passes(&self, catalog: &Catalog, i: usize) -> bool {
        let x = &catalog.features;
        if self.nothing
            || (self.not_shapes >> x.shape[i]) & 1 == 1
            || (self.not_materials >> x.material[i]) & 1 == 1
            || self.not_brands.contains(&x.brand[i])
        {
            return false;
        }
        if let Some(c) = self.category
            && x.categories[i] & c == 0
        {
            return false;
        }
        (self.colors.is_empty() || self.colors.iter().any(|c| c.on(catalog, i)))
            && !self.not_colors.iter().any(|c| c.on(catalog, i))
    }
}

/// `a` narrowed by `b`, where 0 means "any" for both.
fn both(a: u32, b: u32) -> (u32, bool) {
    match (a, b) {
        (0, b) => (b, false),
        (a, 0) => (a, false),
        (a, b) => (a & b, a & b == 0),
    }
}

pub(super) fn enum_mask(
    field: &'static str,
    values: &[i32],
    valid: impl Fn(i32) -> bool,
) -> Result<u32, RankError> {
    if values.len() > MAX_LIST {
        return Err(RankError::ListTooLong(field, values.len()));
    }
    let mut m = 0u32;
    for &v in values {
        if !(1..32).contains(&v) || !valid(v) {
            return Err(RankError::UnknownEnum(field, v));
        }
        m |= 1 << v;
    }
    Ok(m)
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            min_price: 0,
            max_price: i64::MAX,
            in_stock_only: false,
            shapes: 0,
            materials: 0,
            brands: None,
            currency: None,
            text: None,
        }
    }
}

impl Filter {
    /// Validates and compiles a filter against a catalogue's vocabularies.
    pub fn compile(catalog: &Catalog, f: Option<&pb::ProductFilter>) -> Result<Self, RankError> {
        let Some(f) = f else {
            return Ok(Self::default());
        };
        for p in [f.min_price_minor, f.max_price_minor].into_iter().flatten() {
            if p < 0 {
                return Err(RankError::NegativePrice(p));
            }
        }
        if let (Some(a), Some(b)) = (f.min_price_minor, f.max_price_minor)
            && a > b
        {
            return Err(RankError::PriceRange(a, b));
        }
        if f.brands.len() > MAX_LIST {
            return Err(RankError::ListTooLong("filter.brands", f.brands.len()));
        }
        let currency = f.currency.trim();
        let iso = currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase());
        if !currency.is_empty() && !iso {
            return Err(RankError::Currency(f.currency.clone()));
        }
        Ok(Self {
            min_price: f.min_price_minor.unwrap_or(0),
            max_price: f.max_price_minor.unwrap_or(i64::MAX),
            in_stock_only: f.in_stock_only,
            shapes: enum_mask("filter.shapes", &f.shapes, |v| {
                Shape::from_code(v).is_some()
            })?,
            materials: enum_mask("filter.materials", &f.materials, |v| {
                Material::from_code(v).is_some()
            })?,
            brands: (!f.brands.is_empty()).then(|| {
                let mut t = vec![false; catalog.vocabs.brands.len()];
                for id in f
                    .brands
                    .iter()
                    .filter_map(|b| catalog.vocabs.brands.get(b.trim()))
                {
                    t[id as usize] = true;
                }
                t
            }),
            currency: (!currency.is_empty()).then(|| currency.to_string()),
            text: None,
        })
    }

    /// This filter narrowed by what a query's text asked for: its shapes,
    /// materials and brands intersected with the filter's, its exclusions,
    /// colours, category and stock added, and its price bounds when they
    /// are in the filter's currency (or the filter names none). Never wider
    /// than the filter.
    pub fn narrow(mut self, catalog: &Catalog, w: &crate::understand::Wanted) -> Self {
        let mut t = TextConditions::default();
        let shapes = w.shapes.iter().fold(0u32, |m, s| m | 1 << s.code());
        let (s, none_s) = both(self.shapes, shapes);
        self.shapes = s;
        let materials = w.materials.iter().fold(0u32, |m, s| m | 1 << s.code());
        let (m, none_m) = both(self.materials, materials);
        self.materials = m;
        t.nothing = none_s || none_m;
        t.not_shapes = w.not_shapes.iter().fold(0u32, |m, s| m | 1 << s.code());
        t.not_materials = w.not_materials.iter().fold(0u32, |m, s| m | 1 << s.code());
        if !w.brands.is_empty() {
            let mut wanted = vec![false; catalog.vocabs.brands.len()];
            for id in w.brands.iter().filter_map(|b| catalog.vocabs.brands.get(b)) {
                wanted[id as usize] = true;
            }
            self.brands = Some(match self.brands.take() {
                Some(had) => had.iter().zip(&wanted).map(|(a, b)| *a && *b).collect(),
                None => wanted,
            });
        }
        t.not_brands = w
            .not_brands
            .iter()
            .filter_map(|b| catalog.vocabs.brands.get(b))
            .collect();
        t.colors = w.colors.iter().map(|c| Color::new(catalog, c)).collect();
        t.not_colors = w
            .not_colors
            .iter()
            .map(|c| Color::new(catalog, c))
            .collect();
        // A category the snapshot has no bit for matches nothing.
        t.category = w
            .category
            .map(|c| crate::snapshot::category_bit(c.name()).unwrap_or(0));
        self.in_stock_only |= w.in_stock;
        let priced = w.min_price_minor.is_some() || w.max_price_minor.is_some();
        let same_currency = match (&self.currency, w.currency) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if priced && same_currency {
            if self.currency.is_none() {
                self.currency = w.currency.map(str::to_string);
            }
            self.min_price = self.min_price.max(w.min_price_minor.unwrap_or(0));
            self.max_price = self.max_price.min(w.max_price_minor.unwrap_or(i64::MAX));
        }
        self.text = Some(std::sync::Arc::new(t));
        self
    }

    /// Whether the filter excludes anything at all.
    pub fn is_active(&self) -> bool {
        self.min_price > 0
            || self.max_price < i64::MAX
            || self.in_stock_only
            || self.shapes != 0
            || self.materials != 0
            || self.brands.is_some()
            || self.currency.is_some()
            || self.text.is_some()
    }

    /// Whether row `i` passes.
    pub fn passes(&self, catalog: &Catalog, i: usize) -> bool {
        let mut ok = [true];
        self.mask(catalog, i, &mut ok);
        ok[0]
    }

    /// Clears `ok[j]` for every row `start + j` that does not pass: one
    /// branch-free pass per active condition, over the columns.
    pub fn mask(&self, catalog: &Catalog, start: usize, ok: &mut [bool]) {
        let x = &catalog.features;
        let end = start + ok.len();
        if self.min_price > 0 || self.max_price < i64::MAX {
            let (lo, hi) = (self.min_price, self.max_price);
            for (o, p) in ok.iter_mut().zip(&x.price_minor[start..end]) {
                *o &= (*p >= lo) & (*p <= hi);
            }
        }
        if self.in_stock_only {
            for (o, s) in ok.iter_mut().zip(&x.in_stock[start..end]) {
                *o &= *s;
            }
        }
        if self.shapes != 0 {
            for (o, s) in ok.iter_mut().zip(&x.shape[start..end]) {
                *o &= (self.shapes >> *s) & 1 == 1;
            }
        }
        if self.materials != 0 {
            for (o, m) in ok.iter_mut().zip(&x.material[start..end]) {
                *o &= (self.materials >> *m) & 1 == 1;
            }
        }
        if let Some(t) = &self.brands {
            for (o, b) in ok.iter_mut().zip(&x.brand[start..end]) {
                *o &= t.get(*b as usize).copied().unwrap_or(false);
            }
        }
        if let Some(c) = &self.currency {
            for (j, o) in ok.iter_mut().enumerate() {
                *o = *o && catalog.frames[start + j].currency == *c;
            }
        }
        if let Some(t) = &self.text {
            for (j, o) in ok.iter_mut().enumerate() {
                *o = *o && t.passes(catalog, start + j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery_catalog::demo_catalog;

    /// Frames 0..3 with these variant colours; with `fillers`, as many more
    /// frames each in a colour name of its own.
    fn catalog(fillers: usize) -> Catalog {
        let mut frames = demo_catalog(3 + fillers);
        let colours: [&[&str]; 3] = [&["Grey Fade"], &["Grey", "Blue Fade"], &["Black"]];
        for (f, cs) in frames.iter_mut().zip(colours) {
            let v = f.inventory.variants[0].clone();
            f.inventory.variants = cs
                .iter()
                .map(|c| {
                    let mut v = v.clone();
                    v.color = (*c).into();
                    v
                })
                .collect();
        }
        for (k, f) in frames.iter_mut().skip(3).enumerate() {
            for v in &mut f.inventory.variants {
                v.color = format!("Shade {k}");
            }
        }
        Catalog::new(frames, 1)
    }

    #[test]
    fn a_category_from_the_text_is_the_frames_category_in_any_case() {
        use crate::understand::{Category, Wanted};
        let mut frames = demo_catalog(40);
        frames[0].categories = vec!["SunGlasses".into()];
        frames[1].categories = vec!["goggles".into()];
        let c = Catalog::new(frames, 1);
        for category in [Category::Sunglasses, Category::Eyeglasses] {
            let wanted = Wanted {
                category: Some(category),
                ..Wanted::default()
            };
            let f = Filter::default().narrow(&c, &wanted);
            let by_strings: Vec<bool> = c
                .frames
                .iter()
                .map(|fr| {
                    fr.categories
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(category.name()))
                })
                .collect();
            let by_column: Vec<bool> = (0..c.frames.len()).map(|i| f.passes(&c, i)).collect();
            assert_eq!(by_column, by_strings, "{category:?}");
            assert!(by_column.iter().any(|p| *p) && by_column.iter().any(|p| !*p));
        }
        assert_eq!(c.features.categories[0], 1, "SunGlasses");
        assert_eq!(c.features.categories[1], 0, "no bit for goggles");
    }

    #[test]
    fn a_colour_of_several_words_is_one_variants_by_the_names_column_and_by_the_strings() {
        for fillers in [0, 80] {
            let c = catalog(fillers);
            let beyond = c.vocabs.color_names.len() > 64;
            assert_eq!(beyond, fillers > 0, "{} names", c.vocabs.color_names.len());
            let on = |name: &str| -> Vec<bool> {
                let colour = Color::new(&c, name);
                assert_eq!(colour.names.is_some(), !beyond);
                (0..3).map(|i| colour.on(&c, i)).collect()
            };
            // Both words in one variant: frame 0 only (frame 1 has them
            // in two).
            assert_eq!(on("grey fade"), [true, false, false], "fillers {fillers}");
            assert_eq!(on("Grey"), [true, true, false]);
            assert_eq!(on("fade"), [true, true, false]);
            assert_eq!(on("black"), [false, false, true]);
            assert_eq!(on("purple"), [false, false, false]);
        }
    }
}
