//! A task's results on this spoke, a page at a time in envoy-id order: stored results
//! read from redb, envoys still without one shown running; bounded in rows and bytes.

use vigo_common::EnvoyId;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use super::{MAX_PAGE, MAX_PAGE_BYTES, Outcome, SpokeTasks, task_key};
use crate::error::SpokeError;

impl SpokeTasks {
    /// One page of a task's results here, by envoy id.
    pub fn results(
        &self,
        req: &pb::SpokeTaskResultsRequest,
        hostname: impl Fn(u64) -> String,
    ) -> Result<pb::SpokeTaskResults, SpokeError> {
        let id = task_key(&req.task_id)?;
        let limit = req.limit.clamp(1, MAX_PAGE) as usize;
        let rows: Vec<(u64, Option<Outcome>, bool)> = {
            let inner = self.lock();
            let Some(task) = inner.tasks.get(&id) else {
                return Ok(pb::SpokeTaskResults::default());
            };
            task.copies
                .range(req.after.saturating_add(1)..)
                .filter(|(_, c)| !req.failed_only || !matches!(c.outcome, Some(Outcome::Ok) | None))
                .take(limit + 1)
                .map(|(envoy, c)| (*envoy, c.outcome, c.stored))
                .collect()
        };
        let mut more = rows.len() > limit;
        let mut results = Vec::with_capacity(limit);
        let mut bytes = 0;
        for (envoy, outcome, stored) in rows.into_iter().take(limit) {
            // A page is bounded in bytes as well as rows: 1,000 results of 200 KiB
            // would be built in memory before any limit saw them.
            if bytes >= MAX_PAGE_BYTES {
                more = true;
                break;
            }
            let stored_row = if stored {
                self.store.task_result(id, envoy)?
            } else {
                None
            };
            let row = stored_row.unwrap_or_else(|| api::TaskResult {
                envoy_id: EnvoyId::new(envoy)
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                hostname: hostname(envoy),
                status: outcome.map_or("running", Outcome::as_str).into(),
                exit_code: -1,
                ..Default::default()
            });
            bytes += prost::Message::encoded_len(&row);
            results.push(row);
        }
        Ok(pb::SpokeTaskResults { results, more })
    }
}
