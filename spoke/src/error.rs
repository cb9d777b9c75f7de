//! Every way a spoke request can fail, and — in one place — the gRPC status each maps to.

use tonic::{Code, Status};
use vigo_common::EnvoyId;

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
    #[error("a {role} certificate may not call {call}")]
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
    #[error("the client certificate of envoy {0} was issued for a key it no longer has")]
    StaleCertificate(EnvoyId),
    #[error("signature does not verify")]
    BadSignature,
    #[error("timestamp is {skew_ms} ms off the spoke's clock; allowed ±{window_ms} ms")]
    StaleTimestamp { skew_ms: i64, window_ms: u64 },
    #[error("sequence {got} is not above {last}: replayed or reordered request")]
    Replay { got: u64, last: u64 },
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("enrollment token {0:?} is used up")]
    TokenSpent(String),
    #[error("enrollment token {0:?} has expired")]
    TokenExpired(String),
    #[error("enrollment token {name:?} enrolls only hostnames matching {patterns}")]
    TokenScope { name: String, patterns: String },
    #[error(
        "hostname {hostname:?} is enrolled as envoy {id} with another key; re-enrolling it needs a token with allow_rekey"
    )]
    HostnameTaken { hostname: String, id: EnvoyId },
    #[error("an enrollment for hostname {0:?} is in progress; retry")]
    EnrollmentInProgress(String),
    #[error("this spoke enrolls envoys through its hub: enroll at {0}")]
    EnrollThroughHub(String),
    #[error("envoy {id} is already enrolled here as {hostname:?}")]
    IdTaken { id: EnvoyId, hostname: String },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("the spoke is shutting down")]
    ShuttingDown,
    #[error("the caller's deadline passed; the query was stopped")]
    Abandoned,

    #[error(transparent)]
    Common(#[from] vigo_common::Error),
}

impl SpokeError {
    pub fn code(&self) -> Code {
        use SpokeError::*;
        match self {
            Malformed { .. } => Code::InvalidArgument,
            TooLarge { .. } => Code::ResourceExhausted,
            NoClientCertificate | BadSignature | UnknownToken => Code::Unauthenticated,
            WrongRole { .. }
            | CertificateMismatch { .. }
            | Revoked(_)
            | StaleCertificate(_)
            | TokenSpent(_)
            | TokenExpired(_)
            | TokenScope { .. } => Code::PermissionDenied,
            UnknownEnvoy(_) => Code::NotFound,
            Moved { .. } => Code::FailedPrecondition,
            StaleTimestamp { .. }
            | Replay { .. }
            | HostnameTaken { .. }
            | EnrollThroughHub(_)
            | IdTaken { .. } => Code::FailedPrecondition,
            EnrollmentInProgress(_) => Code::Aborted,
            Store(_) => Code::Internal,
            ShuttingDown => Code::Unavailable,
            Abandoned => Code::DeadlineExceeded,
            Common(vigo_common::Error::Malformed { .. }) => Code::InvalidArgument,
            Common(vigo_common::Error::BadSignature) => Code::Unauthenticated,
            Common(_) => Code::Internal,
        }
    }

    /// A short label for metrics: the status code in snake case.
    pub fn label(&self) -> &'static str {
        match self.code() {
            Code::InvalidArgument => "invalid_argument",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::NotFound => "not_found",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "deadline_exceeded",
            _ => "internal",
        }
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
        Status::new(e.code(), e.to_string())
    }
}
