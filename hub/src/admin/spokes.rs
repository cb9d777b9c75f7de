//! Spokes as the operator sees them: list and detail (with live figures from the
//! spoke), add, drain, remove, reassigning one envoy, and pattern overrides.

use std::time::Duration;

use vigo_common::time::now_ms;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use super::{AdminApi, Caller, moves, parse_envoy_id};
use crate::error::HubError;
use crate::fanout::{self, QUERY_DEADLINE};
use crate::liveness::{Liveness, SPOKE_HEALTHY_WITHIN};
use crate::state::{ApiRole, ClusterState, Command, Override, Spoke, SpokeState};

/// Pattern overrides at most: every enrollment walks them in order.
const MAX_OVERRIDES: usize = 1_000;

/// The spokes as the API shows them, with their pin counts (one pass over the pins)
/// and their health as this node observes it (`crate::liveness`).
pub fn spoke_infos(s: &ClusterState, liveness: &Liveness, now: u64) -> Vec<api::SpokeInfo> {
    let counts = s.pin_counts();
    s.spokes
        .values()
        .map(|sp| {
            let pins = counts.get(sp.id.as_str()).copied().unwrap_or(0);
            spoke_info(sp, pins, liveness.spoke_silent_for(&sp.id), now)
        })
        .collect()
}

/// `silent_for`: since this node last heard the spoke, when it ever did; a node that
/// has not (just started, just elected) goes by the registration in the log.
fn spoke_info(sp: &Spoke, pins: u64, silent_for: Option<Duration>, now: u64) -> api::SpokeInfo {
    let logged_ago = Duration::from_millis(now.saturating_sub(sp.last_heartbeat_ms));
    let silent_for = silent_for.unwrap_or(logged_ago);
    api::SpokeInfo {
        spoke_id: sp.id.clone(),
        address: sp.address.clone(),
        weight: sp.weight,
        state: sp.state.as_str().into(),
        last_heartbeat_ms: now.saturating_sub(silent_for.as_millis() as u64),
        pins,
        config_version: sp.config_version.clone(),
        healthy: sp.state != SpokeState::Removed && silent_for < SPOKE_HEALTHY_WITHIN,
    }
}

impl AdminApi {
    fn spoke_info(&self, id: &str) -> Result<api::SpokeInfo, HubError> {
        let now = now_ms();
        self.node
            .read(|s| {
                spoke_infos(s, &self.node.liveness, now)
                    .into_iter()
                    .find(|i| i.spoke_id == id)
            })
            .ok_or_else(|| HubError::NotFound(format!("unknown spoke {id:?}")))
    }

    pub async fn list_spokes(
        &self,
        caller: &Caller,
        _req: api::ListSpokesRequest,
    ) -> Result<api::SpokeList, HubError> {
        caller.require(ApiRole::Viewer, "ListSpokes")?;
        let now = now_ms();
        Ok(api::SpokeList {
            spokes: self.node.read(|s| spoke_infos(s, &self.node.liveness, now)),
        })
    }

    pub async fn show_spoke(
        &self,
        caller: &Caller,
        req: api::SpokeRef,
    ) -> Result<api::SpokeDetail, HubError> {
        caller.require(ApiRole::Viewer, "ShowSpoke")?;
        let info = self.spoke_info(&req.spoke_id)?;
        let address = info.address.clone();
        let live = async {
            let mut client = fanout::client(&self.node, &address).map_err(|e| e.to_string())?;
            client
                .stats(fanout::within(pb::StatsRequest {}, QUERY_DEADLINE))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        };
        let mut detail = api::SpokeDetail {
            spoke: Some(info),
            ..Default::default()
        };
        match tokio::time::timeout(QUERY_DEADLINE, live).await {
            Ok(Ok(stats)) => {
                let mut by_status = stats.by_status;
                by_status.insert("revoked".into(), stats.revoked);
                detail.compliance = Some(api::StatusCounts {
                    by_status,
                    total: stats.envoys,
                });
                detail.dirty = stats.dirty;
                detail.serving_version = stats.policy_version;
            }
            Ok(Err(e)) => detail.error = e,
            Err(_) => detail.error = format!("no answer within {QUERY_DEADLINE:?}"),
        }
        Ok(detail)
    }

    pub async fn add_spoke(
        &self,
        caller: &Caller,
        req: api::AddSpokeRequest,
    ) -> Result<api::SpokeInfo, HubError> {
        caller.require(ApiRole::Operator, "AddSpoke")?;
        if req.spoke_id.is_empty() {
            return Err(HubError::malformed("spoke_id", "is empty"));
        }
        let known = self.node.read(|s| s.spokes.get(&req.spoke_id).cloned());
        if req.address.is_empty() && known.is_none() {
            return Err(HubError::malformed(
                "address",
                "is empty (the spoke is not known yet)",
            ));
        }
        if !req.address.is_empty() {
            vigo_common::tls::split_address(&req.address).map_err(HubError::from)?;
        }
        self.on_leader(
            caller,
            req,
            |req| async move {
                let address = if req.address.is_empty() {
                    known
                        .as_ref()
                        .map(|k| k.address.clone())
                        .unwrap_or_default()
                } else {
                    req.address.clone()
                };
                let weight = match req.weight {
                    0 => known.as_ref().map_or(1, |k| k.weight),
                    w => crate::services::spoke_weight(w)?,
                };
                let tag = caller.tag();
                let register = Command::RegisterSpoke {
                    id: req.spoke_id.clone(),
                    address,
                    weight,
                    at_ms: known.as_ref().map_or(0, |k| k.last_heartbeat_ms),
                };
                self.node
                    .propose_ok(register.once(&tag, "register"))
                    .await?;
                let activate = Command::SetSpokeState {
                    id: req.spoke_id.clone(),
                    state: SpokeState::Active,
                };
                self.node
                    .propose_ok(activate.once(&tag, "activate"))
                    .await?;
                tracing::info!(spoke = %req.spoke_id, by = %caller.name, "spoke added to the ring");
                self.spoke_info(&req.spoke_id)
            },
            |mut c, r| async move { c.add_spoke(r).await },
        )
        .await
    }

    pub async fn drain_spoke(
        &self,
        caller: &Caller,
        req: api::SpokeRef,
    ) -> Result<api::MoveResult, HubError> {
        caller.require(ApiRole::Operator, "DrainSpoke")?;
        self.spoke_info(&req.spoke_id)?;
        self.on_leader(
            caller,
            req,
            |req| async move {
                tracing::info!(spoke = %req.spoke_id, by = %caller.name, "draining spoke");
                moves::drain(&self.node, &req.spoke_id).await
            },
            |mut c, r| async move { c.drain_spoke(r).await },
        )
        .await
    }

    pub async fn remove_spoke(
        &self,
        caller: &Caller,
        req: api::SpokeRef,
    ) -> Result<api::SpokeInfo, HubError> {
        caller.require(ApiRole::Operator, "RemoveSpoke")?;
        let id = req.spoke_id.clone();
        let info = self.spoke_info(&id)?;
        if info.pins > 0 {
            return Err(HubError::Precondition(format!(
                "spoke {id} still has {} envoys pinned: drain it first",
                info.pins
            )));
        }
        self.on_leader(
            caller,
            req,
            |req| async move {
                self.node
                    .propose_ok(
                        Command::SetSpokeState {
                            id: req.spoke_id.clone(),
                            state: SpokeState::Removed,
                        }
                        .once(&caller.tag(), "remove"),
                    )
                    .await?;
                tracing::info!(spoke = %req.spoke_id, by = %caller.name, "spoke removed");
                self.spoke_info(&req.spoke_id)
            },
            |mut c, r| async move { c.remove_spoke(r).await },
        )
        .await
    }

    pub async fn reassign_envoy(
        &self,
        caller: &Caller,
        req: api::ReassignEnvoyRequest,
    ) -> Result<api::MoveResult, HubError> {
        caller.require(ApiRole::Operator, "ReassignEnvoy")?;
        let id = parse_envoy_id("envoy_id", &req.envoy_id)?;
        let (from, open, target_state) = self.node.read(|s| {
            (
                s.pins.get(&id.get()).map(|p| p.spoke.clone()),
                s.moves.get(&id.get()).cloned(),
                s.spokes.get(&req.to).map(|sp| sp.state),
            )
        });
        let from = from.ok_or_else(|| HubError::NotFound(format!("envoy {id} is not pinned")))?;
        // A move of this envoy left open: the same move again finishes it (the state
        // machine refuses a move elsewhere while it is open).
        let from = open.map_or(from, |m| m.from);
        match target_state {
            None => return Err(HubError::NotFound(format!("unknown spoke {:?}", req.to))),
            Some(SpokeState::Active) => {}
            Some(s) => {
                return Err(HubError::Precondition(format!(
                    "spoke {} is {}: envoys move only to active spokes",
                    req.to,
                    s.as_str()
                )));
            }
        }
        if from == req.to {
            return Err(HubError::Precondition(format!(
                "envoy {id} is already on spoke {from}"
            )));
        }
        self.on_leader(
            caller,
            req,
            |req| async move {
                tracing::info!(envoy = %id, %from, to = %req.to, by = %caller.name, "reassigning envoy");
                moves::move_envoys(&self.node, vec![(id.get(), from, req.to)]).await
            },
            |mut c, r| async move { c.reassign_envoy(r).await },
        )
        .await
    }

    pub async fn set_overrides(
        &self,
        caller: &Caller,
        req: api::SetOverridesRequest,
    ) -> Result<api::OverrideList, HubError> {
        caller.require(ApiRole::Operator, "SetOverrides")?;
        if req.overrides.len() > MAX_OVERRIDES {
            return Err(HubError::malformed(
                "overrides",
                format!(
                    "{} overrides; at most {MAX_OVERRIDES} (every enrollment checks them in order)",
                    req.overrides.len()
                ),
            ));
        }
        let mut overrides = Vec::new();
        for o in &req.overrides {
            vigo_common::hostname::Pattern::new(&o.pattern)
                .map_err(|e| HubError::malformed("overrides.pattern", e))?;
            if !self.node.read(|s| s.spokes.contains_key(&o.spoke_id)) {
                return Err(HubError::NotFound(format!(
                    "overrides.spoke_id: unknown spoke {:?}",
                    o.spoke_id
                )));
            }
            overrides.push(Override {
                pattern: o.pattern.clone(),
                spoke: o.spoke_id.clone(),
            });
        }
        let echo = req.clone();
        self.on_leader(
            caller,
            req,
            |_| async move {
                self.node
                    .propose_ok(Command::SetOverrides(overrides).once(&caller.tag(), "overrides"))
                    .await?;
                Ok(api::OverrideList {
                    overrides: echo.overrides,
                })
            },
            |mut c, r| async move { c.set_overrides(r).await },
        )
        .await
    }
}
