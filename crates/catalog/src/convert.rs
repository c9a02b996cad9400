//! The product between its API form (`discovery.v1.Product`) and the domain.

use discovery_proto::v1 as pb;

use crate::model::fnv1a;
use crate::model::{AiEnhanced, Frame, Inventory, Metadata, VariantDoc, categories};
use crate::money::{Currency, Money};

impl Frame {
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

    /// Builds a frame from its API form (catalogue changes arriving over gRPC).
    pub fn from_proto(p: &pb::Product) -> Result<Self, String> {
        if p.id.trim().is_empty() {
            return Err("product.id is empty".into());
        }
        let d = p.dimensions.unwrap_or_default();
        let price = p.price.clone().unwrap_or_default();
        // Kept in major units as the seed stores `price`, by the currency's
        // own exponent (an unlisted currency: two decimals).
        let money = Money::from_minor(price.amount_minor, Currency::exponent_of(&price.currency))
            .map_err(|_| format!("product {}: price cannot be negative", p.id))?;
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
            price: money.major(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_keep_their_currency_minor_unit_through_the_api() {
        let mut p = crate::demo_catalog(1)[0].to_proto();
        for (currency, minor, major) in [("JPY", 15_000, 15_000.0), ("EUR", 15_000, 150.0)] {
            p.price = Some(pb::Money {
                currency: currency.into(),
                amount_minor: minor,
            });
            let f = Frame::from_proto(&p).unwrap();
            assert_eq!(f.price, major, "{currency}: stored in major units");
            assert_eq!(
                f.to_proto().price.unwrap().amount_minor,
                minor,
                "{currency}"
            );
        }
        p.price = Some(pb::Money {
            currency: "EUR".into(),
            amount_minor: -1,
        });
        assert!(Frame::from_proto(&p).unwrap_err().contains("negative"));
    }
}
