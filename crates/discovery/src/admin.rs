//! `discovery admin`: operator commands against a running gateway (a key
//! with the admin scope), answers printed as proto JSON or text format from
//! the embedded descriptors.

use clap::Subcommand;
use discovery_kit::server::BoxError;
use discovery_proto::topology::GATEWAY;
use discovery_proto::v1 as pb;
use discovery_proto::v1::discovery_client::DiscoveryClient;

use crate::cli::{GatewayClient, WithKey};

/// How to reach the gateway, and how to print its answers.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Gateway URL (`https://` for TLS).
    #[arg(long, global = true, default_value = GATEWAY.default_url)]
    pub gateway: String,
    /// API key (`discovery up` prints one; admin commands need the admin
    /// scope, sync the ingest scope).
    #[arg(long, global = true, env = "DISCOVERY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// CA certificate (PEM) that signed an `https://` gateway's certificate;
    /// without it the system's (webpki) roots are trusted.
    #[arg(long, global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// Print the answer as JSON (the proto3 JSON mapping) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Every service's and replica's health as monitoring sees it.
    Health,
    /// Alerts: the latest (no subcommand), or acknowledge, history, deliveries.
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsAction>,
    },
    /// Silences: list (no subcommand), create, expire.
    Silences {
        #[command(subcommand)]
        action: Option<SilencesAction>,
    },
    /// The SLA report (latency percentiles, availability, error budget).
    Sla,
    /// Which way a metric goes per service over a period.
    Trends {
        /// rate (calls/s), p95, p99 (ms) or errors (server-fault ratio).
        #[arg(long, default_value = "rate", value_parser = ["rate", "p95", "p99", "errors"])]
        metric: String,
        /// Over the last: 10m, 1h, 24h (at most 25h).
        #[arg(long, default_value = "1h")]
        period: String,
        /// Only this service.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// The gateway's traffic forecast from the stored hours, its back-test
    /// error, and the pods growth scenarios and a 10x peak need.
    Forecast {
        /// How far ahead: 1d, 7d, 30d.
        #[arg(long, default_value = "7d")]
        horizon: String,
        /// Growth scenarios as fractions (0.25 = +25 %), comma-separated.
        #[arg(long, value_delimiter = ',')]
        growth: Vec<f64>,
    },
    /// The recommendation cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsAction {
    /// Acknowledge a firing alert (stops its escalation).
    Ack {
        /// The alert's id (from `discovery admin alerts`).
        id: String,
        /// What you are doing about it.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Alerts active over a past period.
    History {
        /// How far back: 30m, 6h, 2d (default 24h).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Only this rule.
        #[arg(long, default_value = "")]
        rule: String,
    },
    /// Deliveries of alerts to channels, newest first.
    Deliveries {
        /// Only this alert's.
        #[arg(long, default_value = "")]
        alert: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SilencesAction {
    /// Silences in force (--all: and those expired in the last 7 days).
    List {
        /// Expired ones too.
        #[arg(long)]
        all: bool,
    },
    /// Silence matching alerts for a while.
    Create {
        /// Only this rule's alerts.
        #[arg(long, default_value = "")]
        rule: String,
        /// Only alerts with this label (`service=gateway`); repeat for more.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// For how long: 30m, 2h, 1d (at most 7d).
        #[arg(long = "for")]
        duration: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// End a silence now.
    Expire {
        /// The silence's id.
        id: String,
    },
}

/// `30s`, `30m`, `6h`, `2d`: the rules file's durations.
fn span(text: &str) -> Result<std::time::Duration, BoxError> {
    discovery_monitoring::rules::file::span(text).map_err(Into::into)
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Entries and hit rates of the two cache levels.
    Status,
    /// Warm the cache with the popular requests now.
    Warm,
    /// Drop entries by tag or key pattern.
    Invalidate {
        /// A tag (e.g. `product:frm-00096`); repeat for several.
        #[arg(long)]
        tag: Vec<String>,
        /// A key pattern (`*` wildcards).
        #[arg(long)]
        pattern: Option<String>,
    },
}

/// A gateway client for `g`: TLS for `https://` (with `--ca`, or the
/// webpki roots); a failure to connect is UNAVAILABLE (exit status 4).
pub(crate) async fn client(g: &GatewayArgs) -> Result<GatewayClient, BoxError> {
    let key = g
        .api_key
        .as_deref()
        .ok_or("--api-key (or DISCOVERY_API_KEY): a key is needed (`discovery up` prints one)")?;
    let key = key
        .trim()
        .parse()
        .map_err(|_| "--api-key: not a valid header value")?;
    let mut endpoint = discovery_kit::client::endpoint("--gateway", &g.gateway)?;
    if g.gateway.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &g.ca {
            Some(path) => {
                let pem =
                    std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tls.with_webpki_roots(),
        };
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        tonic::Status::unavailable(format!(
            "cannot connect to the gateway at {}: {e} (is it running? for TLS, is --ca right?)",
            g.gateway
        ))
    })?;
    Ok(DiscoveryClient::with_interceptor(channel, WithKey(key))
        .max_encoding_message_size(discovery_proto::MAX_REQUEST_BYTES))
}

fn dynamic(name: &str, bytes: &[u8]) -> Result<prost_reflect::DynamicMessage, BoxError> {
    let desc = discovery_gateway::connect::descriptors()
        .get_message_by_name(&format!("discovery.v1.{name}"))
        .ok_or_else(|| format!("no descriptor for {name}"))?;
    Ok(prost_reflect::DynamicMessage::decode(desc, bytes)?)
}

/// A `discovery.v1` message as JSON (the proto3 JSON mapping).
pub(crate) fn message_json(name: &str, bytes: &[u8]) -> Result<serde_json::Value, BoxError> {
    Ok(serde_json::to_value(dynamic(name, bytes)?)?)
}

/// Prints a `discovery.v1` message: JSON (`--json`) or protobuf text format.
pub(crate) fn print_message(name: &str, bytes: &[u8], json: bool) -> Result<(), BoxError> {
    let msg = dynamic(name, bytes)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&msg)?);
    } else {
        println!("{msg:#}");
    }
    Ok(())
}

pub async fn admin(action: AdminAction, g: GatewayArgs) -> Result<(), BoxError> {
    use prost::Message;
    let mut c = client(&g).await?;
    let (name, bytes) = match action {
        AdminAction::Health => (
            "GetSystemHealthResponse",
            c.get_system_health(pb::GetSystemHealthRequest::default())
                .await?
                .into_inner()
                .encode_to_vec(),
        ),
        AdminAction::Alerts { action } => match action {
            None => (
                "ListAlertsResponse",
                c.list_alerts(pb::ListAlertsRequest::default())
                    .await?
                    .into_inner()
                    .encode_to_vec(),
            ),
            Some(AlertsAction::Ack { id, note }) => (
                "AcknowledgeAlertResponse",
                c.acknowledge_alert(pb::AcknowledgeAlertRequest { id, note })
                    .await?
                    .into_inner()
                    .encode_to_vec(),
            ),
            Some(AlertsAction::History { since, rule }) => {
                let back = span(&since)?.as_millis() as i64;
                (
                    "GetAlertHistoryResponse",
                    c.get_alert_history(pb::GetAlertHistoryRequest {
                        since_unix_ms: discovery_kit::now_unix_ms() - back,
                        rule,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .encode_to_vec(),
                )
            }
            Some(AlertsAction::Deliveries { alert }) => (
                "ListAlertDeliveriesResponse",
                c.list_alert_deliveries(pb::ListAlertDeliveriesRequest {
                    alert_id: alert,
                    limit: 0,
                })
                .await?
                .into_inner()
                .encode_to_vec(),
            ),
        },
        AdminAction::Silences { action } => match action {
            None | Some(SilencesAction::List { all: false }) => (
                "ListSilencesResponse",
                c.list_silences(pb::ListSilencesRequest::default())
                    .await?
                    .into_inner()
                    .encode_to_vec(),
            ),
            Some(SilencesAction::List { all: true }) => (
                "ListSilencesResponse",
                c.list_silences(pb::ListSilencesRequest {
                    include_expired: true,
                })
                .await?
                .into_inner()
                .encode_to_vec(),
            ),
            Some(SilencesAction::Create {
                rule,
                labels,
                duration,
                reason,
            }) => {
                let labels = labels
                    .iter()
                    .map(|l| {
                        l.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .ok_or_else(|| format!("--label {l:?}: say name=value"))
                    })
                    .collect::<Result<_, _>>()?;
                let secs = u32::try_from(span(&duration)?.as_secs())
                    .map_err(|_| format!("--for {duration:?}: too long"))?;
                (
                    "CreateSilenceResponse",
                    c.create_silence(pb::CreateSilenceRequest {
                        rule,
                        labels,
                        duration_seconds: secs,
                        reason,
                    })
                    .await?
                    .into_inner()
                    .encode_to_vec(),
                )
            }
            Some(SilencesAction::Expire { id }) => (
                "ExpireSilenceResponse",
                c.expire_silence(pb::ExpireSilenceRequest { id })
                    .await?
                    .into_inner()
                    .encode_to_vec(),
            ),
        },
        AdminAction::Sla => (
            "GetSlaReportResponse",
            c.get_sla_report(pb::GetSlaReportRequest::default())
                .await?
                .into_inner()
                .encode_to_vec(),
        ),
        AdminAction::Trends {
            metric,
            period,
            service,
        } => {
            let metric = match metric.as_str() {
                "p95" => pb::TrendMetric::LatencyP95Ms,
                "p99" => pb::TrendMetric::LatencyP99Ms,
                "errors" => pb::TrendMetric::ErrorRate,
                _ => pb::TrendMetric::RequestRate,
            };
            let secs = u32::try_from(span(&period)?.as_secs())
                .map_err(|_| format!("--period {period:?}: too long"))?;
            (
                "GetTrendsResponse",
                c.get_trends(pb::GetTrendsRequest {
                    metric: metric as i32,
                    period_seconds: secs,
                    service,
                })
                .await?
                .into_inner()
                .encode_to_vec(),
            )
        }
        AdminAction::Forecast { horizon, growth } => {
            let secs = u32::try_from(span(&horizon)?.as_secs())
                .map_err(|_| format!("--horizon {horizon:?}: too long"))?;
            (
                "GetCapacityForecastResponse",
                c.get_capacity_forecast(pb::GetCapacityForecastRequest {
                    horizon_seconds: secs,
                    growth,
                })
                .await?
                .into_inner()
                .encode_to_vec(),
            )
        }
        AdminAction::Cache { action } => match action {
            CacheAction::Status => (
                "GetCacheStatusResponse",
                c.get_cache_status(pb::GetCacheStatusRequest::default())
                    .await?
                    .into_inner()
                    .encode_to_vec(),
            ),
            CacheAction::Warm => (
                "WarmCacheResponse",
                c.warm_cache(pb::WarmCacheRequest::default())
                    .await?
                    .into_inner()
                    .encode_to_vec(),
            ),
            CacheAction::Invalidate { tag, pattern } => {
                if tag.is_empty() && pattern.is_none() {
                    return Err("cache invalidate: say what with --tag or --pattern".into());
                }
                (
                    "InvalidateCacheResponse",
                    c.invalidate_cache(pb::InvalidateCacheRequest {
                        tags: tag,
                        key_pattern: pattern.unwrap_or_default(),
                    })
                    .await?
                    .into_inner()
                    .encode_to_vec(),
                )
            }
        },
    };
    print_message(name, &bytes, g.json)
}

/// `discovery autoscale`: the simulation's tables (Markdown), or every
/// minute of it (`--json`).
pub fn autoscale(json: bool) -> std::process::ExitCode {
    use discovery_loadgen::autoscale;
    if json {
        let all: Vec<_> = autoscale::scenarios().into_iter().map(|(s, _)| s).collect();
        match serde_json::to_string_pretty(&all) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("discovery autoscale: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", autoscale::markdown());
    }
    std::process::ExitCode::SUCCESS
}
