//! `discovery.v1.Catalog`: product reads, search, sessions, catalogue
//! changes; and the requests that warm the cache.

use super::*;

#[tonic::async_trait]
impl CatalogApi for Service {
    async fn get_product(
        &self,
        req: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let id = req.into_inner().id;
        check_product_id("id", &id)?;
        let catalog = self.snapshot.load();
        let f = catalog
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("id: no product {id:?}")))?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(f.to_proto()),
        }))
    }

    async fn get_try_on_placement(
        &self,
        req: Request<pb::GetTryOnPlacementRequest>,
    ) -> Result<Response<pb::GetTryOnPlacementResponse>, Status> {
        let req = req.into_inner();
        if req.product_ids.is_empty() || req.product_ids.len() > 50 {
            return Err(Status::invalid_argument(format!(
                "product_ids: give 1 to 50 products ({} given)",
                req.product_ids.len()
            )));
        }
        for (i, id) in req.product_ids.iter().enumerate() {
            check_product_id(&format!("product_ids[{i}]"), id)?;
        }
        // The same resolver as Recommend's hand-off: field names match.
        let face = self.faces.resolve(&req.analysis_id).await.map_err(|s| {
            Status::new(
                s.code(),
                s.message().replacen("face.analysis_id", "analysis_id", 1),
            )
        })?;
        let (Some([right, left]), true) = (face.irises, face.mm_per_px > 0.0) else {
            return Err(Status::failed_precondition(
                "analysis_id: this analysis found no irises, so the photo has no scale to place \
                 frames at; analyse a frontal photo with both eyes open",
            ));
        };
        let eyes = crate::tryon::Eyes {
            right,
            left,
            mm_per_px: face.mm_per_px,
            nose_bridge_mm: face.nose_bridge_width_mm,
            face_width_mm: face.face_width_mm,
        };
        let catalog = self.snapshot.load();
        let mut placements = Vec::with_capacity(req.product_ids.len());
        for (i, id) in req.product_ids.iter().enumerate() {
            let f = catalog
                .get(id)
                .ok_or_else(|| Status::not_found(format!("product_ids[{i}]: no product {id:?}")))?;
            let p = crate::tryon::place(
                &eyes,
                &crate::tryon::FrameSize {
                    total_width_mm: f.total_width_mm,
                    bridge_mm: f.bridge_mm,
                },
            );
            placements.push(pb::TryOnPlacement {
                product_id: id.clone(),
                center: Some(pb::Point2 {
                    x: p.center.0,
                    y: p.center.1,
                }),
                width_px: p.width_px,
                rotation_deg: p.rotation_deg,
                px_per_mm: p.px_per_mm,
                width_difference_mm: p.width_difference_mm,
            });
        }
        Ok(Response::new(pb::GetTryOnPlacementResponse { placements }))
    }

    async fn batch_get_products(
        &self,
        req: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        let ids = req.into_inner().ids;
        if ids.len() > 100 {
            return Err(Status::invalid_argument(format!(
                "ids: {} ids is over the maximum of 100",
                ids.len()
            )));
        }
        for (i, id) in ids.iter().enumerate() {
            check_product_id(&format!("ids[{i}]"), id)?;
        }
        let catalog = self.snapshot.load();
        let mut out = pb::BatchGetProductsResponse::default();
        for id in ids {
            match catalog.get(&id) {
                Some(f) => out.products.push(f.to_proto()),
                None => out.missing_ids.push(id),
            }
        }
        Ok(Response::new(out))
    }

    async fn search_products(
        &self,
        req: Request<pb::SearchProductsRequest>,
    ) -> Result<Response<pb::SearchProductsResponse>, Status> {
        let req = req.into_inner();
        let query = req.query.clone();
        let mode = match pb::SearchMode::try_from(req.mode) {
            Ok(pb::SearchMode::Unspecified | pb::SearchMode::Hybrid) => search::Mode::Hybrid,
            Ok(pb::SearchMode::Lexical) => search::Mode::Lexical,
            Ok(pb::SearchMode::Semantic) => search::Mode::Semantic,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "mode: {} is not a search mode (give HYBRID, LEXICAL or SEMANTIC)",
                    req.mode
                )));
            }
        };
        // Validate before touching the cache.
        let catalog = self.snapshot.load();
        let max_words = if req.literal {
            search::MAX_WORDS
        } else {
            search::MAX_TEXT_WORDS
        };
        search::parse_with(&catalog, &req, max_words)?;
        let understood = (!req.literal)
            .then(|| understand::understand(&self.lexicons.get(&catalog), &req.query));
        let text = understood
            .as_ref()
            .map_or(req.query.as_str(), |u| u.rest.as_str())
            .to_string();
        let words = search::query_words(&text);
        if words.len() > search::MAX_WORDS {
            return Err(search::SearchError::TooManyWords(words.len()).into());
        }
        drop(catalog);
        let wants_meaning = mode != search::Mode::Lexical && !words.is_empty();
        let (vector, note) = if wants_meaning {
            match self.query_vector(&text).await {
                Ok(v) => (Some(v), ""),
                Err(note) => (None, note),
            }
        } else {
            (None, "")
        };
        let mode_used = match (&vector, mode) {
            (None, _) if wants_meaning => pb::SearchMode::Lexical,
            (_, search::Mode::Lexical) => pb::SearchMode::Lexical,
            (_, search::Mode::Semantic) => pb::SearchMode::Semantic,
            (_, search::Mode::Hybrid) => pb::SearchMode::Hybrid,
        };
        let catalog = self.snapshot.load();
        let large = search::is_large(&catalog, words.len())
            || (vector.is_some() && catalog.frames.len() > search::LARGE_SEMANTIC);
        drop(catalog);
        let mut canonical = req.clone();
        canonical.query = canonical.query.trim().to_lowercase();
        canonical.mode = mode_used as i32;
        let key = format!("search:{:016x}", fnv1a(&canonical.encode_to_vec()));
        let entry = page_inputs(req.filter.as_ref(), req.include_facets);
        let chips: Vec<pb::QueryChip> = understood
            .as_ref()
            .map(|u| u.chips.iter().map(crate::convert::chip_to_proto).collect())
            .unwrap_or_default();
        let wanted = understood.map(|u| u.wanted);
        let Served { payload, .. } = self
            .cached(&kinds::SEARCH, key, entry, large, move |catalog| {
                let mut p = search::parse_with(catalog, &req, max_words)?;
                if let Some(w) = &wanted {
                    p.filter = p.filter.narrow(catalog, w);
                }
                let q = search::Query {
                    words: &words,
                    filter: &p.filter,
                    vector: vector.as_deref().map(Vec::as_slice),
                    mode,
                };
                let r = search::run(catalog, &q, req.include_facets, p.offset, p.size);
                let rows: Vec<usize> = r.hits.iter().map(|h| h.0).collect();
                let tags = rows
                    .iter()
                    .map(|&i| format!("product:{}", catalog.frames[i].id))
                    .collect();
                let resp = pb::SearchProductsResponse {
                    page: Some(pb::PageResponse {
                        next_page_token: rank::next_token(r.offset, r.hits.len(), r.total),
                        total_size: r.total as u64,
                    }),
                    hits: r
                        .hits
                        .into_iter()
                        .zip(r.why)
                        .map(|((i, score), why)| pb::SearchHit {
                            product: Some(catalog.frames[i].to_proto()),
                            score,
                            why: Some(crate::convert::why_to_proto(&why)),
                        })
                        .collect(),
                    facets: r.facets,
                    corrected_query: r.corrected,
                    understood: chips.clone(),
                    mode: mode_used as i32,
                    note: note.to_string(),
                };
                Ok((resp.encode_to_vec(), rows, tags))
            })
            .await?;
        let resp = pb::SearchProductsResponse::decode(payload)
            .map_err(|e| Status::internal(format!("cached search unreadable: {e}")))?;
        if !resp.hits.is_empty() && !query.is_empty() {
            self.suggestions.record(&query);
        }
        Ok(Response::new(resp))
    }

    type ConverseStream = super::converse_api::ConverseStream;

    async fn converse(
        &self,
        req: Request<pb::ConverseRequest>,
    ) -> Result<Response<Self::ConverseStream>, Status> {
        self.converse_turn(req).await.map(Response::new)
    }

    async fn similar_products(
        &self,
        req: Request<pb::SimilarProductsRequest>,
    ) -> Result<Response<pb::SimilarProductsResponse>, Status> {
        let req = req.into_inner();
        check_product_id("product_id", &req.product_id)?;
        let limit = match req.limit as usize {
            0 => crate::similar::DEFAULT_LIMIT,
            n if n > crate::similar::MAX_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit: {n} is over the maximum of {}",
                    crate::similar::MAX_LIMIT
                )));
            }
            n => n,
        };
        let catalog = self.snapshot.load();
        let filter = rank::Filter::compile(&catalog, req.filter.as_ref()).map_err(Status::from)?;
        let Some(&of) = catalog.by_id.get(req.product_id.as_str()) else {
            return Err(Status::not_found(format!(
                "product_id: no product {:?}",
                req.product_id
            )));
        };
        let found = if catalog.frames.len() > search::LARGE_SEMANTIC {
            let c = catalog.clone();
            tokio::task::spawn_blocking(move || {
                crate::similar::similar(&c, of as usize, &filter, req.include_out_of_stock, limit)
            })
            .await
            .map_err(|e| Status::internal(format!("similar task failed: {e}")))?
        } else {
            crate::similar::similar(
                &catalog,
                of as usize,
                &filter,
                req.include_out_of_stock,
                limit,
            )
        };
        Ok(Response::new(pb::SimilarProductsResponse {
            hits: found
                .into_iter()
                .map(|s| pb::SearchHit {
                    product: Some(catalog.frames[s.row].to_proto()),
                    score: s.score,
                    why: Some(pb::HitReason {
                        similarity: s.similarity,
                        ..Default::default()
                    }),
                })
                .collect(),
        }))
    }

    async fn suggest_queries(
        &self,
        req: Request<pb::SuggestQueriesRequest>,
    ) -> Result<Response<pb::SuggestQueriesResponse>, Status> {
        let req = req.into_inner();
        if req.prefix.len() > crate::suggest::MAX_PREFIX {
            return Err(Status::invalid_argument(format!(
                "prefix: {} bytes is over the maximum of {}",
                req.prefix.len(),
                crate::suggest::MAX_PREFIX
            )));
        }
        let limit = match req.limit as usize {
            0 => crate::suggest::DEFAULT_LIMIT,
            n => n.min(crate::suggest::MAX_LIMIT),
        };
        let catalog = self.snapshot.load();
        let set = self.suggestions.get(&catalog);
        Ok(Response::new(pb::SuggestQueriesResponse {
            suggestions: set
                .suggest(&req.prefix, limit)
                .into_iter()
                .map(|(text, kind)| pb::QuerySuggestion {
                    text: text.to_string(),
                    kind: kind.name().to_string(),
                })
                .collect(),
        }))
    }
}

impl Service {
    /// The embedding of a query's text: from the cache (2 h, by text
    /// hash), else computed on a blocking thread and cached. `Err` is the
    /// note a response carries when there is none (no model, or it failed).
    pub async fn query_vector(&self, text: &str) -> Result<Arc<Vec<f32>>, &'static str> {
        let Some(embedder) = self.embedder.clone() else {
            return Err(NO_TEXT_MODEL);
        };
        let normal = text.trim().to_lowercase();
        let key = format!("embed:{:016x}", fnv1a(normal.as_bytes()));
        if let Some(b) = self.cache.get(&kinds::EMBED, &key).await
            && b.len() == discovery_embed::DIM * 4
        {
            let v = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            return Ok(Arc::new(v));
        }
        let started = Instant::now();
        let v = tokio::task::spawn_blocking(move || embedder.embed(&normal))
            .await
            .map_err(|_| EMBED_FAILED)?
            .map_err(|e| {
                tracing::warn!(error = %e, "query embedding failed; lexical results");
                EMBED_FAILED
            })?;
        metrics::histogram!("discovery_query_embedding_seconds")
            .record(started.elapsed().as_secs_f64());
        let mut b = BytesMut::with_capacity(v.len() * 4);
        for x in &v {
            b.put_f32_le(*x);
        }
        self.cache.set(&kinds::EMBED, &key, b.freeze(), &[]).await;
        Ok(Arc::new(v))
    }
}

/// The note of a search answered without the text model.
pub const NO_TEXT_MODEL: &str = "semantic search is not available on this server (the text model is not installed): these are word matches only";
const EMBED_FAILED: &str = "semantic matching failed for this query: these are word matches only";

/// The recommendation sets warmed at start and on schedule: the first page
/// for anonymous shoppers per face shape (and none), with no width and with
/// common face widths.
pub fn warm_requests() -> Vec<pb::RecommendRequest> {
    let mut out = Vec::new();
    for shape in 0..=FACE_SHAPES.len() as i32 {
        for width in [0.0, 126.0, 130.0, 134.0, 138.0, 142.0, 146.0] {
            out.push(pb::RecommendRequest {
                face: Some(pb::FaceContext {
                    face_shape: shape,
                    face_width_mm: width,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    out
}

impl Service {
    /// Warms the cache; returns entries computed.
    pub async fn warm(&self) -> u64 {
        let mut n = 0;
        for req in warm_requests() {
            // Warming is not a showing: no impression.
            if self
                .serve_page(Identity::default(), req, false)
                .await
                .is_ok_and(|r| matches!(r, Reply::Encoded(_, t) if !t.cached()))
            {
                n += 1;
            }
        }
        metrics::counter!("discovery_cache_warmed_total").increment(n);
        n
    }
}
