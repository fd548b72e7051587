//! `loadgen proofs`: a log of (by default) 1,000,000 entries; server start-up,
//! `GetInclusionProof` at the full tree size, `verify::verify` of the whole log and
//! `ListEvents` by subject with 1,000-row pages.
//!
//! The log is populated directly through `LogStore::append` in batches of 5,000
//! (the same code path as AppendEvents, minus gRPC). Half of the entries have an
//! email subject drawn from 1,000 subjects: half of those go to 100 "hot" subjects
//! (~2,500 entries each, so their first page holds 1,000 rows), the rest spread over
//! the other 900 (~280 each).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use custodia_audit_log::{
    log::AuditLog,
    merkle::{Hash, verify_inclusion},
    store::{EventFilter, LogStore},
};
use custodia_core::{ServiceName, legal_time::SystemClock, storage, subject::SubjectHasher};
use custodia_proto::{
    audit::v1::{GetInclusionProofRequest, ListEventsRequest},
    common::v1::SubjectRef,
};
use custodia_tests::{ADMIN_TOKEN, authed};

use crate::{
    BackendArg,
    server::{self, BenchEnv, SUBJECT_KEY},
    stats::{Latencies, header, line, verdict},
    workload::{Rng, email, new_event, subject_hash},
};

/// Options of `loadgen proofs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database backend.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Entries to populate (1000..=5,000,000).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..=5_000_000))]
    entries: u64,
    /// Entries per LogStore::append while populating (1..=20000).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    batch: u64,
    /// GetInclusionProof calls measured (1..=100000).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    proof_calls: u64,
    /// ListEvents calls measured (1..=10000).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    list_calls: u64,
    /// Give up populating after this many seconds.
    #[arg(long, default_value_t = 1800)]
    populate_timeout: u64,
    /// Database pool size of the server (production default: 16).
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
}

const SUBJECTS: u64 = 1_000;
const HOT_SUBJECTS: u64 = 100;
const PAGE: i32 = 1_000;

/// Runs the benchmark and prints its result block.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let env = BenchEnv::new(args.backend.into(), args.db_connections).await;
    let result = run_on(&env, &args).await;
    env.cleanup().await;
    result
}

/// Fills the log with `args.entries` entries; returns the time it took.
async fn populate(env: &BenchEnv, args: &Args) -> anyhow::Result<Duration> {
    let db = storage::open_service(&env.config, ServiceName::AuditLog).await?;
    db.migrate(&custodia_audit_log::MIGRATIONS).await?;
    let store = LogStore::new(db.clone());
    let total = args.entries;
    let batch = args.batch;
    // Generation (JSON, HMAC) runs on a blocking thread, appends on this task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<_>>(4);
    let generator = tokio::task::spawn_blocking(move || {
        let hasher = SubjectHasher::new(SUBJECT_KEY.to_string().into());
        let hashes: Vec<String> = (0..SUBJECTS).map(|i| subject_hash(&hasher, i)).collect();
        let mut rng = Rng::new(0x5EED);
        let base_us = chrono::Utc::now().timestamp_micros() - total as i64 * 1000;
        let mut i = 0u64;
        while i < total {
            let n = batch.min(total - i);
            let events: Vec<_> = (i..i + n)
                .map(|k| {
                    let subject = (k % 2 == 0).then(|| {
                        let s = if rng.below(2) == 0 {
                            rng.below(HOT_SUBJECTS)
                        } else {
                            HOT_SUBJECTS + rng.below(SUBJECTS - HOT_SUBJECTS)
                        };
                        hashes[s as usize].as_str()
                    });
                    // One event per millisecond of history.
                    new_event(&mut rng, subject, base_us + k as i64 * 1000)
                })
                .collect();
            if tx.blocking_send(events).is_err() {
                return;
            }
            i += n;
        }
    });
    let t0 = Instant::now();
    let limit = Duration::from_secs(args.populate_timeout);
    let mut done = 0u64;
    let mut last_report = Instant::now();
    while let Some(events) = rx.recv().await {
        anyhow::ensure!(
            t0.elapsed() < limit,
            "populating took longer than {limit:?}; stopped at {done} entries"
        );
        let now_us = chrono::Utc::now().timestamp_micros();
        store.append(&events, now_us).await?;
        done += events.len() as u64;
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "  populating: {done}/{total} ({:.0} entries/s)",
                done as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    generator.await?;
    anyhow::ensure!(store.size().await? == total, "log size after populating");
    let took = t0.elapsed();
    db.close().await;
    Ok(took)
}

/// Runs `verify::verify` over the whole log on a single-threaded runtime of its own
/// thread with a one-connection pool; returns (wall time, report).
fn verify_whole_log(
    env: &BenchEnv,
) -> anyhow::Result<(Duration, custodia_audit_log::verify::Report)> {
    let mut config = env.config.clone();
    config.database.max_connections = 1;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("verifier".into())
            .spawn_scoped(s, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    // What `custodia audit verify` runs (opening included).
                    let t0 = Instant::now();
                    let report = custodia_audit_log::verify::verify_database(&config, &[]).await?;
                    Ok((t0.elapsed(), report))
                })
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("verifier thread panicked"))?
    })
}

/// In-process figures: tree load, inclusion proofs and subject pages without gRPC.
struct Direct {
    open: Duration,
    proofs: Latencies,
    list: Latencies,
}

async fn direct_costs(env: &BenchEnv, n: u64, args: &Args) -> anyhow::Result<Direct> {
    let db = storage::open_service(&env.config, ServiceName::AuditLog).await?;
    let signer = custodia_audit_log::keys::head_signer(&env.config)?;
    let t0 = Instant::now();
    let log = AuditLog::open(LogStore::new(db.clone()), signer, Arc::new(SystemClock)).await?;
    let open = t0.elapsed();
    let mut rng = Rng::new(0xD1EC7);
    let mut proofs = Latencies::new();
    for _ in 0..args.proof_calls {
        let seq = rng.below(n);
        let t0 = Instant::now();
        let proof = log.inclusion_proof(seq, n).await?;
        proofs.record(t0.elapsed());
        anyhow::ensure!(proof.is_ok(), "in-process proof of {seq} failed");
    }
    let hasher = SubjectHasher::new(SUBJECT_KEY.to_string().into());
    let mut list = Latencies::new();
    for i in 0..args.list_calls {
        let filter = EventFilter {
            subject_hash: Some(subject_hash(&hasher, i % HOT_SUBJECTS)),
            ..Default::default()
        };
        let t0 = Instant::now();
        let page = log.store().list(&filter, None, PAGE as usize + 1).await?;
        list.record(t0.elapsed());
        anyhow::ensure!(!page.is_empty(), "in-process list returned nothing");
    }
    db.close().await;
    Ok(Direct { open, proofs, list })
}

fn hash(bytes: &[u8]) -> anyhow::Result<Hash> {
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("hash is not 32 bytes"))
}

async fn run_on(env: &BenchEnv, args: &Args) -> anyhow::Result<()> {
    let n = args.entries;
    eprintln!("populating {n} entries ({:?}) ...", env.backend);
    let populate_time = populate(env, args).await?;

    let server = env.start().await?;
    let startup = server.startup;
    let mut client = server.client().await?;
    let (head, head_wait) = server::wait_for_head(&mut client, n, Duration::from_secs(120)).await?;
    anyhow::ensure!(
        head.tree_size as u64 == n,
        "first head covers {} entries",
        head.tree_size
    );
    let root = hash(&head.root_hash)?;

    // Inclusion proofs at the full size, random sequence numbers, one call at a time.
    let mut rng = Rng::new(0x1DEA);
    let mut proof_latency = Latencies::new();
    let mut proof_len = 0usize;
    for i in 0..args.proof_calls + 50 {
        let seq = rng.below(n);
        let t0 = Instant::now();
        let proof = client
            .get_inclusion_proof(authed(
                GetInclusionProofRequest {
                    sequence: seq as i64,
                    tree_size: n as i64,
                },
                ADMIN_TOKEN,
            ))
            .await?
            .into_inner();
        let took = t0.elapsed();
        if i >= 50 {
            // The first 50 calls warm up the connection.
            proof_latency.record(took);
        }
        let hashes: Vec<Hash> = proof
            .hashes
            .iter()
            .map(|h| hash(h))
            .collect::<Result<_, _>>()?;
        proof_len = hashes.len();
        verify_inclusion(&hash(&proof.leaf_hash)?, seq, n, &hashes, &root)
            .map_err(|e| anyhow::anyhow!("inclusion proof of {seq} does not verify: {e}"))?;
    }

    // ListEvents by subject: the first 1,000-row page of a hot subject.
    let mut list_latency = Latencies::new();
    let mut rows = 0usize;
    // Pages with fewer than 1,000 rows (only with a smaller --entries).
    let mut short_pages = 0u64;
    for i in 0..args.list_calls + 10 {
        let subject = i % HOT_SUBJECTS;
        let t0 = Instant::now();
        let page = client
            .list_events(authed(
                ListEventsRequest {
                    subject: Some(SubjectRef {
                        r#type: "email".into(),
                        value: email(subject),
                    }),
                    page_size: PAGE,
                    ..Default::default()
                },
                ADMIN_TOKEN,
            ))
            .await?
            .into_inner();
        let took = t0.elapsed();
        if page.events.len() < PAGE as usize {
            short_pages += 1;
        }
        if i >= 10 {
            list_latency.record(took);
            rows += page.events.len();
        }
    }

    // The same work without gRPC, on a second replica's AuditLog in this process:
    // separates the service's own cost from the transport's.
    let direct = direct_costs(env, n, args).await?;

    // Full verification, directly on the database (server idle).
    let (verify_time, report) = verify_whole_log(env)?;
    server.stop().await?;

    let proof_p99 = proof_latency.quantile(0.99);
    let list_p99 = list_latency.quantile(0.99);
    header(&format!("proofs ({:?})", env.backend));
    line("store", env.describe());
    line(
        "population",
        format!(
            "{n} entries in {:.1} s ({:.0} entries/s via LogStore::append, batches of {})",
            populate_time.as_secs_f64(),
            n as f64 / populate_time.as_secs_f64(),
            args.batch
        ),
    );
    line(
        "server startup (Application::build)",
        format!("{:.2} s (loads the {n}-leaf tree)", startup.as_secs_f64()),
    );
    line(
        "  in-process AuditLog::open (tree load)",
        format!("{:.2} s", direct.open.as_secs_f64()),
    );
    line(
        "first signed head after startup",
        format!("{:.1} ms", head_wait.as_secs_f64() * 1000.0),
    );
    line(
        "GetInclusionProof @ full size",
        format!("{} ({proof_len} hashes)", proof_latency.summary()),
    );
    line(
        "  inclusion-proof target",
        format!(
            "max {:.2} ms, p99 {:.2} ms [target <= 5 ms: {}]",
            proof_latency.max().as_secs_f64() * 1000.0,
            proof_p99.as_secs_f64() * 1000.0,
            verdict(proof_latency.max() <= Duration::from_millis(5))
        ),
    );
    line(
        "  in-process AuditLog::inclusion_proof",
        direct.proofs.summary(),
    );
    line(
        "verify::verify (whole log)",
        format!(
            "{:.2} s, {:.0} entries/s, {} entries, {} heads, {}",
            verify_time.as_secs_f64(),
            report.entries as f64 / verify_time.as_secs_f64(),
            report.entries,
            report.heads,
            if report.is_ok() {
                "ok".to_string()
            } else {
                report.to_string()
            }
        ),
    );
    line(
        "  verification target",
        format!(
            "[<= 5 s: {}]",
            verdict(verify_time <= Duration::from_secs(5) && report.is_ok())
        ),
    );
    line(
        "ListEvents by subject, 1000 rows",
        format!(
            "{} ({rows} rows read, {short_pages} pages under {PAGE} rows)",
            list_latency.summary()
        ),
    );
    line(
        "  in-process LogStore::list (1001 rows)",
        direct.list.summary(),
    );
    line(
        "  ListEvents target",
        format!(
            "p99 {:.2} ms [target <= 50 ms: {}]",
            list_p99.as_secs_f64() * 1000.0,
            verdict(list_p99 <= Duration::from_millis(50))
        ),
    );
    Ok(())
}
