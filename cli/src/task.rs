//! `vigocli task` and `vigocli query`: run a command, apply a configcrate, refresh
//! traits or ask read-only questions across the fleet, in batches, and follow it to the
//! end (`run` waits unless `--no-wait`; `watch` follows a task started earlier).

use vigo_proto::admin::v1 as api;

use crate::args::{Cli, DispatchArgs, QueryArgs, TargetArgs, TaskCmd, TaskRunArgs};
use crate::connect::{CliError, Client};
use crate::render::{age, table};
use crate::run::{emit, filter, request};

/// Exit status of a task that ended with envoys failed, timed out, refused or
/// unreachable, or was stopped, cancelled or expired.
pub const EXIT_TASK_FAILED: u8 = 4;

fn targets(t: &TargetArgs, req: &mut api::RunTaskRequest) -> Result<(), CliError> {
    let f = filter(&t.filter);
    match (t.envoys.is_empty(), t.all, f) {
        (false, false, None) => req.envoy_ids = t.envoys.clone(),
        (true, true, None) => req.all = true,
        (true, false, Some(f)) => req.filter = Some(f),
        _ => {
            return Err(CliError::Setup(
                "name the targets one way: --envoy ID (repeatable), a filter (--where, --spoke, --hostname, --hostcrate, --status), or --all".into(),
            ));
        }
    }
    Ok(())
}

fn dispatch(d: &DispatchArgs, req: &mut api::RunTaskRequest) {
    req.batch = d.batch.clone().unwrap_or_default();
    req.canary = d.canary.unwrap_or(0);
    req.max_failures = d.max_failures.clone().unwrap_or_default();
    req.timeout_ms = d.timeout.as_millis() as u64;
    req.dry_run = d.dry_run;
}

fn counts(info: &api::TaskInfo) -> api::TaskCounts {
    info.counts.unwrap_or_default()
}

/// One line of progress: targeted, dispatched, running and each outcome.
fn progress(info: &api::TaskInfo) -> String {
    let c = counts(info);
    format!(
        "{}: {} targeted, {} dispatched, {} running, {} ok, {} failed, {} timed out, {} refused, {} unreachable\n",
        info.state,
        c.targets,
        c.released,
        c.running,
        c.ok,
        c.failed,
        c.timed_out,
        c.refused,
        c.unreachable
    )
}

fn describe(info: &api::TaskInfo) -> String {
    let mut out = format!(
        "task {}\n  {} {}\n  targets {} ({}), requested by {} {}\n",
        info.task_id,
        info.kind,
        info.definition,
        counts(info).targets,
        info.selector,
        info.requested_by,
        age(info.created_ms)
    );
    let mut dispatch = vec![format!("timeout {}s", info.timeout_ms / 1000)];
    if !info.batch.is_empty() {
        dispatch.push(format!("batch {}", info.batch));
    }
    if info.canary > 0 {
        dispatch.push(format!("canary {}", info.canary));
    }
    if !info.max_failures.is_empty() {
        dispatch.push(format!("max failures {}", info.max_failures));
    }
    out.push_str(&format!("  {}\n", dispatch.join(", ")));
    if !info.cancelled_by.is_empty() {
        out.push_str(&format!("  cancelled by {}\n", info.cancelled_by));
    }
    for spoke in &info.written_off {
        out.push_str(&format!(
            "  spoke {spoke} did not answer: its envoys count unreachable\n"
        ));
    }
    out.push_str(&format!("  {}", progress(info)));
    out
}

fn plan(info: &api::TaskInfo) -> String {
    let rows: Vec<Vec<String>> = info
        .plan
        .iter()
        .map(|p| {
            vec![
                p.spoke.clone(),
                p.envoys.to_string(),
                p.streaming.to_string(),
            ]
        })
        .collect();
    let mut out = format!(
        "would run {} {} on {} envoys ({})\n",
        info.kind,
        info.definition,
        counts(info).targets,
        info.selector
    );
    out.push_str(&table(&["SPOKE", "ENVOYS", "HOLDING A STREAM"], &rows));
    let batches: Vec<String> = info.batches.iter().map(u64::to_string).collect();
    out.push_str(&format!("batches: {}\n", batches.join(", ")));
    out
}

/// Whether a task that ended did so with every envoy ok.
fn clean(info: &api::TaskInfo) -> bool {
    let c = counts(info);
    info.state == "finished" && c.ok == c.targets
}

fn result_rows(page: &api::TaskResultPage) -> String {
    let queries = page.results.iter().any(|r| !r.rows.is_empty());
    if queries {
        let mut rows = Vec::new();
        for r in &page.results {
            if r.rows.is_empty() {
                rows.push(vec![
                    r.hostname.clone(),
                    String::new(),
                    r.status.clone(),
                    r.message.clone(),
                ]);
            }
            for q in &r.rows {
                let answer = if q.error.is_empty() {
                    q.fields
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                } else {
                    format!("error: {}", q.error)
                };
                rows.push(vec![
                    r.hostname.clone(),
                    q.collector.clone(),
                    r.status.clone(),
                    answer,
                ]);
            }
        }
        return table(&["HOSTNAME", "COLLECTOR", "STATUS", "ANSWER"], &rows);
    }
    let rows: Vec<Vec<String>> = page
        .results
        .iter()
        .map(|r| {
            let exit = if r.exit_code >= 0 {
                r.exit_code.to_string()
            } else {
                "-".into()
            };
            let said = [r.stdout.trim_end(), r.stderr.trim_end(), r.message.as_str()]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or("")
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            vec![
                r.envoy_id.clone(),
                r.hostname.clone(),
                r.spoke.clone(),
                r.status.clone(),
                exit,
                format!("{}ms", r.duration_ms),
                said,
            ]
        })
        .collect();
    table(
        &[
            "ENVOY",
            "HOSTNAME",
            "SPOKE",
            "STATUS",
            "EXIT",
            "TOOK",
            "OUTPUT (last line)",
        ],
        &rows,
    )
}

async fn results(
    cli: &Cli,
    c: &mut Client,
    task_id: &str,
    failed_only: bool,
) -> Result<api::TaskResultPage, CliError> {
    let mut all = api::TaskResultPage::default();
    loop {
        let page = c
            .task_results(request(
                cli,
                api::TaskResultsRequest {
                    task_id: task_id.to_string(),
                    failed_only,
                    limit: 1000,
                    cursor: all.next_cursor.clone(),
                },
            ))
            .await?
            .into_inner();
        all.results.extend(page.results);
        all.missing = page.missing;
        all.next_cursor = page.next_cursor;
        if all.next_cursor.is_empty() {
            return Ok(all);
        }
    }
}

/// Follows a task to its end, printing progress at each change; the last state.
async fn watch(cli: &Cli, c: &mut Client, task_id: &str) -> Result<api::TaskInfo, CliError> {
    // No deadline: a task runs as long as its batches take.
    let mut updates = c
        .watch_task(api::TaskRef {
            task_id: task_id.to_string(),
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(info) = updates.message().await? {
        if !cli.json {
            print!("{}", progress(&info));
        }
        last = Some(info);
    }
    last.ok_or_else(|| CliError::Setup("the hub ended the watch without an answer".into()))
}

/// Waits for the task, then prints its results; the exit status tells the outcome.
async fn follow(cli: &Cli, c: &mut Client, info: api::TaskInfo) -> Result<u8, CliError> {
    if !cli.json {
        print!("{}", describe(&info));
    }
    let end = watch(cli, c, &info.task_id).await?;
    let page = results(cli, c, &end.task_id, false).await?;
    let code = emit(cli.json, &page, &page.missing, result_rows);
    Ok(if code == 0 && !clean(&end) {
        EXIT_TASK_FAILED
    } else {
        code
    })
}

pub async fn run(cli: &Cli, c: &mut Client, cmd: &TaskCmd) -> Result<u8, CliError> {
    match cmd {
        TaskCmd::Run(args) => {
            let TaskRunArgs {
                targets: t,
                dispatch: d,
                shell,
                apply,
                refresh_traits,
                no_wait,
                command,
            } = args.as_ref();
            let mut req = api::RunTaskRequest::default();
            targets(t, &mut req)?;
            dispatch(d, &mut req);
            match (command.is_empty(), apply, refresh_traits) {
                (false, None, false) => {
                    req.kind = "exec".into();
                    req.argv = command.clone();
                    req.shell = *shell;
                }
                (true, Some(crate_name), false) => {
                    req.kind = "apply".into();
                    req.configcrate = crate_name.clone();
                }
                (true, None, true) => req.kind = "refresh_traits".into(),
                _ => {
                    return Err(CliError::Setup(
                        "run what? -- COMMAND [ARGS...], --apply CONFIGCRATE, or --refresh-traits (one of them)".into(),
                    ));
                }
            }
            start(cli, c, req, *no_wait).await
        }
        TaskCmd::List { state } => {
            let list = c
                .list_tasks(request(
                    cli,
                    api::ListTasksRequest {
                        state: state.clone().unwrap_or_default(),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(cli.json, &list, &[], |l| {
                let rows: Vec<Vec<String>> = l
                    .tasks
                    .iter()
                    .map(|t| {
                        let c = counts(t);
                        vec![
                            t.task_id.clone(),
                            t.state.clone(),
                            t.kind.clone(),
                            format!("{}/{}", c.ok, c.targets),
                            (c.failed + c.timed_out + c.unreachable + c.refused).to_string(),
                            t.requested_by.clone(),
                            age(t.created_ms),
                            t.definition.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "TASK", "STATE", "KIND", "OK", "NOT OK", "BY", "CREATED", "WHAT",
                    ],
                    &rows,
                )
            }))
        }
        TaskCmd::Show { task_id } => {
            let info = c
                .show_task(request(
                    cli,
                    api::TaskRef {
                        task_id: task_id.clone(),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(cli.json, &info, &[], describe))
        }
        TaskCmd::Watch { task_id } => {
            let end = watch(cli, c, task_id).await?;
            if cli.json {
                emit(true, &end, &[], describe);
            }
            Ok(if clean(&end) { 0 } else { EXIT_TASK_FAILED })
        }
        TaskCmd::Cancel { task_id } => {
            let info = c
                .cancel_task(request(
                    cli,
                    api::TaskRef {
                        task_id: task_id.clone(),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(cli.json, &info, &[], describe))
        }
        TaskCmd::Results { task_id, failed } => {
            let page = results(cli, c, task_id, *failed).await?;
            Ok(emit(cli.json, &page, &page.missing, result_rows))
        }
    }
}

async fn start(
    cli: &Cli,
    c: &mut Client,
    req: api::RunTaskRequest,
    no_wait: bool,
) -> Result<u8, CliError> {
    let dry_run = req.dry_run;
    let info = c.run_task(request(cli, req)).await?.into_inner();
    if dry_run {
        return Ok(emit(cli.json, &info, &info.missing, plan));
    }
    for m in &info.missing {
        eprintln!(
            "warning: spoke {} did not answer while targets were chosen ({}); its envoys are not targeted",
            m.spoke, m.error
        );
    }
    if no_wait {
        return Ok(emit(cli.json, &info, &[], describe));
    }
    follow(cli, c, info).await
}

/// `vigocli query`: a live query, followed to its end, answered as rows.
pub async fn query(cli: &Cli, c: &mut Client, args: &QueryArgs) -> Result<u8, CliError> {
    let mut req = api::RunTaskRequest {
        kind: "query".into(),
        collectors: args.collectors.clone(),
        ..Default::default()
    };
    targets(&args.targets, &mut req)?;
    dispatch(&args.dispatch, &mut req);
    start(cli, c, req, false).await
}
