//! Envoy queries and actions across the fleet: listings merged from every spoke with a
//! cursor that stays correct across them, one envoy's detail, force-push,
//! the compliance roll-up and trait distributions.

use std::collections::BTreeMap;

use prost::Message;
use vigo_common::fleet_query::{Filter, Sort};
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use super::{AdminApi, Caller, parse_envoy_id};
use crate::error::HubError;
use crate::fanout::{self, QUERY_DEADLINE, Target, fan_out};
use crate::state::ApiRole;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// The history window when a request names none: a day.
const DEFAULT_HISTORY_MS: u64 = 24 * 3600 * 1000;

/// A cursor names the order it was made for and the last envoy's position in it.
fn encode_cursor(sort: &Sort, key: &pb::SortKey) -> String {
    format!("{}.{}", sort.as_str(), hex::encode(key.encode_to_vec()))
}

fn decode_cursor(text: &str, sort: &Sort) -> Result<Option<pb::SortKey>, HubError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| HubError::malformed("cursor", why.to_string());
    let (made_for, key) = text
        .rsplit_once('.')
        .ok_or_else(|| bad("not a cursor this API returned"))?;
    if made_for != sort.as_str() {
        return Err(bad(&format!(
            "made for sort {made_for:?}, used with {:?}",
            sort.as_str()
        )));
    }
    let bytes = hex::decode(key).map_err(|_| bad("not a cursor this API returned"))?;
    pb::SortKey::decode(bytes.as_slice())
        .map(Some)
        .map_err(|_| bad("not a cursor this API returned"))
}

/// Adds one status-count set into another (saturating: the numbers are a spoke's).
fn add_counts(into: &mut api::StatusCounts, from: &api::StatusCounts) {
    for (status, n) in &from.by_status {
        let sum = into.by_status.entry(status.clone()).or_default();
        *sum = sum.saturating_add(*n);
    }
    into.total = into.total.saturating_add(from.total);
}

/// A spoke's status counts with only the statuses the product defines: any other name
/// is a broken or hostile spoke's, and must not reach the replicated history or a
/// metric label (DESIGN §9). Refused names are counted.
fn known_statuses(spoke: &str, mut counts: api::StatusCounts) -> api::StatusCounts {
    let before = counts.by_status.len();
    counts
        .by_status
        .retain(|status, _| vigo_common::fleet_query::STATUSES.contains(&status.as_str()));
    if counts.by_status.len() < before {
        crate::metrics::claim_refused(spoke, crate::metrics::Claim::Status);
    }
    counts
}

impl AdminApi {
    pub async fn list_envoys(
        &self,
        caller: &Caller,
        req: api::ListEnvoysRequest,
    ) -> Result<api::EnvoyPage, HubError> {
        caller.require(ApiRole::Viewer, "ListEnvoys")?;
        let filter = Filter::parse(req.filter.as_ref())?;
        let sort = Sort::parse(&req.sort)?;
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(HubError::malformed(
                    "limit",
                    format!("{n}: at most {MAX_PAGE}"),
                ));
            }
            n => n,
        };
        let after = decode_cursor(&req.cursor, &sort)?;
        let targets = fanout::targets(&self.node, filter.spoke.as_deref())?;
        let ask = pb::SpokeListRequest {
            filter: req.filter.clone(),
            sort: req.sort.clone(),
            after,
            limit,
            with_traits: req.with_traits,
        };
        let (answers, missing) = fan_out(&self.node, targets, QUERY_DEADLINE, |_, mut c| {
            let ask = ask.clone();
            async move { c.list_envoys(ask).await.map(tonic::Response::into_inner) }
        })
        .await;
        let more = answers.iter().any(|(_, a)| a.more);
        let matched = answers.iter().map(|(_, a)| a.matched).sum();
        let mut merged: Vec<(pb::SortKey, api::EnvoySummary)> = answers
            .into_iter()
            .flat_map(|(spoke, answer)| {
                answer.envoys.into_iter().map(move |mut e| {
                    e.spoke = spoke.clone();
                    e
                })
            })
            .map(|e| (sort.key_of(&e), e))
            .collect();
        merged.sort_by(|a, b| sort.compare(&a.0, &b.0));
        let cut = merged.len() > limit as usize;
        merged.truncate(limit as usize);
        let next_cursor = match merged.last() {
            Some((key, _)) if more || cut => encode_cursor(&sort, key),
            _ => String::new(),
        };
        Ok(api::EnvoyPage {
            envoys: merged.into_iter().map(|(_, e)| e).collect(),
            next_cursor,
            matched,
            missing,
        })
    }

    /// The spoke an envoy is pinned to.
    pub(super) fn pinned(&self, envoy_id: &str) -> Result<(u64, Target), HubError> {
        let id = parse_envoy_id("envoy_id", envoy_id)?;
        self.node
            .read(|s| {
                let pin = s.pins.get(&id.get())?;
                let spoke = s.spokes.get(&pin.spoke)?;
                Some(Target {
                    id: spoke.id.clone(),
                    address: spoke.address.clone(),
                })
            })
            .map(|t| (id.get(), t))
            .ok_or_else(|| HubError::NotFound(format!("envoy {id} is not pinned to any spoke")))
    }

    pub(super) fn spoke_call_error(spoke: &str, status: tonic::Status) -> HubError {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                HubError::SpokeUnreachable {
                    spoke: spoke.to_string(),
                    why: status.message().to_string(),
                }
            }
            _ => HubError::Forward(status),
        }
    }

    pub async fn show_envoy(
        &self,
        caller: &Caller,
        req: api::EnvoyRef,
    ) -> Result<api::EnvoyDetail, HubError> {
        caller.require(ApiRole::Viewer, "ShowEnvoy")?;
        let (id, spoke) = self.pinned(&req.envoy_id)?;
        let mut client = fanout::client(&self.node, &spoke.address)?;
        let info = client
            .get_envoy(fanout::within(
                pb::GetEnvoyRequest { envoy_id: id },
                QUERY_DEADLINE,
            ))
            .await
            .map_err(|s| Self::spoke_call_error(&spoke.id, s))?
            .into_inner();
        let status = pb::ComplianceStatus::try_from(info.status)
            .ok()
            .filter(|_| !info.revoked)
            .map_or("revoked", status_word);
        Ok(api::EnvoyDetail {
            envoy: Some(api::EnvoySummary {
                envoy_id: req.envoy_id.to_lowercase(),
                hostname: info.hostname,
                spoke: spoke.id,
                status: status.to_string(),
                hostcrate: info.hostcrate,
                last_seen_ms: info.last_seen_ms,
                enrolled_at_ms: info.enrolled_at_ms,
                revoked: info.revoked,
                traits: info.traits,
                streaming: false,
            }),
            public_key: hex::encode(&info.public_key),
            sequence: info.sequence,
            bundle_fingerprint: hex::encode(&info.bundle_fingerprint),
            traits_hash: hex::encode(&info.traits_hash),
            stored_runs: info.stored_runs,
            spoke_address: spoke.address,
        })
    }

    pub async fn push(
        &self,
        caller: &Caller,
        req: api::PushRequest,
    ) -> Result<api::PushResult, HubError> {
        caller.require(ApiRole::Operator, "Push")?;
        let chosen = [
            !req.envoy_ids.is_empty(),
            !req.spoke.is_empty(),
            req.filter.is_some(),
            req.all,
        ];
        if chosen.iter().filter(|c| **c).count() != 1 {
            return Err(HubError::malformed(
                "push",
                "name exactly one target: envoy_ids, spoke, filter or all",
            ));
        }
        // A filter that selects nothing in particular selects the whole fleet: that must
        // be said with `all`, never reached by leaving fields out.
        if req
            .filter
            .as_ref()
            .is_some_and(|f| *f == api::EnvoyFilter::default())
        {
            return Err(HubError::malformed(
                "filter",
                "is empty, which would push to the whole fleet; send all: true for that",
            ));
        }
        // Per spoke: what to mark there.
        let mut asks: BTreeMap<String, (Target, pb::ForcePushRequest)> = BTreeMap::new();
        if !req.envoy_ids.is_empty() {
            for text in &req.envoy_ids {
                let (id, spoke) = self.pinned(text)?;
                asks.entry(spoke.id.clone())
                    .or_insert_with(|| (spoke, pb::ForcePushRequest::default()))
                    .1
                    .envoy_ids
                    .push(id);
            }
        } else {
            let filter = Filter::parse(req.filter.as_ref())?;
            let only = if req.spoke.is_empty() {
                filter.spoke.clone()
            } else {
                Some(req.spoke.clone())
            };
            for t in fanout::targets(&self.node, only.as_deref())? {
                let ask = pb::ForcePushRequest {
                    envoy_ids: Vec::new(),
                    filter: req.filter.clone(),
                    all: req.filter.is_none(),
                };
                asks.insert(t.id.clone(), (t, ask));
            }
        }
        let targets: Vec<Target> = asks.values().map(|(t, _)| t.clone()).collect();
        let (answers, missing) = fan_out(&self.node, targets, QUERY_DEADLINE, |t, mut c| {
            let ask = asks[&t.id].1.clone();
            async move { c.force_push(ask).await.map(tonic::Response::into_inner) }
        })
        .await;
        let (marked, woken) = answers.iter().fold((0, 0), |(m, w), (_, a)| {
            (m + u64::from(a.marked), w + u64::from(a.woken))
        });
        tracing::info!(marked, woken, by = %caller.name, "force push");
        Ok(api::PushResult {
            marked,
            woken,
            missing,
        })
    }

    pub async fn compliance_history(
        &self,
        caller: &Caller,
        req: api::ComplianceHistoryRequest,
    ) -> Result<api::ComplianceTimeline, HubError> {
        caller.require(ApiRole::Viewer, "ComplianceHistory")?;
        let window = match req.window_ms {
            0 => DEFAULT_HISTORY_MS,
            w => w,
        };
        let from = vigo_common::time::now_ms().saturating_sub(window);
        let samples = self.node.read(|s| {
            s.compliance_history
                .since(from)
                .map(|x| api::ComplianceSample {
                    at_ms: x.at_ms,
                    counts: Some(api::StatusCounts {
                        by_status: x.by_status.clone().into_iter().collect(),
                        total: x.total,
                    }),
                    missing_spokes: x.missing.clone(),
                })
                .collect()
        });
        Ok(api::ComplianceTimeline {
            samples,
            sample_every_ms: self.node.compliance_sample_every.as_millis() as u64,
        })
    }

    pub async fn compliance(
        &self,
        caller: &Caller,
        _req: api::ComplianceRequest,
    ) -> Result<api::ComplianceReport, HubError> {
        caller.require(ApiRole::Viewer, "Compliance")?;
        let targets = fanout::targets(&self.node, None)?;
        let (answers, missing) =
            fan_out(&self.node, targets, QUERY_DEADLINE, |_, mut c| async move {
                c.compliance(pb::SpokeComplianceRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await;
        let mut fleet = api::StatusCounts::default();
        let mut hostcrates: BTreeMap<String, api::StatusCounts> = BTreeMap::new();
        let mut spokes = Vec::new();
        for (spoke, answer) in answers {
            let total = known_statuses(&spoke, answer.total.unwrap_or_default());
            add_counts(&mut fleet, &total);
            for h in answer.hostcrates {
                add_counts(
                    hostcrates.entry(h.name).or_default(),
                    &known_statuses(&spoke, h.counts.unwrap_or_default()),
                );
            }
            spokes.push(api::NamedCounts {
                name: spoke,
                counts: Some(total),
            });
        }
        // The fleet gauges are the leader's alone (a sum over hub nodes is the fleet).
        if matches!(self.node.leader(), Ok(crate::node::Leader::Here)) {
            crate::metrics::publish_compliance(&fleet, &spokes);
        }
        Ok(api::ComplianceReport {
            fleet: Some(fleet),
            spokes,
            hostcrates: hostcrates
                .into_iter()
                .map(|(name, counts)| api::NamedCounts {
                    name,
                    counts: Some(counts),
                })
                .collect(),
            missing,
        })
    }

    pub async fn trait_count(
        &self,
        caller: &Caller,
        req: api::TraitCountRequest,
    ) -> Result<api::TraitCountReport, HubError> {
        caller.require(ApiRole::Viewer, "TraitCount")?;
        if req.key.is_empty() {
            return Err(HubError::malformed("key", "is empty"));
        }
        let filter = Filter::parse(req.filter.as_ref())?;
        let targets = fanout::targets(&self.node, filter.spoke.as_deref())?;
        let ask = pb::SpokeTraitCountRequest {
            key: req.key.clone(),
            filter: req.filter.clone(),
        };
        let (answers, missing) = fan_out(&self.node, targets, QUERY_DEADLINE, |_, mut c| {
            let ask = ask.clone();
            async move { c.trait_count(ask).await.map(tonic::Response::into_inner) }
        })
        .await;
        let mut values: BTreeMap<String, u64> = BTreeMap::new();
        let mut absent = 0;
        for (_, answer) in answers {
            for (v, n) in answer.values {
                *values.entry(v).or_default() += n;
            }
            absent += answer.absent;
        }
        let mut values: Vec<api::TraitValueCount> = values
            .into_iter()
            .map(|(value, envoys)| api::TraitValueCount { value, envoys })
            .collect();
        values.sort_by(|a, b| b.envoys.cmp(&a.envoys).then_with(|| a.value.cmp(&b.value)));
        Ok(api::TraitCountReport {
            key: req.key,
            values,
            absent,
            missing,
        })
    }
}

pub(super) fn status_word(s: pb::ComplianceStatus) -> &'static str {
    match s {
        pb::ComplianceStatus::Converged => "converged",
        pb::ComplianceStatus::Relapsed => "relapsed",
        pb::ComplianceStatus::Diverged => "diverged",
        pb::ComplianceStatus::Degraded => "degraded",
        pb::ComplianceStatus::Failed => "failed",
        pb::ComplianceStatus::Offline => "offline",
        pb::ComplianceStatus::NoData | pb::ComplianceStatus::Unspecified => "no_data",
    }
}
