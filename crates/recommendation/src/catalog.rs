//! The catalogue: the stored frame document, its mapping to the API type, and
//! the deterministic demo catalogue used by `discovery up`.

use std::collections::BTreeMap;

use discovery_kit::store::{Document, bson};
use discovery_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Collection holding the catalogue.
pub const PRODUCTS: &str = "products";

/// Face shapes as stored (lower-case names, seed spec field names).
pub const FACE_SHAPES: [&str; 7] = [
    "oval", "round", "square", "heart", "oblong", "diamond", "triangle",
];

/// One colour variant with stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantDoc {
    /// SKU.
    pub sku: String,
    /// Colour.
    pub color: String,
    /// Units in stock.
    pub stock: i32,
}

/// Stock, as the seed spec nests it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Any variant in stock (`inventory.isInStock`, partial index key).
    #[serde(rename = "isInStock")]
    pub is_in_stock: bool,
    /// Variants.
    pub variants: Vec<VariantDoc>,
}

/// AI-derived attributes, as the seed spec nests them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiEnhanced {
    /// Suitability per face shape in [0, 1].
    pub face_shape_compatibility: BTreeMap<String, f32>,
    /// Style keywords.
    pub style_keywords: Vec<String>,
    /// Text searched by the text index.
    pub feature_summary: String,
}

/// Timestamps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Last change at the source, ms since the epoch.
    pub updated_at: i64,
    /// Version assigned on each accepted change.
    pub version: i64,
}

/// A frame as stored in `products`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Product id.
    #[serde(rename = "_id")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// Brand.
    pub brand: String,
    /// Model.
    pub model: String,
    /// Lens shape (proto enum name without prefix, lower case: "aviator").
    pub shape: String,
    /// Material ("acetate").
    pub material: String,
    /// Lens width, mm.
    pub lens_width_mm: f32,
    /// Bridge, mm.
    pub bridge_mm: f32,
    /// Temple, mm.
    pub temple_mm: f32,
    /// Total front width, mm.
    pub total_width_mm: f32,
    /// Lens height, mm.
    pub lens_height_mm: f32,
    /// Price in major units (seed spec `price`).
    pub price: f64,
    /// ISO currency.
    pub currency: String,
    /// Categories (seed spec), e.g. "eyeglasses", "sunglasses".
    pub categories: Vec<String>,
    /// Stock.
    pub inventory: Inventory,
    /// AI attributes.
    pub ai_enhanced: AiEnhanced,
    /// Popularity in [0, 1].
    pub popularity: f32,
    /// Description.
    pub description: String,
    /// Image URL.
    pub image_url: String,
    /// Timestamps.
    pub metadata: Metadata,
}

/// A stored document is not a valid frame.
#[derive(Debug, thiserror::Error)]
#[error("product document {id}: {reason}")]
pub struct DecodeError {
    id: String,
    reason: String,
}

impl Frame {
    /// Decodes a stored document.
    pub fn from_document(doc: Document) -> Result<Self, DecodeError> {
        let id = doc.get_str("_id").unwrap_or("?").to_string();
        bson::from_document(doc).map_err(|e| DecodeError {
            id,
            reason: e.to_string(),
        })
    }

    /// Encodes for storage.
    pub fn to_document(&self) -> Document {
        // Serialising plain structs of strings, numbers and maps cannot fail.
        bson::to_document(self).unwrap_or_default()
    }

    /// Compatibility with a face shape ("oval"...), 0.5 when unknown.
    pub fn compat(&self, face_shape: &str) -> f32 {
        self.ai_enhanced
            .face_shape_compatibility
            .get(face_shape)
            .copied()
            .unwrap_or(0.5)
    }

    /// The API representation.
    pub fn to_proto(&self) -> pb::Product {
        pb::Product {
            id: self.id.clone(),
            name: self.name.clone(),
            brand: self.brand.clone(),
            model: self.model.clone(),
            shape: frame_shape_from_str(&self.shape) as i32,
            dimensions: Some(pb::FrameDimensions {
                lens_width_mm: self.lens_width_mm,
                bridge_mm: self.bridge_mm,
                temple_mm: self.temple_mm,
                total_width_mm: self.total_width_mm,
                lens_height_mm: self.lens_height_mm,
            }),
            material: material_from_str(&self.material) as i32,
            price: Some(pb::Money {
                currency: self.currency.clone(),
                amount_minor: self.price_minor(),
            }),
            variants: self
                .inventory
                .variants
                .iter()
                .map(|v| pb::Variant {
                    sku: v.sku.clone(),
                    color: v.color.clone(),
                    stock: v.stock,
                })
                .collect(),
            style_keywords: self.ai_enhanced.style_keywords.clone(),
            face_shape_scores: self
                .ai_enhanced
                .face_shape_compatibility
                .iter()
                .map(|(k, v)| pb::FaceShapeScore {
                    face_shape: face_shape_from_str(k) as i32,
                    score: *v,
                })
                .collect(),
            popularity: self.popularity,
            description: self.description.clone(),
            image_url: self.image_url.clone(),
            updated_at_unix_ms: self.metadata.updated_at,
            version: self.metadata.version,
            in_stock: self.inventory.is_in_stock,
        }
    }
}

impl Frame {
    /// Builds a frame from its API form (catalogue changes arriving over gRPC).
    pub fn from_proto(p: &pb::Product) -> Result<Self, String> {
        if p.id.trim().is_empty() {
            return Err("product.id is empty".into());
        }
        let d = p.dimensions.unwrap_or_default();
        let price = p.price.clone().unwrap_or_default();
        if price.amount_minor < 0 {
            return Err(format!("product {}: price cannot be negative", p.id));
        }
        let shape = pb::FrameShape::try_from(p.shape)
            .map(frame_shape_name)
            .map_err(|_| format!("product {}: unknown shape {}", p.id, p.shape))?;
        let material = pb::FrameMaterial::try_from(p.material)
            .map(|m| {
                m.as_str_name()
                    .trim_start_matches("FRAME_MATERIAL_")
                    .to_ascii_lowercase()
            })
            .map_err(|_| format!("product {}: unknown material {}", p.id, p.material))?;
        let summary = format!(
            "{} {} {} {}",
            p.name,
            shape.replace('_', "-"),
            material,
            p.style_keywords.join(" ")
        );
        Ok(Self {
            id: p.id.clone(),
            name: p.name.clone(),
            brand: p.brand.clone(),
            model: p.model.clone(),
            shape: shape.to_string(),
            material,
            lens_width_mm: d.lens_width_mm,
            bridge_mm: d.bridge_mm,
            temple_mm: d.temple_mm,
            total_width_mm: d.total_width_mm,
            lens_height_mm: d.lens_height_mm,
            price: price.amount_minor as f64 / 100.0,
            currency: price.currency,
            categories: categories(false),
            inventory: Inventory::from_variants(
                p.variants
                    .iter()
                    .map(|v| VariantDoc {
                        sku: v.sku.clone(),
                        color: v.color.clone(),
                        stock: v.stock,
                    })
                    .collect(),
            ),
            ai_enhanced: AiEnhanced {
                face_shape_compatibility: p
                    .face_shape_scores
                    .iter()
                    .filter_map(|s| {
                        pb::FaceShape::try_from(s.face_shape)
                            .ok()
                            .map(face_shape_name)
                            .filter(|n| !n.is_empty())
                            .map(|n| (n.to_string(), s.score.clamp(0.0, 1.0)))
                    })
                    .collect(),
                style_keywords: p.style_keywords.clone(),
                feature_summary: summary,
            },
            popularity: p.popularity.clamp(0.0, 1.0),
            description: p.description.clone(),
            image_url: p.image_url.clone(),
            metadata: Metadata {
                updated_at: p.updated_at_unix_ms,
                version: p.version,
            },
        })
    }

    /// A content stamp: equal stamps mean equal API representations. Cached
    /// results carry the stamps of the products they show and are served
    /// only while the snapshot holds the same stamps.
    pub fn stamp(&self) -> u64 {
        use prost::Message;
        fnv1a(&self.to_proto().encode_to_vec())
    }
}

impl Inventory {
    /// Stock from its variants (`isInStock` when any variant has stock).
    pub fn from_variants(variants: Vec<VariantDoc>) -> Self {
        Self {
            is_in_stock: variants.iter().any(|v| v.stock > 0),
            variants,
        }
    }
}

/// The category list of a frame: sunglasses or eyeglasses.
pub fn categories(sunglasses: bool) -> Vec<String> {
    vec![
        if sunglasses {
            "sunglasses"
        } else {
            "eyeglasses"
        }
        .into(),
    ]
}

impl Frame {
    /// The price in the API's minor units (hundredths, as `Money` carries
    /// it everywhere today; issue 18's `Money` type brings the currency's
    /// own exponent).
    pub fn price_minor(&self) -> i64 {
        (self.price * 100.0).round() as i64
    }
}

/// FNV-1a, 64 bit: a stable hash for cache keys and stamps (the same on
/// every replica and build, unlike `std`'s `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Lower-case stored name of a frame shape.
pub fn frame_shape_name(s: pb::FrameShape) -> &'static str {
    use pb::FrameShape::*;
    match s {
        Unspecified => "unspecified",
        Round => "round",
        Rectangle => "rectangle",
        Square => "square",
        Aviator => "aviator",
        CatEye => "cat_eye",
        Wayfarer => "wayfarer",
        Browline => "browline",
        Oval => "oval",
        Geometric => "geometric",
        Shield => "shield",
    }
}

/// Parses a stored frame shape name.
pub fn frame_shape_from_str(s: &str) -> pb::FrameShape {
    pb::FrameShape::from_str_name(&format!("FRAME_SHAPE_{}", s.to_ascii_uppercase()))
        .unwrap_or(pb::FrameShape::Unspecified)
}

/// Parses a stored material name.
pub fn material_from_str(s: &str) -> pb::FrameMaterial {
    pb::FrameMaterial::from_str_name(&format!("FRAME_MATERIAL_{}", s.to_ascii_uppercase()))
        .unwrap_or(pb::FrameMaterial::Unspecified)
}

/// Lower-case stored name of a face shape ("" when unspecified).
pub fn face_shape_name(s: pb::FaceShape) -> &'static str {
    use pb::FaceShape::*;
    match s {
        Unspecified => "",
        Oval => "oval",
        Round => "round",
        Square => "square",
        Heart => "heart",
        Oblong => "oblong",
        Diamond => "diamond",
        Triangle => "triangle",
    }
}

/// Parses a stored face shape name.
pub fn face_shape_from_str(s: &str) -> pb::FaceShape {
    pb::FaceShape::from_str_name(&format!("FACE_SHAPE_{}", s.to_ascii_uppercase()))
        .unwrap_or(pb::FaceShape::Unspecified)
}

/// Optician's rules of thumb: how well each frame shape suits each face shape
/// (contrast the face's dominant lines; balance its widest part).
fn base_compat(frame_shape: &str, face: &str) -> f32 {
    let table: &[(&str, [f32; 7])] = &[
        // frame        oval round square heart oblong diamond triangle
        ("round", [0.8, 0.2, 0.9, 0.7, 0.6, 0.7, 0.5]),
        ("rectangle", [0.8, 0.9, 0.3, 0.6, 0.5, 0.6, 0.4]),
        ("square", [0.8, 0.9, 0.2, 0.5, 0.6, 0.5, 0.4]),
        ("aviator", [0.9, 0.6, 0.7, 0.9, 0.8, 0.6, 0.8]),
        ("cat_eye", [0.8, 0.7, 0.7, 0.4, 0.5, 0.9, 0.9]),
        ("wayfarer", [0.9, 0.8, 0.5, 0.6, 0.7, 0.6, 0.5]),
        ("browline", [0.8, 0.6, 0.6, 0.3, 0.6, 0.9, 0.9]),
        ("oval", [0.8, 0.4, 0.9, 0.7, 0.6, 0.9, 0.6]),
        ("geometric", [0.7, 0.9, 0.4, 0.6, 0.6, 0.5, 0.5]),
        ("shield", [0.6, 0.5, 0.6, 0.5, 0.8, 0.5, 0.5]),
    ];
    let col = FACE_SHAPES.iter().position(|f| *f == face).unwrap_or(0);
    table
        .iter()
        .find(|(s, _)| *s == frame_shape)
        .map(|(_, row)| row[col])
        .unwrap_or(0.5)
}

/// The demo catalogue's generator (also used by the benchmarks).
pub use discovery_kit::rng::SplitMix;

/// A deterministic demo catalogue of `n` realistic frames.
pub fn demo_catalog(n: usize) -> Vec<Frame> {
    const BRANDS: &[(&str, f64)] = &[
        ("Ray-Ban", 1.4),
        ("Oakley", 1.3),
        ("Persol", 1.6),
        ("Warby Parker", 0.9),
        ("Oliver Peoples", 2.2),
        ("Tom Ford", 2.4),
        ("Gucci", 2.5),
        ("Prada", 2.3),
        ("Moscot", 1.7),
        ("Garrett Leight", 1.9),
        ("Lindberg", 2.8),
        ("Silhouette", 2.0),
        ("Ace & Tate", 0.8),
        ("Zenni", 0.3),
        ("Vogue Eyewear", 0.9),
        ("Carrera", 1.1),
        ("Polo Ralph Lauren", 1.2),
        ("Coach", 1.1),
        ("Etnia Barcelona", 1.8),
        ("Mykita", 2.6),
        ("Cutler and Gross", 2.4),
        ("Tiffany & Co.", 2.2),
    ];
    const SHAPES: &[&str] = &[
        "round",
        "rectangle",
        "square",
        "aviator",
        "cat_eye",
        "wayfarer",
        "browline",
        "oval",
        "geometric",
        "shield",
    ];
    const MATERIALS: &[&str] = &["acetate", "metal", "titanium", "tr90", "wood", "mixed"];
    const COLORS: &[&str] = &[
        "Black",
        "Matte Black",
        "Havana",
        "Tortoise",
        "Crystal",
        "Gold",
        "Silver",
        "Gunmetal",
        "Navy",
        "Burgundy",
        "Olive",
        "Blush",
        "Honey",
        "Grey Fade",
    ];
    const STYLES: &[&str] = &[
        "classic",
        "vintage",
        "bold",
        "minimal",
        "sporty",
        "retro",
        "oversized",
        "lightweight",
        "statement",
        "professional",
        "playful",
        "timeless",
    ];
    let mut rng = SplitMix(0x00D1_5C0F_E2E5);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (brand, tier) = *rng.pick(BRANDS);
        let shape = *rng.pick(SHAPES);
        let material = *rng.pick(MATERIALS);
        // Size classes: narrow (S), medium (M), wide (L), as frame makers do.
        let size = rng.next_u64() % 3;
        let lens = match size {
            0 => 44.0 + rng.unit() * 5.0,
            1 => 49.0 + rng.unit() * 5.0,
            _ => 54.0 + rng.unit() * 8.0,
        }
        .round();
        let bridge = (15.0 + rng.unit() * 7.0).round();
        let temple = [135.0, 140.0, 145.0, 150.0][(rng.next_u64() % 4) as usize];
        let total = (2.0 * lens + bridge + 8.0 + rng.unit() * 6.0).round();
        let height = (lens * (0.62 + rng.unit() * 0.25)).round();
        let price = ((40.0 + rng.unit() as f64 * 110.0) * tier).round() - 0.01;
        let sunglasses = matches!(shape, "aviator" | "shield") || rng.next_u64().is_multiple_of(5);
        let nvar = 1 + (rng.next_u64() % 4) as usize;
        let mut variants = Vec::with_capacity(nvar);
        for v in 0..nvar {
            let stock = if rng.next_u64().is_multiple_of(6) {
                0
            } else {
                (rng.next_u64() % 40) as i32
            };
            variants.push(VariantDoc {
                sku: format!("SKU-{i:05}-{v}"),
                color: rng.pick(COLORS).to_string(),
                stock,
            });
        }
        let mut styles: Vec<String> = (0..2 + rng.next_u64() % 2)
            .map(|_| rng.pick(STYLES).to_string())
            .collect();
        styles.sort();
        styles.dedup();
        let compat = FACE_SHAPES
            .iter()
            .map(|f| {
                let jitter = (rng.unit() - 0.5) * 0.1;
                (
                    f.to_string(),
                    ((base_compat(shape, f) + jitter).clamp(0.0, 1.0) * 100.0).round() / 100.0,
                )
            })
            .collect();
        let model = format!("{}{:03}", &brand[..2].to_ascii_uppercase(), 100 + i % 900);
        let shape_title = shape.replace('_', "-");
        let name = format!("{brand} {model} {}", title_case(&shape_title));
        let summary = format!(
            "{name} {shape_title} {material} frame, {lens}-{bridge}-{temple}, {} {}",
            styles.join(" "),
            if sunglasses {
                "sunglasses"
            } else {
                "eyeglasses"
            }
        );
        out.push(Frame {
            id: format!("frm-{i:05}"),
            name,
            brand: brand.to_string(),
            model,
            shape: shape.to_string(),
            material: material.to_string(),
            lens_width_mm: lens,
            bridge_mm: bridge,
            temple_mm: temple,
            total_width_mm: total,
            lens_height_mm: height,
            price,
            currency: "USD".into(),
            categories: categories(sunglasses),
            inventory: Inventory::from_variants(variants),
            ai_enhanced: AiEnhanced {
                face_shape_compatibility: compat,
                style_keywords: styles,
                feature_summary: summary.clone(),
            },
            popularity: (rng.unit() * rng.unit() * 100.0).round() / 100.0,
            description: summary,
            image_url: format!("https://images.example.invalid/frames/frm-{i:05}.jpg"),
            metadata: Metadata {
                updated_at: 1_767_225_600_000 + i as i64 * 60_000,
                version: 1,
            },
        });
    }
    out
}

fn title_case(s: &str) -> String {
    s.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_catalog_is_deterministic_and_realistic() {
        let a = demo_catalog(600);
        let b = demo_catalog(600);
        assert_eq!(a, b);
        assert!(
            a.iter()
                .all(|f| (100.0..=170.0).contains(&f.total_width_mm)),
            "widths"
        );
        assert!(a.iter().all(|f| f.price > 0.0));
        let brands: std::collections::HashSet<_> = a.iter().map(|f| &f.brand).collect();
        assert!(brands.len() >= 15);
        let f = &a[0];
        assert_eq!(Frame::from_document(f.to_document()).unwrap(), *f);
        assert_eq!(frame_shape_from_str(&f.shape) as i32, f.to_proto().shape);
        // The API form maps back to the same product.
        let back = Frame::from_proto(&f.to_proto()).unwrap();
        assert_eq!(back.to_proto(), f.to_proto());
        assert_eq!(back.stamp(), f.stamp());
        let mut g = f.clone();
        g.price += 1.0;
        assert_ne!(g.stamp(), f.stamp());
    }
}
