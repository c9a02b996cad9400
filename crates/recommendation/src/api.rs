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
use crate::kinds;
use crate::server::recommendation_server::Recommendation;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use discovery_kit::cache::{Cache, CacheKind, Loaded, Lookup, Source};
use discovery_kit::store::Store;
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_server::CacheAdmin;
use discovery_proto::v1::catalog_server::Catalog as CatalogApi;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::rank::{self, RankError};
use crate::search;
use crate::snapshot::{Catalog, Change, Snapshot};
use crate::understand;
use discovery_catalog::{Embedding, FACE_SHAPES, Frame, fnv1a};
use discovery_kit::internal::require_caller;

pub use crate::store::{AI_SESSIONS, INTERACTIONS};
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
    /// The sentence-embedding model (`None`: not installed; search is
    /// lexical and says so).
    pub(crate) embedder: Option<Arc<discovery_embed::Embedder>>,
    /// The query-understanding lexicon of the current snapshot.
    pub(crate) lexicons: Arc<crate::understand::Lexicons>,
    /// Search suggestions and the popular searches they learn from.
    pub(crate) suggestions: Arc<crate::suggest::Suggestions>,
    /// The conversational intents' labelled examples, embedded (`None`
    /// without the model: rules alone decide).
    pub(crate) intents: Option<Arc<crate::converse::Examples>>,
}

/// Default of `DISCOVERY_INTERACTIONS_PER_MINUTE`: two a second on average
/// is more than a shopper browsing does, and too few to steer popularity.
pub const INTERACTIONS_PER_MINUTE: u64 = 120;

/// Who may call the cache administration methods: the gateway (for keys
/// with the admin scope) and monitoring (warming on a low hit rate).
const CACHE_ADMINS: &[&str] = &["gateway", "monitoring"];

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
    compute_recommend_with(catalog, req, ranking, None)
}

/// [`compute_recommend`] with what the request's free text adds.
pub fn compute_recommend_with(
    catalog: &Catalog,
    req: &pb::RecommendRequest,
    ranking: rank::Ranking,
    text: Option<&rank::Text>,
) -> Result<(pb::RecommendResponse, Vec<usize>), RankError> {
    let (page, total, q) = rank::recommend_with(catalog, req, ranking, text)?;
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
            embedder: None,
            lexicons: Arc::default(),
            suggestions: Arc::default(),
            intents: None,
        }
    }

    /// The same service matching search text by meaning with `embedder`.
    /// (Embeds the conversational intents' examples: a few hundred
    /// milliseconds of one core, once.)
    pub fn with_embedder(self, embedder: Option<Arc<discovery_embed::Embedder>>) -> Self {
        let intents = embedder.as_ref().and_then(|e| {
            crate::converse::Examples::embed(e)
                .map_err(|e| tracing::warn!(error = %e, "intent examples not embedded; rules alone decide"))
                .ok()
                .map(Arc::new)
        });
        Self {
            embedder,
            intents,
            ..self
        }
    }

    /// What a Recommend request's free text adds (`None` without text).
    async fn recommend_text(&self, text: &str) -> Result<Option<Arc<rank::Text>>, Status> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        if text.len() > search::MAX_QUERY {
            return Err(Status::invalid_argument(format!(
                "text: {} bytes is over the maximum of {}",
                text.len(),
                search::MAX_QUERY
            )));
        }
        let catalog = self.snapshot.load();
        let u = understand::understand(&self.lexicons.get(&catalog), text);
        let vector = if u.rest.trim().is_empty() {
            None
        } else {
            self.query_vector(&u.rest)
                .await
                .ok()
                .map(|v| Arc::new(discovery_embed::quant::Query::new(&v)))
        };
        Ok(Some(Arc::new(rank::Text {
            wanted: u.wanted,
            face_shape: u.face_shape,
            size: u.size,
            vector,
            rest: u.rest,
        })))
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
        let text = self.recommend_text(&req.text).await?;
        let r = req.clone();
        let ranking = assignment.ranking;
        let page = self
            .cached(&kinds::RECOMMENDATIONS, key, entry, false, move |catalog| {
                let (resp, rows) = compute_recommend_with(catalog, &r, ranking, text.as_deref())?;
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
                let mut f = Frame::from_proto(p)
                    .map_err(|e| Status::invalid_argument(format!("changes[{i}]: {e}")))?;
                if let Some(e) = &c.embedding {
                    f.embedding = Some(
                        Embedding::from_proto(e, discovery_embed::DIM)
                            .map_err(|e| Status::invalid_argument(format!("changes[{i}].{e}")))?,
                    );
                }
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
        let interaction = crate::store::interaction_document(
            &id,
            &requester,
            &req.product_id,
            kind.as_str_name(),
            at,
            &req.impression_id,
        );
        self.store
            .put(INTERACTIONS, interaction)
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
        let snapshot = crate::store::session_document(&s);
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

mod cache_admin;
mod experiments;
mod journey;

mod catalog_api;
pub use catalog_api::warm_requests;
mod converse_api;

mod validate;
pub use validate::MAX_PRODUCT_ID;
use validate::{
    MAX_ATTRIBUTES, MAX_RECENT, check_product_id, check_session_id, merge_session, unique_suffix,
};

mod page;
pub use page::PEER_LAG_MS;
use page::{envelope, open_page, page_inputs};

mod identity;
pub use identity::Identity;
use identity::check_session_update;

#[cfg(test)]
mod tests;
