//! What every Vigo role shares: envoy identities and the signed-envelope rules, the
//! cluster PKI and TLS set-up, the policy model (load, validate, compile, sign, verify),
//! YAML config loading, and logging/metrics set-up.
//!
//! This crate knows nothing of spokes, hubs or envoys as processes: no service, no
//! storage. Its networking is what every server shares: TLS configs and channels, and
//! the guarded listeners (accept and handshake limits, idle connections closed, who may
//! call what decided before a body is read) that spokes and hubs serve on.

pub mod config;
pub mod enrollment;
mod error;
pub mod fleet_query;
pub mod fsutil;
pub mod hostname;
pub mod ids;
pub mod limits;
pub mod net;
pub mod pem;
pub mod pki;
pub mod policy;
pub mod procfs;
pub mod refusal;
pub mod signing;
pub mod telemetry;
pub mod templates;
pub mod time;
pub mod tls;
pub mod traits;

pub use error::Error;
pub use ids::EnvoyId;
