//! Admin writes through any hub node: made once per request id (a retry gets the first
//! outcome), forwarded to whoever leads when the leader changes mid-call, and refused
//! with credentials revoked a moment ago even on a node that has not heard of it yet.

use std::time::{Duration, Instant};

use tonic::Code;
use vigo_proto::admin::v1 as api;
use vigo_tests::cluster::Cluster;

fn with_id<T>(msg: T, id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("vigo-request-id", id.parse().unwrap());
    r
}

fn viewer_token(name: &str) -> api::CreateTokenRequest {
    api::CreateTokenRequest {
        name: name.into(),
        role: "viewer".into(),
        ..Default::default()
    }
}

async fn status_with(cluster: &Cluster, hub: usize, secret: &str) -> Result<(), tonic::Status> {
    let mut client = cluster.admin_with_token(hub, secret);
    client.status(api::StatusRequest {}).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_token_creation_answers_the_same_usable_secret() {
    let cluster = Cluster::start(3, &["spoke-a"]).await;
    let first = cluster
        .admin(1)
        .create_token(with_id(viewer_token("ci"), "req-ci-1"))
        .await
        .unwrap()
        .into_inner();
    // The caller never saw that answer (say): it retries, through another node.
    let again = cluster
        .admin(2)
        .create_token(with_id(viewer_token("ci"), "req-ci-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.secret, first.secret,
        "the retry answers the first outcome"
    );
    status_with(&cluster, 0, &again.secret)
        .await
        .expect("the secret the retry answered works");
    let tokens = cluster
        .admin(0)
        .list_tokens(api::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.iter().filter(|t| t.name == "ci").count(), 1);
    // The same id asking for something else is a caller's mistake, refused: it must
    // not answer the first token's secret for a token that does not exist.
    let reused = cluster
        .admin(1)
        .create_token(with_id(viewer_token("ci-other"), "req-ci-1"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");
    assert!(
        reused.message().contains("another request"),
        "{}",
        reused.message()
    );
    // A new request for the same name is a new write, refused by name.
    let dup = cluster
        .admin(0)
        .create_token(with_id(viewer_token("ci"), "req-ci-2"))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    // A request id is checked.
    let bad = cluster
        .admin(0)
        .create_token(with_id(viewer_token("x"), "has space"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_elsewhere_is_refused_by_a_node_that_missed_it() {
    let cluster = Cluster::start(3, &["spoke-a"]).await;
    let secret = cluster
        .admin(0)
        .create_token(viewer_token("short-lived"))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let leader = cluster.leader().await;
    let lagging = (leader + 1) % 3;
    cluster
        .wait_until(Duration::from_secs(10), "the token everywhere", |s| {
            s.api_tokens.values().any(|t| t.name == "short-lived")
        })
        .await;
    status_with(&cluster, lagging, &secret).await.unwrap();

    cluster.hub(lagging).isolate(true);
    cluster
        .admin(leader)
        .revoke_token(api::RevokeTokenRequest {
            name: "short-lived".into(),
        })
        .await
        .unwrap();
    let stale = cluster.state(lagging);
    assert!(
        !stale.api_tokens.values().any(|t| t.revoked),
        "the cut-off node has not applied the revocation"
    );
    let refused = status_with(&cluster, lagging, &secret).await.unwrap_err();
    assert_ne!(refused.code(), Code::Ok);
    cluster.hub(lagging).isolate(false);
    vigo_tests::eventually(Duration::from_secs(10), || async {
        match status_with(&cluster, lagging, &secret).await {
            Err(s) if s.code() == Code::Unauthenticated => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_a_follower_follows_a_new_leader() {
    let cluster = Cluster::start(3, &["spoke-a"]).await;
    let old = cluster.leader().await;
    let follower = (old + 1) % 3;
    // The leader is cut off: it still takes the forwarded call, but cannot commit it.
    cluster.hub(old).isolate(true);
    let started = Instant::now();
    let mut request = with_id(viewer_token("after-failover"), "req-failover-1");
    request.set_timeout(Duration::from_secs(20));
    let created = cluster
        .admin(follower)
        .create_token(request)
        .await
        .expect("the write reaches the new leader");
    let took = started.elapsed();
    assert!(!created.into_inner().secret.is_empty());
    let new = cluster.leader().await;
    assert_ne!(new, old);
    let state = cluster.state(new);
    let named = state
        .api_tokens
        .values()
        .filter(|t| t.name == "after-failover")
        .count();
    assert_eq!(named, 1, "made once");
    eprintln!("write through a follower during a failover answered in {took:?}");
}
