//! Alert transitions to their destinations, and the collection loop that
//! feeds the rules.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery_kit::CancellationToken;
use discovery_kit::store::Store;
use discovery_proto::v1 as pb;
use discovery_proto::v1::cache_admin_client::CacheAdminClient;

use crate::channels::{Channels, Event};
use crate::error::MonitoringError;
use crate::lifecycle::{self, Silence, SilenceRequest};
use crate::store::{ALERTS, METRICS_ROLLUPS, alert_doc, alert_from_doc, alert_to_doc};
use crate::{collect, convert, rules, sla, store, window};

/// Where alerts go now: the channels, which severities reach which, and
/// the escalation policy (all from the rules file).
#[derive(Clone, Default)]
pub struct Routing {
    /// Channels by name.
    pub channels: Channels,
    /// Channel names per severity.
    pub routes: std::collections::BTreeMap<rules::Severity, Vec<String>>,
    /// Escalation of unacknowledged alerts.
    pub escalation: Option<rules::file::Escalation>,
    /// Scheduled reports.
    pub reports: Vec<rules::reports::ReportSpec>,
}

impl Routing {
    /// The file's routing, its secrets read with `var`.
    pub fn from_file(a: &rules::file::Alerting, var: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            channels: Channels::build(&a.channels, var),
            routes: a.routes.clone(),
            escalation: a.escalation.clone(),
            reports: a.reports.clone(),
        }
    }

    fn route(&self, severity: i32) -> Vec<String> {
        self.routes
            .get(&convert::rule_severity(severity))
            .cloned()
            .unwrap_or_default()
    }
}

/// Recommendation's report, for the `recommendations` reports.
type Experiments = discovery_proto::v1::experiments_client::ExperimentsClient<
    discovery_kit::client::TracedChannel,
>;

/// The clock alerts are stamped with (Unix ms); a test's follows tokio's.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Where alert transitions go: the `alerts` collection, `WatchAlerts`
/// subscribers, the channels (unless silenced), the rule's remediation;
/// and what people do with alerts (acknowledge, silence) and what happens
/// to those nobody answers (escalation).
#[derive(Clone)]
pub struct Hub {
    firing: Arc<Mutex<std::collections::BTreeMap<String, pb::Alert>>>,
    silences: Arc<Mutex<Vec<Silence>>>,
    standings: Arc<Mutex<crate::standing::Standings>>,
    due: Arc<Mutex<crate::reports::Due>>,
    experiments: Arc<Mutex<Option<Experiments>>>,
    routing: Arc<Mutex<Routing>>,
    store: Store,
    tx: tokio::sync::broadcast::Sender<pb::Alert>,
    recommendation: Option<CacheAdminClient<discovery_kit::client::TracedChannel>>,
    clock: Clock,
    inflight: Arc<Mutex<std::collections::HashSet<String>>>,
    sending: Arc<tokio::sync::Semaphore>,
    ids: Arc<std::sync::atomic::AtomicU64>,
}

/// Deliveries in progress at once (a slow channel never holds evaluation:
/// they run beside it).
const SENDING: usize = 8;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub storing into `store`, warming caches through
    /// `recommendation`; no channels until [`Hub::set_routing`].
    pub fn new(
        store: Store,
        recommendation: Option<CacheAdminClient<discovery_kit::client::TracedChannel>>,
    ) -> Self {
        Self::with_clock(store, recommendation, Arc::new(discovery_kit::now_unix_ms))
    }

    /// [`Hub::new`] on `clock`.
    pub fn with_clock(
        store: Store,
        recommendation: Option<CacheAdminClient<discovery_kit::client::TracedChannel>>,
        clock: Clock,
    ) -> Self {
        Self {
            firing: Arc::default(),
            silences: Arc::default(),
            standings: Arc::default(),
            due: Arc::default(),
            experiments: Arc::default(),
            routing: Arc::default(),
            store,
            tx: tokio::sync::broadcast::channel(256).0,
            recommendation,
            clock,
            inflight: Arc::default(),
            sending: Arc::new(tokio::sync::Semaphore::new(SENDING)),
            ids: Arc::default(),
        }
    }

    /// Puts `routing` in force.
    pub fn set_routing(&self, routing: Routing) {
        *lock(&self.routing) = routing;
    }

    /// Reads the silences that are still to expire (at start).
    pub async fn load_silences(&self) -> Result<usize, discovery_kit::store::StoreError> {
        let now = (self.clock)();
        let s = store::load_silences(&self.store, now).await?;
        let n = s.len();
        *lock(&self.silences) = s;
        Ok(n)
    }

    /// Alerts firing now, oldest first.
    pub fn firing(&self) -> Vec<pb::Alert> {
        let mut v: Vec<pb::Alert> = lock(&self.firing).values().cloned().collect();
        v.sort_by_key(|a| a.fired_at_unix_ms);
        v
    }

    /// Records where each series stands against the rules in force (the
    /// dashboard's tiles).
    pub fn record_standings(&self, rules: &[rules::Rule], observations: &[rules::Observation]) {
        lock(&self.standings).record((self.clock)(), rules, observations);
    }

    /// The latest standings.
    pub fn standings(&self) -> Vec<crate::standing::Standing> {
        lock(&self.standings).current().to_vec()
    }

    /// Silences in force now, ending soonest first.
    pub fn active_silences(&self) -> Vec<Silence> {
        let now = (self.clock)();
        let mut v: Vec<Silence> = lock(&self.silences)
            .iter()
            .filter(|s| s.expires_at_ms > now)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.expires_at_ms);
        v
    }

    /// Live alert changes.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<pb::Alert> {
        self.tx.subscribe()
    }

    async fn save(&self, alert: &pb::Alert) {
        if let Err(e) = self.store.put(ALERTS, alert_to_doc(alert)).await {
            tracing::error!(error = %e, alert = %alert.id, "storing an alert failed");
        }
        let _ = self.tx.send(alert.clone());
    }

    fn silence_of(&self, alert: &pb::Alert, now: i64) -> String {
        lock(&self.silences)
            .iter()
            .find(|s| s.covers(&alert.rule, &alert.labels, now))
            .map(|s| s.id.clone())
            .unwrap_or_default()
    }

    /// Records and announces one transition; delivery and remediation run
    /// in the background (a slow channel never delays evaluation).
    pub async fn publish(&self, t: &rules::Transition, now: tokio::time::Instant) -> pb::Alert {
        tracing::warn!(rule = %t.rule.name, labels = ?t.labels, phase = ?t.phase, value = t.value, "alert");
        let now_ms = (self.clock)();
        let mut alert = alert_from_doc(&alert_doc(t, now, now_ms));
        // The series' firing instance, if any, is this alert: its id and
        // times as first stamped (recomputing them from the monotonic
        // clock can land a millisecond off), and what people did with it.
        let was = lock(&self.firing)
            .values()
            .find(|f| {
                f.rule == alert.rule && f.severity == alert.severity && f.labels == alert.labels
            })
            .cloned();
        if let Some(was) = was {
            alert.id = was.id.clone();
            alert.active_since_unix_ms = was.active_since_unix_ms;
            alert.fired_at_unix_ms = was.fired_at_unix_ms;
            alert.acknowledged_by = was.acknowledged_by.clone();
            alert.acknowledged_at_unix_ms = was.acknowledged_at_unix_ms;
            alert.acknowledge_note = was.acknowledge_note.clone();
            alert.escalated_at_unix_ms = was.escalated_at_unix_ms;
        }
        alert.silenced_by = self.silence_of(&alert, now_ms);
        {
            let mut firing = lock(&self.firing);
            if alert.state == pb::AlertState::Firing as i32 {
                firing.insert(alert.id.clone(), alert.clone());
            } else {
                firing.remove(&alert.id);
            }
        }
        self.save(&alert).await;
        if alert.silenced_by.is_empty() {
            let event = if t.phase == rules::Phase::Resolved {
                Event::Resolved
            } else {
                Event::Firing
            };
            let names = {
                let routing = lock(&self.routing);
                let mut names = routing.route(alert.severity);
                // Whoever was paged hears it resolve too.
                if event == Event::Resolved && alert.escalated_at_unix_ms > 0 {
                    names.extend(routing.escalation.iter().flat_map(|e| e.to.clone()));
                }
                names
            };
            self.deliver(&alert, event, &names);
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

    /// Sends `event` about `alert` to the channels `names` in the
    /// background, once per alert, channel and event (recorded).
    pub fn deliver(&self, alert: &pb::Alert, event: Event, names: &[String]) {
        let alert = Arc::new(alert.clone());
        self.dispatch(&alert.id.clone(), event.name(), names, move |channel| {
            let alert = alert.clone();
            async move { channel.send(&alert, event).await }
        });
    }

    /// Sends a rendered report to the channels `names` in the background,
    /// once per report, due time and channel (recorded in
    /// `alert_deliveries` under `report:<name>:<due>`).
    pub fn send_report(&self, report: crate::reports::Rendered, due_ms: i64, names: &[String]) {
        let id = format!("report:{}:{due_ms}", report.name);
        let report = Arc::new(report);
        self.dispatch(&id, "report", names, move |channel| {
            let report = report.clone();
            async move { crate::reports::send(&channel, &report).await }
        });
    }

    /// Runs `send` for each channel of `names` not yet sent `event` about
    /// `id`, beside evaluation (at most [`SENDING`] at once), and records
    /// the outcome.
    fn dispatch<F, Fut>(&self, id: &str, event: &'static str, names: &[String], send: F)
    where
        F: Fn(Arc<crate::channels::Channel>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<u32, String>> + Send,
    {
        let channels = lock(&self.routing).channels.clone();
        for name in names {
            let Some(Ok(channel)) = channels.get(name) else {
                continue;
            };
            let key = format!("{id}|{name}|{event}");
            if !lock(&self.inflight).insert(key.clone()) {
                continue;
            }
            let (hub, id, name, send) = (self.clone(), id.to_string(), name.clone(), send.clone());
            tokio::spawn(async move {
                let _permit = hub.sending.acquire().await;
                let done = matches!(
                    store::delivered(&hub.store, &id, &name, event).await,
                    Ok(true)
                );
                if !done {
                    let (outcome, attempts, error) = match send(channel).await {
                        Ok(n) => ("delivered", n, String::new()),
                        Err(e) => {
                            tracing::error!(error = %e, id = %id, channel = %name, "not delivered");
                            ("failed", 5, e)
                        }
                    };
                    metrics::counter!("discovery_monitoring_deliveries_total", "channel" => name.clone(), "outcome" => outcome)
                        .increment(1);
                    let record = store::DeliveryRecord {
                        alert_id: &id,
                        channel: &name,
                        event,
                        outcome,
                        attempts,
                        error: &error,
                        at_ms: (hub.clock)(),
                    };
                    if let Err(e) = store::put_delivery(&hub.store, &record).await {
                        tracing::warn!(error = %e, "recording a delivery failed");
                    }
                }
                lock(&hub.inflight).remove(&key);
            });
        }
    }

    /// Where `recommendations` reports and the dashboard's "what sells"
    /// panel read from.
    pub fn set_experiments(&self, client: Option<Experiments>) {
        *lock(&self.experiments) = client;
    }

    /// Recommendation's report client, if there is a recommendation service.
    pub fn experiments(&self) -> Option<Experiments> {
        lock(&self.experiments).clone()
    }

    /// Renders and sends the reports due now (the scheduled ones of the
    /// rules file in force).
    pub async fn run_reports(&self, history: &Mutex<window::History>) {
        let now = (self.clock)();
        let reports = lock(&self.routing).reports.clone();
        let due = lock(&self.due).take(&reports, now);
        for (spec, due_ms) in due {
            use crate::rules::reports::ReportKind;
            let table = match spec.kind {
                ReportKind::Sla => {
                    let h = lock(history);
                    crate::convert::sla_table(&sla::report(&h, "", pb::Window::Window24h))
                }
                ReportKind::Recommendations => {
                    let Some(mut client) = self.experiments() else {
                        tracing::warn!(report = %spec.name, "no recommendation service to report on");
                        continue;
                    };
                    let asked = client
                        .get_recommendation_report(pb::GetRecommendationReportRequest {
                            window: pb::ReportWindow::Day as i32,
                            experiment_id: String::new(),
                        })
                        .await;
                    match asked {
                        Ok(r) => crate::convert::recommendations_table(&r.into_inner()),
                        Err(e) => {
                            tracing::warn!(report = %spec.name, error = %e.message(), "the recommendation report cannot be read");
                            continue;
                        }
                    }
                }
            };
            tracing::info!(report = %spec.name, rows = table.rows.len(), "report due");
            self.send_report(
                crate::reports::render(&spec, &table, due_ms),
                due_ms,
                &spec.to,
            );
        }
    }

    /// Once per evaluation: alerts whose silence ended go out, alerts a new
    /// silence covers stop, and firing alerts nobody acknowledged within
    /// the policy's delay are escalated.
    pub async fn tick(&self) {
        let now = (self.clock)();
        let routing = lock(&self.routing).clone();
        let mut changed = Vec::new();
        let mut sends: Vec<(pb::Alert, Event, Vec<String>)> = Vec::new();
        let ids: Vec<String> = lock(&self.firing).keys().cloned().collect();
        for id in ids {
            let Some(mut a) = lock(&self.firing).get(&id).cloned() else {
                continue;
            };
            let before = a.clone();
            let cover = self.silence_of(&a, now);
            if !a.silenced_by.is_empty() && cover.is_empty() {
                // The silence ended while it still fires: now it is told.
                sends.push((a.clone(), Event::Firing, routing.route(a.severity)));
            }
            a.silenced_by = cover;
            if let Some(p) = &routing.escalation
                && a.silenced_by.is_empty()
                && a.acknowledged_at_unix_ms == 0
                && a.escalated_at_unix_ms == 0
                && p.severities.contains(&convert::rule_severity(a.severity))
                && a.fired_at_unix_ms + p.after.as_millis() as i64 <= now
            {
                a.escalated_at_unix_ms = now;
                tracing::warn!(alert = %a.id, after = ?p.after, "alert escalated: nobody acknowledged it");
                sends.push((a.clone(), Event::Escalated, p.to.clone()));
            }
            if a != before {
                lock(&self.firing).insert(id, a.clone());
                changed.push(a);
            }
        }
        for a in &changed {
            self.save(a).await;
        }
        for (a, event, names) in sends {
            self.deliver(&a, event, &names);
        }
    }

    /// Marks a firing alert acknowledged (its escalation stops).
    pub async fn acknowledge(
        &self,
        id: &str,
        by: &str,
        note: &str,
    ) -> Result<pb::Alert, MonitoringError> {
        if note.len() > lifecycle::MAX_TEXT {
            return Err(MonitoringError::BadRequest(format!(
                "note: over {} bytes",
                lifecycle::MAX_TEXT
            )));
        }
        let now = (self.clock)();
        let acked = {
            let mut firing = lock(&self.firing);
            firing.get_mut(id).map(|a| {
                a.acknowledged_by = by.to_string();
                a.acknowledged_at_unix_ms = now;
                a.acknowledge_note = note.to_string();
                a.clone()
            })
        };
        match acked {
            Some(a) => {
                self.save(&a).await;
                Ok(a)
            }
            None => match self.store.get(ALERTS, id).await {
                Ok(Some(_)) => Err(MonitoringError::NotFiring(id.to_string())),
                Ok(None) => Err(MonitoringError::NoSuchAlert(id.to_string())),
                Err(e) => Err(MonitoringError::AlertsUnavailable(e)),
            },
        }
    }

    /// Creates a silence; the firing alerts it covers stop being told.
    pub async fn create_silence(
        &self,
        req: &SilenceRequest,
        by: &str,
    ) -> Result<Silence, MonitoringError> {
        let now = (self.clock)();
        let n = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let silence = lifecycle::new_silence(req, by, format!("sil-{now:x}-{n}"), now)
            .map_err(MonitoringError::BadRequest)?;
        store::put_silence(&self.store, &silence)
            .await
            .map_err(MonitoringError::AlertsUnavailable)?;
        lock(&self.silences).push(silence.clone());
        self.tick().await;
        Ok(silence)
    }

    /// Ends a silence now; what it held back goes out.
    pub async fn expire_silence(&self, id: &str) -> Result<Silence, MonitoringError> {
        let now = (self.clock)();
        let mut s = store::get_silence(&self.store, id)
            .await
            .map_err(MonitoringError::AlertsUnavailable)?
            .ok_or_else(|| MonitoringError::NoSuchSilence(id.to_string()))?;
        s.expires_at_ms = s.expires_at_ms.min(now);
        store::put_silence(&self.store, &s)
            .await
            .map_err(MonitoringError::AlertsUnavailable)?;
        for held in lock(&self.silences).iter_mut().filter(|h| h.id == s.id) {
            held.expires_at_ms = s.expires_at_ms;
        }
        self.tick().await;
        Ok(s)
    }

    /// Silences: active ones, and those expired in the last 7 days if asked.
    pub async fn silences(&self, include_expired: bool) -> Result<Vec<Silence>, MonitoringError> {
        let now = (self.clock)();
        let since = if include_expired {
            now - lifecycle::MAX_SILENCE.as_millis() as i64
        } else {
            now
        };
        let mut all = store::load_silences(&self.store, since)
            .await
            .map_err(MonitoringError::AlertsUnavailable)?;
        all.sort_by_key(|s| (s.expires_at_ms <= now, -s.created_at_ms));
        Ok(all)
    }

    /// Alerts active at some time in `[since, until]` (Unix ms), newest
    /// first.
    pub async fn history(
        &self,
        since: i64,
        until: i64,
        limit: u64,
    ) -> Result<Vec<pb::Alert>, MonitoringError> {
        store::alert_history(&self.store, since, until, "", limit)
            .await
            .map_err(MonitoringError::AlertsUnavailable)
    }

    /// The store alerts and figures are kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The hub's clock (Unix ms).
    pub fn now_ms(&self) -> i64 {
        (self.clock)()
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
                rules = new.rules.len(),
                channels = new.channels.len(),
                from = %watched.origin(),
                "alert rules in force"
            );
            metrics::counter!("discovery_monitoring_rule_loads_total", "outcome" => "loaded")
                .increment(1);
            let env = discovery_kit::config::Env::process();
            hub.set_routing(Routing::from_file(&new, |v| {
                discovery_kit::cache::secret(&env, v).ok().flatten()
            }));
            for t in engine.set_rules(new.rules) {
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
    let mut this_hour: Option<i64> = None;
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
        // The hour just ended, once, at the first scrape of the next (the
        // hour monitoring started in is partial and not written).
        let hour = discovery_kit::now_unix_ms() / store::HOUR_MS;
        if this_hour.is_some_and(|h| h != hour) {
            let figures = {
                let h = history.lock().unwrap_or_else(|p| p.into_inner());
                let (inc, covered) = h.increase_over(Duration::from_secs(3600));
                store::Hour {
                    start_ms: (hour - 1) * store::HOUR_MS,
                    covered_s: covered.as_secs_f64(),
                    services: window::per_service(&inc),
                }
            };
            if figures.covered_s > 0.0
                && let Err(e) = store::put_hour(&store, &figures).await
            {
                tracing::warn!(error = %e, "storing an hour's figures failed");
            }
        }
        this_hour = Some(hour);
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
        hub.record_standings(engine.rules(), &observations);
        hub.tick().await;
        hub.run_reports(&history).await;
    }
}
