//! The per-call layer every server runs: a span, the request and latency
//! metrics, status codes normalised (one spelling), undecodable requests as
//! INVALID_ARGUMENT, messages capped.

use super::*;

/// Tower layer observing every gRPC call: a `grpc.server` span (child of the
/// caller's W3C context), `discovery_rpc_server_requests_total{service,method,code}`,
/// `discovery_rpc_server_duration_seconds{service,method}` and
/// `discovery_rpc_server_in_flight{service}` (calls received and not yet
/// answered: the queue an autoscaler reads).
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

pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

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
        // Counted down when the call ends however it ends (answered, or
        // dropped when the caller went away).
        let in_flight = InFlight::enter(service);
        let fut = inner.call(req);
        Box::pin(
            async move {
                let _in_flight = in_flight;
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
                    CALLER_DEADLINES.increment([service, path], 1);
                }
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code);
                if code != 0 {
                    span.record("otel.status_code", "ERROR");
                }
                REQUESTS.increment([service, path, code_name(code)], 1);
                DURATIONS.record([service, path], elapsed);
                result
            }
            .instrument(span),
        )
    }
}

static REQUESTS: crate::metrics::Counters<3> = crate::metrics::Counters::new(
    "discovery_rpc_server_requests_total",
    ["service", "method", "code"],
);
static DURATIONS: crate::metrics::Histograms<2> = crate::metrics::Histograms::new(
    "discovery_rpc_server_duration_seconds",
    ["service", "method"],
);
static IN_FLIGHT: crate::metrics::Gauges<1> =
    crate::metrics::Gauges::new("discovery_rpc_server_in_flight", ["service"]);

/// One call in [`IN_FLIGHT`] while it lives.
struct InFlight(&'static str);

impl InFlight {
    fn enter(service: &'static str) -> Self {
        IN_FLIGHT.add([service], 1.0);
        Self(service)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.add([self.0], -1.0);
    }
}

static CALLER_DEADLINES: crate::metrics::Counters<2> = crate::metrics::Counters::new(
    "discovery_rpc_server_caller_deadline_total",
    ["service", "method"],
);

/// Put in a response's extensions by a handler that answers
/// DEADLINE_EXCEEDED because the caller's own deadline ran out (not a
/// deadline of the server's): [`RpcLayer`] counts it in
/// `discovery_rpc_server_caller_deadline_total`, which monitoring takes off
/// the server faults, so a caller with tiny deadlines cannot fire SLA
/// alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerDeadline;

/// Paths the kit serves beside the contracts' own.
pub(super) const KIT_PATHS: [&str; 4] = [
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
pub(super) fn undecodable_is_invalid_argument(headers: &mut http::HeaderMap, path: &str) {
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
pub(super) const MAX_MESSAGE: usize = 1024;

pub(super) fn cap_message(headers: &mut http::HeaderMap) {
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
pub(super) fn percent_decode(s: &str) -> String {
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

pub(super) fn split_path(path: &str) -> (&str, &str) {
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
