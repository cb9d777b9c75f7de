//! The one list of refusal kinds. Every error type that answers a caller (spoke, hub,
//! the hub's replicated state machine, enrollment) says which kind each of its cases
//! is, and the kind alone fixes the gRPC code, the HTTP status of the REST face and the
//! `code` label metrics count it under. Nothing reads an error's text to decide what
//! it means.

use serde::{Deserialize, Serialize};
use tonic::Code;

/// What a refusal means to the caller: whether to fix the request, authenticate,
/// wait, or retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// The request is wrong as sent; fix it.
    Malformed,
    /// A field or body over its limit.
    TooLarge,
    /// Too much load now; retry after the hint.
    Overloaded,
    /// The caller is not who it must be (no or bad credentials, bad signature).
    Unauthenticated,
    /// The caller is known and may not do this (role, revocation, token terms).
    Forbidden,
    NotFound,
    /// What the request would create exists.
    Exists,
    /// Another operation on the same thing is running; retry shortly.
    Conflict,
    /// The system is not in the state the request needs (replay, stale clock,
    /// a spoke that is not active); retrying the same request will not help.
    Precondition,
    /// Nothing was done: no leader, a peer down, shutting down. Safe to retry.
    Unavailable,
    /// A write was sent for commit and no answer came in time: it may or may not have
    /// taken effect. Retry with the same request id to learn which.
    OutcomeUnknown,
    /// The caller's deadline passed and the work was stopped.
    DeadlineExceeded,
    /// A fault of ours (storage, a broken invariant).
    Internal,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Malformed,
        Kind::TooLarge,
        Kind::Overloaded,
        Kind::Unauthenticated,
        Kind::Forbidden,
        Kind::NotFound,
        Kind::Exists,
        Kind::Conflict,
        Kind::Precondition,
        Kind::Unavailable,
        Kind::OutcomeUnknown,
        Kind::DeadlineExceeded,
        Kind::Internal,
    ];

    pub const fn grpc_code(self) -> Code {
        match self {
            Kind::Malformed => Code::InvalidArgument,
            Kind::TooLarge | Kind::Overloaded => Code::ResourceExhausted,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::Forbidden => Code::PermissionDenied,
            Kind::NotFound => Code::NotFound,
            Kind::Exists => Code::AlreadyExists,
            Kind::Conflict => Code::Aborted,
            Kind::Precondition => Code::FailedPrecondition,
            Kind::Unavailable => Code::Unavailable,
            // gRPC's own definition: "for operations that change the state of the
            // system, this error may be returned even if the operation has completed".
            Kind::OutcomeUnknown => Code::DeadlineExceeded,
            Kind::DeadlineExceeded => Code::DeadlineExceeded,
            Kind::Internal => Code::Internal,
        }
    }

    pub const fn http_status(self) -> u16 {
        match self {
            Kind::Malformed => 400,
            Kind::TooLarge => 413,
            Kind::Overloaded => 429,
            Kind::Unauthenticated => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::Exists | Kind::Conflict => 409,
            Kind::Precondition => 412,
            Kind::Unavailable => 503,
            Kind::OutcomeUnknown | Kind::DeadlineExceeded => 504,
            Kind::Internal => 500,
        }
    }

    /// The `code` label of every metric that counts refusals.
    pub const fn label(self) -> &'static str {
        match self {
            Kind::Malformed => "malformed",
            Kind::TooLarge => "too_large",
            Kind::Overloaded => "overloaded",
            Kind::Unauthenticated => "unauthenticated",
            Kind::Forbidden => "forbidden",
            Kind::NotFound => "not_found",
            Kind::Exists => "exists",
            Kind::Conflict => "conflict",
            Kind::Precondition => "precondition",
            Kind::Unavailable => "unavailable",
            Kind::OutcomeUnknown => "outcome_unknown",
            Kind::DeadlineExceeded => "deadline_exceeded",
            Kind::Internal => "internal",
        }
    }

    /// The kind a status from a peer stands for, when a call to it failed and the
    /// failure is relayed (a forwarded write, a spoke's answer to the hub).
    pub fn of_code(code: Code) -> Kind {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Kind::Malformed,
            Code::ResourceExhausted => Kind::Overloaded,
            Code::Unauthenticated => Kind::Unauthenticated,
            Code::PermissionDenied => Kind::Forbidden,
            Code::NotFound => Kind::NotFound,
            Code::AlreadyExists => Kind::Exists,
            Code::Aborted => Kind::Conflict,
            Code::FailedPrecondition => Kind::Precondition,
            Code::Unavailable | Code::Cancelled => Kind::Unavailable,
            Code::DeadlineExceeded => Kind::DeadlineExceeded,
            _ => Kind::Internal,
        }
    }
}

/// Implemented by every error that reaches a caller.
pub trait Refusal: std::fmt::Display {
    fn kind(&self) -> Kind;

    /// The gRPC status a caller gets: the kind's code, the error's text (bounded).
    fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.kind().grpc_code(), bounded(self.to_string()))
    }
}

/// The most of a refusal's text a caller gets: a message never echoes input at length,
/// and always fits the client's metadata limit (a 60,000-byte trait key once turned an
/// INVALID_ARGUMENT into the client's own RESOURCE_EXHAUSTED).
pub const MAX_MESSAGE: usize = 512;

/// `text` cut to [`MAX_MESSAGE`] bytes on a character boundary, saying how long it was.
pub fn bounded(mut text: String) -> String {
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let total = text.len();
    let mut end = MAX_MESSAGE - 32;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("… ({total} bytes)"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_never_echoes_input_at_length() {
        struct Echo(String);
        impl std::fmt::Display for Echo {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "trait key {:?} is too long", self.0)
            }
        }
        impl Refusal for Echo {
            fn kind(&self) -> Kind {
                Kind::Malformed
            }
        }
        let status = Echo("é".repeat(30_000)).to_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() <= MAX_MESSAGE,
            "{}",
            status.message().len()
        );
        assert!(
            status.message().ends_with("(60024 bytes)"),
            "{}",
            status.message()
        );
        assert_eq!(bounded("short".into()), "short");
    }

    /// Pins every kind to its code, status and label: a change here changes what
    /// clients, dashboards and alerts see, so it must be deliberate.
    #[test]
    fn every_kind_has_its_code_status_and_label() {
        let table: [(Kind, Code, u16, &str); 13] = [
            (Kind::Malformed, Code::InvalidArgument, 400, "malformed"),
            (Kind::TooLarge, Code::ResourceExhausted, 413, "too_large"),
            (Kind::Overloaded, Code::ResourceExhausted, 429, "overloaded"),
            (
                Kind::Unauthenticated,
                Code::Unauthenticated,
                401,
                "unauthenticated",
            ),
            (Kind::Forbidden, Code::PermissionDenied, 403, "forbidden"),
            (Kind::NotFound, Code::NotFound, 404, "not_found"),
            (Kind::Exists, Code::AlreadyExists, 409, "exists"),
            (Kind::Conflict, Code::Aborted, 409, "conflict"),
            (
                Kind::Precondition,
                Code::FailedPrecondition,
                412,
                "precondition",
            ),
            (Kind::Unavailable, Code::Unavailable, 503, "unavailable"),
            (
                Kind::OutcomeUnknown,
                Code::DeadlineExceeded,
                504,
                "outcome_unknown",
            ),
            (
                Kind::DeadlineExceeded,
                Code::DeadlineExceeded,
                504,
                "deadline_exceeded",
            ),
            (Kind::Internal, Code::Internal, 500, "internal"),
        ];
        assert_eq!(table.len(), Kind::ALL.len());
        for (kind, code, status, label) in table {
            assert_eq!(kind.grpc_code(), code, "{kind:?}");
            assert_eq!(kind.http_status(), status, "{kind:?}");
            assert_eq!(kind.label(), label, "{kind:?}");
        }
        let labels: std::collections::HashSet<_> = Kind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), Kind::ALL.len(), "labels are distinct");
    }

    #[test]
    fn relayed_codes_keep_their_meaning() {
        for kind in Kind::ALL {
            let back = Kind::of_code(kind.grpc_code());
            assert_eq!(back.grpc_code(), kind.grpc_code(), "{kind:?}");
        }
        assert_eq!(Kind::of_code(Code::Unavailable), Kind::Unavailable);
        assert_eq!(
            Kind::of_code(Code::DeadlineExceeded),
            Kind::DeadlineExceeded
        );
    }
}
