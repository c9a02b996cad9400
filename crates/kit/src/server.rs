//! gRPC server bootstrap shared by every service.
//!
//! [`GrpcServer::bind`] binds the port first (so tests can use port 0 and
//! `discovery up` can report real addresses), then [`GrpcServer::serve`]
//! adds `grpc.health.v1`, gRPC reflection (v1 and v1alpha) and the RPC
//! observation layer ([`RpcLayer`]: one span per call, W3C parent from
//! metadata, latency and status metrics) around the service's own routes, and
//! runs until the shutdown token fires. Shutdown marks every service
//! NOT_SERVING, keeps serving for the policy's `unready_for` (a Service
//! still sends new connections for a moment), then stops accepting (GOAWAY
//! on open connections), drains in-flight calls, and after the grace period
//! severs the connections still open (their tasks would otherwise outlive
//! the server in-process).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Server start-up or run failure.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The port could not be bound.
    #[error("{var}: cannot listen on {addr}: {source}")]
    Bind {
        /// Variable naming the port.
        var: String,
        /// Address tried.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// Reflection could not be built from the descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// The server stopped with a transport error.
    #[error("gRPC server on {addr} failed: {reason}")]
    Transport {
        /// Address served.
        addr: SocketAddr,
        /// Error text.
        reason: String,
    },
}

/// Binds `addr`, naming `var` in the error.
pub async fn bind(var: &str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            var: var.to_string(),
            addr,
            source,
        })
}

/// `GET /readyz` on the metrics port: 200 while the process's gRPC health
/// status is SERVING, 503 otherwise (starting, draining). The same answer as
/// the gRPC health check, for probes that cannot speak gRPC over TLS: the
/// kubelet's gRPC probe has no TLS, so a gateway serving TLS is probed here.
pub fn readyz(health: HealthReporter) -> axum::Router {
    use tonic_health::pb::health_server::Health;
    let svc = Arc::new(tonic_health::server::HealthService::from_health_reporter(
        health,
    ));
    axum::Router::new().route(
        "/readyz",
        axum::routing::get(move || {
            let svc = svc.clone();
            async move {
                let req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                });
                match svc.check(req).await {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
                        (http::StatusCode::OK, "serving")
                    }
                    _ => (http::StatusCode::SERVICE_UNAVAILABLE, "not serving"),
                }
            }
        }),
    )
}

/// A bound, not yet serving, gRPC server.
pub struct GrpcServer {
    service: &'static str,
    listener: TcpListener,
    addr: SocketAddr,
    health: HealthReporter,
    policy: Policy,
}

/// A running server.
pub struct Running {
    /// Address the gRPC server listens on.
    pub addr: SocketAddr,
    /// Health reporter, to flip readiness while running.
    pub health: HealthReporter,
    /// Completes when the server has stopped.
    pub task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl GrpcServer {
    /// Binds the server's port. `service` is the short service name used in
    /// metrics and spans ("gateway", "recommendation"...).
    pub async fn bind(
        service: &'static str,
        var: &str,
        addr: SocketAddr,
    ) -> Result<Self, ServerError> {
        let listener = bind(var, addr).await?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            var: var.to_string(),
            addr,
            source,
        })?;
        let health = HealthReporter::new();
        // tonic-health starts "" at SERVING; this server is not serving
        // until `serve` says so (`/readyz` reads the same status).
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        Ok(Self {
            service,
            listener,
            addr,
            health,
            policy: Policy::default(),
        })
    }

    /// Serves under `policy` instead of the defaults.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The health reporter (set statuses before serving if needed).
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves `routes` plus health and reflection until `shutdown` fires.
    /// `grpc_names` are the fully qualified services marked SERVING.
    pub async fn serve(
        self,
        routes: Routes,
        grpc_names: &[&'static str],
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<Running, ServerError> {
        self.serve_with(routes, grpc_names, shutdown, grace, Ok)
            .await
    }

    /// Like [`GrpcServer::serve`], letting the caller adjust the tonic builder
    /// (HTTP/1 for gRPC-Web, concurrency limits...).
    pub async fn serve_with(
        self,
        routes: Routes,
        grpc_names: &[&'static str],
        shutdown: CancellationToken,
        grace: Duration,
        adjust: impl FnOnce(
            tonic::transport::Server,
        ) -> Result<tonic::transport::Server, tonic::transport::Error>,
    ) -> Result<Running, ServerError> {
        let routes = self.full_routes(routes, grpc_names).await?;
        self.register_in_process(&routes);
        let (addr, health) = (self.addr, self.health.clone());
        let builder =
            adjust(base_builder(&self.policy.limits)).map_err(|e| settings_error(addr, e))?;
        let check = self.check_layer();
        let run = Worker {
            service: self.service,
            addr,
            health: self.health,
            names: grpc_names.to_vec(),
            shutdown,
            unready_for: self.policy.unready_for,
            grace,
            connections: Connections::new(self.service, self.policy.limits),
            check,
        }
        .run(self.listener, builder, routes);
        let task = tokio::spawn(run);
        tracing::info!(service = self.service, %addr, "gRPC server listening");
        Ok(Running { addr, health, task })
    }

    /// Like [`GrpcServer::serve_with`], on `workers` threads of their own,
    /// each a single-threaded runtime accepting from the shared socket: a
    /// call is read, handled and answered on one thread, with no wake-up
    /// crossing threads (the model of Envoy's workers). Tasks the handlers
    /// spawn stay on their worker; [`worker`] tells a handler which one it
    /// runs on (the gateway keeps upstream connections per worker).
    pub async fn serve_on_workers(
        self,
        routes: Routes,
        grpc_names: &[&'static str],
        shutdown: CancellationToken,
        grace: Duration,
        workers: usize,
        adjust: impl Fn(
            tonic::transport::Server,
        ) -> Result<tonic::transport::Server, tonic::transport::Error>,
    ) -> Result<Running, ServerError> {
        let routes = self.full_routes(routes, grpc_names).await?;
        self.register_in_process(&routes);
        let (addr, service) = (self.addr, self.service);
        let io = |e: std::io::Error| ServerError::Transport {
            addr,
            reason: format!("sharing the listening socket: {e}"),
        };
        let check = self.check_layer();
        let listener = self.listener.into_std().map_err(io)?;
        let connections = Connections::new(service, self.policy.limits);
        let mut done = Vec::new();
        for index in 0..workers.max(1) {
            let listener = listener.try_clone().map_err(io)?;
            let builder =
                adjust(base_builder(&self.policy.limits)).map_err(|e| settings_error(addr, e))?;
            let worker = Worker {
                service,
                addr,
                health: self.health.clone(),
                names: grpc_names.to_vec(),
                shutdown: shutdown.clone(),
                unready_for: self.policy.unready_for,
                grace,
                connections: connections.clone(),
                check: check.clone(),
            };
            let routes = routes.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name(format!("{service}-worker-{index}"))
                .spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| ServerError::Transport {
                            addr,
                            reason: format!("worker runtime: {e}"),
                        })
                        .and_then(|rt| {
                            WORKER.with(|w| w.set(Some(index)));
                            rt.block_on(async move {
                                let listener = TcpListener::from_std(listener).map_err(|e| {
                                    ServerError::Transport {
                                        addr,
                                        reason: format!("worker {index}: {e}"),
                                    }
                                })?;
                                worker.run(listener, builder, routes).await
                            })
                        });
                    let _ = tx.send(result);
                })
                .map_err(io)?;
            done.push(rx);
        }
        let task = tokio::spawn(async move {
            for rx in done {
                rx.await.map_err(|_| ServerError::Transport {
                    addr,
                    reason: "a worker thread panicked".into(),
                })??;
            }
            Ok(())
        });
        tracing::info!(service, %addr, workers, "gRPC server listening");
        Ok(Running {
            addr,
            health: self.health,
            task,
        })
    }

    fn check_layer(&self) -> crate::internal::CheckLayer {
        crate::internal::CheckLayer::new(self.policy.internal.clone(), self.policy.exempt)
    }

    /// Offers `routes` for in-process calls when enabled ([`crate::inproc`]).
    fn register_in_process(&self, routes: &Routes) {
        if crate::inproc::enabled() {
            use tower::Layer;
            let local = RpcLayer::new(self.service).layer(self.check_layer().layer(routes.clone()));
            crate::inproc::register(self.addr, tower::util::BoxCloneSyncService::new(local));
        }
    }

    /// `routes` plus health (every name SERVING) and reflection.
    async fn full_routes(
        &self,
        routes: Routes,
        grpc_names: &[&'static str],
    ) -> Result<Routes, ServerError> {
        // Reflection lists only what this server serves.
        let reflection = || {
            let mut b = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(discovery_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health");
            for name in grpc_names {
                b = b.with_service_name(*name);
            }
            b
        };
        let (reflection_v1, reflection_v1alpha) = if self.policy.reflection {
            (
                Some(
                    reflection()
                        .build_v1()
                        .map_err(|e| ServerError::Reflection(e.to_string()))?,
                ),
                Some(
                    reflection()
                        .build_v1alpha()
                        .map_err(|e| ServerError::Reflection(e.to_string()))?,
                ),
            )
        } else {
            (None, None)
        };
        for name in grpc_names {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        let mut routes = routes.add_service(tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(self.health.clone()),
        ));
        if let (Some(v1), Some(v1alpha)) = (reflection_v1, reflection_v1alpha) {
            routes = routes.add_service(v1).add_service(v1alpha);
        }
        Ok(routes)
    }
}

thread_local! {
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the server worker thread this code runs on, if it runs on
/// one (see [`GrpcServer::serve_on_workers`]).
pub fn worker() -> Option<usize> {
    WORKER.with(|w| w.get())
}

fn settings_error(addr: SocketAddr, e: tonic::transport::Error) -> ServerError {
    ServerError::Transport {
        addr,
        reason: format!("server settings: {e}"),
    }
}

fn base_builder(limits: &ConnLimits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams)
        .http2_max_header_list_size(limits.max_header_bytes)
        .http2_max_pending_accept_reset_streams(Some(64))
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(crate::client::STREAM_WINDOW))
        .initial_connection_window_size(Some(crate::client::CONNECTION_WINDOW))
}

/// The open-connection bound shared by a server's workers.
#[derive(Clone)]
struct Connections {
    service: &'static str,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    limits: ConnLimits,
}

impl Connections {
    fn new(service: &'static str, limits: ConnLimits) -> Self {
        Self {
            service,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            limits,
        }
    }

    /// A permit for one more connection, or `None` at the bound.
    fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                metrics::counter!("discovery_connections_refused_total", "service" => self.service)
                    .increment(1);
                tracing::warn!(
                    service = self.service,
                    max = self.limits.max_connections,
                    "connection refused: at DISCOVERY_MAX_CONNECTIONS"
                );
                None
            }
        }
    }
}

/// One accept loop and its shutdown.
struct Worker {
    service: &'static str,
    addr: SocketAddr,
    health: HealthReporter,
    names: Vec<&'static str>,
    shutdown: CancellationToken,
    unready_for: Duration,
    grace: Duration,
    connections: Connections,
    check: crate::internal::CheckLayer,
}

impl Worker {
    async fn run(
        self,
        listener: TcpListener,
        builder: tonic::transport::Server,
        routes: Routes,
    ) -> Result<(), ServerError> {
        let Worker {
            service,
            addr,
            health,
            names,
            shutdown,
            unready_for,
            grace,
            connections,
            check,
        } = self;
        // The builder's tcp_nodelay applies only to listeners tonic binds
        // itself; ours are bound up front (to report the port), so each
        // accepted socket gets it here. Without it, a response's HEADERS
        // and DATA writes meet the client's delayed ACK: 40 ms a call.
        // Every connection is severed when the grace period is over: tonic
        // only asks connections to close (GOAWAY) and keeps serving their
        // streams, which outlive the server in-process (tests, `discovery
        // up`) and would make a "stopped" replica keep answering.
        let sever = CancellationToken::new();
        let incoming = {
            let sever = sever.clone();
            // Over the connection bound, a new connection is closed at
            // once (dropped here): those already open keep their service.
            tokio_stream::StreamExt::filter_map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                move |conn| match conn {
                    Err(e) => Some(Err(e)),
                    Ok(s) => {
                        let permit = connections.admit()?;
                        if let Err(e) = s.set_nodelay(true) {
                            tracing::debug!(error = %e, "TCP_NODELAY not set");
                        }
                        Some(Ok(Severable::new(s, &sever, permit)))
                    }
                },
            )
        };
        let drain_started = CancellationToken::new();
        let signal = {
            let drain_started = drain_started.clone();
            async move {
                shutdown.cancelled().await;
                crate::inproc::deregister(addr);
                for name in names {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                if !unready_for.is_zero() {
                    tracing::info!(service, %addr, ?unready_for, "shutting down: not ready, still serving while load balancers catch up");
                    tokio::time::sleep(unready_for).await;
                }
                tracing::info!(service, %addr, "shutting down: draining in-flight calls");
                drain_started.cancel();
            }
        };
        let server = builder
            .layer(RpcLayer::new(service))
            .layer(check)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(server);
        let result = tokio::select! {
            r = &mut server => r,
            _ = async { drain_started.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(service, ?grace, "grace period over; dropping remaining calls");
                Ok(())
            }
        };
        sever.cancel();
        result.map_err(|e| ServerError::Transport {
            addr,
            reason: e.to_string(),
        })
    }
}

/// A connection that fails every read and write once its token fires, waking
/// a connection task parked on a read.
/// It also holds the connection's place under the connection bound.
struct Severable<IO> {
    io: IO,
    severed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<IO> Severable<IO> {
    fn new(io: IO, token: &CancellationToken, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self {
            io,
            severed: Box::pin(token.clone().cancelled_owned()),
            _permit: permit,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.severed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "server stopped: grace period over",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Severable<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Severable<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for Severable<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Resolves on SIGTERM or ctrl-c, then cancels `token`.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
        _ = token.cancelled() => {},
    }
    token.cancel();
}

/// Tower layer observing every gRPC call: a `grpc.server` span (child of the
/// caller's W3C context), `discovery_rpc_server_requests_total{service,method,code}`
/// and `discovery_rpc_server_duration_seconds{service,method}`.
#[derive(Debug, Clone, Copy)]
pub struct RpcLayer {
    service: &'static str,
}

impl RpcLayer {
    /// A layer labelling metrics with `service`.
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            service: self.service,
        }
    }
}

/// See [`RpcLayer`].
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    service: &'static str,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for RpcService<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let path = method_label(req.uri().path());
        let (rpc_service, rpc_method) = split_path(path);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let _ = span.set_parent(crate::telemetry::extract_context(req.headers()));
        {
            let _g = span.enter();
            if let Some(id) = crate::telemetry::current_trace_id() {
                span.record("trace_id", id.as_str());
            }
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let service = self.service;
        let started = Instant::now();
        let fut = inner.call(req);
        Box::pin(
            async move {
                let mut result = fut.await;
                let elapsed = started.elapsed().as_secs_f64();
                if let Ok(resp) = &mut result {
                    undecodable_is_invalid_argument(resp.headers_mut(), path);
                    cap_message(resp.headers_mut());
                }
                let code = match &result {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse::<i32>().ok())
                        .unwrap_or(0),
                    Err(_) => 2,
                };
                if code == 4
                    && let Ok(resp) = &result
                    && resp.extensions().get::<CallerDeadline>().is_some()
                {
                    metrics::counter!(
                        "discovery_rpc_server_caller_deadline_total",
                        "service" => service,
                        "method" => path,
                    )
                    .increment(1);
                }
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code);
                if code != 0 {
                    span.record("otel.status_code", "ERROR");
                }
                metrics::counter!(
                    "discovery_rpc_server_requests_total",
                    "service" => service,
                    "method" => path,
                    "code" => code_name(code),
                )
                .increment(1);
                metrics::histogram!(
                    "discovery_rpc_server_duration_seconds",
                    "service" => service,
                    "method" => path,
                )
                .record(elapsed);
                result
            }
            .instrument(span),
        )
    }
}

/// Put in a response's extensions by a handler that answers
/// DEADLINE_EXCEEDED because the caller's own deadline ran out (not a
/// deadline of the server's): [`RpcLayer`] counts it in
/// `discovery_rpc_server_caller_deadline_total`, which monitoring takes off
/// the server faults, so a caller with tiny deadlines cannot fire SLA
/// alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerDeadline;

/// Paths the kit serves beside the contracts' own.
const KIT_PATHS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The label for an unknown path.
pub const UNMATCHED: &str = "unmatched";

/// The metric label and span name of a request path: the path itself when
/// it is one of the contracts' methods or the kit's (a closed set), else
/// [`UNMATCHED`]. A caller choosing paths must not choose series: every
/// label value comes from this set, never from the request.
pub fn method_label(path: &str) -> &'static str {
    static KNOWN: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| {
            discovery_proto::METHOD_PATHS
                .iter()
                .chain(KIT_PATHS.iter())
                .copied()
                .collect()
        })
        .get(path)
        .copied()
        .unwrap_or(UNMATCHED)
}

/// tonic answers a request body it cannot decode (not protobuf, invalid
/// UTF-8 in a string, a frame cut short, a compressed frame nobody
/// negotiated) with INTERNAL, which tells the caller "our bug". It is the
/// caller's: rewrite it to INVALID_ARGUMENT naming the method of `path`.
fn undecodable_is_invalid_argument(headers: &mut http::HeaderMap, path: &str) {
    const CALLER_FAULTS: [&str; 3] = [
        "failed to decode Protobuf message",
        "Unexpected EOF decoding stream",
        "protocol error: received message with compressed-flag",
    ];
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"13") {
        return;
    }
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
    else {
        return;
    };
    if !CALLER_FAULTS.iter().any(|f| message.starts_with(f)) {
        return;
    }
    let method = split_path(path).1;
    let status = tonic::Status::invalid_argument(format!(
        "the request is not a valid {method} message: {message}"
    ));
    let mut fixed = http::HeaderMap::new();
    if status.add_header(&mut fixed).is_ok() {
        for (k, v) in fixed.iter() {
            headers.insert(k, v.clone());
        }
    }
}

/// Longest `grpc-message` sent, bytes: a handler that echoes a huge input
/// back must not make the answer's headers overflow the client's limit
/// (which fails the whole call as a protocol error instead).
const MAX_MESSAGE: usize = 1024;

fn cap_message(headers: &mut http::HeaderMap) {
    let Some(m) = headers.get("grpc-message") else {
        return;
    };
    if m.len() <= MAX_MESSAGE {
        return;
    }
    let mut cut = m.as_bytes()[..MAX_MESSAGE].to_vec();
    // Do not end inside a %XX escape.
    if let Some(p) = cut.iter().rposition(|b| *b == b'%')
        && p + 3 > cut.len()
    {
        cut.truncate(p);
    }
    cut.extend_from_slice(b"...%20(cut)");
    if let Ok(v) = http::HeaderValue::from_bytes(&cut) {
        headers.insert("grpc-message", v);
    }
}

/// Undoes grpc-message's percent-encoding (ASCII only; anything else is
/// kept as it is).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_path(path: &str) -> (&str, &str) {
    let p = path.trim_start_matches('/');
    match p.split_once('/') {
        Some((s, m)) => (s, m),
        None => (p, ""),
    }
}

/// The canonical name of a gRPC status code ("OK", "NOT_FOUND"...).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Boxed error for service start-up and run results.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where and how a service serves: from `DISCOVERY_BIND_IP`, its port
/// variable, `DISCOVERY_METRICS_PORT` and `DISCOVERY_SHUTDOWN_GRACE`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub grpc: SocketAddr,
    /// Variable naming the gRPC port (for error lines).
    pub grpc_var: &'static str,
    /// Metrics listen address; `None` disables the endpoint.
    pub metrics: Option<SocketAddr>,
    /// How long shutdown waits for in-flight calls.
    pub grace: Duration,
    /// How long a stopping server keeps serving, not ready, before it
    /// stops accepting (`DISCOVERY_SHUTDOWN_DELAY`).
    pub unready_for: Duration,
    /// How often dependencies are probed ([`crate::deps`]); zero: never.
    pub dependency_checks: Duration,
    /// What one peer may hold of this server.
    pub limits: ConnLimits,
    /// Internal-call authentication (`DISCOVERY_INTERNAL_SECRET`); `None`:
    /// internal calls are open.
    pub internal: Option<crate::internal::InternalAuth>,
    /// What passes without an internal token.
    pub exempt: crate::internal::Exempt,
    /// gRPC reflection (`DISCOVERY_REFLECTION`; off on internal ports by
    /// default, on at the gateway).
    pub reflection: bool,
}

/// Bounds on what callers may hold of a server, so that a slow or hostile
/// peer (slow-loris: many connections, many streams, a byte a second)
/// cannot take what others need. Read from `DISCOVERY_MAX_CONNECTIONS`,
/// `DISCOVERY_MAX_STREAMS` and `DISCOVERY_HANDSHAKE_TIMEOUT`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnLimits {
    /// Open connections at once (all workers together); a connection over
    /// it is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection (SETTINGS, enforced by the
    /// peer's stack and refused with REFUSED_STREAM by ours).
    pub max_streams: u32,
    /// Largest header block, bytes.
    pub max_header_bytes: u32,
    /// TLS handshakes and idle connections that never send a request are
    /// cut after this long.
    pub handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_streams: 256,
            max_header_bytes: 16 << 10,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnLimits {
    /// Reads the limit variables.
    pub fn from_env(env: &crate::config::Env) -> Result<Self, crate::config::ConfigError> {
        let d = Self::default();
        let limits = Self {
            max_connections: env.parse(
                "DISCOVERY_MAX_CONNECTIONS",
                d.max_connections,
                "a number of connections",
            )?,
            max_streams: env.parse(
                "DISCOVERY_MAX_STREAMS",
                d.max_streams,
                "a number of streams",
            )?,
            max_header_bytes: d.max_header_bytes,
            handshake_timeout: env.duration("DISCOVERY_HANDSHAKE_TIMEOUT", d.handshake_timeout)?,
        };
        if limits.max_connections == 0 || limits.max_streams == 0 {
            return Err(crate::config::ConfigError::new(
                "DISCOVERY_MAX_CONNECTIONS",
                "DISCOVERY_MAX_CONNECTIONS and DISCOVERY_MAX_STREAMS must be above zero",
            ));
        }
        Ok(limits)
    }
}

impl ServeConfig {
    /// Reads the variables for a service whose port variable is `port_var`.
    pub fn from_env(
        env: &crate::config::Env,
        port_var: &'static str,
        default_port: u16,
    ) -> Result<Self, crate::config::ConfigError> {
        let grpc = env.listen("DISCOVERY_BIND_IP", port_var, default_port)?;
        let metrics_port = env.port("DISCOVERY_METRICS_PORT", 9090)?;
        if let Some(hosts) = env.raw("DISCOVERY_HOSTS") {
            crate::client::parse_hosts(&hosts)
                .map_err(|e| crate::config::ConfigError::new("DISCOVERY_HOSTS", e))?;
        }
        Ok(Self {
            grpc,
            grpc_var: port_var,
            metrics: (metrics_port != 0).then(|| SocketAddr::new(grpc.ip(), metrics_port)),
            grace: env.duration("DISCOVERY_SHUTDOWN_GRACE", Duration::from_secs(10))?,
            unready_for: env.duration("DISCOVERY_SHUTDOWN_DELAY", Duration::ZERO)?,
            dependency_checks: env
                .duration("DISCOVERY_DEPENDENCY_CHECKS", Duration::from_secs(2))?,
            limits: ConnLimits::from_env(env)?,
            internal: crate::internal::InternalAuth::from_env(env)?,
            exempt: crate::internal::Exempt::HealthOnly,
            reflection: env.bool("DISCOVERY_REFLECTION", false)?,
        })
    }

    /// Loopback, OS-chosen ports, no metrics endpoint: for tests.
    pub fn ephemeral(grpc_var: &'static str) -> Self {
        Self {
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_var,
            metrics: None,
            grace: Duration::from_secs(2),
            unready_for: Duration::ZERO,
            dependency_checks: Duration::from_secs(2),
            limits: ConnLimits::default(),
            internal: None,
            exempt: crate::internal::Exempt::HealthOnly,
            reflection: true,
        }
    }

    /// The policy its server applies.
    fn policy(&self) -> Policy {
        Policy {
            limits: self.limits,
            internal: self.internal.clone(),
            exempt: self.exempt,
            reflection: self.reflection,
            unready_for: self.unready_for,
        }
    }
}

/// How a server treats its callers (from [`ServeConfig`]).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Connection bounds.
    pub limits: ConnLimits,
    /// Internal-call authentication.
    pub internal: Option<crate::internal::InternalAuth>,
    /// What passes without an internal token.
    pub exempt: crate::internal::Exempt,
    /// gRPC reflection served.
    pub reflection: bool,
    /// On shutdown, how long to keep serving (health NOT_SERVING) before
    /// refusing new connections and sending GOAWAY. Behind a Kubernetes
    /// Service the pod's endpoint is removed only after SIGTERM, and each
    /// node's proxy learns of it later still: new connections keep arriving
    /// for a few seconds, and a server that had already closed its socket
    /// would refuse them (the chart sets 5 s; a `preStop` sleep does the
    /// same where the image has a shell).
    pub unready_for: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            limits: ConnLimits::default(),
            internal: None,
            exempt: crate::internal::Exempt::HealthOnly,
            reflection: true,
            unready_for: Duration::ZERO,
        }
    }
}

/// The metrics endpoint's address and task, when enabled.
type Metrics = (
    Option<SocketAddr>,
    Option<tokio::task::JoinHandle<Result<(), BoxError>>>,
);

/// A started service: where it listens and the tasks that run it.
pub struct ServiceHandle {
    /// Short service name.
    pub name: &'static str,
    /// gRPC address.
    pub addr: SocketAddr,
    /// Metrics address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Health reporter.
    pub health: HealthReporter,
    tasks: Vec<tokio::task::JoinHandle<Result<(), BoxError>>>,
}

impl ServiceHandle {
    /// Starts `routes` as service `name` per `config`, with an optional
    /// metrics endpoint carrying `extra_http` routes.
    pub async fn start(
        name: &'static str,
        config: &ServeConfig,
        routes: Routes,
        grpc_names: &[&'static str],
        extra_http: Option<axum::Router>,
        shutdown: CancellationToken,
    ) -> Result<Self, BoxError> {
        Self::start_with(name, config, routes, grpc_names, extra_http, shutdown, Ok).await
    }

    /// Like [`ServiceHandle::start`], adjusting the tonic builder.
    pub async fn start_with(
        name: &'static str,
        config: &ServeConfig,
        routes: Routes,
        grpc_names: &[&'static str],
        extra_http: Option<axum::Router>,
        shutdown: CancellationToken,
        adjust: impl FnOnce(
            tonic::transport::Server,
        ) -> Result<tonic::transport::Server, tonic::transport::Error>,
    ) -> Result<Self, BoxError> {
        let grace = config.grace;
        Self::start_inner(name, config, extra_http, shutdown, |server, shutdown| {
            server.serve_with(routes, grpc_names, shutdown, grace, adjust)
        })
        .await
    }

    /// Like [`ServiceHandle::start_with`], serving on `workers` threads of
    /// their own ([`GrpcServer::serve_on_workers`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_on_workers(
        name: &'static str,
        config: &ServeConfig,
        routes: Routes,
        grpc_names: &[&'static str],
        extra_http: Option<axum::Router>,
        shutdown: CancellationToken,
        workers: usize,
        adjust: impl Fn(
            tonic::transport::Server,
        ) -> Result<tonic::transport::Server, tonic::transport::Error>,
    ) -> Result<Self, BoxError> {
        let grace = config.grace;
        Self::start_inner(name, config, extra_http, shutdown, |server, shutdown| {
            server.serve_on_workers(routes, grpc_names, shutdown, grace, workers, adjust)
        })
        .await
    }

    /// Binds, starts the metrics endpoint, then serves with `serve`.
    async fn start_inner<F, Fut>(
        name: &'static str,
        config: &ServeConfig,
        extra_http: Option<axum::Router>,
        shutdown: CancellationToken,
        serve: F,
    ) -> Result<Self, BoxError>
    where
        F: FnOnce(GrpcServer, CancellationToken) -> Fut,
        Fut: Future<Output = Result<Running, ServerError>>,
    {
        if config.internal.is_none() {
            tracing::warn!(
                service = name,
                "DISCOVERY_INTERNAL_SECRET is not set: this service's port accepts calls from anyone who can reach it"
            );
        }
        let server = GrpcServer::bind(name, config.grpc_var, config.grpc)
            .await?
            .with_policy(config.policy());
        let probes = readyz(server.health());
        let extra_http = Some(match extra_http {
            Some(r) => probes.merge(r),
            None => probes,
        });
        let metrics = Self::metrics_task(config, extra_http, &shutdown).await?;
        let running = serve(server, shutdown).await?;
        Ok(Self::finish(name, running, metrics))
    }

    async fn metrics_task(
        config: &ServeConfig,
        extra_http: Option<axum::Router>,
        shutdown: &CancellationToken,
    ) -> Result<Metrics, BoxError> {
        let Some(addr) = config.metrics else {
            return Ok((None, None));
        };
        let listener = bind("DISCOVERY_METRICS_PORT", addr).await?;
        let addr = listener.local_addr().ok();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            crate::metrics::serve(listener, extra_http, token)
                .await
                .map_err(|e| Box::new(e) as BoxError)
        });
        Ok((addr, Some(task)))
    }

    fn finish(name: &'static str, running: Running, (metrics_addr, metrics): Metrics) -> Self {
        let mut tasks: Vec<_> = metrics.into_iter().collect();
        let task = running.task;
        tasks.push(tokio::spawn(async move {
            match task.await {
                Ok(r) => r.map_err(|e| Box::new(e) as BoxError),
                Err(e) => Err(Box::new(e) as BoxError),
            }
        }));
        Self {
            name,
            addr: running.addr,
            metrics_addr,
            health: running.health,
            tasks,
        }
    }

    /// Adds a background task whose failure should stop the service.
    pub fn push_task(&mut self, task: tokio::task::JoinHandle<Result<(), BoxError>>) {
        self.tasks.push(task);
    }

    /// Probes `deps` every `config.dependency_checks` and reports each under
    /// its own health name (see [`crate::deps`]); the service's own names
    /// stay SERVING while a dependency is down.
    pub fn watch_dependencies(
        &mut self,
        config: &ServeConfig,
        deps: impl IntoIterator<Item = crate::deps::Dependency>,
        shutdown: CancellationToken,
    ) {
        let deps: Vec<_> = deps.into_iter().collect();
        if config.dependency_checks.is_zero() || deps.is_empty() {
            return;
        }
        let task = crate::deps::watch(
            self.name,
            self.health.clone(),
            deps,
            config.dependency_checks,
            shutdown,
        );
        self.push_task(task);
    }

    /// Waits until every task of the service has ended.
    pub async fn wait(self) -> Result<(), BoxError> {
        for t in self.tasks {
            match t.await {
                Ok(r) => r?,
                Err(e) if e.is_cancelled() => {}
                Err(e) => return Err(Box::new(e)),
            }
        }
        Ok(())
    }
}

/// Runs a service binary: reads the environment, starts telemetry, runs
/// `body` until SIGTERM/ctrl-c, and turns any start-up error into one line on
/// stderr and exit code 1 (no panic, no backtrace).
pub fn run_binary<F, Fut>(service: &'static str, body: F) -> std::process::ExitCode
where
    F: FnOnce(crate::config::Env, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let env = crate::config::Env::process();
    let prog = if service == "discovery" {
        "discovery".to_string()
    } else {
        format!("discovery-{service}")
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{prog}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let telemetry = match crate::telemetry::TelemetryConfig::from_env(&env, service)
            .map_err(|e| Box::new(e) as BoxError)
            .and_then(|c| crate::telemetry::init(&c).map_err(|e| Box::new(e) as BoxError))
        {
            Ok(g) => g,
            Err(e) => {
                eprintln!("{prog}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let result = body(env, shutdown).await;
        drop(telemetry);
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{prog}: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

/// UNIMPLEMENTED for an RPC whose contract exists but whose implementation
/// belongs to a later piece of work, saying which.
pub fn not_yet(rpc: &str, owner: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!(
        "{rpc} is not available yet (tracked by the {owner} issue)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    #[tokio::test]
    async fn readyz_answers_what_the_grpc_health_check_answers() {
        use tower::ServiceExt;
        let health = HealthReporter::new();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let status = |health: &HealthReporter| {
            let app = readyz(health.clone());
            async move {
                app.oneshot(
                    http::Request::get("/readyz")
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap()
                .status()
            }
        };
        // Not serving yet (as `GrpcServer::bind` leaves it).
        assert_eq!(status(&health).await, 503);
        health.set_service_status("", ServingStatus::Serving).await;
        assert_eq!(status(&health).await, 200);
        // Draining.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        assert_eq!(status(&health).await, 503);
    }

    /// Past `max_connections`, a new connection is closed as soon as it is
    /// accepted; those already open keep their service; a closed one frees
    /// its place.
    #[tokio::test]
    async fn connections_over_the_bound_are_closed_and_the_rest_served() {
        use tokio::io::AsyncReadExt;
        let server = GrpcServer::bind("test", "TEST_PORT", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_policy(Policy {
                limits: ConnLimits {
                    max_connections: 2,
                    ..ConnLimits::default()
                },
                ..Policy::default()
            });
        let shutdown = CancellationToken::new();
        let running = server
            .serve(
                Routes::default(),
                &[],
                shutdown.clone(),
                Duration::from_millis(50),
            )
            .await
            .unwrap();
        let url = format!("http://{}", running.addr);
        let check = |ch: crate::client::TracedChannel| async move {
            HealthClient::new(ch)
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status)
        };
        // Two idle connections (a slow-loris holding them).
        let a = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        let b = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A third is closed at once: the peer reads end-of-stream.
        let mut c = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed, not left hanging")
            .unwrap_or(0);
        assert_eq!(n, 0, "over the bound: closed");
        drop((a, b));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ok = check(crate::client::connect_lazy("T", &url).unwrap()).await;
        assert_eq!(ok.unwrap(), ServingStatus::Serving as i32, "places freed");
        shutdown.cancel();
        running.task.await.unwrap().unwrap();
    }

    #[test]
    fn metric_labels_come_from_a_closed_set() {
        assert_eq!(
            method_label("/discovery.v1.Catalog/GetProduct"),
            "/discovery.v1.Catalog/GetProduct"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/discovery.v1.Catalog/Nope"), UNMATCHED);
        assert_eq!(method_label("/x/../../etc/passwd"), UNMATCHED);
        assert_eq!(method_label(""), UNMATCHED);
        assert!(discovery_proto::METHOD_PATHS.len() > 20);
    }

    /// A stream still open when the grace period ends is cut, not left
    /// running on a server that has returned.
    #[test]
    fn an_undecodable_request_is_invalid_argument_not_internal() {
        let mut h = http::HeaderMap::new();
        tonic::Status::internal("failed to decode Protobuf message: invalid varint")
            .add_header(&mut h)
            .unwrap();
        undecodable_is_invalid_argument(&mut h, "/discovery.v1.Catalog/GetProduct");
        let s = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "the request is not a valid GetProduct message: failed to decode Protobuf message: invalid varint"
        );
        // Our own INTERNAL errors stay what they are.
        let mut h = http::HeaderMap::new();
        tonic::Status::internal("bug").add_header(&mut h).unwrap();
        undecodable_is_invalid_argument(&mut h, "/discovery.v1.Catalog/GetProduct");
        assert_eq!(
            tonic::Status::from_header_map(&h).unwrap().code(),
            tonic::Code::Internal
        );
        assert_eq!(percent_decode("a%20b%3Bc%"), "a b;c%");
        let mut h = http::HeaderMap::new();
        tonic::Status::not_found(format!("id: no product {:?}", "x".repeat(100_000)))
            .add_header(&mut h)
            .unwrap();
        cap_message(&mut h);
        let s = tonic::Status::from_header_map(&h).unwrap();
        assert!(s.message().len() < 1100 && s.message().ends_with("... (cut)"));
    }

    #[tokio::test]
    async fn calls_left_after_the_grace_period_are_severed() {
        let server = GrpcServer::bind("test", "TEST_PORT", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let running = server
            .serve(
                Routes::default(),
                &[],
                shutdown.clone(),
                Duration::from_millis(50),
            )
            .await
            .unwrap();
        let channel =
            crate::client::connect_lazy("TEST_URL", &format!("http://{}", running.addr)).unwrap();
        let mut health = HealthClient::new(channel);
        let mut watch = health
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);
        shutdown.cancel();
        running.task.await.unwrap().unwrap();
        // NOT_SERVING may still arrive; then the stream must end in an error.
        let end = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match watch.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the open stream was severed");
        assert!(end.is_err(), "{end:?}");
    }

    /// A stopping server first keeps serving, not ready, for its
    /// `unready_for` (new connections too: a Service still sends them),
    /// then refuses new connections and drains. Callers hammering it
    /// throughout see only answers, or failures of calls the server never
    /// took (`never_sent`: safe to send elsewhere): no call it accepted is
    /// cut.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_server_stays_up_unready_then_cuts_no_call_it_took() {
        let unready_for = Duration::from_millis(400);
        let server = GrpcServer::bind("test", "TEST_PORT", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_policy(Policy {
                unready_for,
                ..Policy::default()
            });
        let shutdown = CancellationToken::new();
        let running = server
            .serve(
                Routes::default(),
                &[],
                shutdown.clone(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let url = format!("http://{}", running.addr);
        let stop = CancellationToken::new();
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut answered, mut unsent, mut cut) = (0u32, 0u32, Vec::new());
                    let mut health =
                        HealthClient::new(crate::client::connect_lazy("T", &url).unwrap());
                    while !stop.is_cancelled() {
                        match health.check(HealthCheckRequest::default()).await {
                            Ok(_) => answered += 1,
                            Err(e) if crate::client::never_sent(&e) => {
                                unsent += 1;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Err(e) => cut.push(format!("{e:?}")),
                        }
                    }
                    (answered, unsent, cut)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        shutdown.cancel();
        // Within the delay: not ready, yet a new connection is served.
        tokio::time::sleep(unready_for / 4).await;
        let late = HealthClient::new(crate::client::connect_lazy("T", &url).unwrap())
            .check(HealthCheckRequest::default())
            .await
            .expect("a new connection during the delay is served");
        assert_eq!(late.into_inner().status, ServingStatus::NotServing as i32);
        running.task.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        let (mut answered, mut unsent) = (0, 0);
        for c in callers {
            let (a, u, cut) = c.await.unwrap();
            assert!(cut.is_empty(), "calls the server took were cut: {cut:?}");
            (answered, unsent) = (answered + a, unsent + u);
        }
        println!("{answered} answered, {unsent} refused before the server took them");
        assert!(
            answered > 0 && unsent > 0,
            "{answered} answered, {unsent} refused"
        );
    }

    /// Workers share the socket, serve every connection, and stop (cutting
    /// streams left open) on shutdown.
    #[tokio::test]
    async fn workers_serve_from_one_socket_and_stop_together() {
        let server = GrpcServer::bind("test", "TEST_PORT", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let running = server
            .serve_on_workers(
                Routes::default(),
                &[],
                shutdown.clone(),
                Duration::from_millis(50),
                2,
                Ok,
            )
            .await
            .unwrap();
        assert_eq!(worker(), None, "the caller's thread is not a worker");
        let mut watches = Vec::new();
        for _ in 0..6 {
            // One connection each (lazy channels do not share).
            let channel =
                crate::client::connect_lazy("TEST_URL", &format!("http://{}", running.addr))
                    .unwrap();
            let mut health = HealthClient::new(channel);
            let status = health
                .check(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32);
            watches.push(
                health
                    .watch(HealthCheckRequest::default())
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        shutdown.cancel();
        running.task.await.unwrap().unwrap();
        for mut watch in watches {
            let end = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match watch.message().await {
                        Ok(Some(_)) => continue,
                        other => return other,
                    }
                }
            })
            .await
            .expect("every open stream was severed");
            assert!(end.is_err(), "{end:?}");
        }
    }
}
