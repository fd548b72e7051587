//! `loadgen append`: N seconds of concurrent `AppendEvents` batches.
//!
//! Reports acknowledged (durable: committed with fsync) events per second, the
//! latency of each call, and the time from an acknowledgement to the first signed
//! tree head that covers it. A separate client polls `GetSignedTreeHead` every 5 ms
//! during the run and records when each new head was first seen; every call's highest
//! sequence number and ack time is a sample (so the figure includes up to ~5 ms of
//! polling granularity plus one GetSignedTreeHead round trip).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use custodia_proto::audit::v1::AppendEventsRequest;
use custodia_tests::{ADMIN_TOKEN, authed};

use crate::{
    BackendArg,
    server::{self, BenchEnv, Client},
    stats::{Latencies, header, line, verdict},
    workload::{Rng, access_event, email},
};

/// Options of `loadgen append`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database backend.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Duration of the load phase in seconds (1..=600).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Concurrent clients, each on its own HTTP/2 connection (1..=256).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// Events per AppendEvents call (1..=5000, the service's limit).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=5000))]
    batch: u64,
    /// Distinct email subjects the events with a subject are drawn from.
    #[arg(long, default_value_t = 100_000)]
    subjects: u64,
    /// Database pool size of the server (production default: 16).
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
}

/// Target of issue 3.
const TARGET_EVENTS_PER_SEC: f64 = 20_000.0;
const TARGET_TIME_TO_HEAD: Duration = Duration::from_secs(1);

struct ClientResult {
    latencies: Latencies,
    acked: u64,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    /// (highest sequence number of the call, when its ack arrived)
    acks: Vec<(u64, Instant)>,
}

async fn client_loop(
    mut client: Client,
    id: u64,
    batch: u64,
    subjects: u64,
    deadline: Instant,
) -> ClientResult {
    let mut rng = Rng::new(0xA11C_E000 + id);
    let now_us = chrono::Utc::now().timestamp_micros();
    // Build the batch once; each call gets fresh ids, times and subjects.
    let template: Vec<_> = (0..batch)
        .map(|i| access_event(&mut rng, (i % 2 == 0).then_some(0), now_us))
        .collect();
    let mut result = ClientResult {
        latencies: Latencies::new(),
        acked: 0,
        calls: 0,
        errors: 0,
        first_error: None,
        acks: Vec::new(),
    };
    // Bounded by time (the deadline) and, defensively, by count.
    for _ in 0..10_000_000u64 {
        if Instant::now() >= deadline {
            break;
        }
        let now = chrono::Utc::now();
        let mut events = template.clone();
        for e in &mut events {
            // Fresh and time-ordered, as the template's (see `workload::shape`).
            e.event_id = uuid::Uuid::now_v7().hyphenated().to_string();
            e.event_time = Some(prost_types::Timestamp {
                seconds: now.timestamp(),
                nanos: now.timestamp_subsec_nanos() as i32,
            });
            if let Some(s) = e.subject.as_mut() {
                s.value = email(rng.below(subjects));
            }
        }
        let request = authed(
            AppendEventsRequest {
                events,
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        );
        let t0 = Instant::now();
        let reply = client.append_events(request).await;
        let acked_at = Instant::now();
        result.calls += 1;
        match reply {
            Ok(r) => {
                result.latencies.record(acked_at - t0);
                let results = r.into_inner().results;
                result.acked += results.iter().filter(|r| !r.duplicate).count() as u64;
                if let Some(max) = results.iter().map(|r| r.sequence).max() {
                    result.acks.push((max as u64, acked_at));
                }
            }
            Err(status) => {
                result.errors += 1;
                result.first_error.get_or_insert_with(|| status.to_string());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    result
}

/// Records (tree size, first seen) of every new signed head until `stop` is set.
async fn poll_heads(
    mut client: Client,
    seen: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    limit: Instant,
) {
    let mut last = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < limit {
        if let Ok(Some(head)) = server::latest_head(&mut client).await {
            let size = head.tree_size as u64;
            if size > last {
                last = size;
                seen.lock()
                    .expect("not poisoned")
                    .push((size, Instant::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the benchmark and prints its result block.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let env = BenchEnv::new(args.backend.into(), args.db_connections).await;
    let result = run_on(&env, &args).await;
    env.cleanup().await;
    result
}

async fn run_on(env: &BenchEnv, args: &Args) -> anyhow::Result<()> {
    let server = env.start().await?;
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        clients.push(server.client().await?);
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run_for = Duration::from_secs(args.seconds);

    let start = Instant::now();
    let deadline = start + run_for;
    let poller = tokio::spawn(poll_heads(
        server.client().await?,
        seen.clone(),
        stop.clone(),
        deadline + Duration::from_secs(120),
    ));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(client_loop(
                c,
                i as u64,
                args.batch,
                args.subjects,
                deadline,
            ))
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    let done = Instant::now();
    let elapsed = done - start;

    let mut latencies = Latencies::new();
    let (mut acked, mut calls, mut errors) = (0, 0, 0);
    let mut first_error = None;
    let mut acks = Vec::new();
    for r in results {
        latencies.add(&r.latencies);
        acked += r.acked;
        calls += r.calls;
        errors += r.errors;
        first_error = first_error.or(r.first_error);
        acks.extend(r.acks);
    }
    let max_seq = acks.iter().map(|(s, _)| *s).max();
    let last_ack = acks.iter().map(|(_, t)| *t).max();

    // After the run: wait (bounded) until a head covers the last acknowledged event.
    let mut final_wait = None;
    if let Some(max_seq) = max_seq {
        let limit = Instant::now() + Duration::from_secs(30);
        while Instant::now() < limit {
            let covered = seen
                .lock()
                .expect("not poisoned")
                .iter()
                .find(|(size, _)| *size > max_seq)
                .map(|(_, t)| *t);
            if let Some(t) = covered {
                final_wait = Some(t.saturating_duration_since(last_ack.unwrap_or(done)));
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.await?;

    // Time to signed head of every call's highest sequence number.
    let heads = seen.lock().expect("not poisoned").clone();
    let mut to_head = Latencies::new();
    let mut uncovered = 0u64;
    let mut over_target = 0u64;
    for (seq, acked_at) in &acks {
        let i = heads.partition_point(|(size, _)| *size <= *seq);
        match heads.get(i) {
            Some((_, seen_at)) => {
                let d = seen_at.saturating_duration_since(*acked_at);
                if d > TARGET_TIME_TO_HEAD {
                    over_target += 1;
                }
                to_head.record(d);
            }
            None => uncovered += 1,
        }
    }
    let mut check = server.client().await?;
    let final_head = server::latest_head(&mut check).await?;
    server.stop().await?;

    let rate = acked as f64 / elapsed.as_secs_f64();
    header(&format!("append ({:?})", env.backend));
    line("store", env.describe());
    line(
        "load",
        format!(
            "{} clients x {} events/call, {} s, {} distinct subjects, db pool {}",
            args.concurrency, args.batch, args.seconds, args.subjects, args.db_connections
        ),
    );
    line("calls (errors)", format!("{calls} ({errors})"));
    if let Some(e) = first_error {
        line("first error", e);
    }
    line("events acknowledged", acked);
    line("elapsed", format!("{:.2} s", elapsed.as_secs_f64()));
    line(
        "throughput",
        format!(
            "{rate:.0} events/s  [target >= {TARGET_EVENTS_PER_SEC:.0}: {}]",
            verdict(rate >= TARGET_EVENTS_PER_SEC)
        ),
    );
    line("AppendEvents latency", latencies.summary());
    line("heads signed (seen by poller)", heads.len());
    line("time to signed head (per call)", to_head.summary());
    line(
        "  calls over 1 s / never covered",
        format!("{over_target} / {uncovered}"),
    );
    line(
        "time to head of the last ack",
        match final_wait {
            Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
            None => "not covered within 30 s".into(),
        },
    );
    let ok_head = uncovered == 0 && final_wait.is_some() && to_head.max() <= TARGET_TIME_TO_HEAD;
    line(
        "time-to-head target",
        format!(
            "max {:.1} ms [target <= 1 s: {}]",
            to_head.max().as_secs_f64() * 1000.0,
            verdict(ok_head)
        ),
    );
    let size = final_head.map_or(0, |h| h.tree_size as u64);
    line(
        "final signed tree size",
        format!(
            "{size} ({})",
            if size == acked {
                "= events acknowledged"
            } else {
                "DIFFERS from events acknowledged"
            }
        ),
    );
    Ok(())
}
