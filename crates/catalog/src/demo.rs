//! The deterministic demo catalogue (`discovery up`, tests and benchmarks).

use crate::kind::{Material, Shape};
use crate::model::{AiEnhanced, FACE_SHAPES, Frame, Inventory, Metadata, VariantDoc, categories};

/// Optician's rules of thumb: how well each frame shape suits each face shape
/// (contrast the face's dominant lines; balance its widest part).
fn base_compat(frame_shape: Shape, face: &str) -> f32 {
    use Shape::*;
    let table: &[(Shape, [f32; 7])] = &[
        // frame      oval round square heart oblong diamond triangle
        (Round, [0.8, 0.2, 0.9, 0.7, 0.6, 0.7, 0.5]),
        (Rectangle, [0.8, 0.9, 0.3, 0.6, 0.5, 0.6, 0.4]),
        (Square, [0.8, 0.9, 0.2, 0.5, 0.6, 0.5, 0.4]),
        (Aviator, [0.9, 0.6, 0.7, 0.9, 0.8, 0.6, 0.8]),
        (CatEye, [0.8, 0.7, 0.7, 0.4, 0.5, 0.9, 0.9]),
        (Wayfarer, [0.9, 0.8, 0.5, 0.6, 0.7, 0.6, 0.5]),
        (Browline, [0.8, 0.6, 0.6, 0.3, 0.6, 0.9, 0.9]),
        (Oval, [0.8, 0.4, 0.9, 0.7, 0.6, 0.9, 0.6]),
        (Geometric, [0.7, 0.9, 0.4, 0.6, 0.6, 0.5, 0.5]),
        (Shield, [0.6, 0.5, 0.6, 0.5, 0.8, 0.5, 0.5]),
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
        // Picked in code order, as the demo has always been generated.
        let shape = *rng.pick(Shape::ALL);
        let material: Material = *rng.pick(Material::ALL);
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
        let sunglasses =
            matches!(shape, Shape::Aviator | Shape::Shield) || rng.next_u64().is_multiple_of(5);
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
        let shape_title = shape.title();
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
            shape,
            material,
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
            embedding: None,
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
        assert_eq!(i32::from(f.shape.code()), f.to_proto().shape);
        // The API form maps back to the same product.
        let back = Frame::from_proto(&f.to_proto()).unwrap();
        assert_eq!(back.to_proto(), f.to_proto());
        assert_eq!(back.stamp(), f.stamp());
        let mut g = f.clone();
        g.price += 1.0;
        assert_ne!(g.stamp(), f.stamp());
    }
}
