//! Tasks and live queries through the admin API (DESIGN §10): run one (operator) — its
//! targets resolved from the spokes, recorded through raft with who asked, dispatched
//! by the leader (`crate::dispatch`) — cancel it (operator), and list, show, watch
//! and page through its results (viewer).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use vigo_common::time::now_ms;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use super::{AdminApi, Caller, parse_envoy_id};
use crate::error::HubError;
use crate::fanout::{self, fan_out};
use crate::state::tasks::MAX_TARGETS;
use crate::state::{ApiRole, Command, TaskId, TaskRecord};
use crate::tasks::{self, MAX_TIMEOUT_MS};

/// How long resolving targets may take on one spoke (it pages through its envoys).
const RESOLVE_DEADLINE: Duration = Duration::from_secs(30);
/// Envoys asked of a spoke per page while resolving targets.
const RESOLVE_PAGE: u32 = 1000;
const DEFAULT_RESULTS: u32 = 100;
const MAX_RESULTS: u32 = 1000;
/// Bytes of results in one page the hub answers (each spoke's page is bounded too).
const MAX_PAGE_BYTES: usize = 4 << 20;
/// How often a watch looks at the task.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The targets of a task: (envoy, spoke) by envoy id; per spoke, how many and how many
/// hold a stream now; spokes that did not answer.
struct Resolved {
    targets: Vec<(u64, String)>,
    per_spoke: BTreeMap<String, (u64, u64)>,
    missing: Vec<api::MissingSpoke>,
}

/// The targets as the operator named them, for the record; refuses anything but
/// exactly one way of naming them, and a filter that names nothing in particular.
fn selector(req: &api::RunTaskRequest) -> Result<String, HubError> {
    let chosen = [!req.envoy_ids.is_empty(), req.filter.is_some(), req.all];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Err(HubError::malformed(
            "targets",
            "name exactly one: envoy_ids, filter or all",
        ));
    }
    if req.all {
        return Ok("all".into());
    }
    if let Some(f) = &req.filter {
        if *f == api::EnvoyFilter::default() {
            return Err(HubError::malformed(
                "filter",
                "is empty, which would target the whole fleet; send all: true for that",
            ));
        }
        let mut parts = Vec::new();
        for (name, value) in [
            ("hostname", &f.hostname),
            ("spoke", &f.spoke),
            ("status", &f.status),
            ("hostcrate", &f.hostcrate),
        ] {
            if !value.is_empty() {
                parts.push(format!("{name}={value}"));
            }
        }
        parts.extend(f.traits.iter().map(|t| format!("trait:{t}")));
        return Ok(parts.join(" "));
    }
    let shown: Vec<&str> = req.envoy_ids.iter().take(8).map(String::as_str).collect();
    let more = req.envoy_ids.len().saturating_sub(shown.len());
    Ok(match more {
        0 => format!("envoys {}", shown.join(",")),
        n => format!("envoys {} and {n} more", shown.join(",")),
    })
}

impl AdminApi {
    async fn resolve(&self, req: &api::RunTaskRequest) -> Result<Resolved, HubError> {
        let mut per_spoke: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        if !req.envoy_ids.is_empty() {
            let mut targets = Vec::with_capacity(req.envoy_ids.len());
            for text in &req.envoy_ids {
                let id = parse_envoy_id("envoy_ids", text)?.get();
                let spoke = self
                    .node
                    .read(|s| s.pins.get(&id).map(|p| p.spoke.clone()))
                    .ok_or_else(|| {
                        HubError::NotFound(format!("envoy {text} is not pinned to any spoke"))
                    })?;
                per_spoke.entry(spoke.clone()).or_default().0 += 1;
                targets.push((id, spoke));
            }
            targets.sort_unstable();
            targets.dedup();
            return Ok(Resolved {
                targets,
                per_spoke,
                missing: Vec::new(),
            });
        }
        let filter = vigo_common::fleet_query::Filter::parse(req.filter.as_ref())?;
        let spokes = fanout::targets(&self.node, filter.spoke.as_deref())?;
        let (answers, missing) = fan_out(&self.node, spokes, RESOLVE_DEADLINE, |_, mut c| {
            let filter = req.filter.clone();
            async move {
                let mut found = Vec::new();
                let mut after = None;
                loop {
                    let page = c
                        .list_envoys(pb::SpokeListRequest {
                            filter: filter.clone(),
                            sort: "id".into(),
                            after: after.take(),
                            limit: RESOLVE_PAGE,
                            with_traits: false,
                        })
                        .await?
                        .into_inner();
                    for e in &page.envoys {
                        if !e.revoked {
                            let id = e.envoy_id.parse::<vigo_common::EnvoyId>().map_err(|e| {
                                tonic::Status::internal(format!("a spoke listed envoy id {e}"))
                            })?;
                            found.push((id.get(), e.streaming));
                        }
                    }
                    match (page.more, page.envoys.last()) {
                        (true, Some(last)) => {
                            after = Some(pb::SortKey {
                                text: String::new(),
                                number: 0,
                                envoy_id: last
                                    .envoy_id
                                    .parse::<vigo_common::EnvoyId>()
                                    .map_or(0, |e| e.get()),
                            })
                        }
                        _ => return Ok(found),
                    }
                    if found.len() > MAX_TARGETS {
                        return Ok(found);
                    }
                }
            }
        })
        .await;
        let mut targets = Vec::new();
        for (spoke, found) in answers {
            // A spoke's listing is a claim: only envoys the hub pins to it are its
            // targets, each once (DESIGN §9).
            let found = self.node.read(|s| {
                let mut found = found;
                found.sort_unstable();
                found.dedup_by_key(|(id, _)| *id);
                let listed = found.len();
                found.retain(|(id, _)| s.pins.get(id).is_some_and(|p| p.spoke == spoke));
                (found, listed)
            });
            let (found, listed) = found;
            if found.len() < listed {
                crate::metrics::claim_refused(&spoke, crate::metrics::Claim::TaskTarget);
            }
            let entry = per_spoke.entry(spoke.clone()).or_default();
            for (id, streaming) in found {
                entry.0 += 1;
                entry.1 += u64::from(streaming);
                targets.push((id, spoke.clone()));
            }
        }
        targets.sort_unstable();
        if targets.len() > MAX_TARGETS {
            return Err(HubError::malformed(
                "targets",
                format!(
                    "{} envoys match; a task targets at most {MAX_TARGETS}",
                    targets.len()
                ),
            ));
        }
        Ok(Resolved {
            targets,
            per_spoke,
            missing,
        })
    }

    pub async fn run_task(
        &self,
        caller: &Caller,
        req: api::RunTaskRequest,
    ) -> Result<api::TaskInfo, HubError> {
        caller.require(ApiRole::Operator, "RunTask")?;
        let spec = tasks::spec_of(&req, selector(&req)?)?;
        if req.dry_run {
            let resolved = self.resolve(&req).await?;
            return Ok(plan(spec, resolved, caller));
        }
        self.on_leader(
            caller,
            req,
            |req| async move {
                let tag = caller.tag();
                let id = tasks::task_id(&tag);
                if let Some(done) = self.node.read(|s| s.tasks.get(&id).map(tasks::info)) {
                    return Ok(done);
                }
                let resolved = self.resolve(&req).await?;
                if resolved.targets.is_empty() {
                    return Err(HubError::NotFound(
                        "no envoy matches the targets on the spokes that answered".into(),
                    ));
                }
                let now = now_ms();
                let record = TaskRecord::new(
                    id,
                    spec,
                    caller.name.clone(),
                    now,
                    now + MAX_TIMEOUT_MS,
                    resolved.targets,
                );
                self.node
                    .propose_ok(Command::CreateTask(Box::new(record)).once(&tag, "task"))
                    .await?;
                let mut info = self.task_info(&id)?;
                tracing::info!(task = %info.task_id, by = %caller.name, kind = %info.kind,
                    targets = info.counts.as_ref().map_or(0, |c| c.targets), "task created");
                info.missing = resolved.missing;
                Ok(info)
            },
            |mut c, r| async move { c.run_task(r).await },
        )
        .await
    }

    fn task_info(&self, id: &TaskId) -> Result<api::TaskInfo, HubError> {
        self.node
            .read(|s| s.tasks.get(id).map(tasks::info))
            .ok_or_else(|| HubError::NotFound(format!("no task {}", hex::encode(id))))
    }

    pub async fn show_task(
        &self,
        caller: &Caller,
        req: api::TaskRef,
    ) -> Result<api::TaskInfo, HubError> {
        caller.require(ApiRole::Viewer, "ShowTask")?;
        self.task_info(&tasks::parse_task_id(&req.task_id)?)
    }

    pub async fn list_tasks(
        &self,
        caller: &Caller,
        req: api::ListTasksRequest,
    ) -> Result<api::TaskList, HubError> {
        caller.require(ApiRole::Viewer, "ListTasks")?;
        const STATES: [&str; 5] = ["running", "finished", "stopped", "cancelled", "expired"];
        if !req.state.is_empty() && !STATES.contains(&req.state.as_str()) {
            return Err(HubError::malformed(
                "state",
                format!("{:?} is not one of {}", req.state, STATES.join(", ")),
            ));
        }
        let mut list: Vec<api::TaskInfo> = self.node.read(|s| {
            s.tasks
                .iter()
                .filter(|t| req.state.is_empty() || t.state.as_str() == req.state)
                .map(tasks::info)
                .collect()
        });
        list.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        Ok(api::TaskList { tasks: list })
    }

    pub async fn cancel_task(
        &self,
        caller: &Caller,
        req: api::TaskRef,
    ) -> Result<api::TaskInfo, HubError> {
        caller.require(ApiRole::Operator, "CancelTask")?;
        let id = tasks::parse_task_id(&req.task_id)?;
        self.task_info(&id)?;
        self.on_leader(
            caller,
            req,
            |_| async move {
                let cancel = Command::CancelTask {
                    id,
                    by: caller.name.clone(),
                    at_ms: now_ms(),
                };
                self.node
                    .propose_ok(cancel.once(&caller.tag(), "cancel"))
                    .await?;
                tracing::warn!(task = %hex::encode(id), by = %caller.name, "task cancelled");
                self.task_info(&id)
            },
            |mut c, r| async move { c.cancel_task(r).await },
        )
        .await
    }

    pub async fn task_results(
        &self,
        caller: &Caller,
        req: api::TaskResultsRequest,
    ) -> Result<api::TaskResultPage, HubError> {
        caller.require(ApiRole::Viewer, "TaskResults")?;
        let id = tasks::parse_task_id(&req.task_id)?;
        let limit = match req.limit {
            0 => DEFAULT_RESULTS,
            n if n > MAX_RESULTS => {
                return Err(HubError::malformed(
                    "limit",
                    format!("{n}: at most {MAX_RESULTS}"),
                ));
            }
            n => n,
        };
        let after = match req.cursor.as_str() {
            "" => 0,
            text => parse_envoy_id("cursor", text)?.get(),
        };
        let spokes: std::collections::BTreeSet<String> = self
            .node
            .read(|s| {
                s.tasks
                    .get(&id)
                    .map(|t| t.targets.iter().map(|(_, s)| s.clone()).collect())
            })
            .ok_or_else(|| HubError::NotFound(format!("no task {}", hex::encode(id))))?;
        let targets: Vec<_> = fanout::targets(&self.node, None)?
            .into_iter()
            .filter(|t| spokes.contains(&t.id))
            .collect();
        let ask = pb::SpokeTaskResultsRequest {
            task_id: id.to_vec().into(),
            after,
            limit,
            failed_only: req.failed_only,
        };
        let (answers, missing) =
            fan_out(&self.node, targets, fanout::QUERY_DEADLINE, |_, mut c| {
                let ask = ask.clone();
                async move { c.task_results(ask).await.map(tonic::Response::into_inner) }
            })
            .await;
        let more = answers.iter().any(|(_, a)| a.more);
        // A spoke that stopped short (rows or bytes) has more after its last row: no
        // row beyond the least such last row is answered, or the next page would skip
        // that spoke's rest. (Envoy ids are 16 hex digits: text order is id order.)
        let horizon = answers
            .iter()
            .filter(|(_, a)| a.more)
            .filter_map(|(_, a)| a.results.last().map(|r| r.envoy_id.clone()))
            .min();
        let mut rows: Vec<api::TaskResult> = answers
            .into_iter()
            .flat_map(|(spoke, a)| {
                a.results.into_iter().map(move |mut r| {
                    r.spoke = spoke.clone();
                    r
                })
            })
            .collect();
        rows.sort_by(|a, b| a.envoy_id.cmp(&b.envoy_id));
        let before = rows.len();
        if let Some(horizon) = &horizon {
            rows.retain(|r| r.envoy_id <= *horizon);
        }
        rows.truncate(limit as usize);
        let mut bytes = 0;
        let within = rows
            .iter()
            .take_while(|r| {
                let fits = bytes < MAX_PAGE_BYTES;
                bytes += prost::Message::encoded_len(*r);
                fits
            })
            .count();
        rows.truncate(within.max(1).min(rows.len()));
        let cut = rows.len() < before;
        let next_cursor = match rows.last() {
            Some(last) if more || cut => last.envoy_id.clone(),
            _ => String::new(),
        };
        Ok(api::TaskResultPage {
            results: rows,
            next_cursor,
            missing,
        })
    }

    /// The task now, then each change of it, until it ends or the receiver goes.
    pub async fn watch_task(
        &self,
        caller: &Caller,
        req: api::TaskRef,
    ) -> Result<ReceiverStream<api::TaskInfo>, HubError> {
        caller.require(ApiRole::Viewer, "WatchTask")?;
        let id = tasks::parse_task_id(&req.task_id)?;
        let first = self.task_info(&id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(last.clone()).await.is_err() {
                return;
            }
            while last.state == "running" {
                // A watcher whose client left ends now, not when the task next changes.
                tokio::select! {
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                    () = tx.closed() => return,
                }
                let Some(now) = node.read(|s| s.tasks.get(&id).map(tasks::info)) else {
                    return;
                };
                if now != last {
                    if tx.send(now.clone()).await.is_err() {
                        return;
                    }
                    last = now;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// A dry run's answer: what would be recorded, with the plan.
fn plan(spec: crate::state::tasks::TaskSpec, resolved: Resolved, caller: &Caller) -> api::TaskInfo {
    let total = resolved.targets.len() as u32;
    let batches = tasks::batches(&spec, total);
    let record = TaskRecord::new(
        [0; 16],
        spec,
        caller.name.clone(),
        now_ms(),
        0,
        resolved.targets,
    );
    let mut info = tasks::info(&record);
    info.task_id = String::new();
    info.state = "planned".into();
    info.plan = resolved
        .per_spoke
        .into_iter()
        .map(|(spoke, (envoys, streaming))| api::SpokePlan {
            spoke,
            envoys,
            streaming,
        })
        .collect();
    info.batches = batches;
    info.missing = resolved.missing;
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_named_exactly_one_way_and_never_by_an_empty_filter() {
        let mut req = api::RunTaskRequest::default();
        assert!(selector(&req).is_err(), "none");
        req.all = true;
        assert_eq!(selector(&req).unwrap(), "all");
        req.envoy_ids = vec!["00000000000000aa".into()];
        assert!(selector(&req).is_err(), "two");
        req.all = false;
        assert_eq!(selector(&req).unwrap(), "envoys 00000000000000aa");
        req.envoy_ids.clear();
        req.filter = Some(api::EnvoyFilter::default());
        assert!(selector(&req).is_err(), "an empty filter is not all");
        req.filter = Some(api::EnvoyFilter {
            spoke: "b".into(),
            traits: vec!["os=debian".into()],
            ..Default::default()
        });
        assert_eq!(selector(&req).unwrap(), "spoke=b trait:os=debian");
    }
}
