//! Connections: the accept workers, the live-connection registry, and a
//! connection that can be severed at the end of a drain.

use super::*;

/// The open-connection bound shared by a server's workers.
#[derive(Clone)]
pub(super) struct Connections {
    pub(super) service: &'static str,
    pub(super) permits: std::sync::Arc<tokio::sync::Semaphore>,
    pub(super) limits: ConnLimits,
}

impl Connections {
    pub(super) fn new(service: &'static str, limits: ConnLimits) -> Self {
        Self {
            service,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            limits,
        }
    }

    /// A permit for one more connection, or `None` at the bound.
    pub(super) fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
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
pub(super) struct Worker {
    pub(super) service: &'static str,
    pub(super) addr: SocketAddr,
    pub(super) health: HealthReporter,
    pub(super) names: Vec<&'static str>,
    pub(super) shutdown: CancellationToken,
    pub(super) unready_for: Duration,
    pub(super) grace: Duration,
    pub(super) connections: Connections,
    pub(super) check: crate::internal::CheckLayer,
}

impl Worker {
    pub(super) async fn run(
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
pub(super) struct Severable<IO> {
    io: IO,
    severed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<IO> Severable<IO> {
    pub(super) fn new(
        io: IO,
        token: &CancellationToken,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        Self {
            io,
            severed: Box::pin(token.clone().cancelled_owned()),
            _permit: permit,
        }
    }

    pub(super) fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
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
