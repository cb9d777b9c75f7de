//! Task results from envoys (DESIGN §10): authenticated like every envoy request — the
//! certificate, the enrolled key, the timestamp window, the signature under the
//! `vigo.v1.TaskResult` domain, then the replay check — before `crate::tasks` checks
//! the result against the copy this spoke sent the envoy and stores it.

use std::sync::Arc;

use vigo_common::pki::Peer;
use vigo_common::signing::Domain;
use vigo_proto::v1 as pb;

use super::{Authenticated, Gateway, SignedBody, accept_fresh};
use crate::error::SpokeError;
use crate::grpc::detach;
use crate::tasks::MAX_RESULT_BODY;

impl SignedBody for pb::TaskResultBody {
    const DOMAIN: Domain = Domain::TaskResult;
    const CALL: &'static str = "ReportTask";
    fn header(&self) -> (u64, u64, u64) {
        (self.envoy_id, self.sequence, self.timestamp_ms)
    }
}

impl Gateway {
    pub async fn report_task(
        self: &Arc<Self>,
        peer: &Peer,
        request: pb::SignedRequest,
    ) -> Result<pb::ReportTaskResponse, SpokeError> {
        let Authenticated {
            record,
            body,
            now_ms,
            ..
        } = self
            .authenticate::<pb::TaskResultBody>(peer, request, MAX_RESULT_BODY)
            .await?;
        // A result the spoke would refuse is refused before its sequence number is
        // taken: a refusal changes nothing.
        self.tasks.check(record.id, &body)?;
        self.fleet.update(&record, |st| {
            accept_fresh(st, record.id, body.sequence, now_ms)?;
            st.mark_dirty();
            Ok::<_, SpokeError>(())
        })?;
        // The durable write and the count finish even if the caller leaves.
        let this = self.clone();
        detach(async move {
            let duplicate = this
                .tasks
                .report(record.id, &record.hostname, body, now_ms)
                .await?;
            Ok(pb::ReportTaskResponse { duplicate })
        })
        .await
    }
}
