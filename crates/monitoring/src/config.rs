//! Monitoring's variables: its targets, windows and notifications.

use std::time::Duration;

use discovery_kit::config::{ConfigError, Env, Variable};
use discovery_kit::server::ServeConfig;
use discovery_kit::store::StoreConfig;
use discovery_proto::topology;

use crate::probe::readiness_path;
use crate::{collect, notify};

/// A service monitoring watches.
#[derive(Debug, Clone)]
pub struct Target {
    /// Short name.
    pub service: String,
    /// gRPC URL (`http://host:port`, `dns://host:port`), or, with a path,
    /// an HTTP readiness endpoint (`dns://host:9090/readyz`: a gateway
    /// serving TLS, whose gRPC health monitoring cannot ask in plain text).
    pub url: String,
    /// Fully qualified gRPC service checked for readiness.
    pub grpc_name: &'static str,
}

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve.
    pub serve: ServeConfig,
    /// Store.
    pub store: StoreConfig,
    /// Services to watch.
    pub targets: Vec<Target>,
    /// Metrics sources.
    pub sources: Vec<collect::Source>,
    /// Scrape and rule evaluation interval.
    pub scrape_interval: Duration,
    /// Token for the dashboard from beyond loopback
    /// (`DISCOVERY_DASHBOARD_TOKEN[_FILE]`).
    pub dashboard_token: Option<String>,
    /// The alert rules file (`DISCOVERY_ALERT_RULES`), re-read when it
    /// changes; `None`: the built-in rules.
    pub rules_file: Option<std::path::PathBuf>,
    /// The gateway as the operator's browser reaches it
    /// (`DISCOVERY_DASHBOARD_GATEWAY_URL`): the dashboard's acknowledge and
    /// silence buttons call its admin methods with the admin key.
    pub dashboard_gateway_url: Option<String>,
}

impl Config {
    /// Reads `DISCOVERY_MONITORING_PORT`, the store and the `DISCOVERY_*_URLS` targets.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut targets = Vec::new();
        // Every service but monitoring itself, from the one topology table.
        for t in topology::ALL
            .into_iter()
            .filter(|t| *t != topology::MONITORING)
        {
            let var = t.urls_var;
            for url in env.list(var, &[t.default_url]) {
                match readiness_path(&url) {
                    Some((scheme, authority, _)) => {
                        if !matches!(scheme, "http" | "dns") || authority.is_empty() {
                            return Err(ConfigError::new(
                                var,
                                format!(
                                    "{url:?}: a readiness URL is http://host:port/path or dns://host:port/path"
                                ),
                            ));
                        }
                    }
                    None => {
                        discovery_kit::client::endpoint(var, &url)
                            .map_err(|e| ConfigError::new(var, e.reason))?;
                    }
                }
                targets.push(Target {
                    service: t.name.into(),
                    url,
                    grpc_name: t.health,
                });
            }
        }
        let var = "DISCOVERY_MONITORING_SCRAPE";
        let sources = env
            .list(var, &["local"])
            .iter()
            .map(|s| collect::Source::parse(s).map_err(|e| ConfigError::new(var, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let scrape_interval = env.duration(
            "DISCOVERY_MONITORING_SCRAPE_INTERVAL",
            Duration::from_secs(10),
        )?;
        if scrape_interval.is_zero() {
            return Err(ConfigError::new(
                "DISCOVERY_MONITORING_SCRAPE_INTERVAL",
                "must be above zero (e.g. 10s)",
            ));
        }
        // The built-in rules' Slack channel reads this URL; a wrong one is
        // refused at start rather than at the first alert.
        if let Some(u) = env
            .raw("DISCOVERY_ALERT_WEBHOOK_URL")
            .filter(|u| !u.is_empty())
        {
            notify::Webhook::new(&u)
                .map_err(|e| ConfigError::new("DISCOVERY_ALERT_WEBHOOK_URL", e))?;
        }
        // A rules file that is not there or not valid stops the start: the
        // operator asked for these rules, not the built-in ones.
        let rules_file = env
            .raw("DISCOVERY_ALERT_RULES")
            .filter(|p| !p.trim().is_empty())
            .map(std::path::PathBuf::from);
        if let Some(path) = &rules_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("DISCOVERY_ALERT_RULES", format!("{}: {e}", path.display()))
            })?;
            crate::rules::file::parse(&text).map_err(|e| {
                ConfigError::new("DISCOVERY_ALERT_RULES", format!("{}: {e}", path.display()))
            })?;
        }
        let var = "DISCOVERY_DASHBOARD_GATEWAY_URL";
        let dashboard_gateway_url = env
            .raw(var)
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty());
        if let Some(u) = &dashboard_gateway_url {
            let ok = u.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.query().is_none()
            });
            if !ok {
                return Err(ConfigError::new(
                    var,
                    format!(
                        "{u:?}: the gateway's URL as a browser reaches it, http(s)://host[:port][/path]"
                    ),
                ));
            }
        }
        Ok(Self {
            serve: ServeConfig::from_env(
                env,
                topology::MONITORING.port_var,
                topology::MONITORING.port,
            )?,
            store: StoreConfig::from_env(env)?,
            targets,
            sources,
            scrape_interval,
            dashboard_token: discovery_kit::cache::secret(env, "DISCOVERY_DASHBOARD_TOKEN")?
                .filter(|t| !t.is_empty()),
            rules_file,
            dashboard_gateway_url,
        })
    }
}

/// This service's variables, with their defaults (the launcher lists them
/// with everyone's: `discovery env`, the README).
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "DISCOVERY_MONITORING_PORT",
        default: "50055",
        help: "monitoring gRPC port",
    },
    Variable {
        name: "DISCOVERY_DASHBOARD_TOKEN_FILE",
        default: "",
        help: "monitoring: a file holding the dashboard's token (or DISCOVERY_DASHBOARD_TOKEN); without one the dashboard answers loopback only",
    },
    Variable {
        name: "DISCOVERY_DASHBOARD_GATEWAY_URL",
        default: "",
        help: "monitoring: the gateway's URL as the operator's browser reaches it (https://api.shop.example); the dashboard's acknowledge and silence buttons call it with the admin key (allow the dashboard's origin in DISCOVERY_CORS_ORIGINS); `discovery up` sets it",
    },
    Variable {
        name: "DISCOVERY_MONITORING_SCRAPE",
        default: "local",
        help: "monitoring: metrics sources, comma-separated: `local` (this process), http://host:port/metrics, or dns://host:port/metrics (every address the name resolves to, e.g. a headless Service)",
    },
    Variable {
        name: "DISCOVERY_MONITORING_SCRAPE_INTERVAL",
        default: "10s",
        help: "monitoring: scrape and alert-rule evaluation interval",
    },
    Variable {
        name: "DISCOVERY_ALERT_RULES",
        default: "",
        help: "monitoring: an alert rules file (alert-rules.toml's form), re-read when it changes; a bad file is refused with its line and the rules in force stay; unset: the built-in rules",
    },
    Variable {
        name: "DISCOVERY_ALERT_WEBHOOK_URL",
        default: "",
        help: "monitoring: the built-in rules' `webhook` channel: a Slack-compatible webhook (http or https); unset: off",
    },
    Variable {
        name: "DISCOVERY_ALERT_SMTP_URL",
        default: "",
        help: "monitoring: the built-in rules' `email` channel: smtp://user:pass@host:587 (STARTTLS) or smtps://...; unset: off",
    },
    Variable {
        name: "DISCOVERY_ALERT_EMAIL_TO",
        default: "",
        help: "monitoring: the `email` channel's recipients, comma-separated",
    },
    Variable {
        name: "DISCOVERY_PAGERDUTY_ROUTING_KEY",
        default: "",
        help: "monitoring: the built-in rules' `pager` channel (PagerDuty Events v2, where unacknowledged critical alerts escalate after 15 min); unset: off",
    },
];
