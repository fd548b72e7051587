//! Compiles every `.proto` under `proto/custodia` with protox (pure Rust, no system
//! `protoc`) and generates prost messages plus tonic clients and servers.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let root = root.canonicalize()?;
    let mut files = Vec::new();
    collect(&root.join("custodia"), &mut files)?;
    files.sort();
    // The error details custodia sends (ErrorInfo, BadRequest, RetryInfo): in the
    // descriptor set so the Connect side can show them as JSON.
    files.push(root.join("google/rpc/error_details.proto"));
    println!("cargo:rerun-if-changed={}", root.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    // The encoded set keeps custom options (the `scope` method option) and comments,
    // which `file_descriptor_set()` would drop; reflection and the auth layer read it.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("custodia_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Every method must be implemented: a forgotten handler fails to compile
        // instead of answering UNIMPLEMENTED.
        .generate_default_stubs(false)
        .compile_fds(fds)?;
    Ok(())
}

fn collect(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
