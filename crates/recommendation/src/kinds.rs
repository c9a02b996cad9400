//! This service's cache kinds (key patterns and TTLs from the seed spec).

use std::time::Duration;

use discovery_kit::cache::CacheKind;

/// `recommendations:{user_id}:{face_shape}:{preferences_hash}`, 15 min,
/// refreshed in the background after 60 s.
pub static RECOMMENDATIONS: CacheKind =
    CacheKind::new("recommendations", Duration::from_secs(15 * 60), false)
        .stale_while_revalidate(Duration::from_secs(60));
/// `product:{product_id}:{version}`, 6 h.
pub static PRODUCT: CacheKind = CacheKind::new("product", Duration::from_secs(6 * 3600), false);
/// `search:{query_hash}`, 30 min, refreshed in the background after 5 min.
pub static SEARCH: CacheKind = CacheKind::new("search", Duration::from_secs(30 * 60), false)
    .stale_while_revalidate(Duration::from_secs(300));
/// `embed:{text_hash}`: a query text's embedding (1,536 bytes), 2 h (seed
/// 001), in L1 and L2 (computing one is about 10 ms of a core).
pub static EMBED: CacheKind = CacheKind::new("embed", Duration::from_secs(2 * 3600), false);
/// `conversation:{session_id}`, 30 min sliding, shared between replicas.
pub static SESSION: CacheKind =
    CacheKind::new("conversation", Duration::from_secs(30 * 60), true).shared();
