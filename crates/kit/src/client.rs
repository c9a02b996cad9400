//! gRPC client channels between services.

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
