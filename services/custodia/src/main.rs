//! The custodia binary: parses the command line and hands over to [`cli`].
#![forbid(unsafe_code)]

mod cli;
mod erasures;

use clap::Parser;

/// mimalloc instead of glibc's allocator: a gRPC server allocates and frees small
/// buffers on every call, from two threads at once (BENCHMARKS.md, "consent").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("custodia: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
