use super::rpc::{cap_message, percent_decode, undecodable_is_invalid_argument};
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
                let mut health = HealthClient::new(crate::client::connect_lazy("T", &url).unwrap());
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
            crate::client::connect_lazy("TEST_URL", &format!("http://{}", running.addr)).unwrap();
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

/// `discovery_rpc_server_in_flight` counts a call from its arrival to its
/// answer, and a call whose caller went away (its future dropped) too.
#[tokio::test]
async fn calls_in_flight_are_counted_until_answered_or_dropped() {
    use tower::{Layer, Service, ServiceExt};
    let gauge = || {
        crate::metrics::render()
            .lines()
            .find(|l| l.starts_with("discovery_rpc_server_in_flight{service=\"inflight_test\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let inner = tower::service_fn({
        let gate = gate.clone();
        move |_req: http::Request<()>| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await;
                Ok::<_, std::convert::Infallible>(http::Response::new(()))
            }
        }
    });
    let mut svc = rpc::RpcLayer::new("inflight_test").layer(inner);
    let req = || http::Request::builder().uri("/x.Y/Z").body(()).unwrap();
    let answered = svc.ready().await.unwrap().call(req());
    let dropped = svc.ready().await.unwrap().call(req());
    assert_eq!(gauge(), 2.0);
    drop(dropped);
    assert_eq!(gauge(), 1.0);
    gate.add_permits(1);
    answered.await.unwrap();
    assert_eq!(gauge(), 0.0);
}
