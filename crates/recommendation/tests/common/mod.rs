//! What the search tests share: the real model, and frames carrying the
//! embeddings the sync embedder would store for them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use discovery_catalog::{Embedding, Frame};
use discovery_embed::quant::Matrix;
use discovery_embed::{Embedder, model_dir};

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model, loaded once per test binary.
pub fn embedder() -> Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| {
        Arc::new(
            Embedder::load(&model_dir(&root().join("models")))
                .unwrap_or_else(|e| panic!("{e} (`make test-models` fetches it)")),
        )
    })
    .clone()
}

/// `frames` with their text's embedding, as stored.
pub fn embedded(mut frames: Vec<Frame>, e: &Embedder) -> Vec<Frame> {
    for chunk in frames.chunks_mut(32) {
        let texts: Vec<String> = chunk.iter().map(Frame::embedding_text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = e.embed_batch(&refs).expect("embeds");
        for (f, v) in chunk.iter_mut().zip(vectors) {
            let (codes, scale) = Matrix::stored(&v);
            f.embedding = Some(Embedding {
                model: discovery_embed::MODEL_DIR.into(),
                text_hash: f.embedding_text_hash(),
                codes,
                scale,
            });
        }
    }
    frames
}
