//! Why the state machine refused a command: a typed answer carried back through raft
//! (serialized in the response, never parsed from text), with its refusal kind.

use serde::{Deserialize, Serialize};
use vigo_common::enrollment::Denied;
use vigo_common::refusal::{Kind, Refusal};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("unknown spoke {0:?}")]
    UnknownSpoke(String),
    #[error("spoke {0} is not active")]
    SpokeNotActive(String),
    #[error("spoke {0} still has envoys pinned: drain it first")]
    SpokeHasEnvoys(String),
    #[error("a token named {0:?} exists")]
    TokenNameTaken(String),
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    #[error("envoy {0:016x} is not pinned")]
    NotPinned(u64),
    #[error("envoy id {0:016x} is taken")]
    EnvoyIdTaken(u64),
    #[error("no config version {0}")]
    NoConfigVersion(String),
    #[error("envoy {0:016x} is revoked")]
    EnvoyRevoked(u64),
    #[error(
        "envoy {envoy:016x} is being moved from {from} to {to}; run that move again to finish it"
    )]
    MoveOpen {
        envoy: u64,
        from: String,
        to: String,
    },
    #[error("envoy {envoy:016x} is pinned to {pinned}, not {spoke}")]
    NotOnSpoke {
        envoy: u64,
        spoke: String,
        pinned: String,
    },
    #[error("request id {0:?} was used by another caller")]
    RequestIdTaken(String),
    #[error("request id {0:?} was used for another request: a retry must send the same request")]
    RequestIdReused(String),
    #[error(
        "no bundle-signing key {0:?} (give its hex public key, or a prefix of 8 digits or more that names one key)"
    )]
    NoSuchBundleKey(String),
    #[error("bundle-signing key {0} is trusted already")]
    BundleKeyExists(String),
    #[error("{0} bundle-signing keys are trusted already: retire one first")]
    TooManyBundleKeys(usize),
    #[error("bundle-signing key {0} signs the bundles in force: use another key first")]
    BundleKeySigning(String),
    #[error(
        "the bundle keys or the current config version changed while the bundles were being signed; send the request again"
    )]
    StaleSeal,
    #[error("no task {0}")]
    NoSuchTask(String),
    #[error("task {0} exists")]
    TaskExists(String),
    #[error("task {0} has ended ({1})")]
    TaskEnded(String, String),
    #[error("{0} tasks are running already: wait for one to end, or cancel one")]
    TooManyTasks(usize),
    #[error("a task targets 1 to {1} envoys; this one {0}")]
    TaskTargets(usize, usize),
    #[error(transparent)]
    Enroll(#[from] Denied),
    #[error(
        "spoke {spoke} claims {claimed} outcomes for task {task}, which released {released} of its targets there"
    )]
    TaskCounts {
        task: String,
        spoke: String,
        claimed: u64,
        released: u32,
    },
}

impl Refusal for Rejection {
    fn kind(&self) -> Kind {
        match self {
            Rejection::UnknownSpoke(_)
            | Rejection::NoSuchToken(_)
            | Rejection::NotPinned(_)
            | Rejection::NoConfigVersion(_) => Kind::NotFound,
            Rejection::SpokeNotActive(_) | Rejection::SpokeHasEnvoys(_) => Kind::Precondition,
            Rejection::TokenNameTaken(_) => Kind::Exists,
            // The leader drew an id another envoy has: a retry draws another.
            Rejection::EnvoyIdTaken(_) => Kind::Conflict,
            Rejection::EnvoyRevoked(_) => Kind::Forbidden,
            Rejection::RequestIdTaken(_) => Kind::Exists,
            Rejection::RequestIdReused(_) => Kind::Malformed,
            Rejection::MoveOpen { .. } => Kind::Conflict,
            Rejection::NotOnSpoke { .. } => Kind::Precondition,
            Rejection::NoSuchBundleKey(_) => Kind::NotFound,
            Rejection::BundleKeyExists(_) => Kind::Exists,
            Rejection::TooManyBundleKeys(_) | Rejection::BundleKeySigning(_) => Kind::Precondition,
            Rejection::StaleSeal => Kind::Conflict,
            Rejection::NoSuchTask(_) => Kind::NotFound,
            Rejection::TaskExists(_) => Kind::Exists,
            Rejection::TaskEnded(..) | Rejection::TooManyTasks(_) => Kind::Precondition,
            Rejection::TaskTargets(..) | Rejection::TaskCounts { .. } => Kind::Malformed,
            Rejection::Enroll(d) => d.kind(),
        }
    }
}
