//! Every way a spoke request can fail, and — in one place — the gRPC status each maps to.

use tonic::{Code, Status};
use vigo_common::EnvoyId;
use vigo_common::refusal::{Kind, Refusal};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SpokeError {
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("this call needs a client certificate")]
    NoClientCertificate,
    #[error("{} may not call {call}", vigo_common::pki::a_certificate(role))]
    WrongRole {
        role: &'static str,
        call: &'static str,
    },
    #[error("the client certificate belongs to envoy {cert}, the request to envoy {body}")]
    CertificateMismatch { cert: EnvoyId, body: EnvoyId },
    #[error("envoy {0} is not enrolled on this spoke")]
    UnknownEnvoy(EnvoyId),
    #[error("envoy {id} moved to the spoke at {address}")]
    Moved { id: EnvoyId, address: String },
    #[error("envoy {0} is revoked")]
    Revoked(EnvoyId),
    #[error(
        "this spoke's envoys are revoked through the hub (vigocli envoys revoke {0}), so that the revocation holds on every spoke"
    )]
    RevokeThroughHub(EnvoyId),
    #[error("the client certificate of envoy {0} was issued for a key it no longer has")]
    StaleCertificate(EnvoyId),
    #[error("signature does not verify")]
    BadSignature,
    #[error("timestamp is {skew_ms} ms off the spoke's clock; allowed ±{window_ms} ms")]
    StaleTimestamp { skew_ms: i64, window_ms: u64 },
    #[error("sequence {got} is not above {last}: replayed or reordered request")]
    Replay { got: u64, last: u64 },
    #[error(transparent)]
    Enroll(#[from] vigo_common::enrollment::Denied),
    #[error("an enrollment for hostname {0:?} is in progress; retry")]
    EnrollmentInProgress(String),
    #[error("this spoke enrolls envoys through its hub: enroll at {0}")]
    EnrollThroughHub(String),
    #[error("envoy {id} is already enrolled here as {hostname:?}")]
    IdTaken { id: EnvoyId, hostname: String },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("task {0} was not sent to this envoy here")]
    NoSuchTask(String),
    #[error("the task's window closed: this envoy was counted {0}")]
    TaskWindowClosed(&'static str),
    #[error("the spoke is shutting down")]
    ShuttingDown,
    #[error("the caller's deadline passed; the query was stopped")]
    Abandoned,

    #[error(transparent)]
    Common(#[from] vigo_common::Error),
}

impl Refusal for SpokeError {
    fn kind(&self) -> Kind {
        use SpokeError::*;
        match self {
            Malformed { .. } => Kind::Malformed,
            TooLarge { .. } => Kind::TooLarge,
            NoClientCertificate | BadSignature => Kind::Unauthenticated,
            WrongRole { .. } | CertificateMismatch { .. } | Revoked(_) | StaleCertificate(_) => {
                Kind::Forbidden
            }
            UnknownEnvoy(_) | NoSuchTask(_) => Kind::NotFound,
            Moved { .. }
            | StaleTimestamp { .. }
            | Replay { .. }
            | EnrollThroughHub(_)
            | RevokeThroughHub(_)
            | IdTaken { .. }
            | TaskWindowClosed(_) => Kind::Precondition,
            EnrollmentInProgress(_) => Kind::Conflict,
            Enroll(denied) => denied.kind(),
            Store(_) => Kind::Internal,
            ShuttingDown => Kind::Unavailable,
            Abandoned => Kind::DeadlineExceeded,
            Common(e) => e.kind(),
        }
    }
}

impl SpokeError {
    pub fn code(&self) -> Code {
        self.kind().grpc_code()
    }

    /// The metric label of this refusal (`vigo_common::refusal::Kind::label`).
    pub fn label(&self) -> &'static str {
        self.kind().label()
    }

    pub fn malformed(what: &'static str, why: impl std::fmt::Display) -> Self {
        SpokeError::Malformed {
            what,
            why: why.to_string(),
        }
    }
}

impl From<SpokeError> for Status {
    fn from(e: SpokeError) -> Status {
        e.to_status()
    }
}
