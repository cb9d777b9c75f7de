//! The wire protocol of Vigo Spanner, package `vigo.v1`: messages and gRPC service stubs
//! generated from `proto/vigo/v1/*.proto`.
//!
//! This crate owns the shape of every byte that crosses a process boundary. It knows
//! nothing about how requests are signed, verified or served.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vigo.v1");
}

/// The fleet-wide admin API (package `vigo.admin.v1`): JSON-shaped messages shared by
/// the gRPC service and the REST routes.
pub mod admin {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("vigo.admin.v1");
    }
}

pub use v1::*;

/// Every message and service above, encoded (`google.protobuf.FileDescriptorSet`): what
/// server reflection answers from.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vigo_descriptor");
