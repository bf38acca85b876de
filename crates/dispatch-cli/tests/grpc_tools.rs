//! The standard gRPC services for tools, against the real binary: health
//! checking (`grpc.health.v1`) and server reflection (`v1` and `v1alpha`),
//! both open without a token when every other endpoint needs one, as load
//! balancers and `grpcurl` expect. A `Watch` stream ends with
//! `NOT_SERVING` when the server drains.

mod common;

use std::time::Duration;

use common::{Server, create_token};
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::{v1, v1alpha};

async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

fn status_of(reply: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(reply.status).expect("a known status")
}

/// A secured server: health answers without a token, the worker service
/// still wants one.
async fn secured() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tokens");
    create_token(&file, "work", "worker");
    let server = Server::with_args(&["--tokens", file.to_str().expect("utf-8")]).await;
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_without_a_token() {
    let (server, _dir) = secured().await;
    let mut health = HealthClient::new(channel(&server.url).await);
    for service in ["", "dispatch.v1.WorkerService"] {
        let reply = health.check(request(service)).await.expect("check");
        assert_eq!(
            status_of(reply.get_ref()),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(request("no.such.Service"))
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // The worker service behind the same port still needs a token.
    let mut workers = dispatch_grpc::WorkerServiceClient::new(channel(&server.url).await);
    let register = dispatch_grpc::pb::WorkerMessage::register(dispatch_grpc::pb::Register {
        types: vec!["job".into()],
        capacity: 1,
        ..Default::default()
    });
    let refused = workers
        .connect(tokio_stream::iter(vec![register]))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Plain HTTP on a gRPC path is refused with a problem, not read as
    // frames.
    let plain = server
        .api()
        .post("/grpc.health.v1.Health/Check", serde_json::json!({}))
        .await;
    plain.problem(415, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_ends_not_serving_when_the_server_drains() {
    let server = Server::start().await;
    let mut health = HealthClient::new(channel(&server.url).await);
    let mut watch = health
        .watch(request("dispatch.v1.WorkerService"))
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("stream").expect("a status");
    assert_eq!(status_of(&first), ServingStatus::Serving);
    let mut unknown = health
        .watch(request("no.such.Service"))
        .await
        .expect("an unknown service is watched, not refused")
        .into_inner();
    let first = unknown.message().await.expect("stream").expect("a status");
    assert_eq!(status_of(&first), ServingStatus::ServiceUnknown);

    server.signal("TERM");
    let last = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("a status within 20 s")
        .expect("the stream")
        .expect("a last status before the end");
    assert_eq!(status_of(&last), ServingStatus::NotServing);
    let end = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("the stream ends within 20 s");
    assert!(
        matches!(end, Ok(None) | Err(_)),
        "nothing after NOT_SERVING: {end:?}"
    );
}

/// Every file descriptor a reflection answer carries.
fn files(reply: &v1::ServerReflectionResponse) -> Vec<prost_types::FileDescriptorProto> {
    match &reply.message_response {
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(f)) => f
            .file_descriptor_proto
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(&b[..]).expect("a descriptor"))
            .collect(),
        other => panic!("expected file descriptors, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_services_without_a_token() {
    let (server, _dir) = secured().await;
    let mut reflection =
        v1::server_reflection_client::ServerReflectionClient::new(channel(&server.url).await);
    let asks = vec![
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "dispatch.v1.WorkerService".into(),
                ),
            ),
        },
    ];
    let replies: Vec<v1::ServerReflectionResponse> = reflection
        .server_reflection_info(tokio_stream::iter(asks))
        .await
        .expect("reflection")
        .into_inner()
        .map(|r| r.expect("a reply"))
        .collect()
        .await;
    assert_eq!(replies.len(), 2);
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        &replies[0].message_response
    else {
        panic!("expected a list of services: {:?}", replies[0]);
    };
    let mut names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "dispatch.v1.WorkerService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"
        ]
    );

    let worker_proto = files(&replies[1])
        .into_iter()
        .find(|f| f.name() == "dispatch/v1/worker.proto")
        .expect("worker.proto");
    assert_eq!(worker_proto.package(), "dispatch.v1");
    let service = &worker_proto.service[0];
    assert_eq!(service.name(), "WorkerService");
    assert_eq!(service.method[0].name(), "Connect");
    let options = worker_proto.options.as_ref().expect("file options");
    assert!(options.go_package().ends_with(";dispatchv1"), "{options:?}");
    assert!(
        options.java_package().ends_with("dispatch.v1"),
        "{options:?}"
    );
    assert!(options.java_multiple_files());
    // The comments come along, for `grpcurl describe`.
    assert!(worker_proto.source_code_info.is_some());

    // The older v1alpha, which some tools still speak.
    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&server.url).await);
    let ask = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let reply = alpha
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .expect("reflection v1alpha")
        .into_inner()
        .message()
        .await
        .expect("stream")
        .expect("a reply");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("expected a list of services");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "dispatch.v1.WorkerService"),
        "{list:?}"
    );
}
