//! An envoy's recent runs as its spoke stored them: each run's status and counts, and
//! every resource's outcome, message and duration — what an operator reads to see
//! which resource failed and why.

use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use super::envoys::status_word;
use super::{AdminApi, Caller};
use crate::error::HubError;
use crate::fanout::{self, QUERY_DEADLINE};
use crate::state::ApiRole;

/// Runs returned when the request names no limit, and the most it may ask for.
const DEFAULT_RUNS: u32 = 10;
const MAX_RUNS: u32 = 100;

impl AdminApi {
    pub async fn envoy_runs(
        &self,
        caller: &Caller,
        req: api::EnvoyRunsRequest,
    ) -> Result<api::EnvoyRunList, HubError> {
        caller.require(ApiRole::Viewer, "EnvoyRuns")?;
        let limit = match req.limit {
            0 => DEFAULT_RUNS,
            n if n > MAX_RUNS => {
                return Err(HubError::malformed(
                    "limit",
                    format!("{n} is above the maximum {MAX_RUNS}"),
                ));
            }
            n => n,
        };
        let (id, spoke) = self.pinned(&req.envoy_id)?;
        let mut client = fanout::client(&self.node, &spoke.address)?;
        let answer = client
            .envoy_runs(fanout::within(
                pb::EnvoyRunsQuery {
                    envoy_id: id,
                    limit,
                },
                QUERY_DEADLINE,
            ))
            .await
            .map_err(|s| Self::spoke_call_error(&spoke.id, s))?
            .into_inner();
        Ok(api::EnvoyRunList {
            envoy_id: req.envoy_id.to_lowercase(),
            spoke: spoke.id,
            runs: answer.runs.into_iter().map(run_info).collect(),
        })
    }
}

fn run_info(run: pb::StoredEnvoyRun) -> api::RunInfo {
    let status = pb::ComplianceStatus::try_from(run.status)
        .map_or("no_data", status_word)
        .to_string();
    let report = run.report.unwrap_or_default();
    let mut info = api::RunInfo {
        run_id: report.run_id,
        started_ms: report.started_at_ms,
        received_ms: run.received_at_ms,
        duration_ms: report.duration_ms,
        dry_run: report.dry_run,
        status,
        bundle_fingerprint: hex::encode(&report.bundle_fingerprint),
        error: report.error,
        ..Default::default()
    };
    for o in report.outcomes {
        let outcome = pb::Outcome::try_from(o.outcome).unwrap_or(pb::Outcome::Unspecified);
        let counter = match outcome {
            pb::Outcome::Ok => &mut info.ok,
            pb::Outcome::Changed => &mut info.changed,
            pb::Outcome::Failed => &mut info.failed,
            pb::Outcome::Skipped => &mut info.skipped,
            pb::Outcome::WouldChange => &mut info.would_change,
            pb::Outcome::Unspecified => &mut info.skipped,
        };
        *counter += 1;
        info.resources.push(api::ResourceRun {
            resource_id: o.resource_id,
            outcome: outcome_word(outcome).to_string(),
            message: o.message,
            duration_ms: o.duration_ms,
        });
    }
    info
}

pub fn outcome_word(o: pb::Outcome) -> &'static str {
    match o {
        pb::Outcome::Ok => "ok",
        pb::Outcome::Changed => "changed",
        pb::Outcome::Failed => "failed",
        pb::Outcome::Skipped | pb::Outcome::Unspecified => "skipped",
        pb::Outcome::WouldChange => "would_change",
    }
}
