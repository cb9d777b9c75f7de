//! Tasks and live queries end to end: a 3-node hub cluster and two spokes on loopback
//! (real redb files, mutual TLS, gRPC over sockets) and real agents (`vigo_envoy::agent`,
//! each with its own state directory) that run real commands on this machine. Spokes
//! ask for a check-in every 2 s, so an idle agent is reached within seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use vigo_common::EnvoyId;
use vigo_envoy::agent::Agent;
use vigo_envoy::agent::state::StateDir;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;
use vigo_tests::cluster::{Cluster, eventually};

const SPOKES: [&str; 2] = ["spoke-a", "spoke-b"];

struct RunningAgent {
    id: EnvoyId,
    hostname: String,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

struct Fleet {
    cluster: Arc<Cluster>,
    agents: Vec<RunningAgent>,
    /// Where tasks leave their marks.
    work: tempfile::TempDir,
    homes: tempfile::TempDir,
}

impl Fleet {
    async fn start(n: usize) -> Fleet {
        let cluster = Cluster::start_tuned(3, &SPOKES, Cluster::FAST_RAFT, "{interval: 2s}").await;
        let mut fleet = Fleet {
            cluster: Arc::new(cluster),
            agents: Vec::new(),
            work: tempfile::tempdir().unwrap(),
            homes: tempfile::tempdir().unwrap(),
        };
        for i in 0..n {
            fleet.add(&format!("task-{i:02}"), true).await;
        }
        fleet
    }

    /// Enrolls `hostname` and starts its agent.
    async fn add(&mut self, hostname: &str, exec: bool) {
        let c = self.cluster.clone();
        let host = hostname.to_string();
        let (identity, _) = eventually(Duration::from_secs(60), || c.enroll(0, &host)).await;
        let state = StateDir::new(self.homes.path().join(hostname));
        state.save_identity(&identity, false).unwrap();
        let mut agent = Agent::load(state).unwrap();
        agent.set_stream_linger(Duration::from_secs(600));
        agent.set_task_policy(vigo_envoy::agent::tasks::TaskPolicy { exec });
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            agent
                .run(false, async {
                    let _ = stopped.await;
                })
                .await
        });
        self.agents.push(RunningAgent {
            id: identity.envoy_id,
            hostname: hostname.to_string(),
            stop: Some(stop),
            handle,
        });
    }

    async fn stop_agent(&mut self, i: usize) {
        let a = &mut self.agents[i];
        let _ = a.stop.take().unwrap().send(());
        a.handle.abort();
    }

    fn mark(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// A command that appends the envoy id to `ran-<id>` (so a second run shows),
    /// prints a line, and fails where `fail-<id>` exists.
    fn command(&self, extra: &str) -> Vec<String> {
        let w = self.work.path().display();
        vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo $VIGO_ENVOY_ID >> {w}/ran-$VIGO_ENVOY_ID; {extra} echo out-$VIGO_ENVOY_ID; test ! -e {w}/fail-$VIGO_ENVOY_ID"
            ),
        ]
    }

    fn runs(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = std::fs::read_dir(self.work.path())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                let id = name.strip_prefix("ran-")?.to_string();
                let lines = std::fs::read_to_string(self.mark(&name))
                    .unwrap()
                    .lines()
                    .count();
                Some((id, lines))
            })
            .collect();
        out.sort();
        out
    }

    async fn run(&self, hub: usize, req: api::RunTaskRequest) -> api::TaskInfo {
        self.cluster
            .admin(hub)
            .run_task(req)
            .await
            .expect("task accepted")
            .into_inner()
    }

    async fn show(&self, hub: usize, task_id: &str) -> Result<api::TaskInfo, tonic::Status> {
        let task = api::TaskRef {
            task_id: task_id.into(),
        };
        Ok(self.cluster.admin(hub).show_task(task).await?.into_inner())
    }

    /// Waits until some envoy started the task under test.
    async fn until_started(&self) {
        eventually(Duration::from_secs(30), || async {
            if self.runs().is_empty() {
                Err("not started")
            } else {
                Ok(())
            }
        })
        .await;
    }

    /// Waits until the task ends (through any running hub); its last state.
    async fn ended(&self, task_id: &str) -> api::TaskInfo {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            for i in self.cluster.running_hubs() {
                if let Ok(info) = self.show(i, task_id).await
                    && info.state != "running"
                {
                    return info;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task {task_id} did not end"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn results(&self, task_id: &str) -> Vec<api::TaskResult> {
        self.cluster
            .admin(0)
            .task_results(api::TaskResultsRequest {
                task_id: task_id.into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .results
    }
}

fn exec(argv: Vec<String>) -> api::RunTaskRequest {
    api::RunTaskRequest {
        all: true,
        kind: "exec".into(),
        argv,
        timeout_ms: 60_000,
        ..Default::default()
    }
}

fn counts(info: &api::TaskInfo) -> api::TaskCounts {
    info.counts.unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_task_reaches_idle_and_streaming_agents_runs_once_and_reports_output() {
    let fleet = Fleet::start(4).await;
    // The agents checked in once at start and hold no stream: each is told at its
    // next check-in, opens a stream, and gets the task on it.
    let first = fleet.run(1, exec(fleet.command(""))).await;
    assert_eq!(counts(&first).targets, 4);
    let done = fleet.ended(&first.task_id).await;
    assert_eq!(done.state, "finished", "{done:?}");
    assert_eq!(counts(&done).ok, 4);
    let results = fleet.results(&first.task_id).await;
    assert_eq!(results.len(), 4);
    for r in &results {
        assert_eq!(r.status, "ok");
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.stdout, format!("out-{}\n", r.envoy_id), "its own output");
        assert!(fleet.agents.iter().any(|a| a.hostname == r.hostname));
        assert!(SPOKES.contains(&r.spoke.as_str()));
    }
    // Now every agent holds a stream: a second task reaches them on it.
    let second = fleet.run(2, exec(fleet.command(""))).await;
    assert_eq!(fleet.ended(&second.task_id).await.state, "finished");
    // Each ran each task once: two lines per envoy, none more.
    let runs = fleet.runs();
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|(_, n)| *n == 2), "{runs:?}");
    // The audit trail: who ran what.
    let listed = fleet
        .cluster
        .admin(0)
        .list_tasks(api::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tasks.len(), 2);
    assert_eq!(listed.tasks[0].task_id, second.task_id, "newest first");
    assert!(
        listed.tasks.iter().all(|t| t.requested_by == "cert:admin"),
        "{:?}",
        listed
            .tasks
            .iter()
            .map(|t| &t.requested_by)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stop_at_max_failures_and_the_rest_never_run() {
    let fleet = Fleet::start(6).await;
    // Targets are released in envoy-id order: the two first fail.
    let mut ids: Vec<EnvoyId> = fleet.agents.iter().map(|a| a.id).collect();
    ids.sort();
    for id in &ids[..2] {
        write(&fleet.mark(&format!("fail-{id}")), "");
    }
    let mut req = exec(fleet.command(""));
    req.batch = "1".into();
    req.max_failures = "2".into();
    let plan = fleet
        .run(
            0,
            api::RunTaskRequest {
                dry_run: true,
                ..req.clone()
            },
        )
        .await;
    assert_eq!(plan.state, "planned");
    assert_eq!(plan.batches, vec![1; 6]);
    assert_eq!(plan.plan.iter().map(|p| p.envoys).sum::<u64>(), 6);
    assert!(fleet.runs().is_empty(), "a dry run runs nothing");

    let task = fleet.run(0, req).await;
    let end = fleet.ended(&task.task_id).await;
    assert_eq!(end.state, "stopped", "{end:?}");
    let c = counts(&end);
    assert_eq!((c.failed, c.ok, c.released), (2, 0, 2));
    let ran: Vec<String> = fleet.runs().into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        ran,
        vec![ids[0].to_string(), ids[1].to_string()],
        "no one after the limit"
    );
    let failed = fleet
        .cluster
        .admin(1)
        .task_results(api::TaskResultsRequest {
            task_id: task.task_id.clone(),
            failed_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.results.len(), 2);
    assert!(
        failed
            .results
            .iter()
            .all(|r| r.status == "failed" && r.exit_code == 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_dispatch_and_an_offline_envoy_is_named_unreachable() {
    let mut fleet = Fleet::start(3).await;
    // A slow task one at a time: cancelled while the first runs.
    let mut slow = exec(fleet.command("sleep 30;"));
    slow.batch = "1".into();
    let task = fleet.run(0, slow).await;
    fleet.until_started().await;
    let cancelled = fleet
        .cluster
        .admin(2)
        .cancel_task(api::TaskRef {
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, "cancelled");
    assert_eq!(cancelled.cancelled_by, "cert:admin");
    // The envoy running it is told to stop: its command is killed long before its
    // 30 s sleep would end, and its result says so.
    let stopped = eventually(Duration::from_secs(15), || async {
        let results = fleet.results(&task.task_id).await;
        match results.into_iter().find(|r| r.status == "failed") {
            Some(r) => Ok(r),
            None => Err("no result yet"),
        }
    })
    .await;
    assert!(stopped.message.contains("cancelled"), "{}", stopped.message);
    // Its outcome is counted on the cancelled task's record.
    eventually(Duration::from_secs(15), || async {
        match counts(&fleet.show(0, &task.task_id).await.unwrap()) {
            c if c.failed == 1 && c.running == 0 => Ok(()),
            c => Err(format!("{c:?}")),
        }
    })
    .await;
    assert!(stopped.stdout.is_empty(), "killed before it printed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fleet.runs().len(),
        1,
        "nothing released after the cancel: {:?}",
        fleet.runs()
    );

    // A short window: a stopped agent never takes it, one refusing exec says so.
    fleet.add("task-noexec", false).await;
    fleet.stop_agent(0).await;
    let offline = fleet.agents[0].hostname.clone();
    let mut quick = exec(fleet.command(""));
    quick.timeout_ms = 4_000;
    let task = fleet.run(1, quick).await;
    let end = fleet.ended(&task.task_id).await;
    let c = counts(&end);
    assert_eq!((c.unreachable, c.refused), (1, 1), "{end:?}");
    let results = fleet.results(&task.task_id).await;
    let unreachable: Vec<&str> = results
        .iter()
        .filter(|r| r.status == "unreachable")
        .map(|r| r.hostname.as_str())
        .collect();
    assert_eq!(unreachable, vec![offline.as_str()], "named");
    let refused = results.iter().find(|r| r.status == "refused").unwrap();
    assert_eq!(refused.hostname, "task-noexec");
    assert!(
        refused.message.contains("refuses exec"),
        "{}",
        refused.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_task_loses_nothing_and_runs_nothing_twice() {
    let fleet = Fleet::start(4).await;
    let mut req = exec(fleet.command("sleep 1;"));
    req.batch = "1".into();
    let leader = fleet.cluster.leader().await;
    let task = fleet.run(leader, req).await;
    fleet.until_started().await;
    fleet.cluster.stop_hub(leader).await;
    let end = fleet.ended(&task.task_id).await;
    assert_eq!(end.state, "finished", "{end:?}");
    assert_eq!(counts(&end).ok, 4);
    let runs = fleet.runs();
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|(_, n)| *n == 1), "each once: {runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_answers_the_agents_facts_and_a_viewer_may_read_but_not_run() {
    let fleet = Fleet::start(2).await;
    let file = fleet.mark("probe.conf");
    write(&file, "listen 8080\n");
    let req = api::RunTaskRequest {
        all: true,
        kind: "query".into(),
        collectors: vec![
            format!("file:{}", file.display()),
            "trait:os".into(),
            "package:vigo-no-such-package".into(),
        ],
        timeout_ms: 60_000,
        ..Default::default()
    };
    let task = fleet.run(0, req.clone()).await;
    assert_eq!(fleet.ended(&task.task_id).await.state, "finished");
    let os = vigo_envoy::agent::traits::collect("x")["os"].clone();
    let sha = hex::encode(vigo_common::traits::sha256(b"listen 8080\n"));
    for r in fleet.results(&task.task_id).await {
        assert_eq!(r.rows.len(), 3, "{r:?}");
        assert_eq!(r.rows[0].fields["sha256"], sha);
        assert_eq!(r.rows[0].fields["size"], "12");
        assert_eq!(r.rows[1].fields["value"], os);
        assert!(
            r.rows[2]
                .fields
                .get("installed")
                .is_none_or(|v| v == "false"),
            "{:?}",
            r.rows[2]
        );
    }

    let viewer = fleet.cluster.new_api_token("watcher", "viewer").await;
    // Through the node that created the token: it has applied it (another may lag).
    let mut as_viewer = fleet.cluster.admin_with_token(0, &viewer);
    let refused = as_viewer.run_task(req).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = as_viewer
        .cancel_task(api::TaskRef {
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let shown = as_viewer
        .show_task(api::TaskRef {
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.kind, "query");
    // The watch of an ended task answers once and ends.
    let mut watch = as_viewer
        .watch_task(api::TaskRef {
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().state, "finished");
    assert!(watch.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_refuses_results_for_tasks_it_did_not_send_and_bad_requests_change_nothing() {
    let fleet = Fleet::start(1).await;
    let mut admin = fleet.cluster.admin(0);
    for (req, what) in [
        (
            api::RunTaskRequest {
                all: true,
                kind: "exec".into(),
                ..Default::default()
            },
            "no argv",
        ),
        (
            api::RunTaskRequest {
                kind: "exec".into(),
                argv: vec!["true".into()],
                ..Default::default()
            },
            "no targets",
        ),
        (
            api::RunTaskRequest {
                filter: Some(api::EnvoyFilter::default()),
                kind: "refresh_traits".into(),
                ..Default::default()
            },
            "an empty filter",
        ),
        (
            api::RunTaskRequest {
                all: true,
                kind: "query".into(),
                collectors: vec!["rm -rf /".into()],
                ..Default::default()
            },
            "a shell line as a query",
        ),
    ] {
        let status = admin.run_task(req).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
    }
    assert!(
        admin
            .list_tasks(api::ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tasks
            .is_empty()
    );

    // An envoy reporting a result for a task it was never sent: NOT_FOUND.
    let (identity, _) = fleet.cluster.enroll(0, "task-forger").await.unwrap();
    let address = identity.spoke_address.clone();
    let mut envoy = vigo_tests::TestEnvoy::new(identity, &address);
    envoy.check_in().await.unwrap();
    let body = pb::TaskResultBody {
        envoy_id: envoy.id().get(),
        sequence: envoy.sequence.advance(),
        timestamp_ms: vigo_common::time::now_ms(),
        task_id: vec![9; 16].into(),
        status: "ok".into(),
        ..Default::default()
    };
    let request = vigo_envoy::client::seal(
        &envoy.identity.key,
        vigo_common::signing::Domain::TaskResult,
        &body,
    );
    let refused = envoy.gateway.report_task(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
}

/// The task calls are refused by who is calling, before their bodies are read: a
/// result from an anonymous peer, a sync from an envoy or an admin (the hub's call),
/// a result larger than its method takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_calls_are_refused_by_role_and_size_before_their_body_is_read() {
    use std::sync::Arc;
    use tonic::Code;
    use vigo_tests::raw::{call, frame};

    let fleet = Fleet::start(0).await;
    let c = &fleet.cluster;
    let spoke = c.spoke_address(0);
    let ca = c.ca_pem();
    let tls = |cert: Option<(&str, &str)>| {
        let read = |f: &str| std::fs::read_to_string(c.pki(f)).unwrap();
        let pair = cert.map(|(p, k)| (read(p), read(k)));
        let pair = pair.as_ref().map(|(p, k)| (p.as_str(), k.as_str()));
        Arc::new(vigo_common::tls::client_config(&ca, pair, vigo_tests::ANY_SERVER).unwrap())
    };
    let report = "/vigo.v1.EnvoyGateway/ReportTask";
    let sync = "/vigo.v1.SpokeAdmin/SyncTasks";
    // An anonymous result announcing 64 MiB it never sends: answered at once.
    let (code, message) = call(&spoke, tls(None), report, frame(64 << 20, &[]), false, &[])
        .await
        .unwrap();
    assert_eq!(code, Code::Unauthenticated, "{message}");
    let admin = tls(Some(("admin.pem", "admin.key")));
    let (code, message) = call(&spoke, admin.clone(), sync, frame(16, &[0; 16]), true, &[])
        .await
        .unwrap();
    assert_eq!(code, Code::PermissionDenied, "the hub's call: {message}");
    let (identity, _) = c.enroll(0, "task-raw").await.unwrap();
    let address = identity.spoke_address.clone();
    let envoy = identity.tls_config().unwrap();
    let (code, message) = call(
        &address,
        envoy.clone(),
        sync,
        frame(16, &[0; 16]),
        true,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::PermissionDenied, "{message}");
    // The envoy's own result, above 200 KiB + 1 KiB: refused from its frame header.
    let (code, message) = call(
        &address,
        envoy,
        report,
        frame(1 << 20, &[0; 64]),
        false,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, Code::ResourceExhausted, "{message}");
}
