//! Compiles `dfleet/v1/*.proto` with the pure-Rust `protox` parser, so no system
//! `protoc` is needed, and writes generated code and the descriptor set into
//! `OUT_DIR` only: the source tree is never written.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "dfleet/v1/common.proto",
        "dfleet/v1/enroll.proto",
        "dfleet/v1/agent.proto",
        "dfleet/v1/admin.proto",
    ];
    println!("cargo:rerun-if-changed=dfleet");
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("dfleet_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_transport(false)
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
