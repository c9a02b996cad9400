//! What people do with alerts: silence them (here), acknowledge them and
//! look back at them (`Hub`); and what happens to the ones nobody answers
//! (escalation, `Hub::tick`). Stored by `store.rs`: silences in
//! `alert_silences`, every delivery in `alert_deliveries`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Longest silence.
pub const MAX_SILENCE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest reason or note, bytes.
pub const MAX_TEXT: usize = 500;

/// A silence.
#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    /// Id.
    pub id: String,
    /// Only this rule ("" any).
    pub rule: String,
    /// Only alerts with these labels.
    pub labels: BTreeMap<String, String>,
    /// Why.
    pub reason: String,
    /// Who.
    pub created_by: String,
    /// When, Unix ms.
    pub created_at_ms: i64,
    /// Until, Unix ms.
    pub expires_at_ms: i64,
}

impl Silence {
    /// True when it covers an alert of `rule` with `labels` at `now_ms`.
    pub fn covers(&self, rule: &str, labels: &HashMap<String, String>, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
            && (self.rule.is_empty() || self.rule == rule)
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// What a silence request asks for.
#[derive(Debug, Clone, Default)]
pub struct SilenceRequest {
    /// Only this rule ("" any).
    pub rule: String,
    /// Only alerts with these labels.
    pub labels: HashMap<String, String>,
    /// How long, seconds.
    pub duration_seconds: u32,
    /// Why.
    pub reason: String,
}

/// Checks a silence request; the silence it makes (id and times set).
pub fn new_silence(
    req: &SilenceRequest,
    by: &str,
    id: String,
    now_ms: i64,
) -> Result<Silence, String> {
    if req.reason.trim().is_empty() {
        return Err("a silence needs a reason (whoever sees it later needs to know why)".into());
    }
    if req.reason.len() > MAX_TEXT {
        return Err(format!("the reason is over {MAX_TEXT} bytes"));
    }
    if req.rule.is_empty() && req.labels.is_empty() {
        return Err(
            "say what to silence: a rule, labels or both (a silence of everything hides every alert)"
                .into(),
        );
    }
    if req.rule.len() > 64 || req.labels.len() > 8 {
        return Err("at most a 64-byte rule name and 8 labels".into());
    }
    if req
        .labels
        .iter()
        .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 256)
    {
        return Err("a label is a name of 1 to 64 bytes and a value of at most 256".into());
    }
    let d = Duration::from_secs(u64::from(req.duration_seconds));
    if d.is_zero() || d > MAX_SILENCE {
        return Err(format!(
            "duration_seconds {} is not between 1 and {} (7 days)",
            req.duration_seconds,
            MAX_SILENCE.as_secs()
        ));
    }
    Ok(Silence {
        id,
        rule: req.rule.clone(),
        labels: req.labels.clone().into_iter().collect(),
        reason: req.reason.trim().to_string(),
        created_by: by.to_string(),
        created_at_ms: now_ms,
        expires_at_ms: now_ms + d.as_millis() as i64,
    })
}

/// How long delivery records are kept.
pub const KEEP_DELIVERIES: Duration = Duration::from_secs(30 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(s: &Silence, rule: &str, service: &str, at: i64) -> bool {
        s.covers(
            rule,
            &[("service".to_string(), service.to_string())].into(),
            at,
        )
    }

    #[test]
    fn a_silence_covers_what_it_names_until_it_expires() {
        let req = SilenceRequest {
            rule: "ApiLatencyP95".into(),
            labels: [("service".to_string(), "gateway".to_string())].into(),
            duration_seconds: 3600,
            reason: "deploying".into(),
        };
        let s = new_silence(&req, "ops", "s1".into(), 1_000).unwrap();
        assert!(covers(&s, "ApiLatencyP95", "gateway", 1_000));
        assert!(!covers(&s, "ApiLatencyP95", "recommendation", 1_000));
        assert!(!covers(&s, "HighErrorRate", "gateway", 1_000));
        assert!(covers(&s, "ApiLatencyP95", "gateway", 1_000 + 3_599_999));
        assert!(!covers(&s, "ApiLatencyP95", "gateway", 1_000 + 3_600_000));
        assert_eq!(
            crate::store::silence_from_doc(&crate::store::silence_doc(&s)),
            s
        );
    }

    #[test]
    fn a_careless_silence_is_refused_with_the_reason() {
        let ok = SilenceRequest {
            rule: "X".into(),
            duration_seconds: 60,
            reason: "r".into(),
            ..Default::default()
        };
        for (req, why) in [
            (
                SilenceRequest {
                    reason: " ".into(),
                    ..ok.clone()
                },
                "needs a reason",
            ),
            (
                SilenceRequest {
                    rule: String::new(),
                    ..ok.clone()
                },
                "say what",
            ),
            (
                SilenceRequest {
                    duration_seconds: 0,
                    ..ok.clone()
                },
                "between 1 and",
            ),
            (
                SilenceRequest {
                    duration_seconds: 8 * 24 * 3600,
                    ..ok.clone()
                },
                "7 days",
            ),
            (
                SilenceRequest {
                    reason: "x".repeat(501),
                    ..ok.clone()
                },
                "500 bytes",
            ),
        ] {
            let e = new_silence(&req, "ops", "s".into(), 0).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
