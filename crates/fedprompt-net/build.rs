//! Compiles `proto/fedprompt.proto` with a vendored `protoc` (none need be installed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto/fedprompt.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".")
        .bytes(".")
        .compile_protos(&["proto/fedprompt.proto"], &["proto"])?;
    Ok(())
}
