//! What the layers' unit tests share: inner services that answer as an
//! upstream would (real `http` responses with gRPC trailers), a request
//! builder, and a call that reads the answer to its final status.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::Code;
use tonic::body::Body;
use tower::Service;
use tower::util::BoxCloneSyncService;

use super::Next;
use crate::auth::{ApiKey, Principal, Tier};
use crate::grpc;
use crate::routes::{self, Route};

/// A successful gRPC answer: `data` as one message frame, then
/// `grpc-status: 0` trailers.
pub fn ok_answer(data: &'static [u8]) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    resp
}

/// An inner service answering with `f(request)`.
pub fn answering<F>(f: F) -> Next
where
    F: Fn(&Request<Body>) -> Response<Body> + Send + Sync + Clone + 'static,
{
    BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
        let resp = f(&req);
        async move { Ok::<_, Infallible>(resp) }
    }))
}

/// Answers OK, naming the route it was given in `x-route`.
pub fn echo_route() -> Next {
    answering(|req| {
        let mut resp = ok_answer(b"ok");
        if let Some(r) = req.extensions().get::<&'static Route>() {
            resp.headers_mut()
                .insert("x-route", HeaderValue::from_static(r.method));
        }
        resp
    })
}

/// A request for `path`, as the route layer gets it.
pub fn request(path: &str) -> Request<Body> {
    let mut req = Request::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        b"\0\0\0\0\x02hi",
    ))));
    *req.uri_mut() = path.parse().expect("a path");
    req.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    req
}

/// A request for public method `method`, as the route layer hands it on.
pub fn routed(method: &str) -> Request<Body> {
    let mut req = request(&format!("{}{method}", routes::PREFIX));
    let route = routes::lookup(req.uri().path()).expect("a public method");
    req.extensions_mut().insert::<&'static Route>(route);
    req
}

/// A request for public method `method`, with a principal.
pub fn request_by(method: &str, client: &str) -> Request<Body> {
    let mut req = routed(method);
    req.extensions_mut().insert(Principal {
        key: Arc::new(ApiKey::for_tests(client, Tier::Partner)),
        tier: Tier::Partner,
        requester: format!("k:{client}"),
    });
    req
}

/// Sends `req` and reads the answer to its end: the final status, the
/// response (its body consumed) and the data received.
pub async fn send<S>(svc: &mut S, req: Request<Body>) -> (Code, Response<()>, Bytes)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let Ok(resp) = svc.call(req).await;
    let (parts, mut body) = resp.into_parts();
    let mut code = grpc::status_of(&parts.headers);
    let mut data = bytes::BytesMut::new();
    while code.is_none() {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(t) = f.trailers_ref() {
                    code = grpc::status_of(t);
                } else if let Ok(d) = f.into_data() {
                    data.extend_from_slice(&d);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    (
        code.unwrap_or(Code::Unknown),
        Response::from_parts(parts, ()),
        data.freeze(),
    )
}

/// Sends a request for `path` and reads the answer.
pub async fn call<S>(svc: &mut S, path: &str) -> (Code, Response<()>)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let (code, resp, _) = send(svc, request(path)).await;
    (code, resp)
}
