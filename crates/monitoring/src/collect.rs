//! Where metrics come from: this process's registry (`local`: the
//! all-in-one system, where every service records into one registry) or
//! services' `/metrics` endpoints over HTTP.

use std::time::Duration;

use http_body_util::BodyExt;

use crate::window::{Key, parse};

/// One metrics source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This process's registry.
    Local,
    /// `http://host:port/metrics`.
    Http {
        /// host:port.
        authority: String,
        /// Path and query.
        path: String,
    },
    /// `dns://host:port/metrics`: every address the name resolves to at
    /// each scrape (a headless Kubernetes Service: every ready replica).
    Dns {
        /// host:port.
        authority: String,
        /// Path and query.
        path: String,
    },
}

impl Source {
    /// Parses `local`, an `http://` URL or a `dns://` URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "local" {
            return Ok(Source::Local);
        }
        let uri: http::Uri = s.parse().map_err(|e| {
            format!("{s:?} is not a URL ({e}); use http://host:port/metrics, dns://host:port/metrics or local")
        })?;
        let dns = match uri.scheme_str() {
            Some("http") => false,
            Some("dns") => true,
            _ => {
                return Err(format!(
                    "{s:?}: only http:// or dns:// metrics endpoints (or local)"
                ));
            }
        };
        if dns && uri.port().is_none() {
            return Err(format!("{s:?} has no port (e.g. :9090)"));
        }
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| format!("{s:?} has no host:port"))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| *p != "/")
            .unwrap_or("/metrics")
            .to_string();
        Ok(if dns {
            Source::Dns { authority, path }
        } else {
            Source::Http { authority, path }
        })
    }

    /// Reads the source's series.
    pub async fn read(&self) -> Result<Vec<(Key, f64)>, String> {
        match self {
            Source::Local => Ok(bounded(parse(&discovery_kit::metrics::render()), &"local")),
            Source::Http { authority, path } => read_one(authority, path).await,
            Source::Dns { authority, path } => {
                let addrs = discovery_kit::client::resolve_all(authority)
                    .await
                    .map_err(|e| format!("dns://{authority}{path}: cannot resolve: {e}"))?;
                if addrs.is_empty() {
                    return Err(format!("dns://{authority}{path}: no addresses"));
                }
                let reads = addrs
                    .iter()
                    .map(|a| async move { (a, read_one(&a.to_string(), path).await) });
                let mut out = Vec::new();
                for (a, r) in futures::future::join_all(reads).await {
                    match r {
                        Ok(series) => out.extend(series),
                        // One replica going away does not blind the rest.
                        Err(e) => {
                            tracing::warn!(replica = %a, error = %e, "scrape of one replica failed")
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// One endpoint's series, each labelled with `instance` (host:port), so
/// replicas of one service stay apart (a counter that resets on one
/// replica's restart is seen as a reset of that replica only) and sum up in
/// the service's figures.
async fn read_one(authority: &str, path: &str) -> Result<Vec<(Key, f64)>, String> {
    let text = tokio::time::timeout(Duration::from_secs(5), get(authority, path))
        .await
        .map_err(|_| format!("http://{authority}{path}: no answer within 5 s"))??;
    Ok(bounded(parse(&text), &authority)
        .into_iter()
        .map(|(k, v)| {
            let mut labels = k.1.clone();
            labels.insert("instance".into(), authority.to_string());
            (std::sync::Arc::new((k.0.clone(), labels)), v)
        })
        .collect())
}

/// Largest `/metrics` page read from one endpoint.
const MAX_SCRAPE_BYTES: usize = 16 << 20;

/// Most series kept from one source per scrape; the rest are dropped with
/// a warning (the services' labels come from closed sets, so a page with
/// more is a bug or an attack, not data).
pub const MAX_SERIES_PER_SOURCE: usize = 50_000;

fn bounded(mut series: Vec<(Key, f64)>, source: &dyn std::fmt::Display) -> Vec<(Key, f64)> {
    if series.len() > MAX_SERIES_PER_SOURCE {
        tracing::warn!(%source, series = series.len(), kept = MAX_SERIES_PER_SOURCE, "too many series; the rest are dropped");
        series.truncate(MAX_SERIES_PER_SOURCE);
    }
    series
}

/// `GET http://{authority}{path}` over HTTP/1.1.
async fn request(
    authority: &str,
    path: &str,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let err = |e: &dyn std::fmt::Display| format!("http://{authority}{path}: {e}");
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| err(&e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| err(&e))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| err(&e))?;
    send.send_request(req).await.map_err(|e| err(&e))
}

/// The status `GET http://{authority}{path}` answers (a readiness check).
pub async fn status(authority: &str, path: &str) -> Result<http::StatusCode, String> {
    request(authority, path).await.map(|r| r.status())
}

async fn get(authority: &str, path: &str) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| format!("http://{authority}{path}: {e}");
    let resp = request(authority, path).await?;
    if !resp.status().is_success() {
        return Err(err(&format!("HTTP {}", resp.status())));
    }
    // A scrape is bounded: a misbehaving or compromised endpoint cannot
    // make monitoring buffer without limit.
    let body = http_body_util::Limited::new(resp.into_body(), MAX_SCRAPE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            err(&format!(
                "{e} (a scrape is read up to {MAX_SCRAPE_BYTES} bytes)"
            ))
        })?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_with_a_default_path() {
        assert_eq!(Source::parse("local").unwrap(), Source::Local);
        assert_eq!(
            Source::parse("http://gateway:9090").unwrap(),
            Source::Http {
                authority: "gateway:9090".into(),
                path: "/metrics".into()
            }
        );
        assert!(Source::parse("https://x:1/metrics").is_err());
    }

    #[tokio::test]
    async fn reads_a_real_metrics_endpoint() {
        discovery_kit::metrics::handle();
        metrics::counter!("discovery_cache_requests_total", "kind" => "collect_test", "result" => "hit", "level" => "l1").increment(3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = discovery_kit::CancellationToken::new();
        tokio::spawn(discovery_kit::metrics::serve(listener, None, token.clone()));
        let got = Source::parse(&format!("http://{addr}/metrics"))
            .unwrap()
            .read()
            .await
            .unwrap();
        let mine = |got: &[(Key, f64)]| {
            got.iter()
                .filter(|(k, v)| {
                    k.1.get("kind").map(String::as_str) == Some("collect_test") && *v == 3.0
                })
                .map(|(k, _)| k.1.get("instance").cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(mine(&got), [addr.to_string()], "labelled with its instance");
        // The same endpoint by name: every address `localhost` resolves to
        // is scraped (the ones that do not answer are skipped).
        let by_name = Source::parse(&format!("dns://localhost:{}/metrics", addr.port())).unwrap();
        assert!(matches!(by_name, Source::Dns { .. }));
        let got = by_name.read().await.unwrap();
        assert_eq!(mine(&got), [addr.to_string()]);
        assert!(
            Source::parse("dns://gateway-headless/metrics").is_err(),
            "a port is needed"
        );
        token.cancel();
    }
}
