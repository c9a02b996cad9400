//! Invalidation: by key, tag or pattern, on this replica and, through
//! [`INVALIDATION_CHANNEL`], on every other.

use super::*;

impl Cache {
    /// Removes `key` from both levels (this replica's L1 and L2).
    pub async fn delete(&self, key: &str) {
        self.l1.invalidate(key).await;
        if let Some(pool) = &self.l2
            && let Err(e) = pool.del::<i64, _>(key).await
        {
            l2_error("del", &e);
        }
    }

    /// Removes `key` from this replica's L1 only.
    pub async fn delete_local(&self, key: &str) {
        self.l1.invalidate(key).await;
    }

    /// Drops entries carrying one of `tags` from this replica's L1 only (for
    /// a replica applying a change another replica already broadcast).
    pub async fn drop_tags_local(&self, tags: &[String]) -> u64 {
        drop_tagged_l1(&self.l1, &self.tags, tags).await
    }

    /// Drops every entry carrying one of `tags`, on every replica and in L2.
    /// Returns the entries dropped from this replica's L1.
    pub async fn invalidate_tags(&self, tags: &[String]) -> u64 {
        if tags.is_empty() {
            return 0;
        }
        let dropped = drop_tagged_l1(&self.l1, &self.tags, tags).await;
        if let Some(pool) = &self.l2
            && pool.is_connected()
        {
            let jobs = tags.iter().map(|t| async move {
                let set = tag_set(t);
                match pool
                    .zrange::<Vec<String>, _, _, _>(&set, 0, -1, None, false, None, false)
                    .await
                {
                    Ok(keys) => {
                        let dels = keys.iter().map(|k| pool.del::<i64, _>(k.as_str()));
                        for r in futures::future::join_all(dels).await {
                            if let Err(e) = r {
                                l2_error("del", &e);
                            }
                        }
                        if let Err(e) = pool.del::<i64, _>(&set).await {
                            l2_error("del", &e);
                        }
                    }
                    Err(e) => l2_error("zrange", &e),
                }
            });
            futures::future::join_all(jobs).await;
        }
        self.bus
            .publish(
                INVALIDATION_CHANNEL,
                &Invalidation::Tags(tags.to_vec()).encode(),
            )
            .await;
        metrics::counter!("discovery_cache_invalidations_total", "by" => "tag")
            .increment(tags.len() as u64);
        dropped
    }

    /// Drops every key matching the glob `pattern` (`*` and `?`) on every
    /// replica and in L2. Returns the entries dropped from this replica's L1.
    pub async fn invalidate_pattern(&self, pattern: &str) -> u64 {
        let dropped = drop_matching_l1(&self.l1, pattern).await;
        if let Some(pool) = &self.l2
            && pool.is_connected()
        {
            let client = pool.next().clone();
            let mut keys = client.scan_cluster_buffered(pattern, Some(500), None);
            let mut batch = Vec::new();
            while let Some(k) = keys.next().await {
                match k {
                    Ok(k) => batch.push(k),
                    Err(e) => {
                        l2_error("scan", &e);
                        break;
                    }
                }
            }
            let dels = batch.into_iter().map(|k| pool.del::<i64, _>(k));
            for r in futures::future::join_all(dels).await {
                if let Err(e) = r {
                    l2_error("del", &e);
                }
            }
        }
        self.bus
            .publish(
                INVALIDATION_CHANNEL,
                &Invalidation::Pattern(pattern.to_string()).encode(),
            )
            .await;
        metrics::counter!("discovery_cache_invalidations_total", "by" => "pattern").increment(1);
        dropped
    }
}

pub(super) async fn drop_tagged_l1(
    l1: &moka::future::Cache<Arc<str>, Entry>,
    index: &TagIndex,
    tags: &[String],
) -> u64 {
    let keys: HashSet<Arc<str>> = {
        let mut index = index.lock();
        tags.iter()
            .filter_map(|t| index.remove(t.as_str()))
            .flatten()
            .collect()
    };
    let mut n = 0;
    for k in keys {
        if l1.remove(&k).await.is_some() {
            n += 1;
        }
    }
    n
}

pub(super) async fn drop_matching_l1(
    l1: &moka::future::Cache<Arc<str>, Entry>,
    pattern: &str,
) -> u64 {
    let keys: Vec<Arc<str>> = l1
        .iter()
        .filter(|(k, _)| glob_match(pattern, k))
        .map(|(k, _)| (*k).clone())
        .collect();
    let mut n = 0;
    for k in keys {
        if l1.remove(&k).await.is_some() {
            n += 1;
        }
    }
    n
}

/// Glob with `*` (any run) and `?` (any one character), as Redis `SCAN MATCH`
/// without character classes.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

pub(super) enum Invalidation {
    Tags(Vec<String>),
    Pattern(String),
}

impl Invalidation {
    fn encode(&self) -> Vec<u8> {
        match self {
            Self::Tags(t) => format!("T{}", t.join("\n")).into_bytes(),
            Self::Pattern(p) => format!("P{p}").into_bytes(),
        }
    }
    pub(super) fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        match s.split_at_checked(1)? {
            ("T", rest) => Some(Self::Tags(rest.split('\n').map(str::to_string).collect())),
            ("P", rest) => Some(Self::Pattern(rest.to_string())),
            _ => None,
        }
    }
}
