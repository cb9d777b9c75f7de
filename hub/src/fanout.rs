//! Calls to many spokes at once: in parallel, each under a deadline. A spoke that does
//! not answer in time is named in the result as missing — never silently dropped — and
//! the others' answers are still returned.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tonic::transport::Channel;
use tonic::{Code, Status};
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use crate::error::HubError;
use crate::node::Node;
use crate::state::SpokeState;

pub type SpokeClient = pb::spoke_admin_client::SpokeAdminClient<Channel>;

/// Deadline of one spoke's answer to a query.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(5);
/// Envoy exports and imports carry run history: larger than any other message.
pub const MAX_SPOKE_MESSAGE: usize = 64 << 20;

/// A spoke to call.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: String,
    pub address: String,
}

/// The spokes queries go to: every spoke not removed, or the one named.
pub fn targets(node: &Node, only: Option<&str>) -> Result<Vec<Target>, HubError> {
    let all: Vec<Target> = node.read(|s| {
        s.spokes
            .values()
            .filter(|sp| sp.state != SpokeState::Removed)
            .filter(|sp| only.is_none_or(|o| o == sp.id))
            .map(|sp| Target {
                id: sp.id.clone(),
                address: sp.address.clone(),
            })
            .collect()
    });
    match only {
        Some(id) if all.is_empty() => Err(HubError::NotFound(format!("unknown spoke {id:?}"))),
        _ => Ok(all),
    }
}

/// `msg` as a request that gives up after `deadline`.
pub fn within<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(deadline);
    r
}

/// A client for one spoke over this hub's mTLS channel.
pub fn client(node: &Node, address: &str) -> Result<SpokeClient, HubError> {
    Ok(SpokeClient::new(node.peers.spoke(address)?)
        .max_decoding_message_size(MAX_SPOKE_MESSAGE)
        .max_encoding_message_size(MAX_SPOKE_MESSAGE))
}

/// Calls `call` on every target in parallel, each within `deadline`; answers come back
/// named by spoke id.
pub async fn fan_out<T, F, Fut>(
    node: &Node,
    targets: Vec<Target>,
    deadline: Duration,
    call: F,
) -> (Vec<(String, T)>, Vec<api::MissingSpoke>)
where
    F: Fn(&Target, SpokeClient) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let calls = targets.into_iter().map(|t| {
        let started = Instant::now();
        let attempt = client(node, &t.address).map(|c| call(&t, c));
        async move {
            let result = match attempt {
                Err(e) => Err(e.to_string()),
                Ok(fut) => match tokio::time::timeout(deadline, fut).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(status)) => {
                        if matches!(status.code(), Code::Unavailable | Code::Unknown) {
                            node.peers.forget_spoke(&t.address);
                        }
                        Err(format!("{:?}: {}", status.code(), status.message()))
                    }
                    Err(_) => {
                        // Silence: the connection may be dead (a spoke cut off sends no
                        // reset); the next call connects afresh.
                        node.peers.forget_spoke(&t.address);
                        Err(format!("no answer within {deadline:?}"))
                    }
                },
            };
            metrics::histogram!("vigo_hub_fanout_seconds", "spoke" => t.id.clone())
                .record(started.elapsed().as_secs_f64());
            // Counted from zero for every spoke asked, so a spoke that never went
            // missing shows 0 rather than no series.
            metrics::counter!("vigo_hub_fanout_missing_total", "spoke" => t.id.clone())
                .increment(u64::from(result.is_err()));
            (t.id, result)
        }
    });
    let mut answered = Vec::new();
    let mut missing = Vec::new();
    for (spoke, result) in join_all(calls).await {
        match result {
            Ok(v) => answered.push((spoke, v)),
            Err(error) => {
                tracing::warn!(%spoke, %error, "spoke missing from a fan-out");
                missing.push(api::MissingSpoke { spoke, error });
            }
        }
    }
    (answered, missing)
}
