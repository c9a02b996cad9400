//! An OTLP/gRPC trace receiver on loopback: what Jaeger or Tempo would be
//! given, kept in memory for a test to read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::{HarnessError, start_err};

/// A span as received, with its process's resource attributes.
#[derive(Debug, Clone)]
pub struct Span {
    /// The resource's `service.name`.
    pub service: String,
    /// Every resource attribute (`service.instance.id`, `k8s.pod.name`...).
    pub resource: HashMap<String, String>,
    /// Span name.
    pub name: String,
    /// `SpanKind` as its number.
    pub kind: i32,
    /// Trace id.
    pub trace: Vec<u8>,
    /// Span id.
    pub id: Vec<u8>,
    /// Parent span id (empty for a root).
    pub parent: Vec<u8>,
    /// Links: (trace id, span id) of each linked span.
    pub links: Vec<(Vec<u8>, Vec<u8>)>,
    /// Attributes, as text.
    pub attrs: HashMap<String, String>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rs in req.into_inner().resource_spans {
            let resource: HashMap<String, String> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|a| (a.key.clone(), text(&a.value)))
                .collect();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Span {
                        service: service.clone(),
                        resource: resource.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                        links: s
                            .links
                            .into_iter()
                            .map(|l| (l.trace_id, l.span_id))
                            .collect(),
                        attrs: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver; stops when dropped.
pub struct Receiver {
    sink: Sink,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free loopback port.
    pub async fn start() -> Result<Self, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| start_err("OTLP receiver", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| start_err("OTLP receiver", e))?;
        let sink = Sink::default();
        let service = TraceServiceServer::new(sink.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self { sink, addr, task })
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the processes.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.sink
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The child of `parent` in `trace` that `pred` picks; panics listing the
/// trace when there is none (a test's failure message).
pub fn child_of<'a>(trace: &[&'a Span], parent: &Span, pred: impl Fn(&Span) -> bool) -> &'a Span {
    trace
        .iter()
        .copied()
        .find(|s| s.parent == parent.id && pred(s))
        .unwrap_or_else(|| {
            panic!(
                "no matching child of {} ({}) in {:#?}",
                parent.name,
                parent.service,
                trace
                    .iter()
                    .map(|s| (&s.service, &s.name, s.kind))
                    .collect::<Vec<_>>()
            )
        })
}
