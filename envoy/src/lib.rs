//! The envoy side of Vigo Spanner: the protocol client (enroll, signed check-ins and run
//! reports), the agent `vigo-envoy` that converges a machine (resource executors, local
//! state, offline operation), and `vigo-sim`, the fleet simulator that drives thousands
//! of envoys through the real protocol from one process.
//!
//! It knows the wire protocol and nothing of how spokes or hubs keep their state.

pub mod agent;
pub mod cli;
pub mod client;
pub mod sim;
