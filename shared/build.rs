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
    // The messages as JSON too (the online tier's REST API): the proto field names, absent
    // fields taking their defaults, unknown fields refused by name, vector sources by name.
    let vector_source = "#[serde(with = \"crate::proto::json::vector_source\")]";
    tonic_prost_build::configure()
        .codec_path("crate::proto::codec::StrictCodec")
        .message_attribute(
            ".recsys.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .field_attribute(".recsys.v1.RankResponse.vector_source", vector_source)
        .field_attribute(".recsys.v1.HomepageResponse.vector_source", vector_source)
        .compile_fds(descriptors)?;
    Ok(())
}
