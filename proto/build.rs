//! Compiles the protos with `protox` (a protobuf compiler written in Rust),
//! so a fresh machine needs no system `protoc`.
//!
//! `api.proto` has no package (the seed's wire names). A second copy with
//! `package project;` is compiled too, so the portals can serve the course
//! spec's `/project.AdminPortal/...` names with the same handlers.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let seed_api = std::fs::read_to_string("api.proto")?;
    let project_api = seed_api.replacen("syntax = \"proto3\";", "syntax = \"proto3\";\n\npackage project;", 1);
    // protox resolves every file from one include root, so stage them all.
    let staged = out_dir.join("protos");
    std::fs::create_dir_all(&staged)?;
    std::fs::write(staged.join("api.proto"), seed_api)?;
    std::fs::write(staged.join("project_api.proto"), project_api)?;
    std::fs::copy("store.proto", staged.join("store.proto"))?;
    std::fs::copy("feed.proto", staged.join("feed.proto"))?;
    std::fs::copy("etcd_kv.proto", staged.join("etcd_kv.proto"))?;

    let files =
        protox::compile(["api.proto", "store.proto", "feed.proto", "etcd_kv.proto", "project_api.proto"], [&staged])?;
    let descriptor_path = out_dir.join("raftshop_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&files))?;

    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(files)?;

    for file in ["api.proto", "store.proto", "feed.proto", "etcd_kv.proto", "build.rs"] {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
