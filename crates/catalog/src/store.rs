//! The stored form of a product: the `products` collection, its document
//! mapping and its indexes. This crate owns `products`' shape; sync writes
//! it and recommendation reads it, both through here.

use discovery_kit::store::{Document, IndexSpec, bson, doc};

use crate::model::Frame;

/// Collection holding the catalogue.
pub const PRODUCTS: &str = "products";

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
}

/// Indexes on `products` (seed spec `indexStrategy`, where MongoDB allows
/// it), created idempotently by its reader at start.
pub fn product_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new("name_1", doc! {"name": 1}),
        IndexSpec::new("brand_1", doc! {"brand": 1}),
        IndexSpec::new("categories_1", doc! {"categories": 1}),
        IndexSpec::new(
            "inventory.variants.sku_1",
            doc! {"inventory.variants.sku": 1},
        ),
        IndexSpec::new(
            "ai_enhanced.style_keywords_1",
            doc! {"ai_enhanced.style_keywords": 1},
        ),
        IndexSpec::new("metadata.updated_at_-1", doc! {"metadata.updated_at": -1}),
        IndexSpec::new("price_1", doc! {"price": 1}),
        IndexSpec::new(
            "face_shape_compat_price",
            doc! {
                "ai_enhanced.face_shape_compatibility.oval": 1,
                "ai_enhanced.face_shape_compatibility.round": 1,
                "ai_enhanced.face_shape_compatibility.square": 1,
                "price": 1,
            },
        ),
        // The seed spec asks for {brand, categories, ai_enhanced.style_keywords,
        // inventory.isInStock}. `categories` and `style_keywords` are both
        // arrays in every product, and MongoDB refuses to index a document in
        // which two fields of one compound index are arrays ("cannot index
        // parallel arrays", code 171): every upsert would fail. MongoDB wins:
        // brand + category + stock here (one array), keywords on their own
        // index above. The rule is enforced by the embedded store and by
        // `tests/harness/tests/mongodb_rules.rs`.
        IndexSpec::new(
            "brand_categories_stock",
            doc! {"brand": 1, "categories": 1, "inventory.isInStock": 1},
        ),
        IndexSpec::new(
            "in_stock_price_partial",
            doc! {"inventory.isInStock": 1, "price": 1},
        )
        .partial(doc! {"inventory.isInStock": true}),
        IndexSpec::new(
            "updated_at_feature_summary_text",
            doc! {"metadata.updated_at": -1, "ai_enhanced.feature_summary": "text"},
        )
        // Search runs on the snapshot; the text index serves ad-hoc queries only.
        .optional(),
    ]
}

/// Indexes an earlier version created and this one drops at start:
/// `brand_categories_keywords_stock` (the seed's products index over two
/// arrays) exists wherever it was built on an empty collection, and then
/// MongoDB refuses every product written (code 171).
pub const RETIRED_INDEXES: &[(&str, &str)] = &[(PRODUCTS, "brand_categories_keywords_stock")];
