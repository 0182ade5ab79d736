//! Generates the gRPC code from `proto/wasmraft.proto` with a vendored `protoc`: no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not compiled in (`env!`): cargo reuses this script's binary for a checkout
    // at another path that shares the target dir, and it would look for the proto in the first.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").ok_or("cargo sets CARGO_MANIFEST_DIR")?;
    let proto_dir = std::path::Path::new(&manifest_dir).join("../../proto");
    let proto = proto_dir.join("wasmraft.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes([
        ".wasmraft.v1.PluginCall.payload",
        ".wasmraft.v1.BlobChunk.data",
        ".wasmraft.v1.SnapshotData.data",
    ]);
    tonic_prost_build::configure().compile_with_config(config, &[proto], &[proto_dir])?;
    Ok(())
}
