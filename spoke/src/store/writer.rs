//! The store's writer thread: group commit, and the pacing of run reports' commits
//! (the reasons are in the parent module's header).

use std::sync::mpsc;
use std::time::Instant;

use prost::Message;
use redb::{Database, Durability, ReadableTable};
use tracing::{error, info};

use super::*;

pub(super) fn writer_loop(db: &Database, jobs: mpsc::Receiver<Job>) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut last_commit: Option<Instant> = None;
    while let Ok(first) = jobs.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        while group.len() < MAX_GROUP {
            let Some(until) = linger_until(last_commit, Instant::now(), &group) else {
                break;
            };
            match jobs.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        last_commit = Some(started);
        let result = commit_group(db, &group);
        metrics::histogram!("vigo_store_commit_size").record(group.len() as f64);
        metrics::histogram!("vigo_store_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                for (job, outcome) in group.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                error!(error = %e, jobs = group.len(), "redb commit failed");
                for job in group.drain(..) {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
    info!("redb writer stopped");
}

/// Until when a group waits for more writes before it commits: a group of run reports
/// only, while the last commit started less than [`REPORT_PACE`] ago. `None`: commit now.
fn linger_until(last_commit: Option<Instant>, now: Instant, group: &[Job]) -> Option<Instant> {
    let until = last_commit? + REPORT_PACE;
    let reports = group
        .iter()
        .all(|j| matches!(j.op, WriteOp::PutRun { .. } | WriteOp::PutTaskResult { .. }));
    (now < until && reports).then_some(until)
}

fn commit_group(db: &Database, group: &[Job]) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut envoys = txn.open_table(ENVOYS).map_err(db_err)?;
        let mut states = txn.open_table(STATES).map_err(db_err)?;
        let mut last_runs = txn.open_table(LAST_RUNS).map_err(db_err)?;
        let mut runs = txn.open_table(RUNS).map_err(db_err)?;
        let mut traits = txn.open_table(TRAITS).map_err(db_err)?;
        let mut token_uses = txn.open_table(TOKEN_USES).map_err(db_err)?;
        let mut config = txn.open_table(CONFIG).map_err(db_err)?;
        let mut forwards = txn.open_table(FORWARDS).map_err(db_err)?;
        let mut revocations = txn.open_table(REVOCATIONS).map_err(db_err)?;
        let mut results = txn.open_table(task_results::TASK_RESULTS).map_err(db_err)?;
        let mut outcomes_table = txn
            .open_table(task_results::TASK_OUTCOMES)
            .map_err(db_err)?;
        for job in group {
            let outcome = match &job.op {
                WriteOp::PutEnvoys {
                    envoys: rows,
                    token,
                } => {
                    for envoy in rows {
                        envoys
                            .insert(envoy.id, envoy.encode_to_vec().as_slice())
                            .map_err(db_err)?;
                    }
                    if let Some(hash) = token {
                        let used = token_uses
                            .get(hash.as_slice())
                            .map_err(db_err)?
                            .map(|v| v.value())
                            .unwrap_or(0);
                        token_uses
                            .insert(hash.as_slice(), used + 1)
                            .map_err(db_err)?;
                    }
                    WriteOutcome::Done
                }
                WriteOp::PutRun {
                    envoy,
                    run_id,
                    run,
                    last,
                    keep,
                } => {
                    if runs.get((*envoy, *run_id)).map_err(db_err)?.is_some() {
                        WriteOutcome::DuplicateRun
                    } else {
                        runs.insert((*envoy, *run_id), run.encode_to_vec().as_slice())
                            .map_err(db_err)?;
                        let newer = match last_runs.get(*envoy).map_err(db_err)? {
                            Some(row) => {
                                decode::<StoredLastRun>("last_runs", envoy, row.value())?.run_id
                                    < *run_id
                            }
                            None => true,
                        };
                        if newer {
                            last_runs
                                .insert(*envoy, last.encode_to_vec().as_slice())
                                .map_err(db_err)?;
                        }
                        let stored: Vec<u64> = runs
                            .range((*envoy, 0)..=(*envoy, u64::MAX))
                            .map_err(db_err)?
                            .map(|r| r.map(|(k, _)| k.value().1))
                            .collect::<Result<_, _>>()
                            .map_err(db_err)?;
                        for old in stored.iter().take(stored.len().saturating_sub(*keep)) {
                            runs.remove((*envoy, *old)).map_err(db_err)?;
                        }
                        WriteOutcome::Done
                    }
                }
                WriteOp::PutConfig { version } => {
                    config
                        .insert("current", version.as_slice())
                        .map_err(db_err)?;
                    WriteOutcome::Done
                }
                WriteOp::Import { envoys: imported } => {
                    for e in imported {
                        let id = e.envoy.id;
                        forwards.remove(id).map_err(db_err)?;
                        envoys
                            .insert(id, e.envoy.encode_to_vec().as_slice())
                            .map_err(db_err)?;
                        states
                            .insert(id, e.state.encode_to_vec().as_slice())
                            .map_err(db_err)?;
                        match &e.last {
                            Some(last) => last_runs
                                .insert(id, last.encode_to_vec().as_slice())
                                .map(|_| ()),
                            None => last_runs.remove(id).map(|_| ()),
                        }
                        .map_err(db_err)?;
                        for (run_id, run) in &e.runs {
                            runs.insert((id, *run_id), run.encode_to_vec().as_slice())
                                .map_err(db_err)?;
                        }
                        if let Some((hash, encoded)) = &e.traits {
                            traits
                                .insert(hash.as_slice(), encoded.as_slice())
                                .map_err(db_err)?;
                        }
                    }
                    WriteOutcome::Done
                }
                WriteOp::HandOff { forwards: rows } => {
                    for (id, forward) in rows {
                        envoys.remove(*id).map_err(db_err)?;
                        states.remove(*id).map_err(db_err)?;
                        last_runs.remove(*id).map_err(db_err)?;
                        let stored: Vec<(u64, u64)> = runs
                            .range((*id, 0)..=(*id, u64::MAX))
                            .map_err(db_err)?
                            .map(|r| r.map(|(k, _)| k.value()))
                            .collect::<Result<_, _>>()
                            .map_err(db_err)?;
                        for key in stored {
                            runs.remove(key).map_err(db_err)?;
                        }
                        forwards
                            .insert(*id, forward.encode_to_vec().as_slice())
                            .map_err(db_err)?;
                    }
                    WriteOutcome::Done
                }
                WriteOp::PutRevocations {
                    revocations: list,
                    envoys: rows,
                } => {
                    for r in list {
                        revocations
                            .insert(r.seq, r.encode_to_vec().as_slice())
                            .map_err(db_err)?;
                    }
                    for envoy in rows {
                        envoys
                            .insert(envoy.id, envoy.encode_to_vec().as_slice())
                            .map_err(db_err)?;
                    }
                    WriteOutcome::Done
                }
                WriteOp::PutTaskResult {
                    task,
                    envoy,
                    outcome,
                    row,
                } => {
                    let key = (*task, *envoy);
                    if task_results::put(&mut results, &mut outcomes_table, key, *outcome, row)? {
                        WriteOutcome::Done
                    } else {
                        WriteOutcome::DuplicateResult
                    }
                }
                WriteOp::DropTaskResults { tasks } => {
                    task_results::drop_tasks(&mut results, &mut outcomes_table, tasks)?;
                    WriteOutcome::Done
                }
                WriteOp::Flush {
                    states: rows,
                    traits: sets,
                } => {
                    for (hash, encoded) in sets {
                        traits
                            .insert(hash.as_slice(), encoded.as_slice())
                            .map_err(db_err)?;
                    }
                    for (id, state) in rows.iter() {
                        states.insert(id, state).map_err(db_err)?;
                    }
                    WriteOutcome::Done
                }
            };
            outcomes.push(outcome);
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[test]
    fn reports_wait_for_company_only_right_after_a_commit_and_nothing_else_waits() {
        let job = |op| Job {
            op,
            reply: oneshot::channel().0,
        };
        let report = || {
            job(WriteOp::PutRun {
                envoy: 1,
                run_id: 1,
                run: StoredRun::default(),
                last: StoredLastRun::default(),
                keep: 1,
            })
        };
        let enrollment = || {
            job(WriteOp::PutEnvoys {
                envoys: vec![],
                token: None,
            })
        };
        let flush = || {
            job(WriteOp::Flush {
                states: StateRows::default(),
                traits: vec![],
            })
        };
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // The first commit, and one after a quiet spell: now.
        assert_eq!(linger_until(None, t0, &[report()]), None);
        assert_eq!(linger_until(Some(t0), t0 + REPORT_PACE, &[report()]), None);
        // Reports right after a commit wait for the pace to allow the next one.
        assert_eq!(
            linger_until(Some(t0), t0 + ms(5), &[report(), report()]),
            Some(t0 + REPORT_PACE)
        );
        // Anything else in the group: now.
        assert_eq!(linger_until(Some(t0), t0 + ms(5), &[enrollment()]), None);
        assert_eq!(
            linger_until(Some(t0), t0 + ms(5), &[report(), flush()]),
            None
        );
    }
}
