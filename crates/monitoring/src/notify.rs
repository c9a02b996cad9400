//! Alert delivery: a Slack-compatible webhook (HTTP or HTTPS) with retries.
//!
//! The body is Slack's incoming-webhook JSON (`text` plus one attachment
//! coloured by state) with the alert itself under `alert`, so a generic
//! receiver gets the fields too. A delivery is retried on transport errors,
//! 429 and 5xx with doubling waits (1 s, 2 s, 4 s, 8 s: five attempts);
//! other 4xx mean the request is wrong and are not retried.
//!
//! A webhook URL is a secret (Slack's carries its token in the path): it
//! never appears in logs, errors or `Debug`; only scheme and host do
//! ([`redact`]).

use std::sync::Arc;
use std::time::Duration;

use discovery_proto::v1 as pb;
use http_body_util::BodyExt;

/// Where alerts are posted.
#[derive(Clone)]
pub struct Webhook {
    uri: http::Uri,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("uri", &redact_uri(&self.uri))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// What may be shown of a webhook URL: scheme and host, never the user
/// info, path or query (where tokens live).
pub fn redact_uri(uri: &http::Uri) -> String {
    let host = uri.host().unwrap_or("");
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let rest = if uri.path().len() > 1 || uri.query().is_some() {
        "/…"
    } else {
        ""
    };
    format!("{}://{host}{port}{rest}", uri.scheme_str().unwrap_or("?"))
}

/// Delivery failed for good.
#[derive(Debug, thiserror::Error)]
#[error("webhook {url}: {reason}")]
pub struct DeliveryError {
    url: String,
    reason: String,
}

impl Webhook {
    /// Parses `http://` or `https://` URLs.
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("the value is not a URL ({e}); give http(s)://host/path"))?;
        if uri.host().is_none() {
            return Err("the URL has no host".into());
        }
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let roots = rustls::RootCertStore::from_iter(
                    webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
                );
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
            }
            _ => {
                return Err(format!("{}: use http:// or https://", redact_uri(&uri)));
            }
        };
        Ok(Self { uri, tls })
    }

    /// Posts `alert` (Slack's shape), retrying as the module docs say.
    pub async fn deliver(&self, alert: &pb::Alert) -> Result<u32, DeliveryError> {
        self.post_json(&payload(alert, None)).await
    }

    /// Posts `body`, retrying as the module docs say; the attempts it took.
    pub async fn post_json(&self, body: &serde_json::Value) -> Result<u32, DeliveryError> {
        let body = serde_json::to_vec(body).map_err(|e| self.error(e))?;
        with_retries("webhook", || async {
            match tokio::time::timeout(Duration::from_secs(10), self.post(&body)).await {
                Ok(Ok(status)) if status.is_success() => Attempt::Done,
                Ok(Ok(status))
                    if status.is_client_error()
                        && status != http::StatusCode::TOO_MANY_REQUESTS =>
                {
                    Attempt::Stop(format!("HTTP {status}: not retried"))
                }
                Ok(Ok(status)) => Attempt::Retry(format!("HTTP {status}")),
                Ok(Err(e)) => Attempt::Retry(e),
                Err(_) => Attempt::Retry("no answer within 10 s".into()),
            }
        })
        .await
        .map_err(|e| self.error(e))
    }

    fn error(&self, e: impl std::fmt::Display) -> DeliveryError {
        DeliveryError {
            url: redact_uri(&self.uri),
            reason: e.to_string(),
        }
    }

    async fn post(&self, body: &[u8]) -> Result<http::StatusCode, String> {
        let host = self.uri.host().unwrap_or_default().to_string();
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let path = self
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let req = http::Request::post(path)
            .header(
                http::header::HOST,
                self.uri.authority().map(|a| a.as_str()).unwrap_or(""),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .map_err(|e| e.to_string())?;
        match &self.tls {
            None => send(tcp, req).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| e.to_string())?;
                let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
                send(stream, req).await
            }
        }
    }
}

/// How one delivery attempt went.
pub enum Attempt {
    /// Delivered.
    Done,
    /// Failed in a way that may pass (transport, 429, 5xx, a transient
    /// SMTP reply): try again.
    Retry(String),
    /// Refused for good: trying again would be refused again.
    Stop(String),
}

/// Attempts at most.
const ATTEMPTS: u32 = 5;

/// Runs `attempt` until it is done or refused for good, at most
/// [`ATTEMPTS`] times with doubling waits (1, 2, 4, 8 s) between; the
/// attempts it took, or why it failed. Every channel delivers through it.
pub async fn with_retries<F, Fut>(channel: &str, mut attempt: F) -> Result<u32, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    let mut wait = Duration::from_secs(1);
    let mut n = 1;
    loop {
        match attempt().await {
            Attempt::Done => return Ok(n),
            Attempt::Stop(why) => return Err(why),
            Attempt::Retry(why) if n == ATTEMPTS => {
                return Err(format!("{why} (gave up after {n} attempts)"));
            }
            Attempt::Retry(why) => {
                tracing::debug!(attempt = n, error = %why, "{channel} delivery failed; retrying");
            }
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        n += 1;
    }
}

async fn send<IO>(
    io: IO,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<http::StatusCode, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// Slack's incoming-webhook shape, plus the alert; `word` overrides the
/// state's ("ESCALATED").
pub fn payload(alert: &pb::Alert, word: Option<&str>) -> serde_json::Value {
    let state = pb::AlertState::try_from(alert.state).unwrap_or(pb::AlertState::Unspecified);
    let severity = pb::Severity::try_from(alert.severity).unwrap_or(pb::Severity::Unspecified);
    let (word, color) = match (state, severity) {
        (pb::AlertState::Resolved, _) => ("RESOLVED", "#2eb886"),
        (_, pb::Severity::Critical) => (word.unwrap_or("FIRING"), "#e01e5a"),
        _ => (word.unwrap_or("FIRING"), "#ecb22e"),
    };
    let labels: Vec<String> = alert
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    serde_json::json!({
        "text": format!("[{word}] {}: {}", alert.rule, alert.summary),
        "attachments": [{
            "color": color,
            "fields": [
                {"title": "rule", "value": alert.rule, "short": true},
                {"title": "severity", "value": severity.as_str_name(), "short": true},
                {"title": "labels", "value": labels.join(", "), "short": false},
                {"title": "value", "value": format!("{:.3}", alert.value), "short": true},
            ],
        }],
        "alert": {
            "id": alert.id,
            "rule": alert.rule,
            "state": state.as_str_name(),
            "severity": severity.as_str_name(),
            "labels": alert.labels,
            "value": alert.value,
            "summary": alert.summary,
            "active_since_unix_ms": alert.active_since_unix_ms,
            "fired_at_unix_ms": alert.fired_at_unix_ms,
            "resolved_at_unix_ms": alert.resolved_at_unix_ms,
            "acknowledged_by": alert.acknowledged_by,
            "escalated_at_unix_ms": alert.escalated_at_unix_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_url_is_never_shown_whole() {
        let secret = "https://user:pw@hooks.example.com:8443/services/T000/B000/s3cr3t?token=x";
        let w = Webhook::new(secret).unwrap();
        let shown = [
            format!("{w:?}"),
            w.error("HTTP 500").to_string(),
            Webhook::new("ftp://hooks.example.com/s3cr3t").unwrap_err(),
            Webhook::new("https://hooks.example.com/s3cr3t with space").unwrap_err(),
        ];
        for s in &shown {
            assert!(
                !s.contains("s3cr3t") && !s.contains("pw"),
                "leaked in {s:?}"
            );
        }
        assert_eq!(
            w.error("HTTP 500").to_string(),
            "webhook https://hooks.example.com:8443/…: HTTP 500"
        );
    }
}
