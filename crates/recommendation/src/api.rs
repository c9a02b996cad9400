//! The tonic edge: maps requests to the domain and errors to gRPC statuses.

use std::sync::Arc;

use discovery_kit::cache::{Cache, kinds};
use discovery_kit::store::{Store, doc};
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_server::CacheAdmin;
use discovery_proto::v1::catalog_server::Catalog as CatalogApi;
use discovery_proto::v1::recommendation_server::Recommendation;
use tonic::{Request, Response, Status};

use crate::rank::{self, RankError};
use crate::snapshot::Snapshot;

/// Collection of recorded interactions.
pub const INTERACTIONS: &str = "interactions";

/// Shared state of the service's handlers.
#[derive(Clone)]
pub struct Service {
    pub(crate) snapshot: Snapshot,
    pub(crate) store: Store,
    pub(crate) cache: Arc<Cache>,
}

impl From<RankError> for Status {
    fn from(e: RankError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

#[tonic::async_trait]
impl Recommendation for Service {
    #[tracing::instrument(skip_all, fields(face_shape = req.get_ref().face.as_ref().map(|f| f.face_shape)))]
    async fn recommend(
        &self,
        req: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let req = req.into_inner();
        let catalog = self.snapshot.load();
        let (page, total) = rank::recommend(&catalog, &req)?;
        let (offset, _) = rank::page(req.page.as_ref())?;
        let next = offset + page.len();
        Ok(Response::new(pb::RecommendResponse {
            items: page
                .into_iter()
                .map(|s| pb::RecommendedProduct {
                    product: Some(s.frame.to_proto()),
                    score: s.score,
                    reasons: s.reasons,
                    breakdown: Some(s.breakdown),
                })
                .collect(),
            page: Some(pb::PageResponse {
                next_page_token: if next < total {
                    format!("o:{next}")
                } else {
                    String::new()
                },
                total_size: total as u64,
            }),
            cached: false,
            catalog_version: catalog.version,
        }))
    }

    async fn record_interaction(
        &self,
        req: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        let req = req.into_inner();
        let kind = pb::InteractionKind::try_from(req.kind)
            .ok()
            .filter(|k| *k != pb::InteractionKind::Unspecified)
            .ok_or_else(|| {
                Status::invalid_argument(
                    "kind: give one of VIEW, CLICK, TRY_ON, ADD_TO_CART, PURCHASE",
                )
            })?;
        if self.snapshot.load().get(&req.product_id).is_none() {
            return Err(Status::not_found(format!(
                "product_id: no product {:?}",
                req.product_id
            )));
        }
        let requester = req.requester.unwrap_or_default();
        let at = if req.at_unix_ms > 0 {
            req.at_unix_ms
        } else {
            discovery_kit::now_unix_ms()
        };
        let id = format!("{}-{}-{}", at, req.product_id, fastrand_suffix());
        self.store
            .put(
                INTERACTIONS,
                doc! {
                    "_id": &id,
                    "userId": requester.user_id,
                    "sessionId": requester.session_id,
                    "productId": &req.product_id,
                    "kind": kind.as_str_name(),
                    "at": at,
                },
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "storing interaction failed");
                Status::unavailable("interactions cannot be stored right now; retry later")
            })?;
        Ok(Response::new(pb::RecordInteractionResponse {
            interaction_id: id,
        }))
    }

    async fn get_session(
        &self,
        _req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        Err(discovery_kit::server::not_yet(
            "GetSession",
            "recommendation",
        ))
    }

    async fn update_session(
        &self,
        _req: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::UpdateSessionResponse>, Status> {
        Err(discovery_kit::server::not_yet(
            "UpdateSession",
            "recommendation",
        ))
    }
}

fn fastrand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tonic::async_trait]
impl CatalogApi for Service {
    async fn get_product(
        &self,
        req: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id: give a product id"));
        }
        let catalog = self.snapshot.load();
        let f = catalog
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("id: no product {id:?}")))?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(f.to_proto()),
        }))
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
        if req.query.len() > 256 {
            return Err(Status::invalid_argument("query: at most 256 bytes"));
        }
        let (offset, size) = rank::page(req.page.as_ref())?;
        rank::check_filter(req.filter.as_ref())?;
        let catalog = self.snapshot.load();
        let mut hits: Vec<(f32, &crate::catalog::Frame)> = catalog
            .frames
            .iter()
            .filter(|f| rank::passes(f, req.filter.as_ref()))
            .filter_map(|f| {
                let s = if req.query.trim().is_empty() {
                    f.popularity
                } else {
                    rank::text_score(f, &req.query)
                };
                (s > 0.0).then_some((s + f.popularity * 0.01, f))
            })
            .collect();
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        let total = hits.len();
        let mut facets = Vec::new();
        if req.include_facets {
            let mut brand = std::collections::BTreeMap::<String, u64>::new();
            let mut shape = std::collections::BTreeMap::<String, u64>::new();
            for (_, f) in &hits {
                *brand.entry(f.brand.clone()).or_default() += 1;
                *shape.entry(f.shape.clone()).or_default() += 1;
            }
            for (name, m) in [("brand", brand), ("shape", shape)] {
                let mut counts: Vec<pb::FacetCount> = m
                    .into_iter()
                    .map(|(value, count)| pb::FacetCount { value, count })
                    .collect();
                counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
                facets.push(pb::Facet {
                    name: name.into(),
                    counts,
                });
            }
        }
        let next = offset + size;
        Ok(Response::new(pb::SearchProductsResponse {
            hits: hits
                .into_iter()
                .skip(offset)
                .take(size)
                .map(|(score, f)| pb::SearchHit {
                    product: Some(f.to_proto()),
                    score,
                })
                .collect(),
            facets,
            page: Some(pb::PageResponse {
                next_page_token: if next < total {
                    format!("o:{next}")
                } else {
                    String::new()
                },
                total_size: total as u64,
            }),
            corrected_query: String::new(),
        }))
    }
}

#[tonic::async_trait]
impl CacheAdmin for Service {
    async fn get_cache_status(
        &self,
        _req: Request<pb::GetCacheStatusRequest>,
    ) -> Result<Response<pb::GetCacheStatusResponse>, Status> {
        let catalog = self.snapshot.load();
        let (entries, bytes) = self.cache.l1_usage();
        let kinds_list = [
            &kinds::RECOMMENDATIONS,
            &kinds::PRODUCT,
            &kinds::SEARCH,
            &kinds::SESSION,
        ];
        Ok(Response::new(pb::GetCacheStatusResponse {
            kinds: kinds_list
                .iter()
                .map(|k| {
                    let (h, m) = (k.hits(), k.misses());
                    pb::CacheKindStatus {
                        kind: k.name.into(),
                        // L1 is shared by all kinds; per-kind sizes come with the recommendation issue.
                        l1_entries: entries,
                        l1_bytes: bytes,
                        hits: h,
                        misses: m,
                        hit_ratio: if h + m == 0 {
                            0.0
                        } else {
                            h as f64 / (h + m) as f64
                        },
                        ttl_seconds: k.ttl.as_secs(),
                    }
                })
                .collect(),
            l2_connected: self.cache.l2_connected(),
            catalog_version: catalog.version,
            catalog_size: catalog.frames.len() as u64,
        }))
    }

    async fn warm_cache(
        &self,
        _req: Request<pb::WarmCacheRequest>,
    ) -> Result<Response<pb::WarmCacheResponse>, Status> {
        Err(discovery_kit::server::not_yet(
            "WarmCache",
            "recommendation",
        ))
    }

    async fn invalidate_cache(
        &self,
        _req: Request<pb::InvalidateCacheRequest>,
    ) -> Result<Response<pb::InvalidateCacheResponse>, Status> {
        Err(discovery_kit::server::not_yet(
            "InvalidateCache",
            "recommendation",
        ))
    }

    async fn apply_catalog_change(
        &self,
        _req: Request<pb::ApplyCatalogChangeRequest>,
    ) -> Result<Response<pb::ApplyCatalogChangeResponse>, Status> {
        Err(discovery_kit::server::not_yet("ApplyCatalogChange", "sync"))
    }
}
