//! Logs and traces.
//!
//! [`init`] installs one global `tracing` subscriber: an env-filtered fmt layer
//! (pretty or JSON, with the trace id on every line) and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OpenTelemetry layer exporting spans
//! over OTLP/gRPC with a parent-based ratio sampler. W3C trace context travels
//! in gRPC metadata: [`extract_context`] on the server side (used by
//! [`crate::server`]'s RPC layer) and [`TracePropagator`] on the client side.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, Env};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Service name reported in traces (`service.name`): `OTEL_SERVICE_NAME`
    /// when set, else the service's own name.
    pub service_name: String,
    /// `service.instance.id` unless `OTEL_RESOURCE_ATTRIBUTES` names one:
    /// the host name (a pod's name on Kubernetes) and the process id.
    pub instance: String,
    /// Log format.
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint; `None` disables export.
    pub otlp_endpoint: Option<String>,
    /// Parent-based sampling ratio for root spans.
    pub sample_ratio: f64,
}

impl TelemetryConfig {
    /// Reads `DISCOVERY_LOG_FORMAT`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SERVICE_NAME` and `HOSTNAME`
    /// (`OTEL_RESOURCE_ATTRIBUTES` is read by the SDK's detector).
    pub fn from_env(env: &Env, service_name: &str) -> Result<Self, ConfigError> {
        let log_format = match env.string("DISCOVERY_LOG_FORMAT", "pretty").as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "DISCOVERY_LOG_FORMAT",
                    format!("{other:?} is not a log format (use pretty or json)"),
                ));
            }
        };
        let sample_ratio: f64 = env.parse("OTEL_TRACES_SAMPLER_ARG", 1.0, "a number in [0, 1]")?;
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(ConfigError::new(
                "OTEL_TRACES_SAMPLER_ARG",
                format!("{sample_ratio} is not in [0, 1]"),
            ));
        }
        let host = env
            .raw("HOSTNAME")
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        Ok(Self {
            service_name: env
                .raw("OTEL_SERVICE_NAME")
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| service_name.to_string()),
            instance: format!("{host}/{}", std::process::id()),
            log_format,
            otlp_endpoint: env.raw("OTEL_EXPORTER_OTLP_ENDPOINT"),
            sample_ratio,
        })
    }
}

/// Keeps the tracer provider alive; flushes spans when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Installs the global subscriber. Safe to call more than once per process
/// (later calls keep the first subscriber and return an inert guard), which
/// `discovery up` and tests rely on.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter())
            .boxed(),
    };
    let mut provider = None;
    let otel_layer = match &config.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let p = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    config.sample_ratio,
                ))))
                .with_resource(resource(config))
                .build();
            let tracer = p.tracer(config.service_name.clone());
            opentelemetry::global::set_tracer_provider(p.clone());
            provider = Some(p);
            // Its own filter: an operator quietening logs with
            // RUST_LOG=warn kept no trace at all when both layers shared
            // RUST_LOG (the BFF system test found it).
            let spans = EnvFilter::try_from_env("DISCOVERY_TRACE_FILTER")
                .unwrap_or_else(|_| EnvFilter::new("info"));
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(spans),
            )
        }
    };
    let installed = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    if !installed {
        // Another subscriber (an earlier service in this process) already owns
        // the global slot; this provider would export nothing.
        if let Some(p) = provider.take() {
            let _ = p.shutdown();
        }
    }
    Ok(TelemetryGuard { provider })
}

/// What every span of this process is from: `service.name`,
/// `service.version` (this build's) and `service.instance.id` (see
/// [`TelemetryConfig`]), then whatever `OTEL_RESOURCE_ATTRIBUTES` says
/// (it wins: the chart names the pod and namespace there), then
/// `OTEL_SERVICE_NAME` if set (the specification's order).
pub fn resource(config: &TelemetryConfig) -> opentelemetry_sdk::Resource {
    use opentelemetry::KeyValue;
    opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", config.instance.clone()),
        ])
        .with_detector(Box::new(
            opentelemetry_sdk::resource::EnvResourceDetector::new(),
        ))
        .with_service_name(config.service_name.clone())
        .build()
}

/// The current span's trace id, if it belongs to a sampled or remote trace.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The remote parent carried in `traceparent`/`tracestate` headers.
pub fn extract_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Injects the current span's context into outgoing metadata.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// A client span for a gRPC call to `path` (`/package.Service/Method`) on
/// `peer` (OpenTelemetry RPC conventions).
pub fn client_span(path: &str, peer: &str) -> tracing::Span {
    let p = path.trim_start_matches('/');
    let (service, method) = p.split_once('/').unwrap_or((p, ""));
    tracing::info_span!(
        "grpc.client",
        otel.name = %p,
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        server.address = %peer,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Injects `span`'s context into outgoing HTTP headers (the next hop is
/// its child).
pub fn inject_span_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// The W3C `traceparent` of `span`, for carriers headers cannot reach (a
/// stored document, a bus message); `None` when the span is not traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The span a `traceparent` names; `None` if it is malformed.
pub fn parse_traceparent(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Most links one span carries (a batch may gather many origins).
pub const MAX_LINKS: usize = 32;

/// Ties `span` (not yet entered) to the work that caused it, across an
/// asynchronous hop (a change stream, a bus): a child of the origin when
/// all of its work has one, else the root of its own trace with a link to
/// each origin (at most [`MAX_LINKS`]), as the OpenTelemetry messaging
/// conventions do for batches.
pub fn follow(
    span: &tracing::Span,
    origins: impl IntoIterator<Item = opentelemetry::trace::SpanContext>,
) {
    let mut distinct: Vec<opentelemetry::trace::SpanContext> = Vec::new();
    for o in origins {
        if distinct.len() > MAX_LINKS {
            break;
        }
        if !distinct.iter().any(|d| d.span_id() == o.span_id()) {
            distinct.push(o);
        }
    }
    match distinct.len() {
        0 => {}
        1 => {
            let parent =
                opentelemetry::Context::new().with_remote_span_context(distinct.swap_remove(0));
            let _ = span.set_parent(parent);
        }
        _ => {
            for o in distinct.into_iter().take(MAX_LINKS) {
                span.add_link(o);
            }
        }
    }
}

/// A tonic client interceptor that propagates W3C trace context.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracePropagator;

impl tonic::service::Interceptor for TracePropagator {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_current(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_metadata() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = extract_context(&headers);
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut md = tonic::metadata::MetadataMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(&mut md));
        let tp = md.get("traceparent").unwrap().to_str().unwrap();
        assert!(tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{tp}");
    }

    #[test]
    fn the_resource_names_service_version_and_instance() {
        let env = Env::from_pairs([("OTEL_SERVICE_NAME", "shop-gateway"), ("HOSTNAME", "pod-7")]);
        let c = TelemetryConfig::from_env(&env, "gateway").unwrap();
        assert_eq!(c.service_name, "shop-gateway");
        assert_eq!(c.instance, format!("pod-7/{}", std::process::id()));
        let r = resource(&c);
        let get = |k: &'static str| r.get(&opentelemetry::Key::new(k)).map(|v| v.to_string());
        assert_eq!(get("service.name").as_deref(), Some("shop-gateway"));
        assert_eq!(
            get("service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(get("service.instance.id"), Some(c.instance.clone()));
        let plain =
            TelemetryConfig::from_env(&Env::from_pairs([("HOSTNAME", "h")]), "sync").unwrap();
        assert_eq!(plain.service_name, "sync");
    }

    #[test]
    fn a_traceparent_parses_back_to_its_span() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // No tracer in unit tests: an untraced span has no traceparent.
        assert_eq!(traceparent(&tracing::info_span!("x")), None);
    }

    #[test]
    fn bad_log_format_names_the_variable() {
        let env = Env::from_pairs([("DISCOVERY_LOG_FORMAT", "xml")]);
        let err = TelemetryConfig::from_env(&env, "t").unwrap_err();
        assert!(err.to_string().starts_with("DISCOVERY_LOG_FORMAT:"));
    }
}
