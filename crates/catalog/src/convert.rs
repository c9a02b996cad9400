//! The product between its API form (`discovery.v1.Product`) and the domain.

use discovery_proto::v1 as pb;

use crate::kind::{Material, Shape};
use crate::model::fnv1a;
use crate::model::{AiEnhanced, Embedding, Frame, Inventory, Metadata, VariantDoc, categories};
use crate::money::{Currency, Money};

impl Embedding {
    /// The internal wire form (`CatalogChange.embedding`).
    pub fn to_proto(&self) -> pb::ProductEmbedding {
        pb::ProductEmbedding {
            model: self.model.clone(),
            text_hash: self.text_hash,
            codes: self.codes.clone(),
            scale: self.scale,
        }
    }

    /// From the wire; `dim` is the model's width (the codes must have it,
    /// and the scale must be a finite, non-negative number).
    pub fn from_proto(p: &pb::ProductEmbedding, dim: usize) -> Result<Self, String> {
        if p.codes.len() != dim {
            return Err(format!(
                "embedding.codes: {} bytes, the model's width is {dim}",
                p.codes.len()
            ));
        }
        if !p.scale.is_finite() || p.scale < 0.0 {
            return Err(format!(
                "embedding.scale: {} is not a finite non-negative number",
                p.scale
            ));
        }
        Ok(Self {
            model: p.model.clone(),
            text_hash: p.text_hash,
            codes: p.codes.clone(),
            scale: p.scale,
        })
    }
}

impl Frame {
    /// The API representation.
    pub fn to_proto(&self) -> pb::Product {
        pb::Product {
            id: self.id.clone(),
            name: self.name.clone(),
            brand: self.brand.clone(),
            model: self.model.clone(),
            shape: shape_to_proto(self.shape) as i32,
            dimensions: Some(pb::FrameDimensions {
                lens_width_mm: self.lens_width_mm,
                bridge_mm: self.bridge_mm,
                temple_mm: self.temple_mm,
                total_width_mm: self.total_width_mm,
                lens_height_mm: self.lens_height_mm,
            }),
            material: material_to_proto(self.material) as i32,
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
            .map(shape_from_proto)
            .map_err(|_| format!("product {}: unknown shape {}", p.id, p.shape))?;
        let material = pb::FrameMaterial::try_from(p.material)
            .map(material_from_proto)
            .map_err(|_| format!("product {}: unknown material {}", p.id, p.material))?;
        let summary = format!(
            "{} {} {} {}",
            p.name,
            shape.title(),
            material,
            p.style_keywords.join(" ")
        );
        Ok(Self {
            id: p.id.clone(),
            name: p.name.clone(),
            brand: p.brand.clone(),
            model: p.model.clone(),
            shape,
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
            embedding: None,
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

/// A frame shape in the API's enum.
pub fn shape_to_proto(s: Shape) -> pb::FrameShape {
    use pb::FrameShape as P;
    match s {
        Shape::Unspecified => P::Unspecified,
        Shape::Round => P::Round,
        Shape::Rectangle => P::Rectangle,
        Shape::Square => P::Square,
        Shape::Aviator => P::Aviator,
        Shape::CatEye => P::CatEye,
        Shape::Wayfarer => P::Wayfarer,
        Shape::Browline => P::Browline,
        Shape::Oval => P::Oval,
        Shape::Geometric => P::Geometric,
        Shape::Shield => P::Shield,
    }
}

/// A frame shape from the API's enum.
pub fn shape_from_proto(s: pb::FrameShape) -> Shape {
    use pb::FrameShape as P;
    match s {
        P::Unspecified => Shape::Unspecified,
        P::Round => Shape::Round,
        P::Rectangle => Shape::Rectangle,
        P::Square => Shape::Square,
        P::Aviator => Shape::Aviator,
        P::CatEye => Shape::CatEye,
        P::Wayfarer => Shape::Wayfarer,
        P::Browline => Shape::Browline,
        P::Oval => Shape::Oval,
        P::Geometric => Shape::Geometric,
        P::Shield => Shape::Shield,
    }
}

/// A material in the API's enum.
pub fn material_to_proto(m: Material) -> pb::FrameMaterial {
    use pb::FrameMaterial as P;
    match m {
        Material::Unspecified => P::Unspecified,
        Material::Acetate => P::Acetate,
        Material::Metal => P::Metal,
        Material::Titanium => P::Titanium,
        Material::Tr90 => P::Tr90,
        Material::Wood => P::Wood,
        Material::Mixed => P::Mixed,
    }
}

/// A material from the API's enum.
pub fn material_from_proto(m: pb::FrameMaterial) -> Material {
    use pb::FrameMaterial as P;
    match m {
        P::Unspecified => Material::Unspecified,
        P::Acetate => Material::Acetate,
        P::Metal => Material::Metal,
        P::Titanium => Material::Titanium,
        P::Tr90 => Material::Tr90,
        P::Wood => Material::Wood,
        P::Mixed => Material::Mixed,
    }
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
    // Compared in place, case-insensitively, with each name after its
    // prefix: this runs for every face-shape score of every product a
    // response carries, and building "FACE_SHAPE_X" cost an allocation each.
    const PREFIX: usize = "FACE_SHAPE_".len();
    (1..)
        .map_while(|n| pb::FaceShape::try_from(n).ok())
        .find(|v| v.as_str_name()[PREFIX..].eq_ignore_ascii_case(s))
        .unwrap_or(pb::FaceShape::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn face_shape_names_are_read_in_any_case() {
        for n in 1..=6 {
            let v = pb::FaceShape::try_from(n).unwrap();
            let name = v.as_str_name().trim_start_matches("FACE_SHAPE_");
            assert_eq!(face_shape_from_str(&name.to_lowercase()), v);
            assert_eq!(face_shape_from_str(name), v);
        }
        for other in ["", "unspecified", "FACE_SHAPE_OVAL", "ova", "ovals"] {
            assert_eq!(
                face_shape_from_str(other),
                pb::FaceShape::Unspecified,
                "{other}"
            );
        }
    }

    #[test]
    fn domain_codes_are_the_api_enum_numbers() {
        for s in Shape::ALL.iter().chain([&Shape::Unspecified]) {
            assert_eq!(i32::from(s.code()), shape_to_proto(*s) as i32, "{s}");
            assert_eq!(shape_from_proto(shape_to_proto(*s)), *s);
            let api_name = shape_to_proto(*s).as_str_name();
            assert_eq!(api_name, format!("FRAME_SHAPE_{}", s.name().to_uppercase()));
        }
        for m in Material::ALL.iter().chain([&Material::Unspecified]) {
            assert_eq!(i32::from(m.code()), material_to_proto(*m) as i32, "{m}");
            assert_eq!(material_from_proto(material_to_proto(*m)), *m);
            let api_name = material_to_proto(*m).as_str_name();
            assert_eq!(
                api_name,
                format!("FRAME_MATERIAL_{}", m.name().to_uppercase())
            );
        }
    }

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
