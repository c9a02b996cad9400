//! Product embeddings, computed off the ingest path.
//!
//! Ingest writes what a feed says and nothing more: a product written by a
//! feed has no embedding (a feed cannot set one, and a newer record
//! replaces the whole document). This worker sweeps `products` in `_id`
//! order for those with no embedding of the current model, a page at a
//! time, and for each page:
//!
//! 1. looks each text up in [`crate::store::PRODUCT_EMBEDDINGS`] by model and text hash,
//!    so a product re-sent with the same text (a price change) gets its
//!    embedding back without the model;
//! 2. runs the model once over the texts still missing (one padded batch,
//!    on a blocking thread: it is a few hundred milliseconds of one core);
//! 3. writes each embedding to its product only if the product is still as
//!    it was read (guarded on `metadata.updated_at`), so a newer record is
//!    never given an older text's vector; it is embedded on the next pass.
//!
//! The write is an update event on the change stream, which carries the
//! embedding to every recommendation replica's snapshot like any change.
//! A sweep that wrote something starts again at once (more may have
//! arrived); one that wrote nothing waits for the end of a job in this
//! process or `idle`, whichever is first. Several sync replicas sweeping
//! at once do the same work twice but write the same values.
//!
//! Invariant: a stored embedding is always the embedding of the stored
//! text by the named model (`Frame::current_embedding` checks the text
//! hash on read, so even an embedding written in a race is never used for
//! another text).

use std::sync::Arc;
use std::time::Duration;

use discovery_catalog::Embedding;
use discovery_embed::quant::Matrix;
use discovery_embed::{EmbedError, Embedder, MODEL_DIR};
use discovery_kit::CancellationToken;
use discovery_kit::store::{Store, StoreError};
use tokio::sync::Notify;

use crate::store::{
    ToEmbed, cache_embeddings, cached_embeddings, embedding_key, products_to_embed, set_embeddings,
};

/// Products per page: one model batch.
pub const PAGE: usize = 32;
/// The model's name as stored with each embedding.
pub const MODEL: &str = MODEL_DIR;

/// Why a pass failed (the worker logs it and tries again later).
#[derive(Debug, thiserror::Error)]
pub enum EmbedWorkError {
    /// Reading or writing the store failed.
    #[error("embedding products: {0}")]
    Store(#[from] StoreError),
    /// The model failed.
    #[error("embedding products: {0}")]
    Model(#[from] EmbedError),
    /// The blocking task running the model died.
    #[error("embedding products: the model's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Products read (decoded or not).
    pub read: usize,
    /// Embeddings computed by the model.
    pub computed: usize,
    /// Embeddings found stored for the same text.
    pub reused: usize,
    /// Products given their embedding.
    pub written: u64,
    /// Where the next pass starts (`None`: the sweep is over).
    pub next: Option<String>,
}

/// One page of the sweep, starting after `after` ("" from the start).
pub async fn pass(
    store: &Store,
    embedder: &Arc<Embedder>,
    after: &str,
) -> Result<Pass, EmbedWorkError> {
    let page = products_to_embed(store, MODEL, after, PAGE).await?;
    let next = if page.read < PAGE { None } else { page.last };
    let hashes: Vec<i64> = page
        .products
        .iter()
        .map(|p| p.frame.embedding_text_hash())
        .collect();
    let keys: Vec<String> = hashes.iter().map(|&h| embedding_key(MODEL, h)).collect();
    let cached = cached_embeddings(store, &keys).await?;
    let missing: Vec<usize> = (0..keys.len())
        .filter(|&i| !cached.contains_key(&keys[i]))
        .collect();
    let texts: Vec<String> = missing
        .iter()
        .map(|&i| page.products[i].frame.embedding_text())
        .collect();
    let vectors = if texts.is_empty() {
        Vec::new()
    } else {
        let embedder = embedder.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed_batch(&refs)
        })
        .await??
    };
    let mut computed: Vec<Option<Embedding>> = (0..keys.len()).map(|_| None).collect();
    for (&i, v) in missing.iter().zip(&vectors) {
        let (codes, scale) = Matrix::stored(v);
        computed[i] = Some(embedding(hashes[i], codes, scale));
    }
    let new: Vec<&Embedding> = computed.iter().flatten().collect();
    cache_embeddings(store, &new).await?;
    let (n_computed, n_reused) = (missing.len(), keys.len() - missing.len());
    let done: Vec<(ToEmbed, Embedding)> = page
        .products
        .into_iter()
        .zip(computed)
        .zip(hashes)
        .zip(&keys)
        .filter_map(|(((p, c), hash), key)| {
            let e = c.or_else(|| {
                let (codes, scale) = cached.get(key)?.clone();
                Some(embedding(hash, codes, scale))
            })?;
            Some((p, e))
        })
        .collect();
    let written = set_embeddings(store, done).await?;
    metrics::counter!("discovery_sync_embeddings_total", "source" => "model")
        .increment(n_computed as u64);
    metrics::counter!("discovery_sync_embeddings_total", "source" => "stored")
        .increment(n_reused as u64);
    Ok(Pass {
        read: page.read,
        computed: n_computed,
        reused: n_reused,
        written,
        next,
    })
}

fn embedding(text_hash: i64, codes: Vec<u8>, scale: f32) -> Embedding {
    Embedding {
        model: MODEL.to_string(),
        text_hash,
        codes,
        scale,
    }
}

/// Sweeps until `shutdown`; `written` is notified when a job in this
/// process ends (new products to embed), `idle` bounds the wait otherwise.
pub async fn run(
    store: Store,
    embedder: Arc<Embedder>,
    written: Arc<Notify>,
    idle: Duration,
    shutdown: CancellationToken,
) {
    let mut after = String::new();
    let mut wrote_this_sweep = 0u64;
    let mut backoff = Duration::from_secs(1);
    // 1 once a sweep found nothing to write (every product has a current
    // embedding), 0 while one is writing: an operator's (and a benchmark's)
    // "semantic search is caught up".
    // (Looked up at each use: a handle taken before the process installs
    // its recorder would record nowhere.)
    let caught_up = |v: f64| metrics::gauge!("discovery_sync_embeddings_caught_up").set(v);
    caught_up(0.0);
    loop {
        let span = tracing::info_span!("sync.embed_pass", after = %after);
        let outcome = tracing::Instrument::instrument(pass(&store, &embedder, &after), span).await;
        let wait = match outcome {
            Ok(p) => {
                backoff = Duration::from_secs(1);
                wrote_this_sweep += p.written;
                if p.written > 0 {
                    caught_up(0.0);
                }
                if p.computed + p.reused > 0 {
                    tracing::debug!(
                        computed = p.computed,
                        reused = p.reused,
                        written = p.written,
                        "products embedded"
                    );
                }
                match p.next {
                    Some(next) => {
                        after = next;
                        None
                    }
                    None => {
                        after.clear();
                        let again = wrote_this_sweep > 0;
                        wrote_this_sweep = 0;
                        caught_up(if again { 0.0 } else { 1.0 });
                        (!again).then_some(idle)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "embedding pass failed; trying again");
                let b = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                Some(b)
            }
        };
        match wait {
            None => {
                if shutdown.is_cancelled() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            Some(d) => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = written.notified() => {}
                    () = tokio::time::sleep(d) => {}
                }
            }
        }
    }
}

/// Loads the model from `dir`; `None` (with a warning) when it cannot:
/// products are then stored without embeddings and search stays lexical
/// for them, which is what the recommendation service reports.
pub fn load(dir: &std::path::Path) -> Option<Arc<Embedder>> {
    match Embedder::load(dir) {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            tracing::warn!(error = %e, "product embeddings off: semantic search will not find new products until the model is installed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PRODUCT_EMBEDDINGS, products_to_embed, set_embeddings};
    use discovery_catalog::{Frame, PRODUCTS, demo_catalog};
    use discovery_kit::store::memory::MemoryStore;

    fn embedder() -> Arc<Embedder> {
        let models = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
        Arc::new(
            Embedder::load(&discovery_embed::model_dir(&models))
                .unwrap_or_else(|e| panic!("{e} (`make test-models` fetches it)")),
        )
    }

    async fn write(store: &Store, frames: &[Frame]) {
        let docs = frames
            .iter()
            .map(|f| crate::store::product_document(f, None).unwrap())
            .collect();
        store
            .bulk_upsert_newer(PRODUCTS, docs, crate::ingest::GUARD)
            .await
            .unwrap();
    }

    async fn stored(store: &Store, id: &str) -> Frame {
        Frame::from_document(store.get(PRODUCTS, id).await.unwrap().unwrap()).unwrap()
    }

    async fn sweep(store: &Store, e: &Arc<Embedder>) -> Pass {
        let mut total = Pass::default();
        let mut after = String::new();
        loop {
            let p = pass(store, e, &after).await.unwrap();
            total.read += p.read;
            total.computed += p.computed;
            total.reused += p.reused;
            total.written += p.written;
            match p.next {
                Some(n) => after = n,
                None => return total,
            }
        }
    }

    #[tokio::test]
    async fn products_get_the_embedding_of_their_text_once_and_a_same_text_update_reuses_it() {
        let store: Store = MemoryStore::new();
        let e = embedder();
        let mut frames = demo_catalog(40);
        write(&store, &frames).await;
        let first = sweep(&store, &e).await;
        assert_eq!((first.read, first.computed, first.written), (40, 40, 40));
        let f = stored(&store, &frames[0].id).await;
        let emb = f
            .current_embedding()
            .expect("an embedding of the stored text");
        let want = e.embed(&f.embedding_text()).unwrap();
        let got: Vec<f32> = emb.codes().map(|c| c as f32 * emb.scale).collect();
        assert!(
            discovery_embed::dot(&want, &got) > 0.99,
            "the text's own vector"
        );
        // Nothing left: the next sweep reads nothing.
        assert_eq!(sweep(&store, &e).await, Pass::default());

        // A newer record with the same text (a price change) loses the
        // embedding on write and gets it back from the stored one.
        frames[1].price += 10.0;
        frames[1].metadata.updated_at += 1;
        // A newer record with a new text is embedded again.
        frames[2].description = "a bold statement frame for weddings and parties".into();
        frames[2].metadata.updated_at += 1;
        write(&store, &frames[1..3]).await;
        assert!(stored(&store, &frames[1].id).await.embedding.is_none());
        let again = sweep(&store, &e).await;
        assert_eq!(
            (again.read, again.computed, again.reused, again.written),
            (2, 1, 1, 2)
        );
        let f2 = stored(&store, &frames[2].id).await;
        assert!(f2.current_embedding().is_some());
        assert_eq!(
            store
                .count(PRODUCT_EMBEDDINGS, Default::default())
                .await
                .unwrap(),
            41,
            "one stored embedding per distinct text"
        );
    }

    #[tokio::test]
    async fn a_record_written_while_its_old_text_was_embedded_keeps_no_stale_vector() {
        let store: Store = MemoryStore::new();
        let e = embedder();
        let mut frames = demo_catalog(3);
        write(&store, &frames).await;
        let page = products_to_embed(&store, MODEL, "", PAGE).await.unwrap();
        // A feed writes a newer record of product 0 meanwhile.
        frames[0].name = "Renamed".into();
        frames[0].metadata.updated_at += 1;
        write(&store, &frames[..1]).await;
        let done = page
            .products
            .into_iter()
            .map(|p| {
                let v = e.embed(&p.frame.embedding_text()).unwrap();
                let (codes, scale) = Matrix::stored(&v);
                let hash = p.frame.embedding_text_hash();
                (p, embedding(hash, codes, scale))
            })
            .collect();
        assert_eq!(set_embeddings(&store, done).await.unwrap(), 2);
        let renamed = stored(&store, &frames[0].id).await;
        assert_eq!(renamed.name, "Renamed");
        assert!(renamed.embedding.is_none(), "not the old text's vector");
        // The next sweep embeds the new text.
        assert_eq!(sweep(&store, &e).await.written, 1);
        assert!(
            stored(&store, &frames[0].id)
                .await
                .current_embedding()
                .is_some()
        );
    }
}
