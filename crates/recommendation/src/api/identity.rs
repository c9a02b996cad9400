//! Who is calling: the API client (set by the gateway, or the service
//! name an internal caller signs) and the shopper it acts for.

use super::*;

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

pub(super) fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Bounds of a session update (beyond [`merge_session`]'s): every list and
/// string is bounded so one caller cannot grow a session without end.
pub(super) fn check_session_update(u: &pb::SessionContext) -> Result<(), Status> {
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
