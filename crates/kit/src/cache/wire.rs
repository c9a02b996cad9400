//! The L2 wire format (flags, stored time, tags, zstd above
//! [`COMPRESS_ABOVE`]), and the lookup's span and metrics.

use super::*;

/// One span per lookup (`cache.hit` and `cache.level` filled by [`record`]).
pub(super) fn lookup_span(kind: &'static CacheKind) -> tracing::Span {
    tracing::info_span!(
        "cache.lookup",
        otel.name = %format_args!("cache {}", kind.name),
        cache.kind = kind.name,
        cache.hit = tracing::field::Empty,
        cache.level = tracing::field::Empty,
    )
}

pub(super) fn record(kind: &'static CacheKind, level: &'static str, hit: bool, started: Instant) {
    let span = tracing::Span::current();
    span.record("cache.hit", hit);
    span.record("cache.level", level);
    let result = if hit {
        kind.hits.fetch_add(1, Ordering::Relaxed);
        "hit"
    } else {
        kind.misses.fetch_add(1, Ordering::Relaxed);
        "miss"
    };
    REQUESTS.increment([kind.name, result, level], 1);
    LOOKUPS.record([kind.name, result], started.elapsed().as_secs_f64());
}

static REQUESTS: crate::metrics::Counters<3> = crate::metrics::Counters::new(
    "discovery_cache_requests_total",
    ["kind", "result", "level"],
);
static LOOKUPS: crate::metrics::Histograms<2> = crate::metrics::Histograms::new(
    "discovery_cache_lookup_duration_seconds",
    ["kind", "result"],
);

pub(super) fn l2_error(op: &'static str, e: &fred::error::Error) {
    metrics::counter!("discovery_cache_l2_errors_total", "op" => op).increment(1);
    tracing::debug!(op, error = %e, "L2 cache error; degrading to L1 + origin");
}

pub(super) const FLAG_ZSTD: u8 = 1;
pub(super) const FORMAT: u8 = 0xD0;

/// L2 wire format: format byte `0xD0 | flags` (bit 0: zstd), stored-at
/// (u64 ms, LE), tag count (u16) and tags (u16 length + UTF-8), then the payload.
pub(super) fn encode(value: &[u8], stored_at_ms: i64, tags: &[Arc<str>]) -> Bytes {
    let compressed = (value.len() > COMPRESS_ABOVE)
        .then(|| zstd::bulk::compress(value, 3).ok())
        .flatten()
        .filter(|c| c.len() < value.len());
    let payload: &[u8] = compressed.as_deref().unwrap_or(value);
    let mut out = BytesMut::with_capacity(payload.len() + 11 + tags.len() * 24);
    out.put_u8(FORMAT | (u8::from(compressed.is_some()) * FLAG_ZSTD));
    out.put_u64_le(stored_at_ms.max(0) as u64);
    let tags: Vec<&Arc<str>> = tags
        .iter()
        .filter(|t| t.len() <= u16::MAX as usize)
        .take(u16::MAX as usize)
        .collect();
    out.put_u16_le(tags.len() as u16);
    for t in tags {
        out.put_u16_le(t.len() as u16);
        out.put_slice(t.as_bytes());
    }
    out.put_slice(payload);
    out.freeze()
}

/// Decodes [`encode`]'s format; `None` for anything else (treated as a miss).
pub(super) fn decode(b: &[u8], kind: &'static CacheKind) -> Option<Entry> {
    let mut b = b;
    if b.len() < 11 || b[0] & 0xF0 != FORMAT {
        return None;
    }
    let zstd = b.get_u8() & FLAG_ZSTD != 0;
    let stored_at_ms = b.get_u64_le() as i64;
    let n = b.get_u16_le() as usize;
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        if b.remaining() < 2 {
            return None;
        }
        let len = b.get_u16_le() as usize;
        if b.remaining() < len {
            return None;
        }
        tags.push(Arc::from(std::str::from_utf8(&b[..len]).ok()?));
        b.advance(len);
    }
    let value = if zstd {
        // Bounded: cached values are at most a few MiB.
        Bytes::from(zstd::bulk::decompress(b, 64 << 20).ok()?)
    } else {
        Bytes::copy_from_slice(b)
    };
    Some(Entry {
        value,
        stored_at_ms,
        kind,
        tags: tags.into(),
    })
}
