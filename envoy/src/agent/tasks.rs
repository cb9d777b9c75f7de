//! Admitting a task or live query (DESIGN §10), the envoy's half. A task reaches the
//! envoy through its spoke, which relays it but cannot mint one: the hub signs each
//! envoy's copy with a bundle key the envoy already trusts, under its own signing
//! domain. Running one is the executors' business; this module decides whether a
//! task may run at all, and makes sure it runs at most once.
//!
//! Order of checks (the cheap and the unauthenticated first, the durable last):
//! 1. size — at most [`MAX_TASK_BYTES`], before anything is parsed;
//! 2. signature — by one of the envoy's trusted keys over `vigo.v1.Task\0 || body`;
//! 3. the body decodes, with a 16-byte id and an action;
//! 4. it is for this envoy;
//! 5. its window — issued no later than [`CLOCK_SKEW`] from now, not expired, and
//!    valid for at most [`MAX_LIFETIME`];
//! 6. its action is allowed here (an envoy can refuse `exec` entirely: "refused",
//!    not failed);
//! 7. its id is new — recorded in the envoy's redb file and fsynced before the task
//!    is handed on, so a duplicated or replayed dispatch, also across a restart of the
//!    agent, is refused. A crash while a task runs means it is not run again: at most
//!    once, never twice.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use prost::Message;
use vigo_common::EnvoyId;
use vigo_common::signing::{self, Domain};
use vigo_proto::v1 as pb;

use super::state::{LocalState, StateError};

pub mod collect;
mod fit;
pub mod handle;
pub mod run;

/// The largest signed task an envoy reads (body and signature).
pub const MAX_TASK_BYTES: usize = 64 * 1024;

/// The longest window a task may claim, issue to expiry.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How far ahead of the envoy's clock a task's issue time may be.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What an envoy allows tasks to do.
#[derive(Clone, Copy, Debug)]
pub struct TaskPolicy {
    /// Run programs (`exec` tasks); when false they are answered "refused".
    pub exec: bool,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        Self { exec: true }
    }
}

/// Why a task does not run. Each has a stable label, the outcome an operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskRefusal {
    #[error("the task is {0} bytes; an envoy reads at most {MAX_TASK_BYTES}")]
    TooLarge(usize),
    #[error("the task is not signed by a key this envoy trusts")]
    BadSignature,
    #[error("the task does not decode: {0}")]
    Malformed(String),
    #[error("the task is for envoy {0}, not this one")]
    NotForThisEnvoy(String),
    #[error("the task expired at {0} (ms since the epoch)")]
    Expired(u64),
    #[error("the task is issued at {0} (ms since the epoch), ahead of this envoy's clock")]
    NotYetValid(u64),
    #[error("the task claims a window of {0} ms; at most 24 h")]
    WindowTooLong(u64),
    #[error("this envoy refuses exec tasks")]
    ExecRefused,
    #[error("task {0} was delivered before; a task runs once")]
    AlreadySeen(String),
}

impl TaskRefusal {
    /// The outcome's label in results and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TaskRefusal::TooLarge(_) => "too_large",
            TaskRefusal::BadSignature => "bad_signature",
            TaskRefusal::Malformed(_) => "malformed",
            TaskRefusal::NotForThisEnvoy(_) => "not_for_this_envoy",
            TaskRefusal::Expired(_) => "expired",
            TaskRefusal::NotYetValid(_) => "not_yet_valid",
            TaskRefusal::WindowTooLong(_) => "window_too_long",
            TaskRefusal::ExecRefused => "refused",
            TaskRefusal::AlreadySeen(_) => "duplicate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Refused(#[from] TaskRefusal),
    /// The ledger could not be written: the task does not run (it may be delivered
    /// again and then run, once).
    #[error("recording the task: {0}")]
    State(#[from] StateError),
}

/// A task that may run: checked, and recorded so it never runs again.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub id: [u8; 16],
    pub body: pb::TaskBody,
}

impl Admitted {
    /// The id as operators see it (hex).
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// Checks 1–7 above; on success the task id is on disk before this returns.
pub fn admit(
    signed: &pb::SignedTask,
    envoy: EnvoyId,
    trusted: &[VerifyingKey],
    now_ms: u64,
    policy: TaskPolicy,
    local: &LocalState,
) -> Result<Admitted, AdmitError> {
    let admitted = check(signed, envoy, trusted, now_ms, policy)?;
    // Ids are kept a clock skew past their expiry: a clock stepped back by less than
    // that cannot make a forgotten task valid again.
    let forget_before = now_ms.saturating_sub(CLOCK_SKEW.as_millis() as u64);
    if !local.record_task(&admitted.id, admitted.body.not_after_ms, forget_before)? {
        return Err(TaskRefusal::AlreadySeen(admitted.id_hex()).into());
    }
    Ok(admitted)
}

/// Checks 1–6: everything but the ledger.
pub fn check(
    signed: &pb::SignedTask,
    envoy: EnvoyId,
    trusted: &[VerifyingKey],
    now_ms: u64,
    policy: TaskPolicy,
) -> Result<Admitted, TaskRefusal> {
    let size = signed.body.len() + signed.signature.len();
    if size > MAX_TASK_BYTES {
        return Err(TaskRefusal::TooLarge(size));
    }
    let signature =
        signing::parse_signature(&signed.signature).map_err(|_| TaskRefusal::BadSignature)?;
    let signed_by_trusted = trusted
        .iter()
        .any(|key| signing::verify(key, Domain::Task, &signed.body, &signature).is_ok());
    if !signed_by_trusted {
        return Err(TaskRefusal::BadSignature);
    }
    let body = pb::TaskBody::decode(signed.body.as_ref())
        .map_err(|e| TaskRefusal::Malformed(e.to_string()))?;
    let id: [u8; 16] = body.task_id.as_ref().try_into().map_err(|_| {
        TaskRefusal::Malformed(format!("task id of {} bytes, not 16", body.task_id.len()))
    })?;
    if body.action.is_none() {
        return Err(TaskRefusal::Malformed("no action".into()));
    }
    if body.envoy_id != envoy.get() {
        let named = EnvoyId::new(body.envoy_id).map_or_else(|| "0".into(), |e| e.to_string());
        return Err(TaskRefusal::NotForThisEnvoy(named));
    }
    check_window(&body, now_ms)?;
    if matches!(body.action, Some(pb::task_body::Action::Exec(_))) && !policy.exec {
        return Err(TaskRefusal::ExecRefused);
    }
    Ok(Admitted { id, body })
}

fn check_window(body: &pb::TaskBody, now_ms: u64) -> Result<(), TaskRefusal> {
    let skew = CLOCK_SKEW.as_millis() as u64;
    if body.not_after_ms < body.issued_ms {
        return Err(TaskRefusal::Malformed("expires before it is issued".into()));
    }
    let window = body.not_after_ms - body.issued_ms;
    if window > MAX_LIFETIME.as_millis() as u64 {
        return Err(TaskRefusal::WindowTooLong(window));
    }
    if body.issued_ms > now_ms.saturating_add(skew) {
        return Err(TaskRefusal::NotYetValid(body.issued_ms));
    }
    if body.not_after_ms < now_ms {
        return Err(TaskRefusal::Expired(body.not_after_ms));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use pb::task_body::Action;

    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const HOUR: u64 = 3_600_000;

    struct Fixture {
        hub: SigningKey,
        envoy: EnvoyId,
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        local: LocalState,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.redb");
            let local = LocalState::open(&path).unwrap();
            Self {
                hub: signing::generate_key(),
                envoy: EnvoyId::new(0x1234).unwrap(),
                _dir: dir,
                path,
                local,
            }
        }

        fn body(&self, action: Action) -> pb::TaskBody {
            pb::TaskBody {
                task_id: vec![7; 16].into(),
                envoy_id: self.envoy.get(),
                issued_ms: NOW - 1_000,
                not_after_ms: NOW + HOUR,
                timeout_ms: 60_000,
                action: Some(action),
            }
        }

        fn exec(&self) -> pb::TaskBody {
            self.body(Action::Exec(pb::ExecAction {
                argv: vec!["systemctl".into(), "restart".into(), "nginx".into()],
                shell: false,
            }))
        }

        fn sign_with(key: &SigningKey, domain: Domain, body: &pb::TaskBody) -> pb::SignedTask {
            let body = body.encode_to_vec();
            let signature = signing::sign(key, domain, &body).to_bytes().to_vec();
            pb::SignedTask {
                body: body.into(),
                signature: signature.into(),
            }
        }

        fn sign(&self, body: &pb::TaskBody) -> pb::SignedTask {
            Self::sign_with(&self.hub, Domain::Task, body)
        }

        fn admit(
            &self,
            signed: &pb::SignedTask,
            now: u64,
            policy: TaskPolicy,
        ) -> Result<Admitted, TaskRefusal> {
            admit(
                signed,
                self.envoy,
                &[self.hub.verifying_key()],
                now,
                policy,
                &self.local,
            )
            .map_err(|e| match e {
                AdmitError::Refused(r) => r,
                AdmitError::State(e) => panic!("state: {e}"),
            })
        }
    }

    #[test]
    fn a_task_signed_for_this_envoy_is_admitted_once() {
        let f = Fixture::new();
        let signed = f.sign(&f.exec());
        let admitted = f.admit(&signed, NOW, TaskPolicy::default()).unwrap();
        assert_eq!(admitted.id, [7; 16]);
        assert_eq!(admitted.body, f.exec());
        assert_eq!(
            f.admit(&signed, NOW + 1, TaskPolicy::default()),
            Err(TaskRefusal::AlreadySeen(hex::encode([7u8; 16]))),
            "a duplicated dispatch does not run twice"
        );
    }

    #[test]
    fn a_task_seen_before_a_restart_is_refused_after_it() {
        let f = Fixture::new();
        let signed = f.sign(&f.exec());
        f.admit(&signed, NOW, TaskPolicy::default()).unwrap();
        let Fixture {
            hub,
            envoy,
            _dir,
            path,
            local,
        } = f;
        drop(local);
        let f = Fixture {
            hub,
            envoy,
            _dir,
            local: LocalState::open(&path).unwrap(),
            path,
        };
        assert_eq!(
            f.admit(&signed, NOW, TaskPolicy::default())
                .map_err(|e| e.label()),
            Err("duplicate")
        );
    }

    #[test]
    fn forged_altered_or_cross_domain_signatures_are_refused() {
        let f = Fixture::new();
        let policy = TaskPolicy::default();
        // A key the envoy does not trust (a spoke's, an attacker's).
        let forged = Fixture::sign_with(&signing::generate_key(), Domain::Task, &f.exec());
        assert_eq!(
            f.admit(&forged, NOW, policy),
            Err(TaskRefusal::BadSignature)
        );
        // The trusted key, but a signature made for a bundle manifest.
        let cross = Fixture::sign_with(&f.hub, Domain::Bundle, &f.exec());
        assert_eq!(f.admit(&cross, NOW, policy), Err(TaskRefusal::BadSignature));
        // A genuine task with its command swapped after signing.
        let mut altered = f.sign(&f.exec());
        let mut body = f.exec();
        body.action = Some(Action::Exec(pb::ExecAction {
            argv: vec!["rm".into(), "-rf".into(), "/".into()],
            shell: false,
        }));
        altered.body = body.encode_to_vec().into();
        assert_eq!(
            f.admit(&altered, NOW, policy),
            Err(TaskRefusal::BadSignature)
        );
        // No signature, a short one.
        let mut short = f.sign(&f.exec());
        short.signature.truncate(10);
        assert_eq!(f.admit(&short, NOW, policy), Err(TaskRefusal::BadSignature));
        // None of them took the id: the genuine task still runs.
        assert!(f.admit(&f.sign(&f.exec()), NOW, policy).is_ok());
    }

    #[test]
    fn a_task_for_another_envoy_is_refused() {
        let f = Fixture::new();
        let mut body = f.exec();
        body.envoy_id = 0x9999;
        assert_eq!(
            f.admit(&f.sign(&body), NOW, TaskPolicy::default()),
            Err(TaskRefusal::NotForThisEnvoy("0000000000009999".into()))
        );
    }

    #[test]
    fn the_window_is_enforced() {
        let f = Fixture::new();
        let policy = TaskPolicy::default();
        let refused =
            |body: pb::TaskBody, now| f.admit(&f.sign(&body), now, policy).map_err(|e| e.label());
        assert_eq!(refused(f.exec(), NOW + HOUR + 1), Err("expired"));
        let mut ahead = f.exec();
        ahead.issued_ms = NOW + CLOCK_SKEW.as_millis() as u64 + 1;
        ahead.not_after_ms = ahead.issued_ms + HOUR;
        assert_eq!(refused(ahead, NOW), Err("not_yet_valid"));
        let mut long = f.exec();
        long.not_after_ms = long.issued_ms + 25 * HOUR;
        assert_eq!(refused(long, NOW), Err("window_too_long"));
        let mut backwards = f.exec();
        backwards.not_after_ms = backwards.issued_ms - 1;
        assert_eq!(refused(backwards, NOW), Err("malformed"));
        // Within the skew, the task is taken.
        let mut slightly_ahead = f.exec();
        slightly_ahead.issued_ms = NOW + 1_000;
        assert!(refused(slightly_ahead, NOW).is_ok());
    }

    #[test]
    fn malformed_and_oversized_tasks_are_refused_before_anything_runs() {
        let f = Fixture::new();
        let policy = TaskPolicy::default();
        let mut no_action = f.exec();
        no_action.action = None;
        assert_eq!(
            f.admit(&f.sign(&no_action), NOW, policy)
                .map_err(|e| e.label()),
            Err("malformed")
        );
        let mut short_id = f.exec();
        short_id.task_id = vec![1; 8].into();
        assert_eq!(
            f.admit(&f.sign(&short_id), NOW, policy)
                .map_err(|e| e.label()),
            Err("malformed")
        );
        let garbage = pb::SignedTask {
            body: vec![0xff; 40].into(),
            signature: signing::sign(&f.hub, Domain::Task, &[0xff; 40])
                .to_bytes()
                .to_vec()
                .into(),
        };
        assert_eq!(
            f.admit(&garbage, NOW, policy).map_err(|e| e.label()),
            Err("malformed")
        );
        let huge = pb::SignedTask {
            body: vec![0; MAX_TASK_BYTES].into(),
            signature: vec![0; 64].into(),
        };
        assert_eq!(
            f.admit(&huge, NOW, policy),
            Err(TaskRefusal::TooLarge(MAX_TASK_BYTES + 64))
        );
        assert_eq!(
            f.local.tasks_recorded().unwrap(),
            0,
            "nothing refused is recorded"
        );
    }

    #[test]
    fn an_envoy_that_refuses_exec_still_takes_queries() {
        let f = Fixture::new();
        let no_exec = TaskPolicy { exec: false };
        let refused = f.admit(&f.sign(&f.exec()), NOW, no_exec).unwrap_err();
        assert_eq!(
            (refused.label(), refused),
            ("refused", TaskRefusal::ExecRefused)
        );
        let mut query = f.body(Action::Query(pb::QueryAction {
            collectors: vec!["package:openssl".into()],
        }));
        query.task_id = vec![8; 16].into();
        assert!(f.admit(&f.sign(&query), NOW, no_exec).is_ok());
    }

    #[test]
    fn the_ledger_forgets_expired_tasks_and_stays_bounded() {
        let f = Fixture::new();
        let policy = TaskPolicy::default();
        for i in 0..50u8 {
            let mut body = f.exec();
            body.task_id = vec![i; 16].into();
            f.admit(&f.sign(&body), NOW, policy).unwrap();
        }
        assert_eq!(f.local.tasks_recorded().unwrap(), 50);
        // A day later every one of them has expired: the next admission prunes them.
        let later = NOW + 24 * HOUR;
        let mut fresh = f.exec();
        fresh.task_id = vec![200; 16].into();
        fresh.issued_ms = later;
        fresh.not_after_ms = later + HOUR;
        f.admit(&f.sign(&fresh), later, policy).unwrap();
        assert_eq!(f.local.tasks_recorded().unwrap(), 1);
        // An old task replayed after its id was forgotten is still refused: it expired.
        let mut old = f.exec();
        old.task_id = vec![3; 16].into();
        assert_eq!(
            f.admit(&f.sign(&old), later, policy).map_err(|e| e.label()),
            Err("expired")
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_revive_a_task() {
        let f = Fixture::new();
        let policy = TaskPolicy::default();
        let signed = f.sign(&f.exec());
        f.admit(&signed, NOW, policy).unwrap();
        // Just past its expiry another task's admission prunes the ledger …
        let just_after = NOW + HOUR + 60_000;
        let mut other = f.exec();
        other.task_id = vec![9; 16].into();
        other.issued_ms = just_after;
        other.not_after_ms = just_after + HOUR;
        f.admit(&f.sign(&other), just_after, policy).unwrap();
        // … and the clock steps back two minutes: the first task is valid again by the
        // clock, but its id was kept.
        assert_eq!(
            f.admit(&signed, just_after - 120_000, policy)
                .map_err(|e| e.label()),
            Err("duplicate")
        );
    }
}
