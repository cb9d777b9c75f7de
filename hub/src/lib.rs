//! The hub: three (or five) nodes replicating the cluster's small, precious state with
//! openraft — spokes and the ring, pattern overrides, every envoy's pin, enrollment
//! tokens, published config versions and the CA's public material. It routes
//! enrollment, answers envoys asking where they are pinned, pushes config to spokes and
//! serves administration.
//!
//! It must stay off the check-in path: spokes serve envoys on their own, and the hub
//! drives a spoke only through the spoke's gRPC services.

pub mod admin;
pub mod admission;
pub mod batch;
pub mod cli;
pub mod config;
pub mod console;
pub mod dispatch;
pub mod enroll;
pub mod error;
pub mod fanout;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod publish;
pub mod raft;
pub mod revocations;
pub mod ring;
pub mod seal;
pub mod server;
pub mod services;
pub mod state;
pub mod tasks;

pub use config::HubConfig;
pub use error::HubError;
pub use server::HubNode;
