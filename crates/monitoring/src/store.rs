//! Monitoring's collections, their documents and indexes: alert history
//! (`alerts`) and minute rollups (`metrics_rollups`), so the windows
//! survive a restart of monitoring: once a minute the newest snapshot
//! (cumulative values of the kept series) is stored; at start the last 25
//! hours are read back into the history. Rollups expire after 25 hours
//! (TTL on `created_at`).

use std::time::Duration;

use discovery_kit::store::{Bson, Document, FindOptions, IndexSpec, Store, StoreError, doc};
use discovery_proto::v1 as pb;
use tokio::time::Instant;

use crate::rules;
use crate::window::{History, Key, Snapshot};

/// Alerts collection.
pub const ALERTS: &str = "alerts";
/// Metric rollups collection.
pub const METRICS_ROLLUPS: &str = "metrics_rollups";
/// One document an hour: calls and server errors per service over it,
/// kept [`KEEP_HOURLY`] (what capacity forecasts learn from).
pub const METRICS_HOURLY: &str = "metrics_hourly";
/// An hour in milliseconds (hourly figures start on multiples of it).
pub const HOUR_MS: i64 = 3_600_000;
/// How long hourly figures are kept.
pub const KEEP_HOURLY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Indexes of the monitoring collections.
pub fn indexes() -> Vec<(&'static str, Vec<IndexSpec>)> {
    vec![
        (
            ALERTS,
            vec![IndexSpec::new(
                "state_1_active_since_-1",
                doc! {"state": 1, "active_since": -1},
            )],
        ),
        (
            SILENCES,
            vec![IndexSpec::new("expires_at_-1", doc! {"expires_at": -1})],
        ),
        (
            DELIVERIES,
            vec![
                IndexSpec::new("alert_id_1_at_-1", doc! {"alert_id": 1, "at": -1}),
                IndexSpec::new("at_-1", doc! {"at": -1}),
                IndexSpec::new("created_at_ttl", doc! {"created_at": 1})
                    .ttl(crate::lifecycle::KEEP_DELIVERIES),
            ],
        ),
        (
            METRICS_ROLLUPS,
            vec![
                IndexSpec::new(
                    "service_1_window_start_-1",
                    doc! {"service": 1, "window_start": -1},
                ),
                IndexSpec::new("created_at_ttl", doc! {"created_at": 1}).ttl(KEEP),
            ],
        ),
        (
            METRICS_HOURLY,
            vec![
                IndexSpec::new("hour_start_-1", doc! {"hour_start": -1}),
                IndexSpec::new("created_at_ttl", doc! {"created_at": 1}).ttl(KEEP_HOURLY),
            ],
        ),
    ]
}

/// One hour's figures: per service, calls and server errors over
/// `covered_s` seconds (an hour, or less after a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct Hour {
    /// The hour's start, Unix ms (a multiple of an hour).
    pub start_ms: i64,
    /// Seconds the figures cover.
    pub covered_s: f64,
    /// Per service: (calls, server errors).
    pub services: std::collections::BTreeMap<String, (u64, u64)>,
}

/// Stores `hour` (idempotent: one document per hour, whoever writes it).
pub async fn put_hour(store: &Store, hour: &Hour) -> Result<(), StoreError> {
    let mut services = Document::new();
    for (svc, (calls, errors)) in &hour.services {
        services.insert(
            svc.clone(),
            doc! {"calls": *calls as i64, "errors": *errors as i64},
        );
    }
    store
        .put(
            METRICS_HOURLY,
            doc! {
                "_id": format!("hour|{}", hour.start_ms),
                "hour_start": hour.start_ms,
                "covered_s": hour.covered_s,
                "created_at": discovery_kit::store::bson::DateTime::from_millis(hour.start_ms),
                "services": services,
            },
        )
        .await
}

/// The stored hours since `since_ms`, oldest first.
pub async fn hours(store: &Store, since_ms: i64) -> Result<Vec<Hour>, StoreError> {
    let docs = store
        .find(
            METRICS_HOURLY,
            doc! {"hour_start": {"$gte": since_ms}},
            FindOptions {
                sort: Some(doc! {"hour_start": 1}),
                skip: 0,
                limit: 0,
            },
        )
        .await?;
    Ok(docs
        .iter()
        .filter_map(|d| {
            let services = d
                .get_document("services")
                .ok()?
                .iter()
                .filter_map(|(k, v)| {
                    let v = v.as_document()?;
                    let n = |f: &str| v.get_i64(f).ok().map(|x| x.max(0) as u64);
                    Some((k.clone(), (n("calls")?, n("errors")?)))
                })
                .collect();
            Some(Hour {
                start_ms: d.get_i64("hour_start").ok()?,
                covered_s: d.get_f64("covered_s").ok()?,
                services,
            })
        })
        .collect())
}

/// How long rollups are kept.
pub const KEEP: Duration = Duration::from_secs(25 * 3600);

/// The stored form of a snapshot taken `age` ago.
pub fn to_doc(snap: &Snapshot, now_unix_ms: i64, age: Duration) -> Document {
    let at = now_unix_ms - age.as_millis() as i64;
    let series: Vec<Bson> = snap
        .values
        .iter()
        .map(|(k, v)| {
            let mut labels = Document::new();
            for (lk, lv) in &k.1 {
                labels.insert(lk.clone(), lv.clone());
            }
            Bson::Document(doc! {"name": k.0.clone(), "labels": labels, "value": *v})
        })
        .collect();
    doc! {
        "_id": format!("all|{at}"),
        "service": "all",
        "window_start": at,
        "created_at": discovery_kit::store::bson::DateTime::from_millis(at),
        "series": series,
    }
}

/// A snapshot back from its document, placed on the monotonic clock.
pub fn from_doc(d: &Document, now: Instant, now_unix_ms: i64) -> Option<Snapshot> {
    let at_ms = d.get_i64("window_start").ok()?;
    let age = Duration::from_millis(now_unix_ms.saturating_sub(at_ms).max(0) as u64);
    let at = now.checked_sub(age)?;
    let mut values = std::collections::HashMap::new();
    for s in d.get_array("series").ok()? {
        let s = s.as_document()?;
        let labels = s
            .get_document("labels")
            .ok()?
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
        let key: Key = std::sync::Arc::new((s.get_str("name").ok()?.to_string(), labels));
        values.insert(key, s.get_f64("value").ok()?);
    }
    Some(Snapshot { at, values })
}

/// Loads the stored rollups, oldest first, into `history`.
pub async fn restore(store: &Store, history: &mut History) -> Result<usize, StoreError> {
    let now_unix = discovery_kit::now_unix_ms();
    let since = now_unix - KEEP.as_millis() as i64;
    let docs = store
        .find(
            METRICS_ROLLUPS,
            doc! {"service": "all", "window_start": {"$gte": since}},
            FindOptions {
                sort: Some(doc! {"window_start": 1}),
                skip: 0,
                limit: 0,
            },
        )
        .await?;
    let now = Instant::now();
    let mut n = 0;
    for d in &docs {
        if let Some(s) = from_doc(d, now, now_unix) {
            history.push(s);
            n += 1;
        }
    }
    Ok(n)
}

/// Labels as a stored sub-document.
fn labels_doc<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Document {
    let mut d = Document::new();
    for (k, v) in labels {
        d.insert(k.clone(), v.clone());
    }
    d
}

/// A stored sub-document's string fields as labels.
fn labels_of<C: FromIterator<(String, String)>>(d: &Document) -> C {
    d.get_document("labels")
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_else(|_| std::iter::empty().collect())
}

/// The stored form of a transition (one document per alert instance,
/// updated when it resolves), at `now` (`now_ms` on the wall clock).
pub fn alert_doc(t: &rules::Transition, now: tokio::time::Instant, now_ms: i64) -> Document {
    let unix =
        |at: tokio::time::Instant| now_ms - now.saturating_duration_since(at).as_millis() as i64;
    let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let active_since = unix(t.active_since);
    let severity = crate::convert::severity(t.rule.severity);
    let state = crate::convert::alert_state(t.phase);
    let resolved_at = match t.phase {
        rules::Phase::Resolved => now_ms,
        _ => 0,
    };
    let label_doc = labels_doc(&t.labels);
    let value = if t.value.is_finite() { t.value } else { 0.0 };
    doc! {
        // A tier is its own alert: warning and critical of one series may
        // start at the same evaluation.
        "_id": format!("{}|{}|{}|{active_since}", t.rule.name, t.rule.severity.name(), labels.join(",")),
        "rule": t.rule.name.to_string(),
        "severity": severity as i32,
        "state": state as i32,
        "labels": label_doc,
        "summary": format!("{} {} ({}{}): {} {value:.3}, {} {:.3}", t.rule.name,
            match t.phase { rules::Phase::Resolved => "resolved", _ => "firing" },
            t.rule.severity.name(),
            if labels.is_empty() { String::new() } else { format!(", {}", labels.join(", ")) },
            t.rule.summary,
            match t.rule.comparison { rules::Comparison::Above => "above", rules::Comparison::Below => "below" },
            t.rule.threshold),
        "value": value,
        "active_since": active_since,
        "fired_at": t.fired_at.map(unix).unwrap_or(0),
        "resolved_at": resolved_at,
    }
}

/// A stored alert as the API reports it.
pub fn alert_from_doc(d: &Document) -> pb::Alert {
    let int = |k: &str| d.get_i64(k).unwrap_or_default();
    pb::Alert {
        id: d.get_str("_id").unwrap_or_default().to_string(),
        rule: d.get_str("rule").unwrap_or_default().to_string(),
        severity: d.get_i32("severity").unwrap_or_default(),
        state: d.get_i32("state").unwrap_or_default(),
        labels: labels_of(d),
        summary: d.get_str("summary").unwrap_or_default().to_string(),
        value: d.get_f64("value").unwrap_or_default(),
        active_since_unix_ms: int("active_since"),
        fired_at_unix_ms: int("fired_at"),
        resolved_at_unix_ms: int("resolved_at"),
        acknowledged_by: d.get_str("acknowledged_by").unwrap_or_default().to_string(),
        acknowledged_at_unix_ms: int("acknowledged_at"),
        acknowledge_note: d
            .get_str("acknowledge_note")
            .unwrap_or_default()
            .to_string(),
        silenced_by: d.get_str("silenced_by").unwrap_or_default().to_string(),
        escalated_at_unix_ms: int("escalated_at"),
    }
}

/// The stored form of an alert as the API has it (after an
/// acknowledgement, a silence, an escalation).
pub fn alert_to_doc(a: &pb::Alert) -> Document {
    let labels = labels_doc(&a.labels);
    doc! {
        "_id": a.id.clone(),
        "rule": a.rule.clone(),
        "severity": a.severity,
        "state": a.state,
        "labels": labels,
        "summary": a.summary.clone(),
        "value": a.value,
        "active_since": a.active_since_unix_ms,
        "fired_at": a.fired_at_unix_ms,
        "resolved_at": a.resolved_at_unix_ms,
        "acknowledged_by": a.acknowledged_by.clone(),
        "acknowledged_at": a.acknowledged_at_unix_ms,
        "acknowledge_note": a.acknowledge_note.clone(),
        "silenced_by": a.silenced_by.clone(),
        "escalated_at": a.escalated_at_unix_ms,
    }
}

/// Alerts active at some time in `[since, until]` (Unix ms), newest first.
pub async fn alert_history(
    store: &Store,
    since: i64,
    until: i64,
    rule: &str,
    limit: u64,
) -> Result<Vec<pb::Alert>, StoreError> {
    let mut filter = doc! {
        "active_since": {"$lte": until},
        "$or": [{"resolved_at": 0}, {"resolved_at": {"$gte": since}}],
    };
    if !rule.is_empty() {
        filter.insert("rule", rule);
    }
    let opts = FindOptions {
        sort: Some(doc! {"active_since": -1}),
        skip: 0,
        limit,
    };
    let docs = store.find(ALERTS, filter, opts).await?;
    Ok(docs.iter().map(alert_from_doc).collect())
}

/// The newest `limit` alerts, as the API reports them.
pub async fn recent_alerts(store: &Store, limit: u64) -> Result<Vec<pb::Alert>, StoreError> {
    let opts = FindOptions {
        sort: Some(doc! {"active_since": -1}),
        skip: 0,
        limit,
    };
    let docs = store.find(ALERTS, doc! {}, opts).await?;
    Ok(docs.iter().map(alert_from_doc).collect())
}

/// Silences collection.
pub const SILENCES: &str = "alert_silences";
/// Deliveries collection.
pub const DELIVERIES: &str = "alert_deliveries";

/// The stored form of a silence.
pub fn silence_doc(s: &crate::lifecycle::Silence) -> Document {
    let labels = labels_doc(&s.labels);
    doc! {
        "_id": s.id.clone(),
        "rule": s.rule.clone(),
        "labels": labels,
        "reason": s.reason.clone(),
        "created_by": s.created_by.clone(),
        "created_at": s.created_at_ms,
        "expires_at": s.expires_at_ms,
    }
}

/// A silence from its stored form.
pub fn silence_from_doc(d: &Document) -> crate::lifecycle::Silence {
    crate::lifecycle::Silence {
        id: d.get_str("_id").unwrap_or_default().into(),
        rule: d.get_str("rule").unwrap_or_default().into(),
        labels: labels_of(d),
        reason: d.get_str("reason").unwrap_or_default().into(),
        created_by: d.get_str("created_by").unwrap_or_default().into(),
        created_at_ms: d.get_i64("created_at").unwrap_or_default(),
        expires_at_ms: d.get_i64("expires_at").unwrap_or_default(),
    }
}

/// Stores a silence.
pub async fn put_silence(store: &Store, s: &crate::lifecycle::Silence) -> Result<(), StoreError> {
    store.put(SILENCES, silence_doc(s)).await
}

/// A silence by id.
pub async fn get_silence(
    store: &Store,
    id: &str,
) -> Result<Option<crate::lifecycle::Silence>, StoreError> {
    Ok(store
        .get(SILENCES, id)
        .await?
        .as_ref()
        .map(silence_from_doc))
}

/// Silences that had not expired at `since_ms`, newest first.
pub async fn load_silences(
    store: &Store,
    since_ms: i64,
) -> Result<Vec<crate::lifecycle::Silence>, StoreError> {
    let docs = store
        .find(
            SILENCES,
            doc! {"expires_at": {"$gte": since_ms}},
            FindOptions {
                sort: Some(doc! {"created_at": -1}),
                skip: 0,
                limit: 1000,
            },
        )
        .await?;
    Ok(docs.iter().map(silence_from_doc).collect())
}

/// One delivery's record; its id (alert, channel, event) is what keeps a
/// delivery from happening twice.
pub struct DeliveryRecord<'a> {
    /// The alert.
    pub alert_id: &'a str,
    /// The channel's name.
    pub channel: &'a str,
    /// firing, resolved, escalated.
    pub event: &'a str,
    /// delivered or failed.
    pub outcome: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// Why it failed.
    pub error: &'a str,
    /// When, Unix ms.
    pub at_ms: i64,
}

fn delivery_id(alert_id: &str, channel: &str, event: &str) -> String {
    format!("{alert_id}|{channel}|{event}")
}

/// Records a delivery.
pub async fn put_delivery(store: &Store, r: &DeliveryRecord<'_>) -> Result<(), StoreError> {
    store
        .put(
            DELIVERIES,
            doc! {
                "_id": delivery_id(r.alert_id, r.channel, r.event),
                "alert_id": r.alert_id,
                "channel": r.channel,
                "event": r.event,
                "outcome": r.outcome,
                "attempts": i64::from(r.attempts),
                "error": r.error,
                "at": r.at_ms,
                "created_at": discovery_kit::store::bson::DateTime::from_millis(r.at_ms),
            },
        )
        .await
}

/// True when this delivery was made already.
pub async fn delivered(
    store: &Store,
    alert_id: &str,
    channel: &str,
    event: &str,
) -> Result<bool, StoreError> {
    Ok(store
        .get(DELIVERIES, &delivery_id(alert_id, channel, event))
        .await?
        .is_some_and(|d| d.get_str("outcome") == Ok("delivered")))
}

fn delivery_from_doc(d: &Document) -> pb::AlertDelivery {
    pb::AlertDelivery {
        alert_id: d.get_str("alert_id").unwrap_or_default().into(),
        channel: d.get_str("channel").unwrap_or_default().into(),
        event: d.get_str("event").unwrap_or_default().into(),
        outcome: d.get_str("outcome").unwrap_or_default().into(),
        attempts: d.get_i64("attempts").unwrap_or_default() as u32,
        error: d.get_str("error").unwrap_or_default().into(),
        at_unix_ms: d.get_i64("at").unwrap_or_default(),
    }
}

/// Deliveries, newest first (of one alert if `alert_id` is not empty).
pub async fn deliveries(
    store: &Store,
    alert_id: &str,
    limit: u64,
) -> Result<Vec<pb::AlertDelivery>, StoreError> {
    let filter = if alert_id.is_empty() {
        doc! {}
    } else {
        doc! {"alert_id": alert_id}
    };
    let docs = store
        .find(
            DELIVERIES,
            filter,
            FindOptions {
                sort: Some(doc! {"at": -1}),
                skip: 0,
                limit,
            },
        )
        .await?;
    Ok(docs.iter().map(delivery_from_doc).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::parse;

    #[tokio::test]
    async fn rollups_round_trip_through_the_store_into_a_new_history() {
        let store = discovery_kit::store::StoreConfig::Memory
            .connect(discovery_kit::store::Workload::Analytics)
            .await
            .unwrap();
        let text = "discovery_rpc_server_requests_total{service=\"gateway\",method=\"m\",code=\"OK\"} 40\n";
        let snap = Snapshot {
            at: Instant::now(),
            values: parse(text).into_iter().collect(),
        };
        let now_unix = discovery_kit::now_unix_ms();
        // Two minutes ago (0 calls) and now (40 calls).
        let empty = Snapshot {
            at: snap.at,
            values: Default::default(),
        };
        store
            .put(
                METRICS_ROLLUPS,
                to_doc(&empty, now_unix, Duration::from_secs(120)),
            )
            .await
            .unwrap();
        store
            .put(METRICS_ROLLUPS, to_doc(&snap, now_unix, Duration::ZERO))
            .await
            .unwrap();
        let mut h = History::default();
        assert_eq!(restore(&store, &mut h).await.unwrap(), 2);
        let m = crate::window::methods(&h.increase(Duration::from_secs(300)));
        assert_eq!(m[&("gateway".to_string(), "m".to_string())].count, 40);
    }
}
