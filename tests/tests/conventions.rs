//! The conventions operators' tools rely on: `grpc.health.v1.Health` on every hub and
//! spoke port reflecting real readiness, and server reflection on the hub so `grpcurl`
//! can list and describe the admin API.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use vigo_common::net::health::check;
use vigo_common::pki::Role;
use vigo_common::tls;
use vigo_tests::cluster::{Cluster, eventually};
use vigo_tests::{SpokeHome, init};

const WAIT: Duration = Duration::from_secs(30);

async fn status(cluster: &Cluster, address: &str, role: &'static [Role]) -> ServingStatus {
    check(address, &cluster.ca_pem(), role, Duration::from_secs(2))
        .await
        .unwrap_or(ServingStatus::Unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness_on_hubs_and_spokes() {
    let cluster = Cluster::start(3, &["spoke-a"]).await;
    for i in 0..3 {
        let address = cluster.hub_address(i);
        eventually(WAIT, || async {
            match status(&cluster, &address, &[Role::Hub]).await {
                ServingStatus::Serving => Ok(()),
                other => Err(other),
            }
        })
        .await;
    }
    let spoke = cluster.spoke_address(0);
    eventually(WAIT, || async {
        match status(&cluster, &spoke, &[Role::Spoke]).await {
            ServingStatus::Serving => Ok(()),
            other => Err(other),
        }
    })
    .await;

    // A named service answers too; an unknown one is NOT_FOUND, as the protocol says.
    let config = tls::client_config(&cluster.ca_pem(), None, &[Role::Hub]).unwrap();
    let channel = tls::channel(&cluster.hub_address(0), Arc::new(config), WAIT).unwrap();
    let mut health = HealthClient::new(channel);
    let named = health
        .check(HealthCheckRequest {
            service: "vigo.admin.v1.HubAdmin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.status, 1, "SERVING");
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // Watch holds a stream: not for anonymous callers.
    let watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(watch.code(), Code::Unauthenticated, "{watch:?}");

    // Two hubs gone: the last one has no leader and says so.
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            cluster.stop_hub(i).await;
        }
    }
    let address = cluster.hub_address(survivor);
    eventually(WAIT, || async {
        match status(&cluster, &address, &[Role::Hub]).await {
            ServingStatus::NotServing => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // Back with a quorum: serving again.
    cluster.start_hub(leader).await;
    eventually(WAIT, || async {
        match status(&cluster, &address, &[Role::Hub]).await {
            ServingStatus::Serving => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_spoke_serves_health_from_the_start() {
    init();
    let home = SpokeHome::new();
    let spoke = home.start().await;
    let status = check(
        &spoke.addr.to_string(),
        &home.ca_pem(),
        &[Role::Spoke],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(status, ServingStatus::Serving);
}

/// What grpcurl does first: list the services, then ask for the file of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_admin_api() {
    let cluster = Cluster::start(1, &[]).await;
    let config = tls::client_config(&cluster.ca_pem(), None, &[Role::Hub]).unwrap();
    let channel = tls::channel(&cluster.hub_address(0), Arc::new(config), WAIT).unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let asks = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("vigo.admin.v1.HubAdmin".into()),
    ];
    let requests = tokio_stream::iter(asks.map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    }));
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"vigo.admin.v1.HubAdmin".to_string()),
        "{names:?}"
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("the admin API's file")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
