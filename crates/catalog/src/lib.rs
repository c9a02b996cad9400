//! The product model of discovery, shared by the services that write the
//! catalogue (sync) and read it (recommendation), and owned by neither:
//!
//! - [`model`]: a frame, its stock and face-shape scores (seed spec fields);
//! - [`kind`]: the closed vocabularies (lens shape, material);
//! - [`money`]: prices in integer minor units with the currency's exponent;
//! - [`store`]: the `products` collection, its documents and indexes;
//! - [`convert`]: the API form (`discovery.v1.Product`) both ways;
//! - [`demo`]: the deterministic demo catalogue.
//!
//! Invariant: this crate knows no service (a test over `cargo metadata`
//! checks it depends on none).

pub mod convert;
pub mod demo;
pub mod kind;
pub mod model;
pub mod money;
pub mod store;

pub use convert::{
    face_shape_from_str, face_shape_name, material_from_proto, material_to_proto, shape_from_proto,
    shape_to_proto,
};
pub use demo::{SplitMix, demo_catalog};
pub use kind::{Material, Shape};
pub use model::{
    AiEnhanced, Embedding, FACE_SHAPES, Frame, Inventory, Metadata, VariantDoc, categories, fnv1a,
};
pub use money::{CURRENCIES, Currency, Money, MoneyError};
pub use store::{DecodeError, PRODUCTS, RETIRED_INDEXES, product_indexes};
