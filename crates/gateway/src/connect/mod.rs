//! The Connect protocol's unary calls (<https://connectrpc.com/docs/protocol>):
//! JSON (`application/json`) or binary (`application/proto`) over HTTP/1.1
//! or HTTP/2, for callers that cannot speak gRPC: `curl`, `fetch`, a shop
//! platform's webhook.
//!
//! A Connect call is turned into the gRPC call it names and sent through the
//! same stack (keys, limits, breakers, deadlines, traces, metrics); the
//! answer is turned back. JSON is mapped with `prost-reflect` over the
//! descriptor set the proto crate embeds (the canonical proto3 JSON mapping:
//! camelCase names, enums by name, 64-bit integers as strings, unknown
//! fields refused). Errors are Connect error bodies (`{"code", "message"}`)
//! with the HTTP status the protocol gives each code.
//!
//! Bounded before it costs anything: the key is checked before the body is
//! read; the body is read within the gateway's body timeout and at most the
//! route's limit (a third more for JSON, which carries bytes as base64);
//! JSON is decoded by at most [`DECODING`] calls at once (more are refused
//! with `resource_exhausted` and `retry-after`).
//!
//! Server streams (`application/connect+json`, `application/connect+proto`)
//! are in [`stream`]; client streams (`IngestCatalog`) stay on gRPC.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

use crate::auth::KeyRing;
use crate::layers::{Next, Reply};
use crate::routes::{self, Route};

/// JSON requests decoded at once, per gateway process.
pub const DECODING: usize = 64;

/// Largest answer turned back into JSON or returned whole.
const MAX_ANSWER: usize = 32 << 20;

pub mod openapi;
mod stream;

/// The two Connect codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `application/json` (unary), `application/connect+json` (streams).
    Json,
    /// `application/proto` (unary), `application/connect+proto` (streams).
    Proto,
}

impl Codec {
    /// The codec a Connect request's content type names, and whether it
    /// is the streaming protocol; `None` for anything else (gRPC, gRPC-Web).
    pub fn of(headers: &HeaderMap) -> Option<(Codec, bool)> {
        let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = ct.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json" => Some((Codec::Json, false)),
            "application/proto" => Some((Codec::Proto, false)),
            "application/connect+json" => Some((Codec::Json, true)),
            "application/connect+proto" => Some((Codec::Proto, true)),
            _ => None,
        }
    }

    /// The most a request body of `route` may be in this codec: the
    /// route's limit (a stream's request is small), a third more for JSON.
    fn body_limit(self, route: &Route) -> usize {
        let limit = route.max_body.unwrap_or(routes::SMALL_BODY);
        match self {
            // Bytes travel as base64 in JSON: four characters for three bytes.
            Codec::Json => limit / 3 * 4 + (64 << 10),
            Codec::Proto => limit,
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        })
    }
}

/// The embedded descriptors of every discovery proto.
pub fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(discovery_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set built with the proto crate decodes")
    })
}

/// A public method's descriptor.
fn types_of_method(route: &Route) -> Option<prost_reflect::MethodDescriptor> {
    let service = descriptors().get_service_by_name(discovery_proto::service_names::DISCOVERY)?;
    service.methods().find(|m| m.name() == route.method)
}

/// A method's request and response types.
fn types_of(route: &Route) -> Option<(MessageDescriptor, MessageDescriptor)> {
    let method = types_of_method(route)?;
    Some((method.input(), method.output()))
}

/// The Connect name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status the Connect protocol gives a code.
pub fn http_status(code: Code) -> StatusCode {
    let n = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    };
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A Connect error answer; `metadata` (e.g. `retry-after`) goes along as
/// headers.
pub fn error(code: Code, message: &str, metadata: &HeaderMap) -> Response<Body> {
    let body = serde_json::json!({ "code": code_name(code), "message": message });
    let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from(
        body.to_string(),
    ))));
    *resp.status_mut() = http_status(code);
    for (k, v) in metadata {
        if !is_grpc_header(k) {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn is_grpc_header(name: &http::HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("grpc-") || n == "content-type" || n == "content-length" || n == "te"
}

/// Serves Connect unary calls through `inner` (the gateway's stack).
#[derive(Clone)]
pub struct ConnectLayer {
    keys: Arc<KeyRing>,
    body_timeout: Duration,
    decoding: Arc<tokio::sync::Semaphore>,
}

impl ConnectLayer {
    /// Checks keys against `keys` before reading a body, which must arrive
    /// within `body_timeout`.
    pub fn new(keys: Arc<KeyRing>, body_timeout: Duration) -> Self {
        Self {
            keys,
            body_timeout,
            decoding: Arc::new(tokio::sync::Semaphore::new(DECODING)),
        }
    }
}

impl<S> Layer<S> for ConnectLayer {
    type Service = Connect<S>;
    fn layer(&self, inner: S) -> Connect<S> {
        Connect {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ConnectLayer`].
#[derive(Clone)]
pub struct Connect<S> {
    inner: S,
    layer: ConnectLayer,
}

impl Service<Request<Body>> for Connect<Next> {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Reply;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Reply {
        let (inner, layer) = (self.inner.clone(), self.layer.clone());
        Box::pin(async move { Ok(serve(inner, layer, req).await) })
    }
}

/// A refusal: the status and the metadata to send with it.
struct Refusal(Code, String, Box<HeaderMap>);

impl Refusal {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self(code, message.into(), Box::default())
    }
}

impl From<tonic::Status> for Refusal {
    fn from(status: tonic::Status) -> Self {
        Self::new(status.code(), status.message())
    }
}

async fn serve(inner: Next, layer: ConnectLayer, req: Request<Body>) -> Response<Body> {
    match translate(inner, layer, req).await {
        Ok(resp) => resp,
        Err(Refusal(code, message, metadata)) => error(code, &message, &metadata),
    }
}

/// What is read of a refused call's body before answering, so an HTTP/2
/// client that is still sending gets the answer, not a reset it may report
/// as a transport error (curl does); past this the stream is reset.
const DRAIN: usize = 1 << 20;

/// Reads and drops up to [`DRAIN`] bytes of `body` (within a second), then
/// gives the refusal.
async fn drained(body: Body, refusal: Refusal) -> Refusal {
    let read = http_body_util::Limited::new(body, DRAIN).collect();
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    refusal
}

async fn translate(
    inner: Next,
    layer: ConnectLayer,
    req: Request<Body>,
) -> Result<Response<Body>, Refusal> {
    let (parts, body) = req.into_parts();
    let Some((codec, streaming)) = Codec::of(&parts.headers) else {
        return Err(drained(
            body,
            Refusal::new(Code::Unimplemented, "not a Connect call"),
        )
        .await);
    };
    let checked = check(&layer, &parts, streaming);
    match (checked, streaming) {
        (Ok(route), false) => call(inner, &layer, codec, route, parts, body).await,
        (Ok(route), true) => stream::call(inner, &layer, codec, route, parts, body)
            .await
            .or_else(|refusal| Ok(stream::refused(codec, refusal))),
        (Err(refusal), false) => Err(drained(body, refusal).await),
        (Err(refusal), true) => Ok(stream::refused(codec, drained(body, refusal).await)),
    }
}

/// What can be refused from the head alone: the method, the protocol it
/// needs, the key (strangers are refused before their body costs anything).
fn check(
    layer: &ConnectLayer,
    parts: &http::request::Parts,
    streaming: bool,
) -> Result<&'static Route, Refusal> {
    let path = parts.uri.path();
    let route = routes::lookup(path).ok_or_else(|| {
        Refusal::new(
            Code::Unimplemented,
            format!("{path} is not a method of discovery.v1.Discovery"),
        )
    })?;
    if parts.method != http::Method::POST {
        return Err(Refusal::new(
            Code::Unimplemented,
            format!("call {} with POST", route.method),
        ));
    }
    let client_streaming = types_of_method(route).is_some_and(|m| m.is_client_streaming());
    if client_streaming {
        return Err(Refusal::new(
            Code::Unimplemented,
            format!(
                "{} streams from the caller: call it over gRPC (Connect serves server streams only)",
                route.method
            ),
        ));
    }
    if route.streaming && !streaming {
        return Err(Refusal::new(
            Code::Unimplemented,
            format!(
                "{} is a server stream: send application/connect+json or application/connect+proto (or call it over gRPC)",
                route.method
            ),
        ));
    }
    if !route.streaming && streaming {
        return Err(Refusal::new(
            Code::Unimplemented,
            format!(
                "{} is unary: send application/json or application/proto",
                route.method
            ),
        ));
    }
    if let Some(enc) = parts.headers.get(header::CONTENT_ENCODING)
        && enc.as_bytes() != b"identity"
    {
        return Err(Refusal::new(
            Code::Unimplemented,
            "compressed Connect requests are not accepted; send the body uncompressed",
        ));
    }
    layer.keys.authenticate(&parts.headers)?;
    Ok(route)
}

/// Reads the body, makes the gRPC call and turns its answer back.
async fn call(
    inner: Next,
    layer: &ConnectLayer,
    codec: Codec,
    route: &'static Route,
    parts: http::request::Parts,
    body: Body,
) -> Result<Response<Body>, Refusal> {
    let (input, output) = types_of(route)
        .ok_or_else(|| Refusal::new(Code::Internal, "the method has no descriptor"))?;
    let bytes = read_request(layer, route, body, codec.body_limit(route)).await?;
    let message = match codec {
        Codec::Proto => bytes,
        Codec::Json => decode_json(layer, route, &input, &bytes)?,
    };
    let grpc = grpc_request(parts, &message)?;
    let Ok(resp) = inner.oneshot(grpc).await;
    answer(codec, &output, resp).await
}

/// Reads a request body: at most `limit` bytes, within the body timeout.
async fn read_request(
    layer: &ConnectLayer,
    route: &Route,
    body: Body,
    limit: usize,
) -> Result<Bytes, Refusal> {
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(layer.body_timeout, read).await {
        Err(_) => Err(crate::grpc::too_slow(route.method, layer.body_timeout).into()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(crate::grpc::too_large(route.method, limit).into())
        }
        Ok(Err(e)) => Err(Refusal::new(
            Code::Cancelled,
            format!("the {} request body could not be read: {e}", route.method),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// A JSON request as protobuf bytes, if a decoding slot is free.
fn decode_json(
    layer: &ConnectLayer,
    route: &Route,
    input: &MessageDescriptor,
    bytes: &[u8],
) -> Result<Bytes, Refusal> {
    let _decoding = layer.decoding.try_acquire().map_err(|_| {
        let mut m = HeaderMap::new();
        m.insert("retry-after", HeaderValue::from_static("1"));
        Refusal(
            Code::ResourceExhausted,
            "too many JSON requests are being decoded; retry shortly".into(),
            Box::new(m),
        )
    })?;
    from_json(input, bytes).map_err(|e| {
        Refusal::new(
            Code::InvalidArgument,
            format!(
                "the {} request is not a valid {} in JSON: {e}",
                route.method,
                input.name()
            ),
        )
    })
}

/// The gRPC call a Connect call names: its headers less Connect's, its
/// deadline as `grpc-timeout`, `message` framed.
fn grpc_request(mut parts: http::request::Parts, message: &[u8]) -> Result<Request<Body>, Refusal> {
    let timeout = parts.headers.remove("connect-timeout-ms");
    for name in [
        "connect-protocol-version",
        "content-length",
        "accept-encoding",
    ] {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::CONTENT_ENCODING);
    if let Some(ms) = timeout
        .as_ref()
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        parts.headers.insert(
            "grpc-timeout",
            crate::grpc::encode_timeout(Duration::from_millis(ms)),
        );
    } else if timeout.is_some() {
        return Err(Refusal::new(
            Code::InvalidArgument,
            "connect-timeout-ms must be a whole number of milliseconds",
        ));
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert(header::TE, HeaderValue::from_static("trailers"));
    parts.version = http::Version::HTTP_2;
    // gRPC's length prefix is Connect's envelope with no flags.
    Ok(Request::from_parts(
        parts,
        Body::new(http_body_util::Full::new(stream::envelope(0, message))),
    ))
}

/// Decodes a JSON request (an empty body is the empty message).
pub fn from_json(input: &MessageDescriptor, json: &[u8]) -> Result<Bytes, String> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::new());
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize(input.clone(), &mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(Bytes::from(message.encode_to_vec()))
}

/// Encodes an answer as JSON.
pub fn to_json(output: &MessageDescriptor, message: &[u8]) -> Result<Bytes, String> {
    let message = DynamicMessage::decode(output.clone(), message).map_err(|e| e.to_string())?;
    serde_json::to_vec(&message)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// Turns the gRPC answer back into a Connect one.
async fn answer(
    codec: Codec,
    output: &MessageDescriptor,
    resp: Response<Body>,
) -> Result<Response<Body>, Refusal> {
    let (parts, body) = resp.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        // Trailers-only: refused or failed before any answer.
        if status.code() != Code::Ok {
            return Err(Refusal(
                status.code(),
                status.message().to_string(),
                Box::new(parts.headers),
            ));
        }
    }
    let collected = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| Refusal::new(Code::Unavailable, format!("the answer broke off: {e}")))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    let status = tonic::Status::from_header_map(&trailers)
        .or_else(|| tonic::Status::from_header_map(&parts.headers))
        .unwrap_or_else(|| tonic::Status::unknown("the answer ended without a status"));
    if status.code() != Code::Ok {
        let mut metadata = parts.headers.clone();
        metadata.extend(trailers);
        return Err(Refusal(
            status.code(),
            status.message().to_string(),
            Box::new(metadata),
        ));
    }
    if data.len() < 5 || data[0] != 0 {
        return Err(Refusal::new(
            Code::Internal,
            "the upstream's answer is not one uncompressed gRPC message",
        ));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let message = data.slice(5..(5 + len).min(data.len()));
    let body = match codec {
        Codec::Proto => message,
        Codec::Json => to_json(output, &message).map_err(|e| {
            Refusal::new(
                Code::Internal,
                format!("the answer could not be written as JSON: {e}"),
            )
        })?,
    };
    let mut out = Response::new(Body::new(http_body_util::Full::new(body)));
    for (k, v) in &parts.headers {
        if !is_grpc_header(k) {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    for (k, v) in &trailers {
        if !is_grpc_header(k)
            && let Ok(name) = http::HeaderName::from_bytes(format!("trailer-{k}").as_bytes())
        {
            out.headers_mut().append(name, v.clone());
        }
    }
    out.headers_mut()
        .insert(header::CONTENT_TYPE, codec.content_type());
    Ok(out)
}

#[cfg(test)]
mod tests;
