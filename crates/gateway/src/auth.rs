//! API keys: hashed at rest in MongoDB (`api_keys`), loaded into memory and
//! refreshed, checked on every call.
//!
//! A key reads `dk_<id>_<secret>` (12 + 32 hex characters). Only its
//! SHA-256 is stored, under its id; the plaintext is shown once, when it is
//! created. Each key names a client (the shop or integration), a tier
//! (anonymous, authenticated, partner: which per-user limits apply) and
//! scopes (public, ingest, admin: which methods it may call). Revocation
//! sets `revokedAt`; gateways drop the key at their next refresh.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use discovery_kit::store::{FindOptions, Store, StoreError, bson, doc};
use http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::routes::{Route, Scope};

/// Collection of API keys (owned by the gateway).
pub const API_KEYS: &str = "api_keys";

/// Client tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Browsers and shoppers who are not signed in.
    Anonymous,
    /// A shop's backend acting for signed-in shoppers (`x-user-id`).
    Authenticated,
    /// Trusted integrations: no per-user limits.
    Partner,
}

impl Tier {
    /// Name in key documents and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Anonymous => "anonymous",
            Tier::Authenticated => "authenticated",
            Tier::Partner => "partner",
        }
    }

    /// Parses a tier name.
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "anonymous" => Some(Tier::Anonymous),
            "authenticated" => Some(Tier::Authenticated),
            "partner" => Some(Tier::Partner),
            _ => None,
        }
    }
}

/// A key as loaded (no plaintext).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// Public id (first part of the key).
    pub id: String,
    /// Client name.
    pub client: String,
    /// Tier.
    pub tier: Tier,
    /// Allowed scopes.
    pub scopes: Vec<Scope>,
    /// Feed sources an ingest key may write and read (`*`: all).
    pub sources: Vec<String>,
    hash: [u8; 32],
}

impl ApiKey {
    /// A key with every scope, for tests of other layers.
    #[doc(hidden)]
    pub fn for_tests(client: &str, tier: Tier) -> ApiKey {
        ApiKey {
            id: "000000000000".into(),
            client: client.into(),
            tier,
            scopes: vec![Scope::Public, Scope::Ingest, Scope::Admin],
            sources: vec!["*".into()],
            hash: [0; 32],
        }
    }

    /// The `x-discovery-sources` the gateway sends for this key: only
    /// for keys with the ingest scope (comma-separated; `*` for all).
    pub fn sources_header(&self) -> Option<http::HeaderValue> {
        if !self.scopes.contains(&Scope::Ingest) {
            return None;
        }
        http::HeaderValue::from_str(&self.sources.join(",")).ok()
    }
}

/// Checks a list of feed sources for a key (`*`, or source names).
pub fn check_sources(sources: &[String]) -> Result<(), String> {
    if sources.len() > 100 {
        return Err("sources: at most 100 per key".into());
    }
    for s in sources {
        let ok = s == "*"
            || (!s.is_empty()
                && s.len() <= 100
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":._-".contains(c)));
        if !ok {
            return Err(format!(
                "sources: {s:?} is not a source name (letters, digits, ':', '.', '_', '-') or *"
            ));
        }
    }
    Ok(())
}

/// Who is calling, as the limiter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The key.
    pub key: Arc<ApiKey>,
    /// Tier applied: the key's, except that an authenticated-tier key
    /// without `x-user-id` is limited as anonymous, per address.
    pub tier: Tier,
    /// Who the per-user limits count: `u:<user id>` or `ip:<address>`.
    pub requester: String,
}

fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equal-time comparison of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `<id>` of `dk_<id>_<secret>`.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("dk_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && secret.len() == 32).then_some(id)
}

/// Keys in memory, swapped whole on refresh.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: RwLock<Arc<HashMap<String, Arc<ApiKey>>>>,
}

/// A key document that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
}

fn parse_doc(d: &bson::Document) -> Option<ApiKey> {
    let hash = hex::decode(d.get_str("hash").ok()?).ok()?;
    Some(ApiKey {
        id: d.get_str("_id").ok()?.to_string(),
        client: d.get_str("client").ok()?.to_string(),
        tier: Tier::parse(d.get_str("tier").ok()?)?,
        scopes: d
            .get_array("scopes")
            .ok()?
            .iter()
            .filter_map(|s| s.as_str().and_then(Scope::parse))
            .collect(),
        // Keys made before sources existed have none: they may ingest
        // nothing until recreated with --sources.
        sources: d
            .get_array("sources")
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        hash: hash.try_into().ok()?,
    })
}

impl KeyRing {
    /// Replaces the keys.
    pub fn replace(&self, keys: impl IntoIterator<Item = ApiKey>) {
        let map = keys
            .into_iter()
            .map(|k| (k.id.clone(), Arc::new(k)))
            .collect();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True without keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reloads every unrevoked key from the store.
    pub async fn refresh(&self, store: &Store) -> Result<usize, StoreError> {
        let docs = store
            .find(API_KEYS, doc! {"revokedAt": null}, FindOptions::default())
            .await?;
        let keys: Vec<ApiKey> = docs
            .iter()
            .filter_map(|d| {
                let k = parse_doc(d);
                if k.is_none() {
                    tracing::warn!(id = ?d.get("_id"), "skipping an unreadable API key document");
                }
                k
            })
            .collect();
        let n = keys.len();
        self.replace(keys);
        Ok(n)
    }

    /// The key presented in `x-api-key` or `authorization: Bearer`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<ApiKey>, Status> {
        let presented = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("missing API key: send it in the x-api-key header (or authorization: Bearer <key>)")
            })?;
        let invalid = || Status::unauthenticated("invalid or revoked API key");
        let id = key_id(presented).ok_or_else(invalid)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let key = keys.get(id).ok_or_else(invalid)?;
        if !same(&key.hash, &sha256(presented)) {
            return Err(invalid());
        }
        Ok(key.clone())
    }

    /// Authenticates and authorises a call to `route`.
    pub fn admit(
        &self,
        headers: &HeaderMap,
        route: &Route,
        peer: Option<IpAddr>,
    ) -> Result<Principal, Status> {
        let key = self.authenticate(headers)?;
        if !key.scopes.contains(&route.scope) {
            return Err(Status::permission_denied(format!(
                "the API key of client {:?} lacks the {:?} scope that {} needs",
                key.client,
                route.scope.name(),
                route.method
            )));
        }
        let user = headers
            .get("x-user-id")
            .and_then(|v| v.to_str().ok())
            .filter(|u| !u.is_empty() && u.len() <= 128);
        let (tier, requester) = match (key.tier, user) {
            (Tier::Partner, _) => (Tier::Partner, format!("k:{}", key.id)),
            (Tier::Authenticated, Some(u)) => (Tier::Authenticated, format!("u:{u}")),
            (_, _) => (
                Tier::Anonymous,
                match peer {
                    Some(ip) => crate::client_addr::requester_of(ip),
                    None => format!("k:{}", key.id),
                },
            ),
        };
        Ok(Principal {
            key,
            tier,
            requester,
        })
    }
}

/// Creates a key; returns the plaintext (shown once) and its id. A key
/// with the ingest scope may use every feed source (see
/// [`create_with_sources`] to scope it).
pub async fn create(
    store: &Store,
    client: &str,
    tier: Tier,
    scopes: &[Scope],
) -> Result<(String, String), KeyError> {
    create_with_sources(store, client, tier, scopes, &["*".to_string()]).await
}

/// Creates a key whose ingest scope covers only `sources` (`*`: all).
pub async fn create_with_sources(
    store: &Store,
    client: &str,
    tier: Tier,
    scopes: &[Scope],
    sources: &[String],
) -> Result<(String, String), KeyError> {
    check_sources(sources).map_err(KeyError::Invalid)?;
    if client.is_empty() || client.len() > 100 {
        return Err(KeyError::Invalid(
            "client: give a name of 1-100 characters".into(),
        ));
    }
    if scopes.is_empty() {
        return Err(KeyError::Invalid(
            "scopes: give at least one of public, ingest, admin".into(),
        ));
    }
    let mut bytes = [0u8; 22];
    rand::rng().fill_bytes(&mut bytes);
    let id = hex::encode(&bytes[..6]);
    let key = format!("dk_{id}_{}", hex::encode(&bytes[6..]));
    store
        .put(
            API_KEYS,
            doc! {
                "_id": &id,
                "hash": hex::encode(sha256(&key)),
                "client": client,
                "tier": tier.name(),
                "scopes": scopes.iter().map(|s| s.name()).collect::<Vec<_>>(),
                "sources": sources,
                "createdAt": bson::DateTime::now(),
                "revokedAt": null,
            },
        )
        .await?;
    Ok((key, id))
}

/// Revokes a key by id; false when there is no such key.
pub async fn revoke(store: &Store, id: &str) -> Result<bool, KeyError> {
    let Some(mut d) = store.get(API_KEYS, id).await? else {
        return Ok(false);
    };
    d.insert("revokedAt", bson::DateTime::now());
    store.put(API_KEYS, d).await?;
    Ok(true)
}

/// Keys as stored (no secrets): id, client, tier, scopes, revoked.
pub async fn list(store: &Store) -> Result<Vec<bson::Document>, KeyError> {
    let mut docs = store
        .find(API_KEYS, doc! {}, FindOptions::default())
        .await?;
    for d in &mut docs {
        d.remove("hash");
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::lookup;
    use discovery_kit::store::memory::MemoryStore;

    #[tokio::test]
    async fn keys_are_stored_hashed_checked_scoped_and_revocable() {
        let store: Store = MemoryStore::new();
        let (key, id) = create(&store, "shop-a", Tier::Authenticated, &[Scope::Public])
            .await
            .unwrap();
        let stored = store.get(API_KEYS, &id).await.unwrap().unwrap();
        assert!(
            !format!("{stored:?}").contains(&key[16..]),
            "no plaintext at rest"
        );
        let ring = KeyRing::default();
        assert_eq!(ring.refresh(&store).await.unwrap(), 1);

        let headers = |k: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", k.parse().unwrap());
            h
        };
        let recommend = lookup("/discovery.v1.Discovery/Recommend").unwrap();
        let warm = lookup("/discovery.v1.Discovery/WarmCache").unwrap();
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        let p = ring.admit(&headers(&key), recommend, peer).unwrap();
        assert_eq!(
            (p.tier, p.requester.as_str()),
            (Tier::Anonymous, "ip:10.0.0.1"),
            "no x-user-id"
        );
        let mut h = headers(&key);
        h.insert("x-user-id", "alice".parse().unwrap());
        let p = ring.admit(&h, recommend, peer).unwrap();
        assert_eq!(
            (p.tier, p.requester.as_str()),
            (Tier::Authenticated, "u:alice")
        );
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", format!("Bearer {key}").parse().unwrap());
        assert!(ring.admit(&bearer, recommend, peer).is_ok());

        let e = ring.admit(&headers(&key), warm, peer).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("admin"), "{}", e.message());
        let e = ring.admit(&HeaderMap::new(), recommend, peer).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let forged = format!(
            "{}{}",
            &key[..key.len() - 1],
            if key.ends_with('0') { '1' } else { '0' }
        );
        assert_eq!(
            ring.admit(&headers(&forged), recommend, peer)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            ring.admit(&headers("dk_nope"), recommend, peer)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );

        assert!(revoke(&store, &id).await.unwrap());
        ring.refresh(&store).await.unwrap();
        assert_eq!(
            ring.admit(&headers(&key), recommend, peer)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert!(!revoke(&store, "nope").await.unwrap());
        let listed = list(&store).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].get("hash").is_none());
    }
}
