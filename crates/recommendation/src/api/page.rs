//! A cached page: its envelope (origin, catalogue version, stamps of the
//! products shown, what could enter it), checked against the snapshot
//! before it is served.

use super::*;

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
pub(super) fn envelope(
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
pub(super) fn open_envelope(origin: u64, catalog: &Catalog, b: Bytes) -> Option<Bytes> {
    open_page(origin, catalog, b).map(|(payload, _)| payload)
}

/// [`open_envelope`], also returning the envelope's rows section (the
/// products shown, [`crate::impressions::page_section_ids`]), shared.
pub(super) fn open_page(origin: u64, catalog: &Catalog, mut b: Bytes) -> Option<(Bytes, Bytes)> {
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
pub(super) fn page_inputs(filter: Option<&pb::ProductFilter>, facets: bool) -> Vec<String> {
    let none = pb::ProductFilter::default();
    let f = filter.unwrap_or(&none);
    crate::snapshot::page_entry_tags(crate::snapshot::PageInputs {
        brands: &f.brands,
        price: facets || f.min_price_minor.is_some() || f.max_price_minor.is_some(),
        stock: f.in_stock_only,
    })
}
