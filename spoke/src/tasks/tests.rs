//! Tests of the spoke's task relay on a real redb file and real streams.

use super::*;
use tokio_stream::StreamExt;

fn copy(envoy: u64, not_after_ms: u64) -> pb::TaskCopy {
    pb::TaskCopy {
        envoy_id: envoy,
        task: Some(pb::SignedTask {
            body: vec![envoy as u8].into(),
            signature: vec![0; 64].into(),
        }),
        not_after_ms,
    }
}

fn sync(running: &[u128], dispatch: Vec<(u128, Vec<pb::TaskCopy>)>) -> pb::SyncTasksRequest {
    pb::SyncTasksRequest {
        running: running
            .iter()
            .map(|id| id.to_be_bytes().to_vec().into())
            .collect(),
        dispatch: dispatch
            .into_iter()
            .map(|(id, copies)| pb::TaskDispatch {
                task_id: id.to_be_bytes().to_vec().into(),
                copies,
            })
            .collect(),
        cancelled: Vec::new(),
    }
}

fn result(task: u128, status: &str) -> pb::TaskResultBody {
    pb::TaskResultBody {
        task_id: task.to_be_bytes().to_vec().into(),
        status: status.into(),
        exit_code: Some(0),
        stdout: "hello\n".into(),
        ..Default::default()
    }
}

fn envoy(n: u64) -> EnvoyId {
    EnvoyId::new(n).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    streams: Arc<Streams>,
    tasks: SpokeTasks,
    writer: std::thread::JoinHandle<()>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.redb");
        let (store, writer) = Store::open(&path).unwrap();
        let streams = Arc::new(Streams::default());
        let tasks = SpokeTasks::new(store, streams.clone());
        Self {
            _dir: dir,
            path,
            streams,
            tasks,
            writer,
        }
    }
}

#[tokio::test]
async fn copies_wait_for_their_envoy_go_out_on_its_stream_and_results_count_once() {
    let f = Fixture::new();
    let mut stream = f.streams.open(envoy(1));
    let answer = f
        .tasks
        .sync(sync(
            &[7],
            vec![(7, vec![copy(1, u64::MAX), copy(2, u64::MAX)])],
        ))
        .await
        .unwrap();
    assert_eq!(answer.progress[0].held, 2);
    assert_eq!(answer.progress[0].delivered, 1, "envoy 1 holds a stream");
    let sent = stream.next().await.unwrap().unwrap();
    assert_eq!(sent.task.unwrap().body.as_ref(), [1]);
    assert!(
        f.tasks.has_waiting(envoy(2)),
        "envoy 2 is told to open a stream"
    );
    // Envoy 2 opens one: its copy goes first.
    let first = f.tasks.unsent(envoy(2), Some(99));
    assert_eq!(first.len(), 1);
    assert!(
        f.tasks.unsent(envoy(2), Some(99)).is_empty(),
        "sent on that stream"
    );
    assert_eq!(
        f.tasks.unsent(envoy(2), Some(100)).len(),
        1,
        "a new stream gets it again"
    );

    assert!(
        !f.tasks
            .report(envoy(1), "h1", result(7, "ok"), 5)
            .await
            .unwrap()
    );
    assert!(
        f.tasks
            .report(envoy(1), "h1", result(7, "ok"), 6)
            .await
            .unwrap(),
        "a retry"
    );
    assert!(!f.tasks.has_waiting(envoy(1)));
    let again = f.tasks.sync(sync(&[7], vec![])).await.unwrap();
    assert_eq!((again.progress[0].ok, again.progress[0].failed), (1, 0));

    // A result for a task never sent to this envoy, or of no known status: refused.
    assert!(matches!(
        f.tasks.report(envoy(3), "h3", result(7, "ok"), 7).await,
        Err(SpokeError::NoSuchTask(_))
    ));
    assert!(matches!(
        f.tasks
            .report(envoy(2), "h2", result(7, "unreachable"), 7)
            .await,
        Err(SpokeError::Malformed { .. })
    ));
}

#[tokio::test]
async fn a_closed_window_counts_timed_out_or_unreachable_and_refuses_late_results() {
    let f = Fixture::new();
    let _stream = f.streams.open(envoy(1));
    f.tasks
        .sync(sync(&[7], vec![(7, vec![copy(1, 1_000), copy(2, 1_000)])]))
        .await
        .unwrap();
    f.tasks.expire(1_000 + GRACE_MS);
    assert!(
        f.tasks.has_waiting(envoy(2)),
        "not before the grace has passed"
    );
    f.tasks.expire(1_001 + GRACE_MS);
    let p = &f.tasks.sync(sync(&[7], vec![])).await.unwrap().progress[0];
    assert_eq!(
        (p.timed_out, p.unreachable),
        (1, 1),
        "sent to 1, never to 2"
    );
    assert!(!f.tasks.has_waiting(envoy(2)));
    assert!(matches!(
        f.tasks.report(envoy(1), "h1", result(7, "ok"), 9_000).await,
        Err(SpokeError::TaskWindowClosed("timed_out"))
    ));
}

#[tokio::test]
async fn an_ended_task_is_not_delivered_any_more() {
    let f = Fixture::new();
    f.tasks
        .sync(sync(&[7], vec![(7, vec![copy(2, u64::MAX)])]))
        .await
        .unwrap();
    assert!(f.tasks.has_waiting(envoy(2)));
    // Cancelled at the hub: the next sync does not list it.
    f.tasks.sync(sync(&[], vec![])).await.unwrap();
    assert!(!f.tasks.has_waiting(envoy(2)));
    assert!(f.tasks.unsent(envoy(2), Some(1)).is_empty());
    // A copy for a task the hub does not list as running is refused.
    assert!(
        f.tasks
            .sync(sync(&[], vec![(8, vec![copy(2, 1)])]))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn results_survive_a_restart_and_copies_sent_again_do_not_undo_them() {
    let f = Fixture::new();
    f.tasks
        .sync(sync(
            &[7],
            vec![(7, vec![copy(1, u64::MAX), copy(2, u64::MAX)])],
        ))
        .await
        .unwrap();
    f.tasks
        .report(envoy(1), "h1", result(7, "failed"), 5)
        .await
        .unwrap();
    let Fixture {
        _dir,
        path,
        tasks,
        writer,
        ..
    } = f;
    drop(tasks);
    writer.join().unwrap();
    let (store, _writer) = Store::open(&path).unwrap();
    let tasks = SpokeTasks::new(store, Arc::new(Streams::default()));
    tasks.restore().unwrap();
    let before = tasks.sync(sync(&[7], vec![])).await.unwrap();
    assert!(
        before.progress.is_empty(),
        "counts wait until the copies come again"
    );
    let after = tasks
        .sync(sync(
            &[7],
            vec![(7, vec![copy(1, u64::MAX), copy(2, u64::MAX)])],
        ))
        .await
        .unwrap();
    assert_eq!(after.progress[0].failed, 1);
    assert!(!tasks.has_waiting(envoy(1)), "its result stands");
    assert!(tasks.has_waiting(envoy(2)));
    let page = tasks
        .results(
            &pb::SpokeTaskResultsRequest {
                task_id: 7u128.to_be_bytes().to_vec().into(),
                limit: 10,
                ..Default::default()
            },
            |_| "h".into(),
        )
        .unwrap();
    assert_eq!(page.results.len(), 2);
    assert_eq!(page.results[0].status, "failed");
    assert_eq!(page.results[0].stdout, "hello\n");
    assert_eq!(page.results[1].status, "running");
}

#[tokio::test]
async fn a_cancel_reaches_the_envoys_running_the_task_once() {
    let f = Fixture::new();
    let mut running = f.streams.open(envoy(1));
    let mut idle = f.streams.open(envoy(3));
    f.tasks
        .sync(sync(
            &[7],
            vec![(7, vec![copy(1, u64::MAX), copy(2, u64::MAX)])],
        ))
        .await
        .unwrap();
    running.next().await.unwrap().unwrap();
    let mut cancel = sync(&[], vec![]);
    cancel.cancelled = vec![7u128.to_be_bytes().to_vec().into()];
    f.tasks.sync(cancel.clone()).await.unwrap();
    let told = running.next().await.unwrap().unwrap();
    assert_eq!(told.cancel_task_id.as_ref(), 7u128.to_be_bytes());
    // Told once; an envoy never sent the task is not told.
    f.tasks.sync(cancel).await.unwrap();
    f.streams.wake(envoy(1));
    assert!(running.next().await.unwrap().unwrap().check_in_now);
    f.streams.wake(envoy(3));
    assert!(idle.next().await.unwrap().unwrap().check_in_now);
}
