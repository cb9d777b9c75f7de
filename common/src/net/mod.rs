//! The servers' side of the network, shared by spokes and hubs: accepting TLS
//! connections under limits ([`listen`]), serving them over HTTP/2 or HTTP/1.1 and
//! closing them when idle ([`serve`]), and deciding who may call what before a request
//! body is read ([`admission`]).
//!
//! The order every request meets, cheapest refusal first: the connection cap and the
//! handshake caps (per server and per source address), the handshake timeout, the first
//! request timeout, then per call the revoked certificates, the admission table (peer role or token, message
//! limit, deadline), and only then the service.

pub mod admission;
pub mod config;
pub mod health;
pub mod listen;
pub mod revoked;
pub mod serve;
pub mod shedding;

pub use admission::{Admit, Call, Deadline, Guarded, Limits, Vouch, require_role};
pub use config::ConnectionsConfig;
pub use listen::{AcceptLimits, PeerConn, PeerInfo};
pub use revoked::RevokedCerts;
pub use serve::{Http1Limits, Http2Limits, Serving, serve_grpc, serve_http1};
pub use shedding::{Received, Shedder, SheddingLimits, Ticket};

/// A status's message followed by its sources, as one line: what a transport failure
/// really was (a TLS refusal, a reset connection) sits in the sources.
pub fn status_chain(status: &tonic::Status) -> String {
    let mut line = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        line = format!("{line}: {s}");
        source = s.source();
    }
    line
}

/// Describes the metric families of the network layer.
pub fn describe_metrics() {
    listen::describe_metrics();
    metrics::describe_counter!(
        "vigo_admission_refusals_total",
        "gRPC calls refused before their service ran (wrong or missing certificate, bad token, message too large, deadline passed), by service and code"
    );
}
