use super::*;

fn lex() -> Lexicon {
    let frames = discovery_catalog::demo_catalog(600);
    let mut brands: Vec<&str> = frames.iter().map(|f| f.brand.as_str()).collect();
    brands.sort();
    brands.dedup();
    let mut colors: Vec<&str> = frames
        .iter()
        .flat_map(|f| f.inventory.variants.iter().map(|v| v.color.as_str()))
        .collect();
    colors.sort();
    colors.dedup();
    Lexicon::new(brands, colors, Some("USD"))
}

/// What a phrasing must be understood as (everything else empty).
#[derive(Default)]
struct Expect {
    min: Option<i64>,
    max: Option<i64>,
    currency: Option<&'static str>,
    shapes: Vec<Shape>,
    not_shapes: Vec<Shape>,
    materials: Vec<Material>,
    not_materials: Vec<Material>,
    colors: Vec<&'static str>,
    not_colors: Vec<&'static str>,
    brands: Vec<&'static str>,
    not_brands: Vec<&'static str>,
    category: Option<Category>,
    in_stock: bool,
    face: Option<&'static str>,
    size: Option<Size>,
    lean: Option<PriceLean>,
    rest: &'static str,
}

fn check(lex: &Lexicon, text: &str, e: Expect) {
    let u = understand(lex, text);
    let want = Wanted {
        min_price_minor: e.min,
        max_price_minor: e.max,
        currency: e.currency,
        shapes: e.shapes,
        not_shapes: e.not_shapes,
        materials: e.materials,
        not_materials: e.not_materials,
        colors: e.colors.iter().map(|s| s.to_string()).collect(),
        not_colors: e.not_colors.iter().map(|s| s.to_string()).collect(),
        brands: e.brands.iter().map(|s| s.to_string()).collect(),
        not_brands: e.not_brands.iter().map(|s| s.to_string()).collect(),
        category: e.category,
        in_stock: e.in_stock,
    };
    assert_eq!(u.wanted, want, "{text:?}: filters");
    assert_eq!(u.face_shape, e.face, "{text:?}: face shape");
    assert_eq!(u.size, e.size, "{text:?}: size");
    assert_eq!(u.price_lean, e.lean, "{text:?}: price lean");
    assert_eq!(u.rest, e.rest, "{text:?}: rest");
    // Every chip's span is inside the text and on char boundaries.
    for c in &u.chips {
        assert!(text.get(c.start..c.end).is_some(), "{text:?}: chip {c:?}");
        assert!(!c.label.is_empty(), "{text:?}: chip {c:?}");
    }
}

const USD: Option<&str> = Some("USD");

#[test]
fn forty_phrasings_are_understood_exactly() {
    use Material::*;
    use Shape::*;
    let l = lex();
    let cases: Vec<(&str, Expect)> = vec![
        (
            "lightweight titanium round glasses under $150 for a wide face",
            Expect {
                max: Some(15_000),
                currency: USD,
                shapes: vec![Round],
                materials: vec![Titanium],
                size: Some(Size::Wide),
                rest: "lightweight",
                ..Default::default()
            },
        ),
        (
            "between 100 and 200 euros",
            Expect {
                min: Some(10_000),
                max: Some(20_000),
                currency: Some("EUR"),
                ..Default::default()
            },
        ),
        (
            "something bold for a wedding",
            Expect {
                rest: "bold wedding",
                ..Default::default()
            },
        ),
        (
            "like the Ray-Ban clubmaster but cheaper",
            Expect {
                shapes: vec![Browline],
                lean: Some(PriceLean::Lower),
                rest: "ray-ban",
                ..Default::default()
            },
        ),
        (
            "round glasses for a round face",
            Expect {
                shapes: vec![Round],
                face: Some("round"),
                ..Default::default()
            },
        ),
        (
            "frames for an oval face",
            Expect {
                face: Some("oval"),
                ..Default::default()
            },
        ),
        (
            "my face is square",
            Expect {
                face: Some("square"),
                ..Default::default()
            },
        ),
        (
            "glasses for a heart-shaped face",
            Expect {
                face: Some("heart"),
                ..Default::default()
            },
        ),
        (
            "aviators not black",
            Expect {
                shapes: vec![Aviator],
                not_colors: vec!["black"],
                ..Default::default()
            },
        ),
        (
            "cat-eye acetate in tortoiseshell",
            Expect {
                shapes: vec![CatEye],
                materials: vec![Acetate],
                colors: vec!["tortoise"],
                ..Default::default()
            },
        ),
        (
            "no metal frames please",
            Expect {
                not_materials: vec![Metal],
                ..Default::default()
            },
        ),
        (
            "anything but Gucci",
            Expect {
                not_brands: vec!["Gucci"],
                ..Default::default()
            },
        ),
        (
            "Tom Ford sunglasses over $200",
            Expect {
                min: Some(20_000),
                currency: USD,
                brands: vec!["Tom Ford"],
                category: Some(Category::Sunglasses),
                ..Default::default()
            },
        ),
        (
            "less than 80 dollars",
            Expect {
                max: Some(8_000),
                currency: USD,
                ..Default::default()
            },
        ),
        (
            "up to £120 wayfarers",
            Expect {
                max: Some(12_000),
                currency: Some("GBP"),
                shapes: vec![Wayfarer],
                ..Default::default()
            },
        ),
        (
            "$100-$150 square",
            Expect {
                min: Some(10_000),
                max: Some(15_000),
                currency: USD,
                shapes: vec![Square],
                ..Default::default()
            },
        ),
        (
            "from 50 to 90 usd",
            Expect {
                min: Some(5_000),
                max: Some(9_000),
                currency: USD,
                ..Default::default()
            },
        ),
        (
            "around 200 euros",
            Expect {
                min: Some(16_000),
                max: Some(24_000),
                currency: Some("EUR"),
                ..Default::default()
            },
        ),
        (
            "at least 1.5k yen",
            Expect {
                min: Some(1_500),
                currency: Some("JPY"),
                ..Default::default()
            },
        ),
        (
            "under 20,000 yen titanium",
            Expect {
                max: Some(20_000),
                currency: Some("JPY"),
                materials: vec![Titanium],
                ..Default::default()
            },
        ),
        (
            "under 150",
            Expect {
                max: Some(15_000),
                currency: USD,
                ..Default::default()
            },
        ),
        (
            "€90 browline",
            Expect {
                max: Some(9_000),
                currency: Some("EUR"),
                shapes: vec![Browline],
                ..Default::default()
            },
        ),
        (
            "52-18-140 acetate",
            Expect {
                materials: vec![Acetate],
                rest: "52 18 140",
                ..Default::default()
            },
        ),
        (
            "plastic frames for a narrow face",
            Expect {
                materials: vec![Acetate, Tr90],
                size: Some(Size::Narrow),
                ..Default::default()
            },
        ),
        (
            "small round wooden glasses",
            Expect {
                shapes: vec![Round],
                materials: vec![Wood],
                size: Some(Size::Narrow),
                ..Default::default()
            },
        ),
        (
            "big geometric sunnies",
            Expect {
                shapes: vec![Geometric],
                category: Some(Category::Sunglasses),
                size: Some(Size::Wide),
                ..Default::default()
            },
        ),
        (
            "reading glasses in stock",
            Expect {
                category: Some(Category::Eyeglasses),
                in_stock: true,
                ..Default::default()
            },
        ),
        (
            "not black or brown",
            Expect {
                not_colors: vec!["black", "havana"],
                ..Default::default()
            },
        ),
        (
            "without titanium",
            Expect {
                not_materials: vec![Titanium],
                ..Default::default()
            },
        ),
        (
            "rayban aviators",
            Expect {
                brands: vec!["Ray-Ban"],
                shapes: vec![Aviator],
                ..Default::default()
            },
        ),
        (
            "Oliver Peoples or Persol",
            Expect {
                brands: vec!["Oliver Peoples", "Persol"],
                ..Default::default()
            },
        ),
        (
            "cheap kids glasses",
            Expect {
                lean: Some(PriceLean::Lower),
                rest: "kids",
                ..Default::default()
            },
        ),
        (
            "luxury gold metal frames",
            Expect {
                lean: Some(PriceLean::Higher),
                colors: vec!["gold"],
                materials: vec![Metal],
                ..Default::default()
            },
        ),
        (
            "shield shades for cycling",
            Expect {
                shapes: vec![Shield],
                category: Some(Category::Sunglasses),
                rest: "cycling",
                ..Default::default()
            },
        ),
        (
            "clear rectangular optical frames",
            Expect {
                colors: vec!["crystal"],
                shapes: vec![Rectangle],
                category: Some(Category::Eyeglasses),
                ..Default::default()
            },
        ),
        (
            "no more than 300 CHF",
            Expect {
                max: Some(30_000),
                currency: Some("CHF"),
                ..Default::default()
            },
        ),
        (
            "oblong face, vintage style",
            Expect {
                face: Some("oblong"),
                rest: "vintage",
                ..Default::default()
            },
        ),
        (
            "diamond face shape",
            Expect {
                face: Some("diamond"),
                ..Default::default()
            },
        ),
        (
            "I have a wide face and want navy frames",
            Expect {
                size: Some(Size::Wide),
                colors: vec!["navy"],
                ..Default::default()
            },
        ),
        (
            "medium TR-90 sport",
            Expect {
                size: Some(Size::Medium),
                materials: vec![Tr90],
                rest: "sport",
                ..Default::default()
            },
        ),
        (
            "not square, under 99.99 dollars",
            Expect {
                not_shapes: vec![Square],
                max: Some(9_999),
                currency: USD,
                ..Default::default()
            },
        ),
        (
            "Matte Black Oakley",
            Expect {
                colors: vec!["matte black"],
                brands: vec!["Oakley"],
                ..Default::default()
            },
        ),
        (
            "",
            Expect {
                ..Default::default()
            },
        ),
    ];
    assert!(cases.len() >= 40, "{} phrasings", cases.len());
    for (text, e) in cases {
        check(&l, text, e);
    }
}

#[test]
fn chips_name_what_was_understood_with_their_spans() {
    let l = lex();
    let text = "round titanium under $150, not black";
    let u = understand(&l, text);
    let shown: Vec<(&str, &str)> = u
        .chips
        .iter()
        .map(|c| (c.label.as_str(), &text[c.start..c.end]))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("round", "round"),
            ("titanium", "titanium"),
            ("under 150.00 USD", "under $150"),
            ("not black", "not black"),
        ]
    );
}

#[test]
fn hostile_text_is_understood_without_panicking() {
    let l = lex();
    for text in [
        "$$$$$ €€€ - - - to to and between",
        "under",
        "between 5",
        "99999999999999999999999 dollars",
        "under -5 usd",
        "1e308 euros",
        "naïve café ✨ 🕶️ under ¥",
        "not not not not",
        "face face is is",
        "1,2,3,4.5.6k",
        "ß\u{0301}\u{200b}",
    ] {
        let u = understand(&l, text);
        if let (Some(a), Some(b)) = (u.wanted.min_price_minor, u.wanted.max_price_minor) {
            assert!(a <= b, "{text:?}");
        }
    }
    let long = "round ".repeat(MAX_TEXT / 6);
    let u = understand(&l, &long);
    assert_eq!(
        u.wanted.shapes,
        vec![Shape::Round],
        "repeats are one filter"
    );
}
