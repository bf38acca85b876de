//! Compiles `proto/dispatch/v1/worker.proto` with protox (a protobuf
//! compiler in Rust), so building needs no `protoc` binary, and keeps the
//! compiled descriptors (`dispatch_descriptor.bin` in `OUT_DIR`) for the
//! server's reflection service.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/dispatch/v1/worker.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // With the comments (source info): `grpcurl describe` shows them.
    std::fs::write(
        out.join("dispatch_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // The channel is built by the client (the SDK), so the generated
        // client stays transport-agnostic and this crate needs no
        // `tonic/channel`.
        .build_transport(false)
        .btree_map(".dispatch.v1.Register.labels")
        .compile_fds(descriptors)?;
    Ok(())
}
