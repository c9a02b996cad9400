//! The Connect protocol's server streams (`application/connect+json` or
//! `application/connect+proto`): `Converse` and `WatchSyncJob` for callers
//! that cannot speak gRPC or gRPC-Web.
//!
//! The request is one enveloped message (flags, length, message: the same
//! five-byte prefix as gRPC's); it becomes the gRPC call it names, through
//! the same stack as every call. Each gRPC message of the answer becomes
//! an envelope as it arrives (re-encoded as JSON for `connect+json`), and
//! the gRPC status and trailers become the end-of-stream envelope (flag 2,
//! JSON `{"error": {...}, "metadata": {...}}`). As the protocol says, a
//! stream's answer is HTTP 200 whatever happened: a refusal before the
//! call (no key, unknown method, bad JSON) is an end-of-stream envelope
//! carrying the error. Client streams (`IngestCatalog`) stay on gRPC.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::BodyExt;
use prost_reflect::MessageDescriptor;
use tonic::Code;
use tonic::body::Body;
use tower::ServiceExt;

use super::{Codec, ConnectLayer, MAX_ANSWER, Refusal, is_grpc_header, read_request};
use crate::layers::Next;
use crate::routes::Route;

/// Envelope flag: compressed (refused: no compression is negotiated).
const COMPRESSED: u8 = 1;
/// Envelope flag: the end-of-stream message.
const END_STREAM: u8 = 2;

/// `flags`, then the big-endian length, then `message`.
pub(super) fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.put_u8(flags);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(message);
    out.freeze()
}

/// The end-of-stream envelope: the error unless `code` is OK, and
/// `metadata` (the trailers a caller may need: `retry-after`...).
pub(super) fn end_stream(code: Code, message: &str, metadata: &HeaderMap) -> Bytes {
    let mut end = serde_json::Map::new();
    if code != Code::Ok {
        end.insert(
            "error".into(),
            serde_json::json!({ "code": super::code_name(code), "message": message }),
        );
    }
    let mut meta = serde_json::Map::new();
    for (k, v) in metadata {
        if is_grpc_header(k) {
            continue;
        }
        if let Ok(v) = v.to_str()
            && let serde_json::Value::Array(values) = meta
                .entry(k.as_str())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()))
        {
            values.push(v.into());
        }
    }
    if !meta.is_empty() {
        end.insert("metadata".into(), meta.into());
    }
    envelope(
        END_STREAM,
        serde_json::Value::Object(end).to_string().as_bytes(),
    )
}

fn streaming_response(codec: Codec, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match codec {
            Codec::Json => "application/connect+json",
            Codec::Proto => "application/connect+proto",
        }),
    );
    resp
}

/// A refusal as a stream's answer: HTTP 200, one end-of-stream envelope.
pub(super) fn refused(codec: Codec, refusal: Refusal) -> Response<Body> {
    let Refusal(code, message, metadata) = refusal;
    let end = end_stream(code, &message, &metadata);
    streaming_response(codec, Body::new(http_body_util::Full::new(end)))
}

/// Reads the one request envelope, calls the stream and relays its answer.
pub(super) async fn call(
    inner: Next,
    layer: &ConnectLayer,
    codec: Codec,
    route: &'static Route,
    mut parts: http::request::Parts,
    body: Body,
) -> Result<Response<Body>, Refusal> {
    let (input, output) = super::types_of(route)
        .ok_or_else(|| Refusal::new(Code::Internal, "the method has no descriptor"))?;
    if let Some(enc) = parts.headers.get("connect-content-encoding")
        && enc.as_bytes() != b"identity"
    {
        return Err(Refusal::new(
            Code::Unimplemented,
            "compressed Connect messages are not accepted; send them uncompressed",
        ));
    }
    // One message and its five-byte envelope.
    let bytes = read_request(layer, route, body, codec.body_limit(route) + 5).await?;
    let message = unenvelope(route, bytes)?;
    let message = match codec {
        Codec::Proto => message,
        Codec::Json => super::decode_json(layer, route, &input, &message)?,
    };
    for name in ["connect-content-encoding", "connect-accept-encoding"] {
        parts.headers.remove(name);
    }
    let grpc = super::grpc_request(parts, &message)?;
    let Ok(resp) = inner.oneshot(grpc).await;
    let (parts, body) = resp.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        // Trailers-only: refused or failed before any message.
        return Err(Refusal(
            status.code(),
            status.message().to_string(),
            Box::new(parts.headers),
        ));
    }
    let mut resp = streaming_response(codec, Body::empty());
    for (k, v) in &parts.headers {
        if !is_grpc_header(k) {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    let relay = Relay {
        body,
        buf: BytesMut::new(),
        codec,
        output,
        headers: parts.headers,
        done: false,
    };
    let frames = futures::stream::unfold(relay, |mut r| async move {
        let next = r.next().await?;
        Some((
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(next)),
            r,
        ))
    });
    *resp.body_mut() = Body::new(http_body_util::StreamBody::new(frames));
    Ok(resp)
}

/// The request's one envelope: uncompressed, its length what was sent.
fn unenvelope(route: &Route, mut bytes: Bytes) -> Result<Bytes, Refusal> {
    let bad = |why: &str| {
        Refusal::new(
            Code::InvalidArgument,
            format!(
                "the {} request is not one Connect envelope: {why}",
                route.method
            ),
        )
    };
    if bytes.len() < 5 {
        return Err(bad("shorter than its five-byte prefix"));
    }
    let flags = bytes.get_u8();
    let len = bytes.get_u32() as usize;
    if flags & COMPRESSED != 0 {
        return Err(Refusal::new(
            Code::Unimplemented,
            "compressed Connect messages are not accepted; send them uncompressed",
        ));
    }
    if flags != 0 {
        return Err(bad("its flags are not 0"));
    }
    if len != bytes.len() {
        return Err(bad(&format!(
            "the prefix says {len} bytes, {} were sent",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Turns the gRPC answer's messages into envelopes as they arrive.
struct Relay {
    body: Body,
    buf: BytesMut,
    codec: Codec,
    output: MessageDescriptor,
    headers: HeaderMap,
    done: bool,
}

impl Relay {
    /// The next envelope to send, `None` after the end of the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            if let Some(message) = self.message() {
                return Some(message);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.buf.extend_from_slice(&data);
                        if self.buf.len() > MAX_ANSWER + 5 {
                            return self.end(
                                Code::ResourceExhausted,
                                "a message of the answer is over 32 MiB",
                                HeaderMap::new(),
                            );
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        let status =
                            tonic::Status::from_header_map(&trailers).unwrap_or_else(|| {
                                tonic::Status::unknown("the answer ended without a status")
                            });
                        return self.end(status.code(), status.message(), trailers);
                    }
                },
                Some(Err(e)) => {
                    return self.end(
                        Code::Unavailable,
                        &format!("the stream broke off: {e}"),
                        HeaderMap::new(),
                    );
                }
                None => {
                    let status =
                        tonic::Status::from_header_map(&self.headers).unwrap_or_else(|| {
                            tonic::Status::unknown("the answer ended without a status")
                        });
                    return self.end(status.code(), status.message(), HeaderMap::new());
                }
            }
        }
    }

    /// A whole message from the buffer, as an envelope.
    fn message(&mut self) -> Option<Bytes> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.buf.len() < 5 + len {
            return None;
        }
        let framed = self.buf.split_to(5 + len).freeze();
        if framed[0] != 0 {
            return self.end(
                Code::Internal,
                "the upstream's answer is compressed",
                HeaderMap::new(),
            );
        }
        match self.codec {
            // gRPC's prefix is Connect's: the bytes go as they came.
            Codec::Proto => Some(framed),
            Codec::Json => match super::to_json(&self.output, &framed[5..]) {
                Ok(json) => Some(envelope(0, &json)),
                Err(e) => self.end(
                    Code::Internal,
                    &format!("a message could not be written as JSON: {e}"),
                    HeaderMap::new(),
                ),
            },
        }
    }

    /// The end-of-stream envelope (the answer's headers went as HTTP
    /// headers; its trailers go here).
    fn end(&mut self, code: Code, message: &str, trailers: HeaderMap) -> Option<Bytes> {
        self.done = true;
        Some(end_stream(code, message, &trailers))
    }
}
