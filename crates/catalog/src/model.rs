//! The product model: a frame as the catalogue knows it (seed spec field
//! names, so it is also the stored document's shape), its stock, and the
//! face shapes it is scored for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::{Material, Shape};
use crate::money::{Currency, Money};

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
    /// Lens shape (stored by name: "aviator").
    pub shape: Shape,
    /// Material (stored by name: "acetate").
    pub material: Material,
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
    /// The text embedding, once computed (never from a feed: intake drops
    /// it, the embedder writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Embedding>,
}

/// A frame's text embedding as stored: the model's vector quantised to
/// `i8` codes with one scale (`v[i] ≈ codes[i] × scale`, 388 bytes for the
/// 384-wide model instead of 1,536: what the snapshot holds anyway), with
/// the model's name and the hash of the text it was computed from
/// ([`Frame::embedding_text`]), so a changed text is embedded again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// The model ("all-MiniLM-L6-v2").
    pub model: String,
    /// `fnv1a` of the embedded text, as stored (i64: BSON has no u64).
    pub text_hash: i64,
    /// The codes, each an `i8` stored as its byte (BSON binary).
    #[serde(with = "serde_bytes")]
    pub codes: Vec<u8>,
    /// The scale.
    pub scale: f32,
}

impl Embedding {
    /// The codes as `i8`.
    pub fn codes(&self) -> impl Iterator<Item = i8> + '_ {
        self.codes.iter().map(|&b| b as i8)
    }
}

impl Frame {
    /// Compatibility with a face shape ("oval"...), 0.5 when unknown.
    pub fn compat(&self, face_shape: &str) -> f32 {
        self.ai_enhanced
            .face_shape_compatibility
            .get(face_shape)
            .copied()
            .unwrap_or(0.5)
    }

    /// The price as [`Money`] in the frame's currency (the stored `price`
    /// is in major units, as the seed spec has it; a negative or broken
    /// stored price reads as 0).
    pub fn money(&self) -> Money {
        let exponent = Currency::exponent_of(&self.currency);
        Money::from_major(self.price, exponent).unwrap_or(Money::zero(exponent))
    }

    /// The text the embedding model reads: what a shopper would say about
    /// the frame (name, brand, shape, material, kind, colours, style words,
    /// description).
    pub fn embedding_text(&self) -> String {
        let kind = if self.categories.iter().any(|c| c == "sunglasses") {
            "sunglasses"
        } else {
            "eyeglasses"
        };
        let mut colors: Vec<&str> = self
            .inventory
            .variants
            .iter()
            .map(|v| v.color.as_str())
            .collect();
        colors.sort_unstable();
        colors.dedup();
        format!(
            "{}. {} {} {} {kind}. Colours: {}. Style: {}. {}",
            self.name,
            self.brand,
            self.shape.title(),
            self.material,
            colors.join(", "),
            self.ai_enhanced.style_keywords.join(", "),
            self.description
        )
    }

    /// The hash stored with an embedding of [`Frame::embedding_text`].
    pub fn embedding_text_hash(&self) -> i64 {
        fnv1a(self.embedding_text().as_bytes()) as i64
    }

    /// The embedding, if one is stored for the current text.
    pub fn current_embedding(&self) -> Option<&Embedding> {
        self.embedding
            .as_ref()
            .filter(|e| e.text_hash == self.embedding_text_hash())
    }

    /// The price in the currency's minor units (the API's `Money`).
    pub fn price_minor(&self) -> i64 {
        self.money().minor()
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

/// every replica and build, unlike `std`'s `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
