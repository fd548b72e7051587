//! Load generator for the audit-log (issue 3) and consent (issue 4) services.
//!
//! Run by hand, in release mode, never as a timed test:
//!
//! ```text
//! cargo build --release -p custodia-tests --bin loadgen
//! target/release/loadgen append --backend sqlite --seconds 20
//! target/release/loadgen proofs --backend postgres --entries 1000000
//! ```
//!
//! Every subcommand starts its own in-process server hosting only
//! `custodia_audit_log::SERVICE` on `127.0.0.1:0`, over a fresh SQLite file in a temp
//! dir or a fresh PostgreSQL database (`CUSTODIA_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), sends traffic to it only, and
//! stops by itself: every loop is bounded in count and time. The figures of the last
//! run are in `BENCHMARKS.md`.
#![forbid(unsafe_code)]

mod append;
mod consent;
mod dsar;
mod json;
mod lean;
mod proofs;
mod server;
mod stats;
mod workload;

use clap::{Parser, Subcommand, ValueEnum};
use custodia_tests::Backend;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for custodia's audit-log service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Database backend of the server under test.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    /// SQLite file in a fresh temp dir (WAL, synchronous=FULL).
    Sqlite,
    /// Fresh PostgreSQL database (dropped afterwards).
    Postgres,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Sqlite => Backend::Sqlite,
            BackendArg::Postgres => Backend::Postgres,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Durable AppendEvents throughput, call latency and time to a signed head.
    Append(append::Args),
    /// 1M-entry log: startup, inclusion proofs, full verification, ListEvents by subject.
    Proofs(proofs::Args),
    /// Consent: RecordConsent, CheckConsent and BatchCheckConsent at load.
    Consent(consent::Args),
    /// dsar: access request over three SQL sources, StartProcessing to export READY.
    Dsar(dsar::Args),
}

/// The allocator of the custodia binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    custodia_tests::init_tracing();
    // The default multi-threaded runtime: one worker per core (2 here), shared by the
    // server and the load generator, as a single custodia process would be.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Append(args) => append::run(args).await,
            Command::Proofs(args) => proofs::run(args).await,
            Command::Consent(args) => consent::run(args).await,
            Command::Dsar(args) => dsar::run(args).await,
        }
    })
}
