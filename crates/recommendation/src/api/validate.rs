//! Bounds on what a caller sends: product and session ids, session
//! updates; merging a session update.

use super::*;

/// Longest product id accepted, bytes (ids are `source:external-id`).
pub const MAX_PRODUCT_ID: usize = 256;

/// A product id must be 1-256 bytes: a longer one cannot exist, and
/// echoing it back in a NOT_FOUND would make the answer's headers huge.
pub(super) fn check_product_id(field: &str, id: &str) -> Result<(), Status> {
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

pub(super) fn check_session_id(id: &str) -> Result<(), Status> {
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
pub(super) const MAX_ATTRIBUTES: usize = 64;
pub(super) const MAX_RECENT: usize = 50;

pub(super) fn merge_session(
    s: &mut pb::SessionContext,
    u: pb::SessionContext,
) -> Result<(), Status> {
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

pub(super) fn unique_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
