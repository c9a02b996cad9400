//! `discovery.v1.CacheAdmin`: invalidation and warming, for the gateway's
//! admin keys and monitoring, and catalogue deliveries from sync.

use super::*;

pub(super) const TAG_PREFIXES: [&str; 3] = ["product:", "brand:", "face_shape:"];
pub(super) const KEY_PREFIXES: [&str; 6] = [
    "recommendations:",
    "embed:",
    "search:",
    "product:",
    "conversation:",
    "face_analysis:",
];

#[tonic::async_trait]
impl CacheAdmin for Service {
    async fn get_cache_status(
        &self,
        req: Request<pb::GetCacheStatusRequest>,
    ) -> Result<Response<pb::GetCacheStatusResponse>, Status> {
        require_caller(&req, self.internal_auth, CACHE_ADMINS, "GetCacheStatus")?;
        let catalog = self.snapshot.load();
        self.cache.run_pending_tasks().await;
        let kinds_list = [
            &kinds::RECOMMENDATIONS,
            &kinds::SEARCH,
            &kinds::PRODUCT,
            &kinds::SESSION,
            &kinds::EMBED,
        ];
        Ok(Response::new(pb::GetCacheStatusResponse {
            kinds: kinds_list
                .iter()
                .map(|k| {
                    let (h, m) = (k.hits(), k.misses());
                    let (entries, bytes) = k.l1_usage();
                    pb::CacheKindStatus {
                        kind: k.name.into(),
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
        req: Request<pb::WarmCacheRequest>,
    ) -> Result<Response<pb::WarmCacheResponse>, Status> {
        require_caller(&req, self.internal_auth, CACHE_ADMINS, "WarmCache")?;
        let started = Instant::now();
        let n = self.warm().await;
        Ok(Response::new(pb::WarmCacheResponse {
            entries_warmed: n,
            duration_ms: started.elapsed().as_millis() as u64,
        }))
    }

    async fn invalidate_cache(
        &self,
        req: Request<pb::InvalidateCacheRequest>,
    ) -> Result<Response<pb::InvalidateCacheResponse>, Status> {
        require_caller(&req, self.internal_auth, CACHE_ADMINS, "InvalidateCache")?;
        let req = req.into_inner();
        if req.tags.is_empty() && req.key_pattern.is_empty() {
            return Err(Status::invalid_argument(
                "give tags (product:{id}, brand:{name}, face_shape:{shape}) or a key_pattern",
            ));
        }
        if req.tags.len() > 1000 {
            return Err(Status::invalid_argument("tags: at most 1000 per call"));
        }
        let mut tags = Vec::with_capacity(req.tags.len());
        for t in &req.tags {
            let t = t.trim();
            let Some(prefix) = TAG_PREFIXES.iter().find(|p| t.starts_with(*p)) else {
                return Err(Status::invalid_argument(format!(
                    "tags: {t:?} is not product:{{id}}, brand:{{name}} or face_shape:{{shape}}"
                )));
            };
            tags.push(if *prefix == "product:" {
                t.to_string()
            } else {
                t.to_lowercase()
            });
        }
        let mut dropped = self.cache.invalidate_tags(&tags).await;
        let p = req.key_pattern.trim();
        if !p.is_empty() {
            if p.len() > 256 || !KEY_PREFIXES.iter().any(|k| p.starts_with(k)) {
                return Err(Status::invalid_argument(format!(
                    "key_pattern: {p:?} must start with one of {KEY_PREFIXES:?} (at most 256 bytes)"
                )));
            }
            dropped += self.cache.invalidate_pattern(p).await;
        }
        Ok(Response::new(pb::InvalidateCacheResponse {
            entries_dropped: dropped,
        }))
    }

    async fn apply_catalog_change(
        &self,
        req: Request<pb::ApplyCatalogChangeRequest>,
    ) -> Result<Response<pb::ApplyCatalogChangeResponse>, Status> {
        // Only sync writes the catalogue: anyone else on the pod network
        // could pin a forged price with a huge version.
        require_caller(&req, self.internal_auth, &["sync"], "ApplyCatalogChange")?;
        let req = req.into_inner();
        let changes = changes_from_proto(&req)?;
        let (applied, version, tags) = self.apply_local(changes);
        // Other replicas apply the same changes to their snapshots...
        self.cache
            .bus()
            .publish(CATALOG_CHANNEL, &req.encode_to_vec())
            .await;
        // ...and every cache level drops what showed the old products.
        self.cache.invalidate_tags(&tags).await;
        Ok(Response::new(pb::ApplyCatalogChangeResponse {
            applied,
            catalog_version: version,
        }))
    }
}
