//! Run reports from envoys (DESIGN §6): authenticated like every envoy request, then
//! the run's status computed from the report and the envoy's streak, and the report
//! written through to redb before it is answered (group-committed with others).

use std::sync::Arc;

use vigo_common::pki::Peer;
use vigo_proto::v1 as pb;

use super::{Authenticated, Gateway, accept_fresh, optional_hash};
use crate::compliance::{self, bundle_prefix};
use crate::error::SpokeError;
use crate::grpc::detach;
use crate::store::{StoredLastRun, StoredRun, WriteOp, WriteOutcome};

impl Gateway {
    pub async fn report_run(
        self: &Arc<Self>,
        peer: &Peer,
        request: pb::SignedRequest,
    ) -> Result<pb::ReportRunResponse, SpokeError> {
        let Authenticated {
            record,
            body,
            raw,
            now_ms,
        } = self
            .authenticate::<pb::RunReportBody>(peer, request, self.settings.max_report_body)
            .await?;
        if body.run_id == 0 {
            return Err(SpokeError::malformed("report", "run_id is zero"));
        }
        optional_hash(&body.bundle_fingerprint, "bundle_fingerprint")?;
        let (history, last_run_id, current) = self.fleet.update(&record, |st| {
            accept_fresh(st, record.id, body.sequence, now_ms)?;
            st.mark_dirty();
            let history = compliance::History {
                bundle: st.last_run_bundle,
                streak: st.change_streak,
            };
            Ok::<_, SpokeError>((history, st.last_run_id, st.run_status))
        })?;
        if body.run_id == last_run_id {
            return Ok(pb::ReportRunResponse {
                status: current.to_proto() as i32,
                duplicate: true,
            });
        }
        let (status, streak) = compliance::from_report(&body, history);
        let prefix = bundle_prefix(&body.bundle_fingerprint);
        let write = WriteOp::PutRun {
            envoy: record.id.get(),
            run_id: body.run_id,
            run: StoredRun {
                received_at_ms: now_ms,
                status: status.index() as u32,
                report: raw.to_vec(),
            },
            last: StoredLastRun {
                run_id: body.run_id,
                status: status.index() as u32,
                bundle_prefix: Some(prefix),
                sequence: body.sequence,
                change_streak: streak,
            },
            keep: self.settings.keep_runs,
        };
        // The durable write and the in-memory update finish even if the caller leaves.
        let this = self.clone();
        let run_id = body.run_id;
        detach(async move {
            match this.store.write(write).await? {
                WriteOutcome::DuplicateRun | WriteOutcome::DuplicateResult => {
                    Ok(pb::ReportRunResponse {
                        status: record.read(|st| st.run_status).to_proto() as i32,
                        duplicate: true,
                    })
                }
                WriteOutcome::Done => {
                    this.fleet.update(&record, |st| {
                        if run_id > st.last_run_id {
                            st.run_status = status;
                            st.last_run_bundle = Some(prefix);
                            st.last_run_id = run_id;
                            st.change_streak = streak;
                        }
                    });
                    Ok(pb::ReportRunResponse {
                        status: status.to_proto() as i32,
                        duplicate: false,
                    })
                }
            }
        })
        .await
    }
}
