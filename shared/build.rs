//! Compiles `proto/` with protox (a Rust protobuf compiler, so no `protoc` is needed) and writes the
//! encoded descriptor set that the gRPC reflection service serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["recsys/v1/ranking.proto", "recsys/v1/event.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("recsys_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::proto::codec::StrictCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
