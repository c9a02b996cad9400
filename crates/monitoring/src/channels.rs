//! Where alerts go: the rules file's channels, made real from the
//! environment (the secrets: webhook URLs, routing keys, SMTP URLs).
//!
//! - `slack`: Slack's incoming-webhook JSON (`notify::payload`).
//! - `pagerduty`: the Events API v2 (`trigger` on firing and escalation,
//!   `resolve` on resolution, the alert id as `dedup_key`, so a repeat is
//!   one incident).
//! - `email`: a plain-text message over SMTP (`lettre`: the well-kept SMTP
//!   client; STARTTLS or TLS as the URL says, with the webpki roots).
//!
//! Every send is retried on what may pass (transport errors, 429 and 5xx,
//! transient SMTP replies) with doubling waits, five attempts at most
//! (`notify::with_retries`). A
//! channel whose variable is not set is off: said once when the rules are
//! loaded, and its deliveries are not attempted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use discovery_proto::v1 as pb;
use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::notify::{Attempt, Webhook, payload, with_retries};
use crate::rules::file::ChannelSpec;

/// What happened to an alert, as a channel hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// It started firing (or its silence ended while it fires).
    Firing,
    /// It resolved.
    Resolved,
    /// Nobody acknowledged it in time.
    Escalated,
}

impl Event {
    /// Its name in delivery records.
    pub fn name(self) -> &'static str {
        match self {
            Event::Firing => "firing",
            Event::Resolved => "resolved",
            Event::Escalated => "escalated",
        }
    }
}

/// A channel ready to send.
pub enum Channel {
    /// Slack-compatible webhook.
    Slack(Webhook),
    /// PagerDuty Events API v2.
    PagerDuty {
        /// The endpoint.
        hook: Webhook,
        /// The integration's routing key.
        key: String,
    },
    /// SMTP.
    Email {
        /// The transport (its URL held inside, never shown).
        mailer: AsyncSmtpTransport<Tokio1Executor>,
        /// Sender.
        from: Mailbox,
        /// Recipients.
        to: Vec<Mailbox>,
    },
}

/// The channels by name: ready, or off with the reason.
#[derive(Default, Clone)]
pub struct Channels(BTreeMap<String, Result<Arc<Channel>, String>>);

impl Channels {
    /// Builds the file's channels, reading their secrets with `var`.
    pub fn build(specs: &[(String, ChannelSpec)], var: impl Fn(&str) -> Option<String>) -> Self {
        let mut out = BTreeMap::new();
        for (name, spec) in specs {
            let secret = |v: &str| {
                var(v)
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| format!("{v} is not set"))
            };
            let made = match spec {
                ChannelSpec::Slack { url_env } => secret(url_env).and_then(|u| {
                    Webhook::new(&u)
                        .map(Channel::Slack)
                        .map_err(|e| format!("{url_env}: {e}"))
                }),
                ChannelSpec::PagerDuty {
                    url,
                    routing_key_env,
                } => secret(routing_key_env).and_then(|key| {
                    Webhook::new(url)
                        .map(|hook| Channel::PagerDuty { hook, key })
                        .map_err(|e| format!("url: {e}"))
                }),
                ChannelSpec::Email { smtp_env, from, to } => {
                    let to = match to {
                        Ok(list) => Ok(list.clone()),
                        Err(v) => {
                            secret(v).map(|s| s.split(',').map(|a| a.trim().to_string()).collect())
                        }
                    };
                    secret(smtp_env).and_then(|url| {
                        let to = to?;
                        email(&url, from, &to).map_err(|e| format!("{smtp_env}: {e}"))
                    })
                }
            };
            if let Err(why) = &made {
                tracing::warn!(channel = %name, %why, "alert channel off");
            }
            out.insert(name.clone(), made.map(Arc::new));
        }
        Self(out)
    }

    /// The channel called `name`: ready, off (why), or unknown (`None`).
    pub fn get(&self, name: &str) -> Option<Result<Arc<Channel>, String>> {
        self.0.get(name).cloned()
    }
}

fn email(url: &str, from: &str, to: &[String]) -> Result<Channel, String> {
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        // The error may quote the URL (and its password): not shown.
        .map_err(|_| "not an SMTP URL (smtp://user:pass@host:587 or smtps://...)".to_string())?
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let from: Mailbox = from.parse().map_err(|e| format!("from: {e}"))?;
    let to = to
        .iter()
        .map(|a| a.parse::<Mailbox>().map_err(|e| format!("to {a:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if to.is_empty() {
        return Err("no recipients".into());
    }
    Ok(Channel::Email { mailer, from, to })
}

fn severity_name(alert: &pb::Alert) -> &'static str {
    match pb::Severity::try_from(alert.severity) {
        Ok(pb::Severity::Critical) => "critical",
        Ok(pb::Severity::Warning) => "warning",
        _ => "info",
    }
}

impl Channel {
    /// Sends `event` about `alert`; the attempts it took, or why it failed
    /// for good.
    pub async fn send(&self, alert: &pb::Alert, event: Event) -> Result<u32, String> {
        match self {
            Channel::Slack(hook) => {
                let word = (event == Event::Escalated).then_some("ESCALATED");
                hook.post_json(&payload(alert, word))
                    .await
                    .map_err(|e| e.to_string())
            }
            Channel::PagerDuty { hook, key } => {
                let action = match event {
                    Event::Resolved => "resolve",
                    _ => "trigger",
                };
                let body = serde_json::json!({
                    "routing_key": key,
                    "event_action": action,
                    "dedup_key": alert.id,
                    "payload": {
                        "summary": format!("{}: {}", alert.rule, alert.summary),
                        "source": "discovery",
                        "severity": severity_name(alert),
                        "custom_details": {
                            "labels": alert.labels,
                            "value": alert.value,
                            "escalated": event == Event::Escalated,
                        },
                    },
                });
                hook.post_json(&body).await.map_err(|e| e.to_string())
            }
            Channel::Email { mailer, from, to } => {
                let word = match event {
                    Event::Firing => "FIRING",
                    Event::Resolved => "RESOLVED",
                    Event::Escalated => "ESCALATED",
                };
                let labels: Vec<String> = alert
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let mut builder = Message::builder()
                    .from(from.clone())
                    .subject(format!(
                        "[{word}] {} ({})",
                        alert.rule,
                        severity_name(alert)
                    ))
                    .header(ContentType::TEXT_PLAIN);
                for t in to {
                    builder = builder.to(t.clone());
                }
                let message = builder
                    .body(format!(
                        "{}\n\nrule: {}\nseverity: {}\nlabels: {}\nvalue: {:.3}\nalert: {}\n\nAcknowledge: discovery admin alerts ack {}\n",
                        alert.summary,
                        alert.rule,
                        severity_name(alert),
                        labels.join(", "),
                        alert.value,
                        alert.id,
                        alert.id
                    ))
                    .map_err(|e| format!("the message: {e}"))?;
                send_mail(mailer, message).await
            }
        }
    }
}

/// Sends `message` through `mailer`, retried as every channel is; a
/// permanent SMTP refusal is not retried.
pub async fn send_mail(
    mailer: &AsyncSmtpTransport<Tokio1Executor>,
    message: Message,
) -> Result<u32, String> {
    with_retries("email", || async {
        match mailer.send(message.clone()).await {
            Ok(_) => Attempt::Done,
            Err(e) if e.is_permanent() => {
                Attempt::Stop(format!("SMTP refused it: {e} (not retried)"))
            }
            Err(e) => Attempt::Retry(format!("SMTP: {e}")),
        }
    })
    .await
}
