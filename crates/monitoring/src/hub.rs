//! Alert transitions to their destinations, and the collection loop that
//! feeds the rules.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery_kit::CancellationToken;
use discovery_kit::store::Store;
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_client::CacheAdminClient;

use crate::store::{ALERTS, METRICS_ROLLUPS, alert_doc, alert_from_doc};
use crate::{collect, notify, rules, sla, store, window};

/// Where alert transitions go: the `alerts` collection, `WatchAlerts`
/// subscribers, the webhook, and the rule's remediation.
#[derive(Clone)]
pub struct Hub {
    firing: Arc<Mutex<std::collections::BTreeMap<String, pb::Alert>>>,
    store: Store,
    tx: tokio::sync::broadcast::Sender<pb::Alert>,
    webhook: Option<notify::Webhook>,
    recommendation: Option<CacheAdminClient<discovery_kit::client::TracedChannel>>,
}

impl Hub {
    /// A hub storing into `store`, posting to `webhook`, warming caches
    /// through `recommendation`.
    pub fn new(
        store: Store,
        webhook: Option<notify::Webhook>,
        recommendation: Option<CacheAdminClient<discovery_kit::client::TracedChannel>>,
    ) -> Self {
        Self {
            firing: Arc::default(),
            store,
            tx: tokio::sync::broadcast::channel(256).0,
            webhook,
            recommendation,
        }
    }

    /// Alerts firing now, oldest first.
    pub fn firing(&self) -> Vec<pb::Alert> {
        let firing = self.firing.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<pb::Alert> = firing.values().cloned().collect();
        v.sort_by_key(|a| a.fired_at_unix_ms);
        v
    }

    /// Live alert changes.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<pb::Alert> {
        self.tx.subscribe()
    }

    /// Records and announces one transition; delivery and remediation run
    /// in the background (a slow webhook never delays evaluation).
    pub async fn publish(&self, t: &rules::Transition, now: tokio::time::Instant) -> pb::Alert {
        tracing::warn!(rule = %t.rule.name, labels = ?t.labels, phase = ?t.phase, value = t.value, "alert");
        let doc = alert_doc(t, now);
        let alert = alert_from_doc(&doc);
        if let Err(e) = self.store.put(ALERTS, doc).await {
            tracing::error!(error = %e, "storing an alert failed");
        }
        {
            let mut firing = self.firing.lock().unwrap_or_else(|p| p.into_inner());
            if alert.state == pb::AlertState::Firing as i32 {
                firing.insert(alert.id.clone(), alert.clone());
            } else {
                firing.remove(&alert.id);
            }
        }
        let _ = self.tx.send(alert.clone());
        if let Some(w) = &self.webhook {
            let (w, a) = (w.clone(), alert.clone());
            tokio::spawn(async move {
                let outcome = match w.deliver(&a).await {
                    Ok(_) => "delivered",
                    Err(e) => {
                        tracing::error!(error = %e, alert = %a.id, "alert not delivered");
                        "failed"
                    }
                };
                metrics::counter!("discovery_monitoring_webhook_deliveries_total", "outcome" => outcome)
                    .increment(1);
            });
        }
        if t.phase == rules::Phase::Firing
            && t.rule.remediation == Some(rules::Remediation::WarmCaches)
            && let Some(mut reco) = self.recommendation.clone()
        {
            // Its own trace, named after the alert: the WarmCache call on
            // recommendation is its child.
            let span = tracing::info_span!(
                "monitoring.remediate",
                alert.rule = %t.rule.name,
                alert.id = %alert.id,
                action = "warm_caches",
            );
            tokio::spawn(async move {
                let call = reco.warm_cache(pb::WarmCacheRequest {});
                match tracing::Instrument::instrument(call, span).await {
                    Ok(r) => tracing::info!(
                        entries = r.get_ref().entries_warmed,
                        "remediation: caches warmed"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "remediation: cache warming failed")
                    }
                }
                metrics::counter!("discovery_monitoring_remediations_total", "action" => "warm_caches")
                    .increment(1);
            });
        }
        alert
    }
}

/// Puts the rules file's new rules in force, or says why not (the rules
/// in force stay).
async fn reload(
    watched: &mut rules::file::Watched,
    engine: &mut rules::Engine,
    hub: &Hub,
    now: tokio::time::Instant,
) {
    let Some(result) = watched.changed() else {
        return;
    };
    match result {
        Ok(new) => {
            tracing::info!(
                rules = new.len(),
                from = %watched.origin(),
                "alert rules in force"
            );
            metrics::counter!("discovery_monitoring_rule_loads_total", "outcome" => "loaded")
                .increment(1);
            for t in engine.set_rules(new) {
                hub.publish(&t, now).await;
            }
        }
        Err(e) => {
            tracing::error!(
                from = %watched.origin(),
                error = %e,
                kept = engine.rules().len(),
                "alert rules refused; the rules in force stay"
            );
            metrics::counter!("discovery_monitoring_rule_loads_total", "outcome" => "refused")
                .increment(1);
        }
    }
}

/// Scrapes, keeps the history, runs the rules (re-reading their file) and
/// publishes transitions.
pub(crate) async fn collect_loop(
    sources: Vec<collect::Source>,
    every: Duration,
    history: Arc<Mutex<window::History>>,
    hub: Hub,
    store: Store,
    mut watched: rules::file::Watched,
    shutdown: CancellationToken,
) {
    let mut engine = rules::Engine::new(Vec::new());
    let mut last_rollup: Option<tokio::time::Instant> = None;
    let mut disk: Option<f64> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut values: std::collections::HashMap<window::Key, f64> = Default::default();
        for s in &sources {
            match s.read().await {
                Ok(series) => {
                    for (k, v) in series {
                        *values.entry(k).or_default() += v;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "scrape failed"),
            }
        }
        let now = tokio::time::Instant::now();
        let snapshot = window::Snapshot { at: now, values };
        let rollup = (last_rollup.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)))
            .then(|| store::to_doc(&snapshot, discovery_kit::now_unix_ms(), Duration::ZERO));
        let observations = {
            let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
            h.push(snapshot);
            sla::observations(&h)
        };
        if let Some(doc) = rollup {
            last_rollup = Some(now);
            if let Err(e) = store.put(METRICS_ROLLUPS, doc).await {
                tracing::warn!(error = %e, "storing a metric rollup failed");
            }
            // The database's disk, once a minute, as its server reports it.
            disk = match store.disk_usage().await {
                Ok(Some((used, total))) => Some(used as f64 / total as f64),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the database's disk use failed");
                    disk
                }
            };
            if let Some(d) = disk {
                metrics::gauge!("discovery_db_disk_used_ratio").set(d);
            }
        }
        let mut observations = observations;
        if let Some(d) = disk {
            observations.push(rules::Observation {
                signal: rules::Signal::DiskUsedRatio,
                labels: Default::default(),
                value: d,
            });
        }
        reload(&mut watched, &mut engine, &hub, now).await;
        for t in engine.evaluate(now, &observations) {
            hub.publish(&t, now).await;
        }
    }
}
