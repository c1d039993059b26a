//! Compiles Flower's own protobuf descriptors (a FileDescriptorSet dumped from the flwr
//! wheel by `interop/flower/dump_descriptors.py`) with prost: no protoc, no hand-copied
//! `.proto` files.

use prost::Message;

const FDS: &str = "proto/flwr-1.42.0.fds.pb";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={FDS}");
    let bytes = std::fs::read(FDS)?;
    let fds = prost_types::FileDescriptorSet::decode(bytes.as_slice())?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
