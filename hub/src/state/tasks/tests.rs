//! Tests of tasks in the replicated state: every command applied to a state in memory.

use super::super::{Applied, Command};
use super::*;

const AT: u64 = 1_000_000;

fn task(id: u8, targets: usize, spec: impl FnOnce(&mut TaskSpec)) -> Command {
    let mut s = TaskSpec {
        action: TaskAction::Exec {
            argv: vec!["systemctl".into(), "restart".into(), "nginx".into()],
            shell: false,
        },
        selector: "os=debian".into(),
        batch: None,
        canary: None,
        max_failures: None,
        timeout_ms: 60_000,
    };
    spec(&mut s);
    Command::CreateTask(Box::new(TaskRecord::new(
        [id; 16],
        s,
        "ops".into(),
        AT,
        AT + 3_600_000,
        (1..=targets as u64)
            .map(|e| (e, if e % 2 == 0 { "a" } else { "b" }.to_string()))
            .collect(),
    )))
}

fn release(id: u8, upto: u32, at_ms: u64) -> Command {
    Command::ReleaseTask {
        id: [id; 16],
        upto,
        at_ms,
    }
}

fn ok(s: &mut ClusterState, command: Command) {
    assert_eq!(s.apply(command), Applied::Done);
}

fn count(id: u8, spoke: &str, counts: Counts) -> Command {
    Command::CountTask {
        id: [id; 16],
        spoke: spoke.into(),
        counts,
        at_ms: AT + 10,
    }
}

fn oks(n: u32) -> Counts {
    Counts {
        ok: n,
        ..Counts::default()
    }
}

fn refused(s: &mut ClusterState, command: Command) -> Rejection {
    match s.apply(command) {
        Applied::Refused(r) => r,
        other => panic!("applied: {other:?}"),
    }
}

fn get(s: &ClusterState, id: u8) -> &TaskRecord {
    s.tasks.get(&[id; 16]).expect("task")
}

#[test]
fn portions_round_up_and_never_exceed_the_total() {
    assert_eq!(Portion::Percent(10).of(25), 3);
    assert_eq!(Portion::Percent(10).of(1), 1);
    assert_eq!(Portion::Percent(100).of(7), 7);
    assert_eq!(Portion::Count(50).of(7), 7);
    assert_eq!(Portion::Percent(1).of(0), 0);
}

#[test]
fn a_sliding_window_releases_as_outcomes_arrive() {
    let mut s = ClusterState::default();
    ok(&mut s, task(1, 10, |t| t.batch = Some(Portion::Count(3))));
    assert_eq!(get(&s, 1).next_release(), Some(3));
    ok(&mut s, release(1, 3, AT));
    assert_eq!(get(&s, 1).next_release(), None, "three in flight");
    // Targets 1..=3 released: 1 and 3 on "b", 2 on "a".
    ok(&mut s, count(1, "b", oks(2)));
    assert_eq!(get(&s, 1).next_release(), Some(5));
    ok(&mut s, release(1, 5, AT));
    // A release never goes back, nor past the targets.
    ok(&mut s, release(1, 2, AT));
    assert_eq!(get(&s, 1).released, 5);
    ok(&mut s, release(1, 99, AT));
    assert_eq!(get(&s, 1).released, 10);
}

#[test]
fn the_canary_ends_before_the_rest_begins() {
    let mut s = ClusterState::default();
    ok(
        &mut s,
        task(1, 20, |t| {
            t.canary = Some(1);
            t.batch = Some(Portion::Percent(25));
        }),
    );
    assert_eq!(get(&s, 1).next_release(), Some(1));
    ok(&mut s, release(1, 1, AT));
    assert_eq!(get(&s, 1).next_release(), None, "the canary is running");
    ok(&mut s, count(1, "b", oks(1)));
    assert_eq!(get(&s, 1).next_release(), Some(6), "then 25 % in flight");
}

#[test]
fn max_failures_stop_further_batches() {
    let mut s = ClusterState::default();
    ok(
        &mut s,
        task(1, 100, |t| {
            t.batch = Some(Portion::Count(10));
            t.max_failures = Some(Portion::Percent(2));
        }),
    );
    ok(&mut s, release(1, 10, AT));
    let one_failure = Counts {
        ok: 4,
        failed: 1,
        ..Counts::default()
    };
    ok(&mut s, count(1, "a", one_failure));
    assert_eq!(get(&s, 1).state, TaskState::Running);
    let timed_out = Counts {
        timed_out: 1,
        ..Counts::default()
    };
    ok(&mut s, count(1, "b", timed_out));
    assert_eq!(get(&s, 1).state, TaskState::Stopped, "2 % of 100 failed");
    assert_eq!(get(&s, 1).next_release(), None);
    assert_eq!(
        refused(&mut s, release(1, 20, AT)),
        Rejection::TaskEnded(hex::encode([1u8; 16]), "stopped".into())
    );
}

#[test]
fn counts_applied_twice_or_late_change_nothing() {
    let mut s = ClusterState::default();
    ok(&mut s, task(1, 10, |_| {}));
    ok(&mut s, release(1, 10, AT));
    ok(&mut s, count(1, "a", oks(4)));
    ok(&mut s, count(1, "a", oks(4)));
    ok(&mut s, count(1, "a", oks(2)));
    assert_eq!(get(&s, 1).total(), oks(4));
    ok(&mut s, count(1, "a", oks(5)));
    ok(&mut s, count(1, "b", oks(5)));
    assert_eq!(get(&s, 1).state, TaskState::Finished);
    assert_eq!(get(&s, 1).ended_ms, AT + 10);
}

#[test]
fn cancel_and_expiry_end_a_task_once() {
    let mut s = ClusterState::default();
    ok(&mut s, task(1, 5, |_| {}));
    ok(&mut s, task(2, 5, |_| {}));
    ok(
        &mut s,
        Command::CancelTask {
            id: [1; 16],
            by: "alice".into(),
            at_ms: AT + 5,
        },
    );
    assert_eq!(
        get(&s, 1).state,
        TaskState::Cancelled { by: "alice".into() }
    );
    assert!(matches!(
        refused(
            &mut s,
            Command::CancelTask {
                id: [1; 16],
                by: "bob".into(),
                at_ms: AT + 6
            }
        ),
        Rejection::TaskEnded(..)
    ));
    ok(
        &mut s,
        Command::ExpireTasks {
            at_ms: AT + 3_600_000,
        },
    );
    assert_eq!(
        get(&s, 2).state,
        TaskState::Running,
        "not past its window yet"
    );
    ok(
        &mut s,
        Command::ExpireTasks {
            at_ms: AT + 3_600_001,
        },
    );
    assert_eq!(get(&s, 2).state, TaskState::Expired);
    assert_eq!(
        get(&s, 1).state,
        TaskState::Cancelled { by: "alice".into() },
        "an ended task stays as it ended"
    );
}

#[test]
fn creation_is_refused_for_a_taken_id_no_targets_or_too_many_running() {
    let mut s = ClusterState::default();
    ok(&mut s, task(1, 3, |_| {}));
    assert!(matches!(
        refused(&mut s, task(1, 3, |_| {})),
        Rejection::TaskExists(_)
    ));
    assert!(matches!(
        refused(&mut s, task(2, 0, |_| {})),
        Rejection::TaskTargets(0, _)
    ));
    for id in 2..(MAX_RUNNING as u8 + 1) {
        ok(&mut s, task(id, 1, |_| {}));
    }
    assert_eq!(
        refused(&mut s, task(200, 1, |_| {})),
        Rejection::TooManyTasks(MAX_RUNNING)
    );
    assert!(matches!(
        refused(&mut s, release(250, 1, AT)),
        Rejection::NoSuchTask(_)
    ));
}

#[test]
fn ended_tasks_are_kept_up_to_a_bound_oldest_dropped_first() {
    let mut s = ClusterState::default();
    for i in 0..(MAX_ENDED_KEPT + 3) as u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let Command::CreateTask(mut record) = task(0, 1, |_| {}) else {
            unreachable!()
        };
        record.id = id;
        ok(&mut s, Command::CreateTask(record));
        ok(
            &mut s,
            Command::CancelTask {
                id,
                by: "ops".into(),
                at_ms: AT,
            },
        );
    }
    assert_eq!(s.tasks.iter().count(), MAX_ENDED_KEPT);
    assert!(s.tasks.get(&[0; 16]).is_none(), "the oldest went first");
}

#[test]
fn a_new_leader_continues_from_the_replicated_record() {
    let mut s = ClusterState::default();
    ok(&mut s, task(1, 10, |t| t.batch = Some(Portion::Count(4))));
    ok(&mut s, release(1, 4, AT));
    ok(&mut s, count(1, "a", oks(1)));
    // The state as a snapshot carries it to another node.
    let bytes = postcard::to_allocvec(&s).expect("encode");
    let restored: ClusterState = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(restored.tasks, s.tasks);
    assert_eq!(get(&restored, 1).next_release(), Some(5));
}

#[test]
fn a_silent_spoke_is_written_off_once_and_its_late_counts_are_not_taken() {
    let mut s = ClusterState::default();
    // Targets 1..=10: even ids on spoke "a", odd on "b".
    ok(&mut s, task(1, 10, |_| {}));
    ok(&mut s, release(1, 10, AT + 5));
    let t = s.tasks.get(&[1; 16]).unwrap();
    assert_eq!(t.not_after(0), Some(AT + 5 + 60_000), "release + timeout");
    assert_eq!(t.last_not_after(), Some(AT + 5 + 60_000));
    ok(&mut s, count(1, "a", oks(5)));
    ok(&mut s, count(1, "b", oks(2)));
    let off = Command::WriteOffTask {
        id: [1; 16],
        spoke: "b".into(),
        at_ms: AT + 70_000,
    };
    ok(&mut s, off.clone());
    let t = s.tasks.get(&[1; 16]).unwrap();
    assert_eq!(
        t.counts["b"].unreachable, 3,
        "the five of b less the two it counted"
    );
    assert_eq!(t.state, TaskState::Finished, "every target has an outcome");
    // The spoke comes back late: the task ended, nothing changes.
    assert!(matches!(
        refused(&mut s, count(1, "b", oks(5))),
        Rejection::TaskEnded(..)
    ));
    assert_eq!(s.tasks.get(&[1; 16]).unwrap().total().ended(), 10);
}

#[test]
fn written_off_counts_are_final_while_the_task_runs_on() {
    let mut s = ClusterState::default();
    ok(&mut s, task(1, 10, |t| t.batch = Some(Portion::Count(2))));
    ok(&mut s, release(1, 2, AT));
    ok(
        &mut s,
        Command::WriteOffTask {
            id: [1; 16],
            spoke: "b".into(),
            at_ms: AT + 1,
        },
    );
    ok(&mut s, count(1, "b", oks(5)));
    let t = s.tasks.get(&[1; 16]).unwrap();
    assert_eq!(
        t.counts["b"],
        Counts {
            unreachable: 5,
            ..Counts::default()
        }
    );
    assert_eq!(t.state, TaskState::Running, "a's five are still to run");
    assert_eq!(
        t.next_release(),
        Some(7),
        "five ended, a window of two more"
    );
}

#[test]
fn outcomes_of_envoys_in_flight_still_count_after_a_stop_or_cancel() {
    let mut s = ClusterState::default();
    ok(
        &mut s,
        task(1, 10, |t| {
            t.batch = Some(Portion::Count(4));
            t.max_failures = Some(Portion::Count(1));
        }),
    );
    ok(&mut s, release(1, 4, AT));
    let failed = Counts {
        failed: 1,
        ..Counts::default()
    };
    ok(&mut s, count(1, "a", failed));
    assert_eq!(s.tasks.get(&[1; 16]).unwrap().state, TaskState::Stopped);
    assert!(s.tasks.get(&[1; 16]).unwrap().settling());
    // The three others sent the task before the stop finish it.
    ok(&mut s, count(1, "b", oks(2)));
    ok(&mut s, count(1, "a", Counts { ok: 1, ..failed }));
    let t = s.tasks.get(&[1; 16]).unwrap();
    assert_eq!(
        (t.state.clone(), t.total().ended()),
        (TaskState::Stopped, 4)
    );
    assert!(!t.settling());
    assert_eq!(t.next_release(), None, "nothing more is released");
}

/// A compromised spoke's numbers: more outcomes than targets released to it, counts
/// for a task it holds no target of, and fields near `u32::MAX` (which once wrapped
/// the fleet's totals and panicked debug builds) are refused, change nothing, and
/// never release a batch or hide a failure.
#[test]
fn a_spokes_counts_beyond_its_released_targets_are_refused() {
    let mut s = ClusterState::default();
    ok(
        &mut s,
        task(1, 100, |t| {
            t.canary = Some(5);
            t.batch = Some(Portion::Count(2));
            t.max_failures = Some(Portion::Count(1));
        }),
    );
    ok(&mut s, release(1, 5, AT));
    let before = get(&s, 1).clone();
    // Targets 1..=5 released: 2 and 4 on "a", 1, 3 and 5 on "b".
    for (spoke, claim) in [
        ("a", oks(3)),
        ("c", oks(1)),
        ("b", oks(9_000)),
        (
            "b",
            Counts {
                ok: u32::MAX,
                failed: u32::MAX,
                timed_out: u32::MAX,
                refused: u32::MAX,
                unreachable: u32::MAX,
            },
        ),
        (
            "b",
            Counts {
                ok: 2,
                unreachable: u32::MAX,
                ..Counts::default()
            },
        ),
    ] {
        assert!(
            matches!(
                refused(&mut s, count(1, spoke, claim)),
                Rejection::TaskCounts { .. }
            ),
            "{spoke}: {claim:?}"
        );
    }
    assert_eq!(get(&s, 1), &before, "nothing changed");
    assert_eq!(get(&s, 1).next_release(), None, "the canary still runs");
    // Within bounds, a failure still stops the task.
    ok(
        &mut s,
        count(
            1,
            "b",
            Counts {
                ok: 2,
                failed: 1,
                ..Counts::default()
            },
        ),
    );
    assert_eq!(get(&s, 1).state, TaskState::Stopped);
}

/// Sums of spoke counts saturate instead of wrapping: a failure is never read as none.
#[test]
fn count_sums_saturate() {
    let big = Counts {
        ok: u32::MAX,
        failed: u32::MAX,
        ..Counts::default()
    };
    assert_eq!(big.ended(), u32::MAX);
    assert_eq!(big.failures(), u32::MAX);
    assert_eq!(big.add(big).failed, u32::MAX);
}
