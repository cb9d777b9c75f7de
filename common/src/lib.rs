//! What every Vigo role shares: envoy identities and the signed-envelope rules, the
//! cluster PKI and TLS set-up, the policy model (load, validate, compile, sign, verify),
//! YAML config loading, and logging/metrics set-up.
//!
//! This crate knows nothing of spokes, hubs or envoys as processes: no service, no
//! storage, no networking beyond building TLS configs, channels and listeners.

pub mod config;
mod error;
pub mod fleet_query;
pub mod fsutil;
pub mod hostname;
pub mod ids;
pub mod limits;
pub mod pki;
pub mod policy;
pub mod procfs;
pub mod signing;
pub mod telemetry;
pub mod templates;
pub mod time;
pub mod tls;
pub mod traits;

pub use error::Error;
pub use ids::EnvoyId;
