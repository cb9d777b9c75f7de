//! The errors of the shared parts. Each names what was wrong and where.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::policy::PolicyErrors;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("signature does not verify")]
    BadSignature,
    /// An enrollment's `key_proof`: a signature, so refused as one (UNAUTHENTICATED).
    #[error("key_proof {0}")]
    BadKeyProof(&'static str),
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("{}: {}{why}", file.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Config {
        file: PathBuf,
        /// Dotted path of the offending key; empty when the whole file is wrong.
        key: String,
        why: String,
    },
    #[error("{what}: {why}")]
    Pki { what: &'static str, why: String },
    #[error("TLS {what}: {why}")]
    Tls { what: &'static str, why: String },
    #[error("cannot listen for {what} on {addr}: {why}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        why: String,
    },
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error("{what} did not answer: {why}")]
    Unreachable { what: &'static str, why: String },
    #[error(transparent)]
    Policy(#[from] PolicyErrors),
}

impl crate::refusal::Refusal for Error {
    fn kind(&self) -> crate::refusal::Kind {
        use crate::refusal::Kind;
        match self {
            Error::Malformed { .. } | Error::Policy(_) => Kind::Malformed,
            Error::BadSignature | Error::BadKeyProof(_) => Kind::Unauthenticated,
            Error::Unreachable { .. } => Kind::Unavailable,
            Error::File { .. }
            | Error::Config { .. }
            | Error::Pki { .. }
            | Error::Tls { .. }
            | Error::Bind { .. }
            | Error::Telemetry(_) => Kind::Internal,
        }
    }
}
