//! Feed records: decoding, mapping to the catalogue document, validation.
//!
//! Three shapes come in (see `FeedFormat`):
//! - **typed**: a `discovery.v1.Product` message;
//! - **NDJSON**: our stored product document as JSON, one object per line
//!   (the `products` schema: `_id`, `name`, `brand`, `shape`, `lens_width_mm`,
//!   `inventory.variants`, `ai_enhanced`, `metadata.updated_at`...);
//! - **Shopify NDJSON**: a Shopify-style product, mapped as follows:
//!
//! | Shopify | catalogue |
//! |---|---|
//! | `id` | `_id` = `{source}:{id}` |
//! | `title` | `name` (model = title without the vendor) |
//! | `vendor` | `brand` |
//! | `body_html` (tags stripped) | `description` |
//! | `tags` `shape:aviator`, `material:titanium` | `shape`, `material` |
//! | tag `size:52-18-145` | lens width, bridge, temple (mm) |
//! | tag `width:140` | total front width (mm); else `2 × lens + bridge + 8` |
//! | other tags | style keywords |
//! | `variants[].sku`, `.option1`, `.inventory_quantity` | variants (sku, colour, stock) |
//! | first variant `price` (string, major units) | `price` |
//! | `currency` (top level, optional) | `currency`, default `USD` |
//! | `updated_at` (RFC 3339) | `metadata.updated_at` |
//! | `images[0].src` | `image_url` |
//!
//! Every accepted record gets `metadata.version = metadata.updated_at`, so
//! versions grow with source time and the newer-wins guard compares them.
//!
//! Validation names the field and the rule: frame width 100-170 mm, lens
//! 30-70 mm, bridge 10-30 mm, temple 100-170 mm, price ≥ 0, a known
//! currency, a known shape and material, a name, at least one variant with
//! a SKU, `updated_at` set.

use std::collections::BTreeMap;

use discovery_catalog::{
    AiEnhanced, Currency, Frame, Inventory, Material, Metadata, Money, Shape, VariantDoc,
    categories,
};
use serde::Deserialize;

/// Longest raw record accepted, bytes.
pub const MAX_RECORD: usize = 256 * 1024;

/// Why a record was refused: its dead letter's `reason` (the text names
/// the field and the rule, for the person fixing the feed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// Over [`MAX_RECORD`].
    #[error("record: {bytes} bytes is over the maximum of {MAX_RECORD}")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// Raw JSON on a typed feed.
    #[error(
        "record: raw JSON given but the header's format is unspecified (typed products); set format NDJSON or SHOPIFY_NDJSON"
    )]
    RawWithoutFormat,
    /// A message with no record in it.
    #[error("record: empty")]
    Empty,
    /// A replayed typed payload that does not decode.
    #[error("record: not a Product: {0}")]
    NotAProduct(String),
    /// Not JSON, or not the expected shape.
    #[error("json: {0}")]
    Json(String),
    /// A typed product the catalogue cannot take.
    #[error("{0}")]
    Product(String),
    /// The id itself is wrong.
    #[error("id: {0}")]
    Id(String),
    /// A field of the record `id` breaks a rule.
    #[error("{id}: {rule}")]
    Invalid {
        /// The record.
        id: String,
        /// The field and the rule.
        rule: String,
    },
}

fn invalid(id: &str, rule: impl ToString) -> RecordError {
    RecordError::Invalid {
        id: id.to_string(),
        rule: rule.to_string(),
    }
}

/// How records arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Typed `Product` messages (raw JSON records are rejected).
    Typed,
    /// Our product document as JSON.
    Ndjson,
    /// Shopify-style product JSON.
    Shopify,
}

impl Format {
    /// Stored name (dead letters).
    pub fn name(self) -> &'static str {
        match self {
            Self::Typed => "typed",
            Self::Ndjson => "ndjson",
            Self::Shopify => "shopify",
        }
    }

    /// From a stored name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "typed" => Some(Self::Typed),
            "ndjson" => Some(Self::Ndjson),
            "shopify" => Some(Self::Shopify),
            _ => None,
        }
    }
}

/// Decodes one raw JSON record into a frame (not yet validated).
pub fn decode_raw(format: Format, source: &str, raw: &[u8]) -> Result<Frame, RecordError> {
    if raw.len() > MAX_RECORD {
        return Err(RecordError::TooLarge { bytes: raw.len() });
    }
    match format {
        Format::Typed => Err(RecordError::RawWithoutFormat),
        Format::Ndjson => {
            let mut f: Frame =
                serde_json::from_slice(raw).map_err(|e| RecordError::Json(e.to_string()))?;
            f.id = namespaced(source, &f.id);
            f.metadata.version = f.metadata.updated_at;
            // A feed never sets the embedding: a record carrying one would
            // place its product anywhere in semantic search.
            f.embedding = None;
            Ok(f)
        }
        Format::Shopify => {
            let p: ShopifyProduct =
                serde_json::from_slice(raw).map_err(|e| RecordError::Json(e.to_string()))?;
            from_shopify(source, p)
        }
    }
}

/// A source's id space: `source:id` (an id already in it stays).
pub(crate) fn namespaced(source: &str, id: &str) -> String {
    if source.is_empty() || id.starts_with(&format!("{source}:")) {
        id.to_string()
    } else {
        format!("{source}:{id}")
    }
}

/// Refuses an `updated_at` more than `max_skew` ahead of `now_ms`: newer
/// wins, so a record dated in year 9999 would pin the product against every
/// later correction.
pub fn check_not_future(
    f: &Frame,
    now_ms: i64,
    max_skew: std::time::Duration,
) -> Result<(), RecordError> {
    let limit = now_ms.saturating_add(max_skew.as_millis().min(i64::MAX as u128) as i64);
    if f.metadata.updated_at > limit {
        return Err(invalid(
            &f.id,
            format!(
                "updated_at {} ms is {} s in the future (at most {} s of clock skew is accepted, DISCOVERY_SYNC_MAX_FUTURE)",
                f.metadata.updated_at,
                (f.metadata.updated_at - now_ms) / 1000,
                max_skew.as_secs()
            ),
        ));
    }
    Ok(())
}

fn names<'a>(all: impl Iterator<Item = &'a str>) -> String {
    all.collect::<Vec<_>>().join(", ")
}

/// Checks a frame against the catalogue's rules; the error names the field.
pub fn validate(f: &Frame) -> Result<(), RecordError> {
    let id = &f.id;
    if id.trim().is_empty() || id.len() > 200 {
        return Err(RecordError::Id("required, at most 200 characters".into()));
    }
    if f.name.trim().is_empty() {
        return Err(invalid(id, "name is required"));
    }
    let ranges = [
        ("total_width_mm", f.total_width_mm, 100.0, 170.0),
        ("lens_width_mm", f.lens_width_mm, 30.0, 70.0),
        ("bridge_mm", f.bridge_mm, 10.0, 30.0),
        ("temple_mm", f.temple_mm, 100.0, 170.0),
    ];
    for (field, v, lo, hi) in ranges {
        if !v.is_finite() || !(lo..=hi).contains(&v) {
            return Err(invalid(id, format!("{field} {v} is outside {lo}-{hi} mm")));
        }
    }
    // A listed currency, and a price it can hold (read in the currency's
    // own minor unit wherever it is served: a yen price has none).
    let currency = Currency::parse(&f.currency).map_err(|e| invalid(id, e))?;
    Money::from_major(f.price, currency.exponent()).map_err(|e| invalid(id, e))?;
    if f.shape == Shape::Unspecified {
        return Err(invalid(
            id,
            format!(
                "shape is missing or not a known frame shape (one of: {})",
                names(Shape::ALL.iter().map(|s| s.name()))
            ),
        ));
    }
    if f.material == Material::Unspecified {
        return Err(invalid(
            id,
            format!(
                "material is missing or not a known material (one of: {})",
                names(Material::ALL.iter().map(|m| m.name()))
            ),
        ));
    }
    if f.inventory.variants.is_empty() {
        return Err(invalid(id, "at least one variant is required"));
    }
    for v in &f.inventory.variants {
        if v.sku.trim().is_empty() {
            return Err(invalid(id, "every variant needs a sku"));
        }
        if v.stock < 0 {
            return Err(invalid(
                id,
                format!("sku {} has negative stock {}", v.sku, v.stock),
            ));
        }
    }
    if f.metadata.updated_at <= 0 {
        return Err(invalid(id, "updated_at is required"));
    }
    for (shape, s) in &f.ai_enhanced.face_shape_compatibility {
        if !(0.0..=1.0).contains(s) {
            return Err(invalid(
                id,
                format!("face_shape_compatibility.{shape} {s} is outside 0-1"),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ShopifyProduct {
    id: serde_json::Value,
    title: String,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    body_html: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    currency: Option<String>,
    updated_at: String,
    #[serde(default)]
    images: Vec<ShopifyImage>,
    #[serde(default)]
    variants: Vec<ShopifyVariant>,
    #[serde(default)]
    product_type: String,
}

#[derive(Debug, Deserialize)]
struct ShopifyImage {
    src: String,
}

#[derive(Debug, Deserialize)]
struct ShopifyVariant {
    #[serde(default)]
    sku: String,
    #[serde(default)]
    price: serde_json::Value,
    #[serde(default)]
    option1: Option<String>,
    #[serde(default)]
    inventory_quantity: i64,
}

fn strip_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 3339 (`2024-05-01T12:00:00Z`, offsets allowed) to ms since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (time, offset_min) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            t,
            sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?),
        )
    };
    let mut t = time.splitn(3, ':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || sec >= 61.0 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 - offset_min * 60;
    Some(secs * 1000 + (sec * 1000.0).round() as i64)
}

fn from_shopify(source: &str, p: ShopifyProduct) -> Result<Frame, RecordError> {
    let raw_id = match &p.id {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => {
            return Err(RecordError::Id(format!(
                "{other} is not a string or number"
            )));
        }
    };
    let id = namespaced(source, &raw_id);
    let mut shape = Shape::Unspecified;
    let mut material = Material::Unspecified;
    let mut size: Option<(f32, f32, f32)> = None;
    let mut width: Option<f32> = None;
    let mut keywords = Vec::new();
    for tag in p.tags.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match tag.split_once(':') {
            Some(("shape", v)) => shape = Shape::parse(&v.replace('-', "_")).unwrap_or_default(),
            Some(("material", v)) => material = Material::parse(v).unwrap_or_default(),
            Some(("size", v)) => {
                let parts: Vec<f32> = v.trim().split('-').filter_map(|x| x.parse().ok()).collect();
                if let [l, b, t] = parts[..] {
                    size = Some((l, b, t));
                } else {
                    return Err(invalid(
                        &id,
                        format!("tag size:{v} is not lens-bridge-temple like 52-18-145"),
                    ));
                }
            }
            Some(("width", v)) => {
                width =
                    Some(v.trim().parse().map_err(|_| {
                        invalid(&id, format!("tag width:{v} is not a number of mm"))
                    })?);
            }
            _ => keywords.push(tag.to_lowercase()),
        }
    }
    let (lens, bridge, temple) =
        size.ok_or_else(|| invalid(&id, "tag size:LENS-BRIDGE-TEMPLE is required"))?;
    let updated_at = parse_rfc3339(&p.updated_at).ok_or_else(|| {
        invalid(
            &id,
            format!("updated_at {:?} is not RFC 3339", p.updated_at),
        )
    })?;
    let price = match p.variants.first().map(|v| &v.price) {
        Some(serde_json::Value::String(s)) => s
            .parse::<f64>()
            .map_err(|_| invalid(&id, format!("price {s:?} is not a number")))?,
        Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(-1.0),
        _ => return Err(invalid(&id, "variants[0].price is required")),
    };
    let variants: Vec<VariantDoc> = p
        .variants
        .iter()
        .map(|v| VariantDoc {
            sku: v.sku.clone(),
            color: v.option1.clone().unwrap_or_default(),
            stock: v.inventory_quantity.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        })
        .collect();
    let model = p
        .title
        .strip_prefix(&p.vendor)
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or(&p.title)
        .to_string();
    let description = strip_html(&p.body_html);
    let sunglasses = p.product_type.to_lowercase().contains("sun");
    Ok(Frame {
        id,
        name: p.title.clone(),
        brand: p.vendor.clone(),
        model,
        shape,
        material,
        lens_width_mm: lens,
        bridge_mm: bridge,
        temple_mm: temple,
        total_width_mm: width.unwrap_or(2.0 * lens + bridge + 8.0),
        lens_height_mm: (lens * 0.75).round(),
        price,
        currency: p.currency.unwrap_or_else(|| "USD".into()).to_uppercase(),
        categories: categories(sunglasses),
        inventory: Inventory::from_variants(variants),
        ai_enhanced: AiEnhanced {
            face_shape_compatibility: BTreeMap::new(),
            feature_summary: format!(
                "{} {} {} {} {}",
                p.title,
                shape.title(),
                material,
                keywords.join(" "),
                description
            ),
            style_keywords: keywords,
        },
        popularity: 0.0,
        description,
        image_url: p.images.first().map(|i| i.src.clone()).unwrap_or_default(),
        metadata: Metadata {
            updated_at,
            version: updated_at,
        },
        embedding: None,
    })
}

#[cfg(test)]
mod props {
    //! Property tests of the feed decoders and validation (a fixed budget
    //! of cases, inside `make test`): nothing a feed sends panics them, a
    //! valid record is accepted, and a record with a field out of range is
    //! refused naming that field.
    use super::*;
    use proptest::prelude::*;

    fn shopify(id: u64, width: u32, price_cents: u32, year: u32, stock: i32) -> String {
        format!(
            r#"{{"id": {id}, "title": "Model {id}", "vendor": "Acme", "tags": "shape:round, material:acetate, size:50-20-145, width:{width}", "updated_at": "{year}-01-01T00:00:00Z", "variants": [{{"sku": "S-{id}", "price": "{}.{:02}", "option1": "Black", "inventory_quantity": {stock}}}]}}"#,
            price_cents / 100,
            price_cents % 100
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for format in [Format::Ndjson, Format::Shopify, Format::Typed] {
                if let Ok(f) = decode_raw(format, "shopify:p", &bytes) {
                    let _ = validate(&f);
                }
            }
        }

        #[test]
        fn json_shaped_garbage_never_panics(text in r#"\{("[a-z_]{1,10}": ("[^"]{0,20}"|-?[0-9]{1,20}|\[\]|\{\}|null|true),? ?){0,8}\}"#) {
            for format in [Format::Ndjson, Format::Shopify] {
                if let Ok(f) = decode_raw(format, "shopify:p", text.as_bytes()) {
                    let _ = validate(&f);
                }
            }
        }

        #[test]
        fn valid_shopify_records_are_accepted(
            id in 1u64..u64::MAX / 2,
            width in 100u32..=170,
            price in 0u32..1_000_000,
            year in 2000u32..2030,
            stock in 0i32..10_000,
        ) {
            let line = shopify(id, width, price, year, stock);
            let f = decode_raw(Format::Shopify, "shopify:p", line.as_bytes()).expect("decodes");
            prop_assert_eq!(validate(&f), Ok(()));
            prop_assert_eq!(f.id, format!("shopify:p:{id}"));
        }

        #[test]
        fn an_out_of_range_width_is_refused_naming_the_field(
            width in prop_oneof![0u32..100, 171u32..100_000],
        ) {
            let line = shopify(7, width, 100, 2024, 1);
            match decode_raw(Format::Shopify, "shopify:p", line.as_bytes()) {
                Ok(f) => {
                    let e = validate(&f).expect_err("out of range");
                    prop_assert!(e.to_string().contains("total_width_mm"), "{}", e);
                }
                Err(e) => prop_assert!(e.to_string().contains("width"), "{}", e),
            }
        }

        #[test]
        fn a_far_future_date_is_refused_and_a_near_one_is_not(ahead_h in 0i64..200) {
            let now = 1_800_000_000_000i64;
            let mut f = decode_raw(Format::Shopify, "shopify:p", shopify(1, 130, 100, 2024, 1).as_bytes()).unwrap();
            f.metadata.updated_at = now + ahead_h * 3_600_000;
            let r = check_not_future(&f, now, std::time::Duration::from_secs(24 * 3600));
            prop_assert_eq!(r.is_ok(), ahead_h <= 24);
            if let Err(e) = r {
                prop_assert!(e.to_string().contains("updated_at"), "{}", e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOPIFY: &str = r#"{"id": 632910392, "title": "Ray-Ban RB2140 Wayfarer", "vendor": "Ray-Ban",
        "body_html": "<p>The <b>classic</b>.</p>", "tags": "shape:wayfarer, material:acetate, size:50-22-150, vintage, bold",
        "updated_at": "2024-05-01T12:00:00+02:00", "product_type": "Sunglasses",
        "images": [{"src": "https://cdn.example/rb2140.jpg"}],
        "variants": [{"sku": "RB2140-901", "price": "153.00", "option1": "Black", "inventory_quantity": 12},
                     {"sku": "RB2140-902", "price": "153.00", "option1": "Havana", "inventory_quantity": 0}]}"#;

    #[test]
    fn shopify_products_map_as_documented() {
        let f = decode_raw(Format::Shopify, "shopify:acme", SHOPIFY.as_bytes()).unwrap();
        validate(&f).unwrap();
        assert_eq!(f.id, "shopify:acme:632910392");
        assert_eq!(
            (f.brand.as_str(), f.model.as_str()),
            ("Ray-Ban", "RB2140 Wayfarer")
        );
        assert_eq!((f.shape, f.material), (Shape::Wayfarer, Material::Acetate));
        assert_eq!(
            (f.lens_width_mm, f.bridge_mm, f.temple_mm),
            (50.0, 22.0, 150.0)
        );
        assert_eq!(f.total_width_mm, 130.0);
        assert_eq!(f.price, 153.0);
        assert_eq!(f.description, "The classic.");
        assert!(f.inventory.is_in_stock);
        assert_eq!(f.ai_enhanced.style_keywords, vec!["vintage", "bold"]);
        assert_eq!(f.metadata.updated_at, 1_714_557_600_000);
        assert_eq!(f.categories, vec!["sunglasses"]);
    }

    #[test]
    fn bad_records_are_rejected_with_the_field_named() {
        let wide = SHOPIFY.replace("size:50-22-150", "size:50-22-150, width:190");
        let e = validate(&decode_raw(Format::Shopify, "s", wide.as_bytes()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("total_width_mm 190"), "{e}");
        let neg = SHOPIFY.replace("\"153.00\"", "\"-1\"");
        let e = validate(&decode_raw(Format::Shopify, "s", neg.as_bytes()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("price"), "{e}");
        let e = decode_raw(Format::Shopify, "s", b"{not json").unwrap_err();
        assert!(matches!(e, RecordError::Json(_)), "{e}");
        let nosize = SHOPIFY.replace("size:50-22-150, ", "");
        let e = decode_raw(Format::Shopify, "s", nosize.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("size:"), "{e}");
        let e = decode_raw(Format::Typed, "s", b"{}").unwrap_err();
        assert!(e.to_string().contains("format"), "{e}");
    }

    #[test]
    fn ndjson_round_trips_the_stored_document() {
        let f = discovery_catalog::demo_catalog(1).remove(0);
        let json = serde_json::to_vec(&f).unwrap();
        let back = decode_raw(Format::Ndjson, "feed", &json).unwrap();
        validate(&back).unwrap();
        assert_eq!(back.id, format!("feed:{}", f.id));
        assert_eq!(back.name, f.name);
    }

    #[test]
    fn a_feed_cannot_set_a_products_embedding() {
        let mut f = discovery_catalog::demo_catalog(1).remove(0);
        f.embedding = Some(discovery_catalog::Embedding {
            model: "all-MiniLM-L6-v2".into(),
            text_hash: f.embedding_text_hash(),
            codes: vec![127; 384],
            scale: 1.0,
        });
        let json = serde_json::to_vec(&f).unwrap();
        assert!(String::from_utf8_lossy(&json).contains("embedding"));
        let back = decode_raw(Format::Ndjson, "feed", &json).unwrap();
        assert_eq!(
            back.embedding, None,
            "intake drops it; the embedder writes it"
        );
    }

    #[test]
    fn rfc3339_parses() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00.5Z"),
            Some(951_868_800_500)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00+02:00"),
            Some(1_714_557_600_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
