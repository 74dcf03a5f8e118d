//! The generated protobuf messages and gRPC stubs of package `recsys.v1`
//! (`shared/proto/recsys/v1/*.proto`), and their encoded descriptor set for server reflection.

#![allow(clippy::all, missing_docs)]

/// Package `recsys.v1`.
pub mod v1 {
    tonic::include_proto!("recsys.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/recsys_descriptor.bin"));
