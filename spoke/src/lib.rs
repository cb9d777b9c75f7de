//! The spoke: owns one shard of the fleet. It answers envoys' signed check-ins and run
//! reports from an in-memory FleetIndex, keeps their durable state in its own redb file
//! (written through for enrollments and reports, flushed in batches for last-seen
//! state), serves signed per-hostcrate policy bundles, tracks compliance, and answers
//! the administration calls of admins and, later, the hub.
//!
//! It must not know about other spokes, the hub's raft state or the hash ring: the hub
//! drives a spoke only through its gRPC services.

pub mod admin;
pub mod admission;
pub mod cli;
pub mod compliance;
pub mod config;
pub mod enroll;
pub mod error;
pub mod fairness;
pub mod fleet;
pub mod flush_rows;
pub mod flusher;
pub mod forwards;
pub mod gateway;
mod grpc;
pub mod handoff;
pub mod hub_link;
pub mod metrics;
pub mod policy_cache;
pub mod policy_feed;
pub mod query;
pub mod revocations;
pub mod server;
pub mod store;
pub mod streams;
pub mod tasks;
pub mod tokens;
pub mod traits_store;
pub mod verifier;

pub use config::SpokeConfig;
pub use error::SpokeError;
pub use server::Spoke;
