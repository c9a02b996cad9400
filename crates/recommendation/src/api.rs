//! The tonic edge: maps requests to the domain and errors to gRPC statuses,
//! and puts the cache in front of ranking and search.
//!
//! Cached results are stored in an envelope that lists the products they
//! show with their content stamps, what could enter them (entry tags: the
//! brands a page is filtered to, or `any`) and the catalogue version they
//! were made from. A hit is served only if the snapshot still holds every
//! one of those products with the same stamp and no product that could
//! enter the page changed since it was made (a new frame, a restock, a
//! removal); otherwise it is recomputed. So once this replica's snapshot
//! has a change, no cache level serves a page it alters, whatever the
//! timing of invalidation messages, and a 50,000-record feed costs each
//! page one recomputation per change batch that touches it, not one per
//! record. Tag invalidation (`product:{id}`) frees the memory.

use std::sync::Arc;
use std::time::Instant;

use crate::fast::Reply;
use crate::server::recommendation_server::Recommendation;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use discovery_kit::cache::{Cache, CacheKind, Loaded, Lookup, Source, kinds};
use discovery_kit::store::{Store, doc};
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_server::CacheAdmin;
use discovery_proto::v1::catalog_server::Catalog as CatalogApi;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::rank::{self, RankError};
use crate::search::{self, SearchError};
use crate::snapshot::{Catalog, Change, Snapshot};
use discovery_catalog::{FACE_SHAPES, Frame, fnv1a};
use discovery_kit::internal::require_caller;

/// Collection of recorded interactions.
pub const INTERACTIONS: &str = "interactions";
/// Collection of session snapshots (seed spec `ai_sessions`).
pub const AI_SESSIONS: &str = "ai_sessions";
/// Bus channel carrying catalogue changes between replicas.
pub const CATALOG_CHANNEL: &str = "discovery:catalog:changes";
/// Most changes in one `ApplyCatalogChange`.
pub const MAX_CHANGES: usize = 5_000;

/// Shared state of the service's handlers.
#[derive(Clone)]
pub struct Service {
    pub(crate) snapshot: Snapshot,
    pub(crate) store: Store,
    pub(crate) cache: Arc<Cache>,
    /// Internal calls are authenticated: privileged methods check who
    /// called ([`discovery_kit::internal::require_caller`]).
    pub(crate) internal_auth: bool,
    /// `FaceContext.analysis_id` resolved through face-analysis.
    pub(crate) faces: crate::faces::Faces,
    /// Most interactions one shopper records per minute (0: no bound).
    pub(crate) interactions_per_minute: u64,
    /// The running ranking experiment.
    pub(crate) experiments: Arc<crate::experiments::Live>,
    /// Where served pages and their outcomes go (`None`: not logged, no
    /// impression ids).
    pub(crate) log: Option<crate::impressions::Log>,
}

/// Default of `DISCOVERY_INTERACTIONS_PER_MINUTE`: two a second on average
/// is more than a shopper browsing does, and too few to steer popularity.
pub const INTERACTIONS_PER_MINUTE: u64 = 120;

/// Who may call the cache administration methods: the gateway (for keys
/// with the admin scope) and monitoring (warming on a low hit rate).
const CACHE_ADMINS: &[&str] = &["gateway", "monitoring"];

impl From<RankError> for Status {
    fn from(e: RankError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<SearchError> for Status {
    fn from(e: SearchError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// How much later than another replica this one may apply the same
/// catalogue change (the Redis fan-out takes milliseconds; clocks of pods
/// agree to a few). A page another replica made less than this before this
/// one applied a change that could enter it is not trusted: its maker may
/// not have had the change yet.
pub const PEER_LAG_MS: i64 = 1_000;

/// A cached result: who made it and from which catalogue version (its
/// [`Freshness::as_of`](crate::snapshot::Freshness)), what could enter it
/// (entry tags), the products it shows with their stamps, then the encoded
/// response.
fn envelope(
    origin: u64,
    catalog: &Catalog,
    entry: &[String],
    rows: &[usize],
    payload: &[u8],
) -> Bytes {
    let tag_bytes: usize = entry.iter().map(|t| t.len().min(255) + 1).sum();
    let mut b = BytesMut::with_capacity(payload.len() + rows.len() * 24 + tag_bytes + 19);
    b.put_u64_le(origin);
    b.put_i64_le(catalog.fresh.as_of);
    let entry = &entry[..entry.len().min(255)];
    b.put_u8(entry.len() as u8);
    for t in entry {
        let t = &t.as_bytes()[..t.len().min(255)];
        b.put_u8(t.len() as u8);
        b.put_slice(t);
    }
    b.put_u16_le(rows.len() as u16);
    for &r in rows {
        let id = catalog.frames[r].id.as_bytes();
        let id = &id[..id.len().min(255)];
        b.put_u8(id.len() as u8);
        b.put_slice(id);
        b.put_u64_le(catalog.features.stamp[r]);
    }
    b.put_slice(payload);
    b.freeze()
}

/// The payload of an envelope if it is still what `catalog` would answer:
/// every product it shows unchanged (same stamp), and no change applied
/// since it was made to a product that could enter it (a new frame of a
/// brand it lists, a restock, a removal). A page this replica (`origin`)
/// made from the very version it holds needs no check at all; one another
/// replica made is judged with [`PEER_LAG_MS`] of doubt.
#[cfg(test)]
fn open_envelope(origin: u64, catalog: &Catalog, b: Bytes) -> Option<Bytes> {
    open_page(origin, catalog, b).map(|(payload, _)| payload)
}

/// [`open_envelope`], also returning the envelope's rows section (the
/// products shown, [`crate::impressions::page_section_ids`]), shared.
fn open_page(origin: u64, catalog: &Catalog, mut b: Bytes) -> Option<(Bytes, Bytes)> {
    if b.remaining() < 17 {
        return None;
    }
    let (made_by, made_at) = (b.get_u64_le(), b.get_i64_le());
    let same_snapshot = made_by == origin && made_at == catalog.fresh.as_of;
    let limit = if made_by == origin {
        made_at
    } else {
        made_at - PEER_LAG_MS
    };
    if !same_snapshot && catalog.fresh.loaded_at > limit {
        return None;
    }
    let tags = b.get_u8() as usize;
    for _ in 0..tags {
        if b.remaining() < 1 {
            return None;
        }
        let len = b.get_u8() as usize;
        if b.remaining() < len {
            return None;
        }
        if !same_snapshot {
            let tag = std::str::from_utf8(&b[..len]).ok()?;
            if catalog.fresh.changed.get(tag).is_some_and(|&at| at > limit) {
                return None;
            }
        }
        b.advance(len);
    }
    if b.remaining() < 2 {
        return None;
    }
    let section = b.clone();
    let n = b.get_u16_le() as usize;
    for _ in 0..n {
        if b.remaining() < 1 {
            return None;
        }
        let len = b.get_u8() as usize;
        if b.remaining() < len + 8 {
            return None;
        }
        if same_snapshot {
            b.advance(len + 8);
            continue;
        }
        let id = std::str::from_utf8(&b[..len]).ok()?;
        let row = catalog.index(id)?;
        let stamp = catalog.features.stamp[row];
        b.advance(len);
        if b.get_u64_le() != stamp {
            return None;
        }
    }
    let rows = section.slice(..section.len() - b.len());
    Some((b, rows))
}

/// The entry tags of a page asked for with `filter` (and price facets).
fn page_inputs(filter: Option<&pb::ProductFilter>, facets: bool) -> Vec<String> {
    let none = pb::ProductFilter::default();
    let f = filter.unwrap_or(&none);
    crate::snapshot::page_entry_tags(crate::snapshot::PageInputs {
        brands: &f.brands,
        price: facets || f.min_price_minor.is_some() || f.max_price_minor.is_some(),
        stock: f.in_stock_only,
    })
}

/// The request in canonical form: what cannot change the answer removed,
/// widths rounded as the ranking rounds them, lists sorted, page normalised.
fn canonical_recommend(
    req: &pb::RecommendRequest,
    personal: bool,
    offset: usize,
    size: usize,
) -> pb::RecommendRequest {
    let mut c = req.clone();
    // Where the page is shown does not change it.
    c.placement.clear();
    c.requester = personal.then(|| pb::Requester {
        user_id: req.requester.clone().unwrap_or_default().user_id,
        session_id: String::new(),
    });
    if let Some(f) = &mut c.face {
        f.face_width_mm = f.face_width_mm.round();
        f.nose_bridge_width_mm = f.nose_bridge_width_mm.round();
        f.pupillary_distance_mm = 0.0;
        f.analysis_id.clear();
    }
    if let Some(f) = &mut c.filter {
        f.shapes.sort_unstable();
        f.materials.sort_unstable();
        f.brands
            .iter_mut()
            .for_each(|b| *b = b.trim().to_lowercase());
        f.brands.sort();
    }
    if let Some(p) = &mut c.preferences {
        for l in [&mut p.style_keywords, &mut p.colors, &mut p.brands] {
            l.iter_mut().for_each(|b| *b = b.trim().to_lowercase());
            l.sort();
        }
        p.shapes.sort_unstable();
    }
    c.page = Some(pb::PageRequest {
        page_size: size as u32,
        page_token: format!("o:{offset}"),
    });
    c
}

/// The face shape of a request as used in keys and tags ("any" when unknown).
/// A page as [`Service::cached`] serves it.
struct Served {
    /// The encoded response.
    payload: Bytes,
    /// Whether it came from a cache.
    cached: bool,
    /// The envelope's rows section (the products shown).
    rows: Bytes,
    /// Catalogue version it was checked against.
    version: i64,
}

fn face_shape_label(req: &pb::RecommendRequest) -> &'static str {
    req.face
        .as_ref()
        .and_then(|f| pb::FaceShape::try_from(f.face_shape).ok())
        .map(discovery_catalog::face_shape_name)
        .filter(|s| !s.is_empty())
        .unwrap_or("any")
}

/// The cache key of a recommendation request:
/// `recommendations:{user_id|anon}:{face_shape|any}:{hash}`, the hash over
/// the canonical request and, in an experiment, the variant's label.
pub fn recommend_key(req: &pb::RecommendRequest, q: &rank::Query, variant: &str) -> String {
    let canonical = canonical_recommend(req, q.is_personal(), q.offset, q.size);
    let mut bytes = canonical.encode_to_vec();
    if variant != crate::experiments::DEFAULT_LABEL {
        bytes.push(0);
        bytes.extend_from_slice(variant.as_bytes());
    }
    let user = if q.is_personal() {
        canonical
            .requester
            .as_ref()
            .map_or("anon", |r| r.user_id.as_str())
            .replace(':', "_")
    } else {
        "anon".into()
    };
    let shape = face_shape_label(req);
    format!("recommendations:{user}:{shape}:{:016x}", fnv1a(&bytes))
}

/// Computes a recommendation response from the current snapshot.
pub fn compute_recommend(
    catalog: &Catalog,
    req: &pb::RecommendRequest,
    ranking: rank::Ranking,
) -> Result<(pb::RecommendResponse, Vec<usize>), RankError> {
    let (page, total, q) = rank::recommend(catalog, req, ranking)?;
    let rows: Vec<usize> = page.iter().map(|s| s.row).collect();
    let token = rank::next_token(q.offset, page.len(), total);
    let resp = pb::RecommendResponse {
        items: page
            .into_iter()
            .map(|s| pb::RecommendedProduct {
                product: Some(catalog.frames[s.row].to_proto()),
                score: s.score,
                reasons: s.reasons,
                breakdown: Some(s.breakdown),
            })
            .collect(),
        page: Some(pb::PageResponse {
            next_page_token: token,
            total_size: total as u64,
        }),
        cached: false,
        catalog_version: catalog.version,
        // Per showing: appended on the wire ([`crate::fast::Trailer`]).
        impression_id: String::new(),
        variant: String::new(),
    };
    Ok((resp, rows))
}

fn recommend_tags(catalog: &Catalog, rows: &[usize], req: &pb::RecommendRequest) -> Vec<String> {
    let mut tags: Vec<String> = rows
        .iter()
        .map(|&r| format!("product:{}", catalog.frames[r].id))
        .collect();
    let mut brands: Vec<String> = rows
        .iter()
        .map(|&r| format!("brand:{}", catalog.frames[r].brand.to_lowercase()))
        .collect();
    brands.sort();
    brands.dedup();
    tags.extend(brands);
    let shape = face_shape_label(req);
    tags.push(format!("face_shape:{shape}"));
    tags
}

impl Service {
    /// A service over a snapshot, a store and a cache (benchmarks and
    /// embedding; [`crate::spawn`] builds one from config).
    pub fn new(snapshot: Snapshot, store: Store, cache: Arc<Cache>) -> Self {
        Self {
            snapshot,
            store,
            cache,
            internal_auth: false,
            faces: crate::faces::Faces::new(None),
            interactions_per_minute: INTERACTIONS_PER_MINUTE,
            experiments: Arc::default(),
            log: None,
        }
    }

    /// The same service logging impressions and outcomes through `log`.
    pub fn with_log(self, log: crate::impressions::Log) -> Self {
        Self {
            log: Some(log),
            ..self
        }
    }

    /// Serves a page: resolves the face, assigns the variant, answers from
    /// cache or ranks, and (`log`) logs the impression.
    pub(crate) async fn serve_page(
        &self,
        who: Identity,
        mut req: pb::RecommendRequest,
        log: bool,
    ) -> Result<Reply, Status> {
        who.apply(&mut req.requester);
        let started = Instant::now();
        if !crate::experiments::is_placement(&req.placement) {
            return Err(Status::invalid_argument(format!(
                "placement: {:?} is not 1-32 lower-case letters, digits, '_' or '-'",
                req.placement.chars().take(40).collect::<String>()
            )));
        }
        // The hand-off from AnalyzeFace: the stored analysis's face, under
        // what the request set explicitly; the cache key is then the one
        // of the same face passed field by field.
        if let Some(face) = req.face.as_mut() {
            self.faces.resolve_into(face).await?;
        }
        let assignment = {
            let r = req.requester.as_ref();
            self.experiments.assign(
                r.map_or("", |r| r.user_id.as_str()),
                r.map_or("", |r| r.session_id.as_str()),
            )
        };
        let catalog = self.snapshot.load();
        let q = rank::Query::compile(&catalog, &req)?;
        let key = recommend_key(&req, &q, &assignment.label);
        drop(catalog);
        let entry = page_inputs(req.filter.as_ref(), false);
        let placement = std::mem::take(&mut req.placement);
        let r = req.clone();
        let ranking = assignment.ranking;
        let page = self
            .cached(&kinds::RECOMMENDATIONS, key, entry, false, move |catalog| {
                let (resp, rows) = compute_recommend(catalog, &r, ranking)?;
                let tags = recommend_tags(catalog, &rows, &r);
                Ok((resp.encode_to_vec(), rows, tags))
            })
            .await?;
        let mut id_hex = [0u8; 32];
        let impression = match (&self.log, log) {
            (Some(l), true) => {
                let id: u128 = rand::random();
                id_hex = crate::impressions::format_id(id);
                let requester = req.requester.as_ref();
                l.impression(
                    crate::impressions::ImpressionRef {
                        id,
                        at: l.unix_ms(started),
                        face_shape: face_shape_label(&req),
                        assignment: &assignment,
                        placement: &placement,
                        user_id: requester.map_or("", |r| r.user_id.as_str()),
                        session_id: requester.map_or("", |r| r.session_id.as_str()),
                        client: who.client.as_deref(),
                        catalog_version: page.version,
                    },
                    page.rows,
                )
            }
            _ => false,
        };
        let id: &[u8] = if impression { &id_hex } else { b"" };
        metrics::histogram!("discovery_recommendation_duration_seconds", "cached" => if page.cached { "true" } else { "false" })
            .record(started.elapsed().as_secs_f64());
        // Already encoded: written to the wire as is, with this call's fields.
        Ok(Reply::Encoded(
            page.payload,
            crate::fast::Trailer::new(page.cached, id, &assignment.label),
        ))
    }

    /// Looks a cached envelope up (or computes it), validates it against the
    /// snapshot, and recomputes once if it is out of date.
    /// `blocking`: the computation is large (a caller can make it so) and
    /// runs on a blocking thread instead of the async threads.
    async fn cached<F>(
        &self,
        kind: &'static CacheKind,
        key: String,
        entry: Vec<String>,
        blocking: bool,
        compute: F,
    ) -> Result<Served, Status>
    where
        F: Fn(&Catalog) -> Result<(Vec<u8>, Vec<usize>, Vec<String>), Status>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let origin = self.cache.bus().origin();
        // A fresh L1 entry first (no loader to build); otherwise the full
        // lookup. Either way one lookup, and one validation below.
        let (value, cached) = match self.cache.get_fresh_l1(kind, &key).await {
            Some(value) => (value, true),
            None => {
                let snapshot = self.snapshot.clone();
                let compute = compute.clone();
                let entry = entry.clone();
                let load = move || async move {
                    let catalog = snapshot.load();
                    let (payload, rows, tags) = run(blocking, &catalog, compute).await?;
                    let value = envelope(origin, &catalog, &entry, &rows, &payload);
                    // Computed from a snapshot that changed meanwhile: serve, don't keep.
                    let cacheable = snapshot.load().version == catalog.version;
                    Ok::<_, Status>(Loaded {
                        value,
                        tags,
                        cacheable,
                    })
                };
                let Lookup { value, source, .. } = self.cache.get_or_load(kind, &key, load).await?;
                (value, source != Source::Origin)
            }
        };
        let catalog = self.snapshot.load();
        if let Some((payload, rows)) = open_page(origin, &catalog, value) {
            return Ok(Served {
                payload,
                cached,
                rows,
                version: catalog.version,
            });
        }
        // Out of date (a product it shows changed, or one could enter it):
        // recompute and replace.
        metrics::counter!("discovery_recommendation_stale_rejected_total", "kind" => kind.name)
            .increment(1);
        let (payload, rows, tags) = run(blocking, &catalog, compute).await?;
        let value = envelope(origin, &catalog, &entry, &rows, &payload);
        self.cache.set(kind, &key, value.clone(), &tags).await;
        let rows = open_page(origin, &catalog, value).map_or_else(Bytes::new, |(_, r)| r);
        Ok(Served {
            payload: Bytes::from(payload),
            cached: false,
            rows,
            version: catalog.version,
        })
    }

    /// Applies catalogue changes to this replica's snapshot and drops the
    /// affected cache entries; returns (applied, version, tags).
    pub fn apply_local(&self, changes: Vec<Change>) -> (u64, i64, Vec<String>) {
        let applied = self.snapshot.apply(changes);
        let version = self.snapshot.load().version;
        if applied.applied > 0 {
            tracing::info!(
                applied = applied.applied,
                ignored = applied.ignored,
                version,
                "catalogue changes applied"
            );
        }
        (applied.applied, version, applied.tags)
    }
}

/// Decodes API catalogue changes.
pub fn changes_from_proto(req: &pb::ApplyCatalogChangeRequest) -> Result<Vec<Change>, Status> {
    if req.changes.len() > MAX_CHANGES {
        return Err(Status::invalid_argument(format!(
            "changes: {} is over the maximum of {MAX_CHANGES} per call; split the batch",
            req.changes.len()
        )));
    }
    let mut out = Vec::with_capacity(req.changes.len());
    for (i, c) in req.changes.iter().enumerate() {
        let kind = pb::ChangeKind::try_from(c.kind).unwrap_or(pb::ChangeKind::Unspecified);
        match kind {
            pb::ChangeKind::Upsert => {
                let p = c.product.as_ref().ok_or_else(|| {
                    Status::invalid_argument(format!("changes[{i}].product: required for UPSERT"))
                })?;
                if !c.product_id.is_empty() && c.product_id != p.id {
                    return Err(Status::invalid_argument(format!(
                        "changes[{i}]: product_id {:?} differs from product.id {:?}",
                        c.product_id, p.id
                    )));
                }
                let f = Frame::from_proto(p)
                    .map_err(|e| Status::invalid_argument(format!("changes[{i}]: {e}")))?;
                out.push(Change::Upsert(Box::new(f)));
            }
            pb::ChangeKind::Delete => {
                if c.product_id.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "changes[{i}].product_id: required for DELETE"
                    )));
                }
                out.push(Change::Delete(c.product_id.clone()));
            }
            pb::ChangeKind::Unspecified => {
                return Err(Status::invalid_argument(format!(
                    "changes[{i}].kind: give UPSERT or DELETE"
                )));
            }
        }
    }
    Ok(out)
}

#[tonic::async_trait]
impl Recommendation for Service {
    #[tracing::instrument(skip_all, fields(face_shape = req.get_ref().face.as_ref().map(|f| f.face_shape)))]
    async fn recommend(
        &self,
        req: Request<pb::RecommendRequest>,
    ) -> Result<Response<Reply>, Status> {
        let who = Identity::of(&req);
        let reply = self.serve_page(who, req.into_inner(), true).await?;
        Ok(Response::new(reply))
    }

    async fn record_interaction(
        &self,
        req: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        let who = Identity::of(&req);
        let mut req = req.into_inner();
        who.apply(&mut req.requester);
        let kind = pb::InteractionKind::try_from(req.kind)
            .ok()
            .filter(|k| *k != pb::InteractionKind::Unspecified)
            .ok_or_else(|| {
                Status::invalid_argument(
                    "kind: give one of VIEW, CLICK, TRY_ON, ADD_TO_CART, PURCHASE",
                )
            })?;
        check_product_id("product_id", &req.product_id)?;
        let catalog = self.snapshot.load();
        let Some(price) = catalog
            .get(&req.product_id)
            .map(|f| (f.currency.clone(), f.price_minor()))
        else {
            return Err(Status::not_found(format!(
                "product_id: no product {:?}",
                req.product_id
            )));
        };
        drop(catalog);
        let impression = match req.impression_id.as_str() {
            "" => None,
            s => Some(crate::impressions::parse_id(s).ok_or_else(|| {
                Status::invalid_argument(
                    "impression_id: not an id this service issued; send \
                     RecommendResponse.impression_id back unchanged, or leave it empty",
                )
            })?),
        };
        let requester = req.requester.unwrap_or_default();
        rank::check_requester(&requester)?;
        // One shopper (of one API key's client) cannot steer popularity:
        // a bound per minute, counted for every replica in Redis.
        let shopper = match (requester.user_id.as_str(), requester.session_id.as_str()) {
            ("", "") => {
                return Err(Status::invalid_argument(
                    "requester: give session_id (or call with an authenticated user) so \
                     interactions count per shopper",
                ));
            }
            ("", session) => format!("s:{session}"),
            (user, _) => format!("u:{user}"),
        };
        if self.interactions_per_minute > 0 {
            let key = format!(
                "interactions:rate:{}:{shopper}",
                who.client.as_deref().unwrap_or("-")
            );
            let n = self
                .cache
                .count(&key, std::time::Duration::from_secs(60))
                .await;
            if n > self.interactions_per_minute {
                metrics::counter!("discovery_interactions_refused_total").increment(1);
                return Err(Status::resource_exhausted(format!(
                    "RecordInteraction: at most {} interactions per shopper per minute; \
                     this one was not recorded",
                    self.interactions_per_minute
                )));
            }
        }
        let now = discovery_kit::now_unix_ms();
        let at = if req.at_unix_ms > 0 {
            req.at_unix_ms
        } else {
            now
        };
        if at > now + 300_000 {
            return Err(Status::invalid_argument(
                "at_unix_ms: more than 5 minutes in the future; send 0 for now",
            ));
        }
        let id = format!("{}-{}-{}", at, req.product_id, unique_suffix());
        self.store
            .put(
                INTERACTIONS,
                doc! {
                    "_id": &id,
                    "userId": &requester.user_id,
                    "sessionId": &requester.session_id,
                    "productId": &req.product_id,
                    "kind": kind.as_str_name(),
                    "at": at,
                    "impressionId": &req.impression_id,
                },
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "storing interaction failed");
                Status::unavailable("interactions cannot be stored right now; retry later")
            })?;
        use crate::impressions::OutcomeKind;
        let outcome = match kind {
            pb::InteractionKind::Click => Some(OutcomeKind::Click),
            pb::InteractionKind::AddToCart => Some(OutcomeKind::AddToCart),
            pb::InteractionKind::Purchase => Some(OutcomeKind::Purchase),
            _ => None,
        };
        if let (Some(log), Some(kind)) = (&self.log, outcome) {
            log.outcome(crate::impressions::Outcome {
                impression,
                user_id: requester.user_id,
                session_id: requester.session_id,
                product_id: req.product_id,
                kind,
                at,
                value: (kind == OutcomeKind::Purchase).then_some(price),
            });
        }
        Ok(Response::new(pb::RecordInteractionResponse {
            interaction_id: id,
        }))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let who = Identity::of(&req);
        let id = req.into_inner().session_id;
        check_session_id(&id)?;
        let session = self.read_session(&who, &id).await?.ok_or_else(|| {
            Status::not_found(format!(
                "session_id: session {id:?} has expired (30 minutes without activity) or never existed"
            ))
        })?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session),
        }))
    }

    async fn update_session(
        &self,
        req: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::UpdateSessionResponse>, Status> {
        let who = Identity::of(&req);
        let mut update = req
            .into_inner()
            .session
            .ok_or_else(|| Status::invalid_argument("session: required"))?;
        check_session_id(&update.session_id)?;
        check_session_update(&update)?;
        if let Some(user) = &who.user {
            // Whose session it is comes from the gateway, not the body.
            update.user_id = user.clone();
        } else if who.client.is_some() {
            update.user_id.clear();
        }
        let mut s = self
            .read_session(&who, &update.session_id)
            .await?
            .unwrap_or_else(|| pb::SessionContext {
                session_id: update.session_id.clone(),
                ..Default::default()
            });
        merge_session(&mut s, update)?;
        s.expires_at_unix_ms = discovery_kit::now_unix_ms() + kinds::SESSION.ttl.as_millis() as i64;
        let key = who.session_key(&s.session_id);
        self.cache
            .set(&kinds::SESSION, &key, Bytes::from(s.encode_to_vec()), &[])
            .await;
        let store = self.store.clone();
        let snapshot = doc! {
            "_id": &s.session_id,
            "sessionId": &s.session_id,
            "userId": &s.user_id,
            "faceAnalysis": {"faceShape": discovery_catalog::face_shape_name(
                s.face.as_ref().and_then(|f| pb::FaceShape::try_from(f.face_shape).ok()).unwrap_or_default())},
            "timestamp": discovery_kit::now_unix_ms(),
            "createdAt": discovery_kit::store::bson::DateTime::now(),
            "completed": false,
        };
        // Durable copy for analytics; the cache is the session's source of truth.
        tokio::spawn(async move {
            if let Err(e) = store.put(AI_SESSIONS, snapshot).await {
                tracing::warn!(error = %e, "session snapshot not stored");
            }
        });
        Ok(Response::new(pb::UpdateSessionResponse {
            session: Some(s),
        }))
    }
}

/// Who a call is for, as the gateway proved it: the API key's client and,
/// for a key of the authenticated tier, the shopper the BFF names
/// (`x-user-id`). Set only by the gateway (`x-discovery-client`,
/// `x-discovery-user`); with internal authentication on, servers drop these
/// headers from any call that is not from another service. A call with no
/// client (a direct internal call) keeps what its body says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The API key's client.
    pub client: Option<String>,
    /// The authenticated shopper.
    pub user: Option<String>,
}

impl Identity {
    /// Reads the identity headers of `req`.
    pub fn of<T>(req: &Request<T>) -> Self {
        let get = |k: &str| {
            req.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map(str::to_string)
        };
        Self {
            client: get("x-discovery-client"),
            user: get("x-discovery-user"),
        }
    }

    /// Personalisation and interactions count for the proven user only: a
    /// browser cannot act as another shopper by naming them in the body.
    pub fn apply(&self, requester: &mut Option<pb::Requester>) {
        if self.client.is_none() {
            return;
        }
        let r = requester.get_or_insert_with(Default::default);
        r.user_id = self.user.clone().unwrap_or_default();
    }

    /// The cache key of a session: the id under its owner (client and
    /// user), so another client asking for the same id finds nothing.
    pub fn session_key(&self, id: &str) -> String {
        match &self.client {
            None => format!("conversation:{id}"),
            // Hex, not a hash: no two owners can ever share a key.
            Some(c) => format!(
                "conversation:{}.{}:{id}",
                hex(c),
                hex(self.user.as_deref().unwrap_or(""))
            ),
        }
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Bounds of a session update (beyond [`merge_session`]'s): every list and
/// string is bounded so one caller cannot grow a session without end.
fn check_session_update(u: &pb::SessionContext) -> Result<(), Status> {
    if u.recently_viewed.len() > MAX_RECENT {
        return Err(Status::invalid_argument(format!(
            "recently_viewed: {} entries; send at most {MAX_RECENT} per update",
            u.recently_viewed.len()
        )));
    }
    for p in &u.recently_viewed {
        check_product_id("recently_viewed", p)?;
    }
    if u.user_id.len() > 128 {
        return Err(Status::invalid_argument(
            "user_id: at most 128 bytes".to_string(),
        ));
    }
    if let Some(p) = &u.preferences {
        for (field, list) in [
            ("preferences.style_keywords", &p.style_keywords),
            ("preferences.colors", &p.colors),
            ("preferences.brands", &p.brands),
        ] {
            if list.len() > rank::MAX_LIST || list.iter().any(|v| v.len() > 64) {
                return Err(Status::invalid_argument(format!(
                    "{field}: at most {} entries of at most 64 bytes",
                    rank::MAX_LIST
                )));
            }
        }
        if p.shapes.len() > 16 {
            return Err(Status::invalid_argument(
                "preferences.shapes: at most 16 entries",
            ));
        }
    }
    if u.attributes.len() > MAX_ATTRIBUTES {
        return Err(Status::invalid_argument(format!(
            "attributes: at most {MAX_ATTRIBUTES} per update"
        )));
    }
    Ok(())
}

impl Service {
    async fn read_session(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Option<pb::SessionContext>, Status> {
        let key = who.session_key(id);
        let Some(b) = self.cache.get(&kinds::SESSION, &key).await else {
            return Ok(None);
        };
        let mut s = pb::SessionContext::decode(b)
            .map_err(|e| Status::internal(format!("session {id:?} unreadable: {e}")))?;
        // Sliding: the read extended it.
        s.expires_at_unix_ms = discovery_kit::now_unix_ms() + kinds::SESSION.ttl.as_millis() as i64;
        Ok(Some(s))
    }
}

/// Computed result: encoded payload, rows shown, tags.
type Computed = (Vec<u8>, Vec<usize>, Vec<String>);

/// Runs `compute` here, or on a blocking thread when `blocking`.
async fn run<F>(blocking: bool, catalog: &Arc<Catalog>, compute: F) -> Result<Computed, Status>
where
    F: Fn(&Catalog) -> Result<Computed, Status> + Send + 'static,
{
    if !blocking {
        return compute(catalog);
    }
    let catalog = catalog.clone();
    tokio::task::spawn_blocking(move || compute(&catalog))
        .await
        .map_err(|e| Status::internal(format!("search task failed: {e}")))?
}

/// Longest product id accepted, bytes (ids are `source:external-id`).
pub const MAX_PRODUCT_ID: usize = 256;

/// A product id must be 1-256 bytes: a longer one cannot exist, and
/// echoing it back in a NOT_FOUND would make the answer's headers huge.
fn check_product_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: give a product id"
        )));
    }
    if id.len() > MAX_PRODUCT_ID {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes is over the maximum of {MAX_PRODUCT_ID} for a product id",
            id.len()
        )));
    }
    Ok(())
}

fn check_session_id(id: &str) -> Result<(), Status> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(Status::invalid_argument(
            "session_id: 1-128 characters of letters, digits, '-', '_', '.', ':'",
        ));
    }
    Ok(())
}

/// Session limits.
const MAX_ATTRIBUTES: usize = 64;
const MAX_RECENT: usize = 50;

fn merge_session(s: &mut pb::SessionContext, u: pb::SessionContext) -> Result<(), Status> {
    if !u.user_id.is_empty() {
        s.user_id = u.user_id;
    }
    if let Some(face) = u.face {
        rank::face_widths(&face)?;
        s.face = Some(face);
    }
    if u.preferences.is_some() {
        s.preferences = u.preferences;
    }
    for (k, v) in u.attributes {
        if k.len() > 64 || v.len() > 4096 {
            return Err(Status::invalid_argument(format!(
                "attributes: key {k:?} over 64 bytes or value over 4 KiB"
            )));
        }
        if v.is_empty() {
            s.attributes.remove(&k);
        } else {
            s.attributes.insert(k, v);
        }
    }
    if s.attributes.len() > MAX_ATTRIBUTES {
        return Err(Status::invalid_argument(format!(
            "attributes: at most {MAX_ATTRIBUTES} per session (an empty value removes one)"
        )));
    }
    let mut recent = u.recently_viewed;
    recent.extend(std::mem::take(&mut s.recently_viewed));
    let mut seen = std::collections::HashSet::new();
    recent.retain(|p| seen.insert(p.clone()));
    recent.truncate(MAX_RECENT);
    s.recently_viewed = recent;
    Ok(())
}

fn unique_suffix() -> u32 {
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
        // Validate before touching the cache.
        let catalog = self.snapshot.load();
        let words = search::parse(&catalog, &req)?.words().len();
        let large = search::is_large(&catalog, words);
        drop(catalog);
        let mut canonical = req.clone();
        canonical.query = canonical.query.trim().to_lowercase();
        let key = format!("search:{:016x}", fnv1a(&canonical.encode_to_vec()));
        let entry = page_inputs(req.filter.as_ref(), req.include_facets);
        let Served { payload, .. } = self
            .cached(&kinds::SEARCH, key, entry, large, move |catalog| {
                let r = search::search(catalog, &req)?;
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
                        .map(|(i, score)| pb::SearchHit {
                            product: Some(catalog.frames[i].to_proto()),
                            score,
                        })
                        .collect(),
                    facets: r.facets,
                    corrected_query: r.corrected,
                };
                Ok((resp.encode_to_vec(), rows, tags))
            })
            .await?;
        let resp = pb::SearchProductsResponse::decode(payload)
            .map_err(|e| Status::internal(format!("cached search unreadable: {e}")))?;
        Ok(Response::new(resp))
    }
}

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

const TAG_PREFIXES: [&str; 3] = ["product:", "brand:", "face_shape:"];
const KEY_PREFIXES: [&str; 5] = [
    "recommendations:",
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

#[cfg(test)]
mod tests {
    use super::*;
    use discovery_catalog::demo_catalog;

    #[test]
    fn envelopes_reject_changed_products() {
        let any = [crate::snapshot::ANY.to_string()];
        let c = Catalog::new(demo_catalog(50), 1);
        let e = envelope(7, &c, &any, &[1, 2, 3], b"payload");
        assert_eq!(open_envelope(7, &c, e.clone()).unwrap(), "payload");
        // A page another replica made (well after this one loaded) is
        // checked product by product.
        let mut theirs = Catalog::new(demo_catalog(50), 1);
        theirs.fresh.as_of = c.fresh.loaded_at + 2 * PEER_LAG_MS;
        let t = envelope(8, &theirs, &any, &[1, 2, 3], b"payload");
        assert_eq!(open_envelope(7, &c, t.clone()).unwrap(), "payload");
        let mut f = (*c.frames[2]).clone();
        f.price += 10.0;
        f.metadata.version += 1;
        let (c2, applied) = c.apply(vec![Change::Upsert(Box::new(f))]);
        assert_eq!(applied.applied, 1);
        assert_eq!(applied.tags, vec![format!("product:{}", c.frames[2].id)]);
        assert_eq!(c2.version, 2);
        assert!(
            open_envelope(7, &c2, e.clone()).is_none(),
            "price change detected"
        );
        assert!(open_envelope(7, &c2, t).is_none(), "on every replica");
        let (c3, _) = c.apply(vec![Change::Delete(c.frames[1].id.clone())]);
        assert!(open_envelope(7, &c3, e).is_none(), "deletion detected");
        assert!(open_envelope(7, &c, Bytes::from_static(&[5, 0, 1])).is_none());
    }

    /// Issue 17: a page is stale when a product that could enter it changed
    /// (a new frame, a restock), not only when one it shows did; a page
    /// filtered to other brands is not.
    #[test]
    fn a_product_that_could_enter_a_page_makes_it_stale() {
        use crate::snapshot::{ANY, PageInputs, page_entry_tags};
        let c = Catalog::new(demo_catalog(50), 1);
        let brand = c.frames[0].brand.clone();
        let other = c
            .frames
            .iter()
            .find(|f| f.brand != brand)
            .unwrap()
            .brand
            .clone();
        let brands = [brand.clone()];
        let filtered = page_entry_tags(PageInputs {
            brands: &brands,
            ..Default::default()
        });
        let page = envelope(7, &c, &filtered, &[0], b"p");
        let open = envelope(7, &c, &[ANY.to_string()], &[0], b"p");
        let new_frame = |id: &str, brand: &str| {
            let mut f = (*c.frames[1]).clone();
            f.id = id.into();
            f.brand = brand.into();
            Change::Upsert(Box::new(f))
        };
        // A new frame of another brand: the brand's page holds, an
        // unfiltered one does not.
        let (c2, _) = c.apply(vec![new_frame("zz-new-1", &other)]);
        assert!(open_envelope(7, &c2, page.clone()).is_some());
        assert!(open_envelope(7, &c2, open).is_none());
        // A new frame of its brand (any case): stale.
        let (c3, _) = c2.apply(vec![new_frame("zz-new-2", &brand.to_uppercase())]);
        assert!(open_envelope(7, &c3, page).is_none());
        // A restock of a frame it does not show: stale if it shows in-stock
        // frames only; a page without that filter cannot change.
        let in_stock = page_entry_tags(PageInputs {
            brands: &brands,
            stock: true,
            ..Default::default()
        });
        let plain = envelope(7, &c3, &filtered, &[0], b"p");
        let stocked = envelope(7, &c3, &in_stock, &[0], b"p");
        let row = c3.index("zz-new-2").unwrap();
        let mut restocked = (*c3.frames[row]).clone();
        restocked.inventory.is_in_stock = !restocked.inventory.is_in_stock;
        restocked.metadata.version += 1;
        let (c4, _) = c3.apply(vec![Change::Upsert(Box::new(restocked.clone()))]);
        assert!(open_envelope(7, &c4, stocked).is_none());
        assert!(open_envelope(7, &c4, plain.clone()).is_some());
        // A price change alone: only pages filtering on price.
        let priced = envelope(
            7,
            &c4,
            &page_entry_tags(PageInputs {
                price: true,
                ..Default::default()
            }),
            &[0],
            b"p",
        );
        let again = envelope(7, &c4, &filtered, &[0], b"p");
        restocked.price += 5.0;
        restocked.metadata.version += 1;
        let (c4, _) = c4.apply(vec![Change::Upsert(Box::new(restocked))]);
        assert!(open_envelope(7, &c4, priced).is_none());
        assert!(open_envelope(7, &c4, again.clone()).is_some());
        // Another replica's page made just before this one applied the
        // change is not trusted (its maker may not have had it yet).
        let mut theirs = Catalog::new(demo_catalog(50), 1);
        theirs.fresh.as_of = c4.fresh.as_of - 10;
        let t = envelope(8, &theirs, &filtered, &[0], b"p");
        assert!(open_envelope(7, &c4, t).is_none());
    }

    /// One shopper cannot steer popularity: past the bound a minute, an
    /// interaction is refused (and not stored); another shopper is not
    /// affected; an interaction naming no shopper is refused.
    #[tokio::test]
    async fn interactions_are_bounded_per_shopper_per_minute() {
        use crate::server::recommendation_server::Recommendation as _;
        let snapshot = Snapshot::default();
        snapshot.replace(Catalog::new(demo_catalog(20), 1));
        let product = snapshot.load().frames[0].id.clone();
        let cache = Arc::new(
            Cache::new(&discovery_kit::cache::CacheConfig::l1_only(1 << 20))
                .await
                .unwrap(),
        );
        let svc = Service {
            interactions_per_minute: 5,
            ..Service::new(
                snapshot,
                discovery_kit::store::memory::MemoryStore::new(),
                cache,
            )
        };
        let record = |session: &str| {
            tonic::Request::new(pb::RecordInteractionRequest {
                requester: Some(pb::Requester {
                    session_id: session.into(),
                    ..Default::default()
                }),
                product_id: product.clone(),
                kind: pb::InteractionKind::Click as i32,
                ..Default::default()
            })
        };
        let mut codes = Vec::new();
        for _ in 0..7 {
            codes.push(match svc.record_interaction(record("greedy")).await {
                Ok(_) => tonic::Code::Ok,
                Err(e) => e.code(),
            });
        }
        // The minute may turn over mid-test: at most one extra window.
        let ok = codes.iter().filter(|c| **c == tonic::Code::Ok).count();
        assert!((5..=7).contains(&ok), "{codes:?}");
        assert!(
            codes
                .iter()
                .all(|c| matches!(c, tonic::Code::Ok | tonic::Code::ResourceExhausted)),
            "{codes:?}"
        );
        if ok == 5 {
            assert_eq!(codes[5..], [tonic::Code::ResourceExhausted; 2]);
        }
        assert!(svc.record_interaction(record("calm")).await.is_ok());
        let e = svc.record_interaction(record("")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn nearby_requests_share_a_key_and_different_ones_do_not() {
        let c = Catalog::new(demo_catalog(50), 1);
        let req = |w: f32, brands: Vec<&str>| pb::RecommendRequest {
            face: Some(pb::FaceContext {
                face_shape: pb::FaceShape::Round as i32,
                face_width_mm: w,
                ..Default::default()
            }),
            requester: Some(pb::Requester {
                user_id: String::new(),
                session_id: "s1".into(),
            }),
            filter: Some(pb::ProductFilter {
                brands: brands.into_iter().map(String::from).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let key = |r: &pb::RecommendRequest| {
            recommend_key(r, &rank::Query::compile(&c, r).unwrap(), "default")
        };
        let a = key(&req(134.2, vec!["Oakley", "Ray-Ban"]));
        assert!(a.starts_with("recommendations:anon:round:"), "{a}");
        assert_eq!(a, key(&req(133.8, vec!["ray-ban", "oakley"])));
        assert_ne!(a, key(&req(138.0, vec!["Oakley", "Ray-Ban"])));
        // Where it is shown shares the page; a ranking variant does not.
        let mut placed = req(134.2, vec!["Oakley", "Ray-Ban"]);
        placed.placement = "home".into();
        assert_eq!(a, key(&placed));
        let r = req(134.2, vec!["Oakley", "Ray-Ban"]);
        let q = rank::Query::compile(&c, &r).unwrap();
        assert_ne!(a, recommend_key(&r, &q, "fit-heavy/fit"));
    }

    #[test]
    fn sessions_merge_as_documented() {
        let mut s = pb::SessionContext {
            session_id: "s".into(),
            recently_viewed: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        s.attributes.insert("step".into(), "1".into());
        let mut u = pb::SessionContext {
            session_id: "s".into(),
            user_id: "u1".into(),
            recently_viewed: vec!["c".into(), "a".into()],
            ..Default::default()
        };
        u.attributes.insert("step".into(), "2".into());
        u.attributes.insert("lang".into(), "de".into());
        merge_session(&mut s, u).unwrap();
        assert_eq!(s.user_id, "u1");
        assert_eq!(s.recently_viewed, vec!["c", "a", "b"]);
        assert_eq!(s.attributes["step"], "2");
        assert_eq!(s.attributes.len(), 2);
        assert!(check_session_id("bad id").is_err());
        assert!(check_session_id("web-123:abc").is_ok());
    }
}
