//! gRPC client channels between services.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// HTTP/2 stream flow-control window for every internal connection.
pub const STREAM_WINDOW: u32 = 2 << 20;
/// HTTP/2 connection flow-control window.
pub const CONNECTION_WINDOW: u32 = 16 << 20;

/// A channel that propagates W3C trace context on every call, and signs
/// it as a service when internal authentication is on.
pub type TracedChannel = InterceptedService<Channel, crate::internal::Signer>;

/// The URL is not a usable gRPC endpoint.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {url:?} is not a valid endpoint URL (expected http://host:port): {reason}")]
pub struct EndpointError {
    /// Variable the URL came from.
    pub var: String,
    /// The URL.
    pub url: String,
    /// Parser message.
    pub reason: String,
}

/// An endpoint with the settings every internal client uses: TCP_NODELAY,
/// HTTP/2 keep-alive, bounded connect timeout, large windows.
pub fn endpoint(var: &str, url: &str) -> Result<Endpoint, EndpointError> {
    let ep = Endpoint::from_shared(url.to_string()).map_err(|e| EndpointError {
        var: var.to_string(),
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    Ok(ep
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        // Fixed, large flow-control windows: hyper's adaptive window starts
        // at 64 KiB and, on a sub-millisecond network, its BDP probe keeps
        // it there, so many concurrent responses stall on WINDOW_UPDATEs.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW))
}

/// Whether a failed call provably never reached the server's handler, so
/// that sending it again (to this replica or another) cannot run it twice:
/// the cases gRPC clients retry transparently. The connection could not be
/// made (tonic's `ConnectError`); the request was still queued when its
/// connection closed (hyper's "canceled"); the server refused the stream
/// (HTTP/2 `REFUSED_STREAM`); or the server's GOAWAY named a last stream
/// below it (RFC 9113 6.8: such streams were not processed; h2 reports them
/// as a GOAWAY from the remote). Anything else (a reset or a cut connection
/// after the request went out) may have run and is not retried here.
pub fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(err) = at {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        at = err.source();
    }
    false
}

/// A lazily connecting, trace-propagating channel to `url` (unsigned:
/// health checks and tests).
pub fn connect_lazy(var: &str, url: &str) -> Result<TracedChannel, EndpointError> {
    connect_as(var, url, None, "")
}

/// A lazily connecting, trace-propagating channel to `url` whose calls are
/// signed as service `name` ([`crate::internal`]) when `auth` is set.
pub fn connect_as(
    var: &str,
    url: &str,
    auth: Option<&crate::internal::InternalAuth>,
    name: &str,
) -> Result<TracedChannel, EndpointError> {
    let channel = endpoint(var, url)?.connect_lazy();
    Ok(InterceptedService::new(
        channel,
        crate::internal::Signer::new(auth, name),
    ))
}

/// How often `dns://` names are resolved again (replicas come and go).
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

/// Every address `host:port` resolves to, sorted (a headless Kubernetes
/// Service answers with one per ready replica). Names listed in
/// `DISCOVERY_HOSTS` ([`parse_hosts`]) answer from there, like /etc/hosts.
pub async fn resolve_all(hostport: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    if let Some((host, port)) = hostport.rsplit_once(':')
        && let Some(ips) = hosts().get(host)
    {
        let port: u16 = port.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{hostport}: bad port"),
            )
        })?;
        return Ok(ips
            .iter()
            .map(|ip| std::net::SocketAddr::new(*ip, port))
            .collect());
    }
    let mut addrs: Vec<_> = tokio::net::lookup_host(hostport).await?.collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Names and their addresses: `name=ip,ip name2=ip` (entries separated by
/// white space, addresses by commas). What /etc/hosts is to a process, for
/// `dns://` names only: one machine can run the chart's topology, each
/// replica at its own loopback address under the chart's Service names
/// (`discovery cluster`, the cluster tests). Addresses come out sorted.
pub fn parse_hosts(text: &str) -> Result<HashMap<String, Vec<IpAddr>>, String> {
    let mut out: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for entry in text.split_whitespace() {
        let (name, ips) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected name=ip[,ip...]"))?;
        if name.is_empty() {
            return Err(format!("{entry:?}: no name"));
        }
        let list = out.entry(name.to_string()).or_default();
        for ip in ips.split(',').filter(|i| !i.is_empty()) {
            list.push(
                ip.parse()
                    .map_err(|_| format!("{entry:?}: {ip:?} is not an IP address"))?,
            );
        }
        list.sort();
        list.dedup();
    }
    Ok(out)
}

/// `DISCOVERY_HOSTS` of this process, read once (services validate it at
/// start through `ServeConfig`, so a bad value never gets here).
fn hosts() -> &'static HashMap<String, Vec<IpAddr>> {
    static HOSTS: std::sync::OnceLock<HashMap<String, Vec<IpAddr>>> = std::sync::OnceLock::new();
    HOSTS.get_or_init(|| {
        std::env::var("DISCOVERY_HOSTS")
            .ok()
            .and_then(|t| parse_hosts(&t).ok())
            .unwrap_or_default()
    })
}

/// A channel that balances calls over every URL of `urls`, signed as
/// service `name` when `auth` is set. `http://host:port` URLs are used as
/// given; `dns://host:port` is resolved now and every [`DNS_REFRESH`], and
/// each address it names is one endpoint, so every replica behind a
/// headless Service takes calls and new ones join (a plain `http://` URL of
/// a name would pin one connection to whichever address answered first).
/// Needs a Tokio runtime; the resolver stops when the channel is dropped.
pub fn connect_balanced(
    var: &str,
    urls: &[String],
    auth: Option<&crate::internal::InternalAuth>,
    name: &str,
) -> Result<TracedChannel, EndpointError> {
    use tonic::transport::channel::Change;
    let (channel, tx) = Channel::balance_channel::<String>(64);
    for url in urls {
        match url.strip_prefix("dns://") {
            None => {
                let ep = endpoint(var, url)?;
                // The buffer holds 64 changes; a list longer than that is a
                // configuration error worth failing on.
                tx.try_send(Change::Insert(url.clone(), ep))
                    .map_err(|e| EndpointError {
                        var: var.to_string(),
                        url: url.clone(),
                        reason: format!("too many endpoints: {e}"),
                    })?;
            }
            Some(hostport) => {
                // Validate now; connect per address later.
                endpoint(var, &format!("http://{hostport}"))?;
                let (hostport, tx, var) = (hostport.to_string(), tx.clone(), var.to_string());
                tokio::spawn(async move {
                    let mut known = std::collections::BTreeSet::new();
                    loop {
                        match resolve_all(&hostport).await {
                            Ok(addrs) => {
                                let now: std::collections::BTreeSet<_> =
                                    addrs.into_iter().map(|a| a.to_string()).collect();
                                for gone in known.difference(&now) {
                                    if tx.send(Change::Remove(gone.clone())).await.is_err() {
                                        return;
                                    }
                                }
                                for new in now.difference(&known) {
                                    let Ok(ep) = endpoint(&var, &format!("http://{new}")) else {
                                        continue;
                                    };
                                    if tx.send(Change::Insert(new.clone(), ep)).await.is_err() {
                                        return;
                                    }
                                }
                                if now != known {
                                    tracing::debug!(%var, name = %hostport, replicas = now.len(), "replicas resolved");
                                }
                                known = now;
                            }
                            Err(e) => {
                                tracing::warn!(%var, name = %hostport, error = %e, "cannot resolve replicas; keeping the last known")
                            }
                        }
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(DNS_REFRESH) => {}
                        }
                    }
                });
            }
        }
    }
    Ok(InterceptedService::new(
        channel,
        crate::internal::Signer::new(auth, name),
    ))
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    /// One call through a tonic channel to `addr`: the error it fails with.
    async fn failed_call(addr: std::net::SocketAddr) -> tonic::transport::Error {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let req = http::Request::post(format!("http://{addr}/discovery.v1.T/Call"))
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::empty())
            .unwrap();
        channel.oneshot(req).await.expect_err("the call fails")
    }

    /// A raw HTTP/2 server that takes one connection and does `then` with it.
    async fn h2_server<F, Fut>(then: F) -> std::net::SocketAddr
    where
        F: FnOnce(h2::server::Connection<tokio::net::TcpStream, bytes::Bytes>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let conn = h2::server::handshake(socket).await.unwrap();
            then(conn).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_refused_connection_was_never_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = failed_call(addr).await;
        assert!(super::never_sent(&e), "connect refused: {e:?}");
    }

    #[tokio::test]
    async fn a_stream_above_the_goaway_was_never_sent() {
        // GOAWAY with last stream 0 before reading any frame: the call's
        // stream (1) was not processed, whichever side of the GOAWAY the
        // client opened it on.
        let addr = h2_server(|mut conn| async move {
            conn.abrupt_shutdown(h2::Reason::NO_ERROR);
            let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
        })
        .await;
        let e = failed_call(addr).await;
        assert!(super::never_sent(&e), "stream above GOAWAY: {e:?}");
    }

    #[tokio::test]
    async fn a_refused_stream_was_never_sent() {
        let addr = h2_server(|mut conn| async move {
            if let Some(Ok((_, mut respond))) = conn.accept().await {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
            let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
        })
        .await;
        let e = failed_call(addr).await;
        assert!(super::never_sent(&e), "REFUSED_STREAM: {e:?}");
    }

    #[tokio::test]
    async fn a_call_cut_after_the_server_took_it_may_have_run() {
        // The server accepted the stream (its handler could have run), then
        // the connection died: not safe to send again.
        let addr = h2_server(|mut conn| async move {
            let taken = conn.accept().await;
            drop(taken);
            drop(conn);
        })
        .await;
        let e = failed_call(addr).await;
        assert!(!super::never_sent(&e), "cut after accept: {e:?}");
    }

    #[test]
    fn hosts_parse_like_a_hosts_file() {
        let h = super::parse_hosts(
            "gw-headless.shop.svc=127.77.0.2,127.77.0.1\n sync-headless.shop.svc=127.77.0.9",
        )
        .unwrap();
        assert_eq!(
            h["gw-headless.shop.svc"],
            [
                "127.77.0.1".parse::<std::net::IpAddr>().unwrap(),
                "127.77.0.2".parse().unwrap()
            ]
        );
        assert_eq!(h.len(), 2);
        for bad in ["gw", "=127.0.0.1", "gw=localhost"] {
            assert!(super::parse_hosts(bad).is_err(), "{bad}");
        }
    }
}
