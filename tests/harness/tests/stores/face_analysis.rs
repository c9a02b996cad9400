//! The face-analysis service over gRPC against a real Redis Cluster (result
//! cache) and the MongoDB-compatible server (stored analyses): a photo is
//! analysed once, cached under `face_analysis:{session}:{hash}` with a 1 h
//! TTL, stored in `face_analyses` behind a 24 h TTL index, fetched back by
//! id; bad input gets the documented status and reason.

use std::time::Duration;

use discovery_harness::{MongoServer, RedisCluster, redis_command, workspace_root};
use discovery_kit::CancellationToken;
use discovery_kit::config::Env;
use discovery_kit::store::bson::Document;
use discovery_proto::v1 as pb;
use discovery_proto::v1::face_analysis_client::FaceAnalysisClient;
use futures::TryStreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn photo(name: &str) -> Vec<u8> {
    let path = workspace_root().join("models/testdata").join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/fetch-models.sh --test-data",
            path.display()
        )
    })
}

fn image_request(session: &str, image: Vec<u8>, landmarks: bool) -> pb::AnalyzeFaceRequest {
    pb::AnalyzeFaceRequest {
        requester: Some(pb::Requester {
            user_id: "u1".into(),
            session_id: session.into(),
        }),
        input: Some(pb::analyze_face_request::Input::Image(image)),
        include_landmarks: landmarks,
    }
}

fn reason(s: &tonic::Status) -> &str {
    s.metadata()
        .get("x-discovery-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn analyses_are_cached_in_redis_stored_in_mongo_and_errors_are_clear() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap()
        .expect("start redis cluster");
    let mongo = MongoServer::start().await.expect("start mongo");
    let db = mongo.fresh_db("faces");
    let shutdown = CancellationToken::new();
    let env = Env::from_pairs(mongo.service_vars(&db))
        .with_all([
            ("DISCOVERY_FACE_ANALYSIS_PORT", "0"),
            ("DISCOVERY_FACE_WORKERS", "2"),
        ])
        .with("DISCOVERY_REDIS_URLS", cluster.urls().join(","))
        .with(
            "DISCOVERY_FACE_MODELS_DIR",
            workspace_root().join("models").display().to_string(),
        );
    let handle = discovery_face_analysis::spawn(
        discovery_face_analysis::Config::from_env(&env).expect("config"),
        shutdown.clone(),
    )
    .await
    .expect("service starts");
    let channel = Channel::from_shared(format!("http://{}", handle.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FaceAnalysisClient::new(channel).max_decoding_message_size(32 << 20);

    // First analysis: computed, no landmarks unless asked.
    let astronaut = photo("astronaut.png");
    let first = client
        .analyze_face(image_request("s1", astronaut.clone(), false))
        .await
        .expect("astronaut analysed")
        .into_inner();
    assert!(!first.cached);
    let r = first.result.expect("result");
    assert_eq!(r.source, pb::LandmarkSource::ServerModel as i32);
    assert!(r.landmarks.is_empty());
    assert_eq!(r.iris_centers.len(), 2);
    assert!((r.iris_centers[0].x - 203.5).abs() < 3.0 && (r.iris_centers[1].x - 246.6).abs() < 3.0);
    let pd = r.measurements.as_ref().unwrap().pupillary_distance.unwrap();
    assert!((54.0..74.0).contains(&pd.value_mm), "{pd:?}");
    assert!(r.processing_time_us > 0);
    assert_ne!(r.face_shape, pb::FaceShape::Unspecified as i32);

    // Same photo, same session: from the cache, same id, landmarks on request.
    let again = client
        .analyze_face(image_request("s1", astronaut.clone(), true))
        .await
        .unwrap()
        .into_inner();
    assert!(again.cached);
    let r2 = again.result.unwrap();
    assert_eq!(r2.analysis_id, r.analysis_id);
    assert_eq!(r2.processing_time_us, 0);
    assert_eq!(r2.landmarks.len(), 468);
    assert_eq!(r2.measurements, r.measurements);

    // The cache entry is in Redis Cluster with the kind's 1 h TTL.
    let mut ttl = None;
    for port in cluster.master_ports() {
        let keys = redis_command(port, "KEYS face_analysis:s1:*").unwrap();
        if let Some(key) = keys.lines().find(|l| l.starts_with("face_analysis:s1:")) {
            let reply = redis_command(port, &format!("TTL {key}")).unwrap();
            ttl = reply
                .trim()
                .strip_prefix(':')
                .and_then(|s| s.parse::<i64>().ok());
        }
    }
    let ttl = ttl.expect("face_analysis:s1:{hash} is in one master");
    assert!((3500..=3600).contains(&ttl), "TTL {ttl}");

    // Another session computes its own.
    let other = client
        .analyze_face(image_request("s2", astronaut, false))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.cached);
    assert_ne!(other.result.unwrap().analysis_id, r.analysis_id);

    // Stored in MongoDB and readable by id; 24 h TTL index on createdAt.
    let stored = client
        .get_face_analysis(pb::GetFaceAnalysisRequest {
            analysis_id: r.analysis_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(stored.measurements, r.measurements);
    assert_eq!(stored.landmarks.len(), 468, "stored with landmarks");
    let database = mongodb::Client::with_uri_str(mongo.uri())
        .await
        .unwrap()
        .database(&db);
    let doc = database
        .collection::<Document>("face_analyses")
        .find_one(discovery_kit::store::bson::doc! {"_id": &r.analysis_id})
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(doc.get_str("sessionId").unwrap(), "s1");
    assert!(doc.get_datetime("createdAt").is_ok());
    let indexes: Vec<_> = database
        .collection::<Document>("face_analyses")
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        indexes
            .iter()
            .any(|i| i.options.as_ref().and_then(|o| o.expire_after)
                == Some(Duration::from_secs(86_400))),
        "24 h TTL index on face_analyses.createdAt"
    );
    let missing = client
        .get_face_analysis(pb::GetFaceAnalysisRequest {
            analysis_id: "00".repeat(12),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Bad input: documented codes and reasons, nothing stored.
    let before = database
        .collection::<Document>("face_analyses")
        .count_documents(discovery_kit::store::bson::doc! {})
        .await
        .unwrap();
    let cases: Vec<(Vec<u8>, Code, &str)> = vec![
        (photo("coffee.png"), Code::NotFound, "no_face"),
        (
            b"not an image at all".to_vec(),
            Code::InvalidArgument,
            "unsupported_image",
        ),
        (
            photo("astronaut.png")[..4000].to_vec(),
            Code::InvalidArgument,
            "corrupt_image",
        ),
        (
            vec![0xFF; (15 << 20) + 1],
            Code::InvalidArgument,
            "too_large",
        ),
    ];
    for (bytes, code, why) in cases {
        let e = client
            .analyze_face(image_request("s3", bytes, false))
            .await
            .unwrap_err();
        assert_eq!((e.code(), reason(&e)), (code, why), "{}", e.message());
        assert!(
            e.message().len() > 20,
            "a message a person can act on: {}",
            e.message()
        );
    }
    let e = client
        .analyze_face(pb::AnalyzeFaceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let after = database
        .collection::<Document>("face_analyses")
        .count_documents(discovery_kit::store::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(before, after, "rejections store nothing");

    // Client landmarks: the server's mesh sent back as the device would.
    let points: Vec<pb::Point3> = r2.landmarks.clone();
    let client_side = client
        .analyze_face(pb::AnalyzeFaceRequest {
            requester: Some(pb::Requester::default()),
            input: Some(pb::analyze_face_request::Input::Landmarks(
                pb::ClientLandmarks {
                    points,
                    image_width: 512,
                    image_height: 512,
                },
            )),
            include_landmarks: false,
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(client_side.source, pb::LandmarkSource::Client as i32);
    assert_eq!(client_side.face_shape, r.face_shape);
    let e = client
        .analyze_face(pb::AnalyzeFaceRequest {
            input: Some(pb::analyze_face_request::Input::Landmarks(
                pb::ClientLandmarks {
                    points: vec![pb::Point3::default(); 10],
                    image_width: 512,
                    image_height: 512,
                },
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::InvalidArgument, "bad_landmarks")
    );

    shutdown.cancel();
    handle.wait().await.ok();
}
