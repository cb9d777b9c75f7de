//! The envoy side of Vigo Spanner: the protocol client (enroll, signed check-ins and run
//! reports) and `vigo-sim`, the fleet simulator that drives thousands of envoys through
//! the real protocol from one process.
//!
//! It knows the wire protocol and nothing of how spokes or hubs keep their state.

pub mod client;
pub mod sim;
