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

/// Boxed error for service start-up and run results.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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

mod config;
pub use config::{ConnLimits, Policy, ServeConfig};

mod rpc;
pub use rpc::{CallerDeadline, RpcLayer, RpcService, UNMATCHED, code_name, method_label};

mod conn;
use conn::{Connections, Worker};

#[cfg(test)]
mod tests;
