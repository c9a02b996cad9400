//! In-process calls between the services of one process (`discovery up`).
//!
//! When enabled (the all-in-one system enables it), every gRPC server
//! registers its routes, wrapped in the same [`RpcLayer`] its network
//! server uses, under its bound address; a client that would dial that
//! address (the gateway's upstream pool) calls the routes directly instead.
//! Same handlers, headers, deadlines, metrics and spans; no loopback
//! HTTP/2 hop (framing, two sockets, and a task wake-up on each side of
//! every call), which was half of the all-in-one system's CPU per call.
//!
//! Invariants: a server deregisters as its shutdown begins, so a stopped
//! service is never called in-process; off by default, so separate
//! processes (Kubernetes, compose) and the tests that stop replicas always
//! talk over the network.
//!
//! [`RpcLayer`]: crate::server::RpcLayer

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use tonic::body::Body;
use tower::util::BoxCloneSyncService;

/// A service's routes as one callable service.
pub type Local = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

static ENABLED: AtomicBool = AtomicBool::new(false);
static REGISTRY: LazyLock<RwLock<HashMap<SocketAddr, Local>>> = LazyLock::new(Default::default);

/// Servers started from now on register for in-process calls.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether servers register.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn register(addr: SocketAddr, routes: Local) {
    REGISTRY.write().insert(addr, routes);
}

pub(crate) fn deregister(addr: SocketAddr) {
    REGISTRY.write().remove(&addr);
}

/// The service serving `addr` in this process, if it registered.
pub fn lookup(addr: &SocketAddr) -> Option<Local> {
    if !enabled() {
        return None;
    }
    REGISTRY.read().get(addr).cloned()
}

/// A registration that ends when dropped.
#[derive(Debug)]
#[must_use = "the address is served only while this lives"]
pub struct Registration(SocketAddr);

impl Drop for Registration {
    fn drop(&mut self) {
        deregister(self.0);
    }
}

/// Serves `addr` with `routes` in this process while the returned
/// registration lives (enabling in-process calls): for tests of a caller's
/// own path without a socket.
#[doc(hidden)]
pub fn register_for_tests<S>(addr: SocketAddr, routes: S) -> Registration
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    enable();
    register(addr, BoxCloneSyncService::new(routes));
    Registration(addr)
}
