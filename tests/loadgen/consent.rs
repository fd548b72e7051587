//! `loadgen consent`: RecordConsent, CheckConsent and BatchCheckConsent at load
//! (issue 4, "Performance").
//!
//! One server hosting the consent service (auth on: every call carries a bearer
//! token; access logging on: every check writes its access event to the outbox,
//! durably, before answering). With `--with-audit` the audit-log service runs in the
//! same process and the forwarder delivers the events to it; without, they stay
//! queued in the outbox (the forwarder has no token), which is what a consent
//! replica does while audit-log is down.
//!
//! Phases, each bounded in time:
//! 1. RecordConsent: `--concurrency` clients grant consent for distinct subjects
//!    for `--seconds` (each call is a durable write with a signed receipt).
//! 2. CheckConsent: `--concurrency` clients check random subjects (recorded ones and
//!    unknown ones) for `--seconds`.
//! 3. BatchCheckConsent: `--batch-calls` calls of 10,000 subjects, one at a time.
//!
//! `--server-binary target/release/custodia` runs the server as a process of its
//! own (the same data dir or database), so the client's and the server's CPU are
//! reported apart; the `h2load` phase (with `--phases record,h2load`) then sends
//! CheckConsent from nghttp2's h2load, a client in C that costs the machine a
//! fraction of what a tonic client does, and the `lean` phase from our own raw
//! HTTP/2 client ([`crate::lean`]), nearly as cheap, with `check`'s random subjects.

use std::time::{Duration, Instant};

use custodia_proto::{
    common::v1::SubjectRef,
    consent::v1::{
        BatchCheckConsentRequest, CheckConsentRequest, CheckConsentResponse, ConsentChannel,
        Decision, Evidence, Notice, PublishNoticeRequest, PurposeDecision, RecordConsentRequest,
        consent_service_client::ConsentServiceClient, notice::Content,
    },
};
use custodia_tests::{ADMIN_TOKEN, authed, newsletter_purpose};
use tonic::transport::Channel;

use crate::{
    BackendArg,
    server::BenchEnv,
    stats::{
        Latencies, children_cpu, cpu_between, cpu_per_call, header, line, machine_ticks,
        process_cpu, process_cpu_of, steal_since, verdict,
    },
    workload::{Rng, email},
};

type Client = ConsentServiceClient<Channel>;

/// Options of `loadgen consent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database backend.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Duration of each load phase in seconds (1..=600).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Calls in flight (1..=256).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// HTTP/2 connections the calls in flight share, round robin (0: one per call
    /// in flight). A tonic `Channel` multiplexes calls over one connection, which
    /// is how an integrator's client usually talks to custodia.
    #[arg(long, default_value_t = 0)]
    connections: u64,
    /// BatchCheckConsent calls of 10,000 subjects (1..=1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch_calls: u64,
    /// Also host audit-log and forward the access events to it.
    #[arg(long)]
    with_audit: bool,
    /// Database pool size of the server (production default: 16).
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
    /// The server's `server.io_threads`: threads with a scheduler each, serving the
    /// connections dealt out to them (0, the default: the shared runtime).
    #[arg(long, default_value_t = 0)]
    io_threads: usize,
    /// Only measure grpc.health.v1.Health/Check (no auth, no database) at the same
    /// concurrency: the ceiling of the gRPC stack on this machine.
    #[arg(long)]
    ping: bool,
    /// Like `--ping`, against a bare tonic server in the same process (the health
    /// service alone: no auth, no limits, no tracing layers): what tonic itself
    /// serves on this machine with this client.
    #[arg(long)]
    ping_bare: bool,
    /// Flush the access events of checks to disk before answering
    /// (`audit.read_event_sync = "full"`) instead of the default `relaxed`.
    #[arg(long)]
    full_sync_reads: bool,
    /// PostgreSQL: journal the access events of relaxed reads in the data dir
    /// (`audit.read_event_journal_dir`) instead of inserting them before the answer
    /// (SQLite always journals).
    #[arg(long)]
    read_journal: bool,
    /// Which phases to run, in this order (e.g. `record,batch` to profile the batch
    /// phase alone); the record phase provides the subjects the others check.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "record,check,batch"
    )]
    phases: Vec<PhaseArg>,
    /// Run the server as a process of its own: this `custodia` executable (e.g.
    /// `target/release/custodia`), serving consent (and audit-log with
    /// `--with-audit`) over the same fresh data dir or database. The load generator
    /// then has its own process, and the server's CPU per call is reported apart.
    #[arg(long)]
    server_binary: Option<std::path::PathBuf>,
    /// The h2load executable of the `h2load` phase (Debian: nghttp2-client).
    #[arg(long, default_value = "h2load")]
    h2load: std::path::PathBuf,
    /// Print the latency of every BatchCheckConsent call (the first ones read
    /// every subject from the database; later ones find most in the cache).
    #[arg(long)]
    print_batches: bool,
    /// Stop the server after the other phases and start it again over the same
    /// data before the batch phase, then wait a second: a newsletter run over
    /// subjects no check of this process has seen (their states come from the
    /// state index that the new process loads, or from the database without it).
    #[arg(long)]
    restart_before_batch: bool,
}

/// A phase of `loadgen consent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PhaseArg {
    Record,
    Check,
    Batch,
    /// CheckConsent sent by h2load (nghttp2's HTTP/2 load generator, in C) instead
    /// of a tonic client: what the server serves when the client costs little.
    /// Every call checks the same recorded subject (h2load sends one body).
    H2load,
    /// CheckConsent from the lean client (raw HTTP/2, requests encoded before the
    /// clock starts, one thread): random subjects like `check`, at a client cost
    /// near h2load's, every answer decoded and checked.
    Lean,
    /// CheckConsent over Connect JSON (HTTP/1.1 keep-alive, a connection per
    /// call in flight) from the JSON twin of the lean client, the same mix of
    /// subjects: what an integrator's plain HTTP client gets, beside `lean`.
    Json,
}

const TARGET_CHECKS_PER_SEC: f64 = 40_000.0;
const TARGET_CHECK_P99: Duration = Duration::from_millis(2);
const TARGET_BATCH: Duration = Duration::from_millis(50);
const TARGET_WRITES_PER_SEC: f64 = 5_000.0;
const TARGET_WRITE_P99: Duration = Duration::from_millis(10);
const BATCH: u64 = 10_000;
const PURPOSE: &str = "purposes/newsletter";

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut env = BenchEnv::new(args.backend.into(), args.db_connections).await;
    if !args.with_audit {
        env.config.audit.forwarder_token = None;
    }
    if args.full_sync_reads {
        env.config.audit.read_event_sync = custodia_core::config::ReadEventSync::Full;
    }
    if args.read_journal {
        env.config.audit.read_event_journal_dir = Some(env.config.data_dir.join("journals"));
    }
    env.config.server.io_threads = args.io_threads;
    let result = run_on(&env, &args).await;
    env.cleanup().await;
    result
}

async fn setup(c: &mut Client) -> anyhow::Result<String> {
    let mut newsletter = newsletter_purpose();
    if let Some(p) = newsletter.purpose.as_mut() {
        p.reconsent_interval = "P1Y".into();
    }
    c.create_purpose(authed(newsletter, ADMIN_TOKEN)).await?;
    let notice = c
        .publish_notice(authed(
            PublishNoticeRequest {
                notice_id: "privacy".into(),
                notice: Some(Notice {
                    title: "Privacy policy".into(),
                    content: Some(Content::Text("We send a monthly newsletter.".into())),
                    purposes: vec![PURPOSE.into()],
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner()
        .notice
        .ok_or_else(|| anyhow::anyhow!("no notice returned"))?;
    Ok(notice.name)
}

fn now() -> prost_types::Timestamp {
    let t = chrono::Utc::now();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn subject(i: u64) -> SubjectRef {
    SubjectRef {
        r#type: "email".into(),
        value: email(i),
    }
}

struct Phase {
    latencies: Latencies,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// The fewest successful calls of one loop (of `load`), if counted.
    slot_ok_min: Option<u64>,
}

impl Phase {
    fn new() -> Self {
        Self {
            latencies: Latencies::new(),
            ok: 0,
            errors: 0,
            first_error: None,
            slot_ok_min: None,
        }
    }

    fn outcome<T>(&mut self, took: Duration, r: Result<T, tonic::Status>) {
        match r {
            Ok(_) => {
                self.ok += 1;
                self.latencies.record(took);
            }
            Err(s) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| s.to_string());
            }
        }
    }

    fn merge(&mut self, other: Phase) {
        self.latencies.add(&other.latencies);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.slot_ok_min = match (self.slot_ok_min, other.slot_ok_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// CPU used by this process and, when it runs apart, the server's process.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    client: Option<Duration>,
    server: Option<Duration>,
}

impl Cpu {
    /// The counters now; `server` is the server's process id when it runs apart.
    fn now(server: Option<u32>) -> Self {
        Self {
            client: process_cpu(),
            server: server.and_then(process_cpu_of),
        }
    }

    /// CPU used since `self` was read.
    fn since(self, server: Option<u32>) -> Self {
        let now = Self::now(server);
        Self {
            client: cpu_between(self.client, now.client),
            server: cpu_between(self.server, now.server),
        }
    }

    /// The result lines: this process, and the server when it runs apart.
    fn report(self, calls: u64, elapsed: Duration) {
        line(
            "CPU of this process",
            cpu_per_call(self.client, calls, elapsed),
        );
        if self.server.is_some() {
            line(
                "CPU of the server process",
                cpu_per_call(self.server, calls, elapsed),
            );
        }
    }
}

/// Runs `concurrency` loops of `call` until `seconds` pass; returns the merged
/// results, the elapsed time and the CPU used (`server`: the server's process id
/// when it runs apart).
async fn load<F, Fut>(
    channels: &[Channel],
    seconds: u64,
    server: Option<u32>,
    call: F,
) -> anyhow::Result<(Phase, Duration, Cpu)>
where
    F: Fn(Client, u64, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (Client, Duration, Result<(), tonic::Status>)> + Send,
{
    let cpu0 = Cpu::now(server);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(seconds);
    let tasks: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(id, ch)| {
            let mut client = ConsentServiceClient::new(ch.clone());
            let call = call.clone();
            tokio::spawn(async move {
                let mut phase = Phase::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let (back, took, r) = call(client, id as u64, n).await;
                    client = back;
                    phase.outcome(took, r);
                    n += 1;
                }
                phase.slot_ok_min = Some(phase.ok);
                phase
            })
        })
        .collect();
    let mut total = Phase::new();
    for t in tasks {
        total.merge(t.await?);
    }
    Ok((total, t0.elapsed(), cpu0.since(server)))
}

fn report(
    phase: &Phase,
    (elapsed, cpu): (Duration, Cpu),
    unit: &str,
    target_rate: f64,
    target_p99: Duration,
) {
    let rate = phase.ok as f64 / elapsed.as_secs_f64();
    let p99 = phase.latencies.quantile(0.99);
    line(
        "calls ok (errors)",
        format!("{} ({})", phase.ok, phase.errors),
    );
    if let Some(e) = &phase.first_error {
        line("first error", e);
    }
    line(
        "throughput",
        format!(
            "{rate:.0} {unit}/s  [target >= {target_rate:.0}: {}]",
            verdict(rate >= target_rate)
        ),
    );
    line("latency", phase.latencies.summary());
    cpu.report(phase.ok + phase.errors, elapsed);
    p99_line(p99, target_p99);
}

/// The report of a CheckConsent phase, against the check targets.
fn report_checks((phase, elapsed, cpu): &(Phase, Duration, Cpu)) {
    report(
        phase,
        (*elapsed, *cpu),
        "checks",
        TARGET_CHECKS_PER_SEC,
        TARGET_CHECK_P99,
    );
}

/// The "p99 target" line of a report.
fn p99_line(p99: Duration, target: Duration) {
    line(
        "p99 target",
        format!(
            "{:.2} ms [target <= {} ms: {}]",
            p99.as_secs_f64() * 1000.0,
            target.as_millis(),
            verdict(p99 <= target)
        ),
    );
}

async fn run_on(env: &BenchEnv, args: &Args) -> anyhow::Result<()> {
    let services = if args.with_audit {
        vec![custodia_audit_log::SERVICE, custodia_consent::SERVICE]
    } else {
        vec![custodia_consent::SERVICE]
    };
    if args.ping_bare {
        return ping_bare(args).await;
    }
    let start = async || match &args.server_binary {
        Some(binary) => {
            let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            env.spawn_binary(binary, &names).await
        }
        None => env.start_services(&services).await,
    };
    let mut server = start().await?;
    let mut pid = server.pid();
    let ticks0 = machine_ticks();
    if args.ping {
        let channels = channels(&server.endpoint, args).await?;
        let result = ping(
            &channels,
            args,
            pid,
            "grpc.health.v1.Health/Check (stack ceiling)",
        )
        .await;
        server.stop().await?;
        return result;
    }
    let mut admin = ConsentServiceClient::new(server.channel().await?);
    let notice = setup(&mut admin).await?;
    let channels = channels(&server.endpoint, args).await?;
    let concurrency = args.concurrency;

    // 1. RecordConsent: client `id` records subjects id, id + c, id + 2c, ...
    let record = {
        let notice = notice.clone();
        move |mut c: Client, id: u64, n: u64| {
            let notice = notice.clone();
            async move {
                let i = id + n * concurrency;
                let request = RecordConsentRequest {
                    subject: Some(subject(i)),
                    decisions: vec![PurposeDecision {
                        purpose: PURPOSE.into(),
                        decision: Decision::Granted as i32,
                    }],
                    evidence: Some(Evidence {
                        collect_time: Some(now()),
                        channel: ConsentChannel::WebForm as i32,
                        notice,
                        source_ip: "203.0.113.77".into(),
                        user_agent: "loadgen".into(),
                        form_id: "newsletter-footer".into(),
                        ..Default::default()
                    }),
                    request_id: format!("loadgen-{i}"),
                    ..Default::default()
                };
                let t0 = Instant::now();
                let r = c.record_consent(authed(request, ADMIN_TOKEN)).await;
                (c, t0.elapsed(), r.map(|_| ()))
            }
        }
    };
    let wants = |p| args.phases.contains(&p);
    let writes = if wants(PhaseArg::Record) {
        eprintln!("RecordConsent for {} s ...", args.seconds);
        Some(load(&channels, args.seconds, pid, record).await?)
    } else {
        None
    };
    let recorded = writes.as_ref().map_or(0, |(w, ..)| w.ok).max(1);

    // 2. CheckConsent: 3 in 4 checks hit a recorded subject, 1 in 4 an unknown one.
    let check = move |mut c: Client, id: u64, n: u64| async move {
        let mut rng = Rng::new(0xC0FFEE ^ (id << 32) ^ n);
        let i = if rng.below(4) == 0 {
            10_000_000 + rng.below(1_000_000)
        } else {
            rng.below(recorded)
        };
        let request = CheckConsentRequest {
            subject: Some(subject(i)),
            purpose: PURPOSE.into(),
        };
        let t0 = Instant::now();
        let r = c.check_consent(authed(request, ADMIN_TOKEN)).await;
        (c, t0.elapsed(), r.map(|_| ()))
    };
    let checks = if wants(PhaseArg::Check) {
        eprintln!("CheckConsent for {} s ...", args.seconds);
        Some(load(&channels, args.seconds, pid, check).await?)
    } else {
        None
    };

    // 2b. CheckConsent from h2load: one recorded subject, checked through our client
    // first (h2load counts HTTP statuses, not gRPC ones).
    let h2 = if wants(PhaseArg::H2load) {
        let request = CheckConsentRequest {
            subject: Some(subject(0)),
            purpose: PURPOSE.into(),
        };
        let first = admin
            .check_consent(authed(request.clone(), ADMIN_TOKEN))
            .await?
            .into_inner();
        anyhow::ensure!(
            first.result.is_some_and(|r| r.allowed),
            "the h2load subject is not allowed: record it first (--phases record,h2load)"
        );
        eprintln!("CheckConsent from h2load for {} s ...", args.seconds);
        Some(h2load(args, &server.endpoint, &request, pid).await?)
    } else {
        None
    };

    // 2c. CheckConsent from the lean client: random subjects, each answer checked.
    let lean = if wants(PhaseArg::Lean) {
        // Loop `id` of the record phase recorded subjects id + n * concurrency for
        // every n below its count of successes, as none failed.
        let Some((w, ..)) = writes.as_ref() else {
            anyhow::bail!(
                "the lean phase checks recorded subjects: record them first (--phases record,lean)"
            );
        };
        anyhow::ensure!(
            w.errors == 0,
            "the lean phase needs a record phase without errors (it had {}: {:?})",
            w.errors,
            w.first_error
        );
        let sure = w.slot_ok_min.unwrap_or(0) * concurrency;
        anyhow::ensure!(sure > 0, "the record phase recorded no subject");
        eprintln!(
            "CheckConsent from the lean client for {} s ...",
            args.seconds
        );
        let cpu0 = Cpu::now(pid);
        let (outcome, elapsed) = crate::lean::run(lean_checks(&server.endpoint, sure, args))?;
        let phase = Phase {
            latencies: outcome.latencies,
            ok: outcome.ok,
            errors: outcome.errors,
            first_error: outcome.first_error,
            slot_ok_min: None,
        };
        Some((phase, elapsed, cpu0.since(pid)))
    } else {
        None
    };

    // 2d. The same checks over Connect JSON, HTTP/1.1.
    let json = if wants(PhaseArg::Json) {
        let Some((w, ..)) = writes.as_ref() else {
            anyhow::bail!("the json phase checks recorded subjects: record them first");
        };
        anyhow::ensure!(
            w.errors == 0,
            "the json phase needs a record phase without errors"
        );
        let sure = w.slot_ok_min.unwrap_or(0) * concurrency;
        anyhow::ensure!(sure > 0, "the record phase recorded no subject");
        eprintln!("CheckConsent over Connect JSON for {} s ...", args.seconds);
        let cpu0 = Cpu::now(pid);
        let (outcome, elapsed) = crate::json::run(json_checks(&server.endpoint, sure, args))?;
        let phase = Phase {
            latencies: outcome.latencies,
            ok: outcome.ok,
            errors: outcome.errors,
            first_error: outcome.first_error,
            slot_ok_min: None,
        };
        Some((phase, elapsed, cpu0.since(pid)))
    } else {
        None
    };

    // 3. BatchCheckConsent of 10,000 subjects, one call at a time.
    let batch_calls = if wants(PhaseArg::Batch) {
        args.batch_calls
    } else {
        0
    };
    if batch_calls > 0 && args.restart_before_batch {
        server.stop().await?;
        let t0 = Instant::now();
        server = start().await?;
        pid = server.pid();
        eprintln!(
            "server restarted in {:.0} ms; batches start in 1 s",
            t0.elapsed().as_secs_f64() * 1000.0
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        admin = ConsentServiceClient::new(server.channel().await?);
    }
    eprintln!("BatchCheckConsent x {batch_calls} ...");
    let mut batches = Phase::new();
    let batch_cpu0 = Cpu::now(pid);
    let batch_t0 = Instant::now();
    let mut c = admin.clone();
    let mut rng = Rng::new(0xBA7C4);
    for _ in 0..batch_calls {
        let subjects = (0..BATCH)
            .map(|_| subject(rng.below(recorded.max(BATCH))))
            .collect();
        let t0 = Instant::now();
        let r = batch_check(&mut c, subjects).await;
        if args.print_batches {
            eprintln!(
                "BatchCheckConsent {:.1} ms",
                t0.elapsed().as_secs_f64() * 1000.0
            );
        }
        batches.outcome(t0.elapsed(), r);
    }
    let batch_time = batch_t0.elapsed();
    let batch_cpu = batch_cpu0.since(pid);

    server.stop().await?;

    header(&format!("consent ({:?})", env.backend));
    line("store", env.describe());
    line(
        "server",
        match (&args.server_binary, pid) {
            (Some(binary), Some(pid)) => format!("{} (pid {pid})", binary.display()),
            _ => "in this process".to_string(),
        },
    );
    line("steal (whole run)", steal_since(ticks0));
    line(
        "load",
        format!(
            "{} calls in flight over {} connections, {} s per phase, auth on, read events {:?}{}, access events {}",
            args.concurrency,
            connection_count(args),
            args.seconds,
            env.config.audit.read_event_sync,
            if env.config.audit.read_event_journal_dir.is_some() {
                " (journal in the data dir)"
            } else {
                ""
            },
            if args.with_audit {
                "forwarded to audit-log in process"
            } else {
                "durable in the outbox (no forwarding)"
            }
        ),
    );
    if let Some((writes, write_time, write_cpu)) = &writes {
        header("RecordConsent");
        report(
            writes,
            (*write_time, *write_cpu),
            "writes",
            TARGET_WRITES_PER_SEC,
            TARGET_WRITE_P99,
        );
    }
    if let Some(checks) = &checks {
        header("CheckConsent");
        report_checks(checks);
    }
    if let Some(h2) = &h2 {
        header("CheckConsent from h2load (one subject)");
        h2.report(args);
    }
    if let Some(checks) = &lean {
        header("CheckConsent from the lean client (3 in 4 recorded subjects, 1 in 4 unknown)");
        line(
            "load",
            format!(
                "{} calls in flight over {} connections, one client thread",
                args.concurrency,
                connection_count(args)
            ),
        );
        report_checks(checks);
    }
    if let Some(checks) = &json {
        header("CheckConsent over Connect JSON, HTTP/1.1 keep-alive (the lean phase's mix)");
        report_checks(checks);
        if let Some(grpc) = &lean {
            let rate = |(p, e, _): &(Phase, Duration, Cpu)| p.ok as f64 / e.as_secs_f64();
            let share = rate(checks) / rate(grpc);
            let p99 = |(p, _, _): &(Phase, Duration, Cpu)| p.latencies.quantile(0.99).as_secs_f64();
            let ratio = p99(checks) / p99(grpc);
            line(
                "against the lean gRPC phase",
                format!(
                    "{:.0} % of its throughput [target >= 60 %: {}], p99 {ratio:.2}x [target <= 2x: {}]",
                    share * 100.0,
                    verdict(share >= 0.6),
                    verdict(ratio <= 2.0)
                ),
            );
        }
    }
    if batch_calls == 0 {
        return Ok(());
    }
    header("BatchCheckConsent (10,000 subjects)");
    line(
        "calls ok (errors)",
        format!("{} ({})", batches.ok, batches.errors),
    );
    if let Some(e) = &batches.first_error {
        line("first error", e);
    }
    line("latency", batches.latencies.summary());
    batch_cpu.report(batches.ok + batches.errors, batch_time);
    let max = batches.latencies.max();
    line(
        "max target",
        format!(
            "{:.2} ms [target <= {} ms: {}]",
            max.as_secs_f64() * 1000.0,
            TARGET_BATCH.as_millis(),
            verdict(max <= TARGET_BATCH && batches.errors == 0)
        ),
    );
    Ok(())
}

/// The messages of the lean phase, the `check` phase's mix: 3 in 4 check a
/// subject among the first `sure` recorded (the answer must say ALLOWED), 1 in 4
/// one of 1,000,000 unknown subjects (it must not). 262,144 messages (~26 MB),
/// each sent about once in a 6 s phase at 45,000 checks/s, so few unknown
/// subjects come back to the check cache (the `check` phase: ~4 %).
fn lean_checks(endpoint: &str, sure: u64, args: &Args) -> crate::lean::Calls {
    use prost::Message;
    const MESSAGES: u64 = 1 << 18;
    let mut rng = Rng::new(0x1EA2);
    let messages = (0..MESSAGES)
        .map(|j| {
            let i = if j % 4 == 3 {
                10_000_000 + rng.below(1_000_000)
            } else {
                rng.below(sure)
            };
            let request = CheckConsentRequest {
                subject: Some(subject(i)),
                purpose: PURPOSE.into(),
            };
            crate::lean::frame(&request.encode_to_vec())
        })
        .collect();
    crate::lean::Calls {
        endpoint: endpoint.to_string(),
        path: "/custodia.consent.v1.ConsentService/CheckConsent".into(),
        bearer: ADMIN_TOKEN.into(),
        messages,
        check: |j, answer| {
            let allowed = CheckConsentResponse::decode(answer)
                .map_err(|e| format!("undecodable answer: {e}"))?
                .result
                .ok_or("answer without a result")?
                .allowed;
            let want = j % 4 != 3;
            if allowed == want {
                Ok(())
            } else {
                Err(format!("message {j}: allowed = {allowed}, expected {want}"))
            }
        },
        connections: connection_count(args),
        concurrency: args.concurrency,
        seconds: args.seconds,
        pick: |slot, n, len| (Rng::new(0x1EA2 ^ (slot << 32) ^ n).next_u64() % len as u64) as usize,
    }
}

/// The messages of the json phase: the lean phase's mix, as Connect JSON bodies.
fn json_checks(endpoint: &str, sure: u64, args: &Args) -> crate::json::Calls {
    const MESSAGES: u64 = 1 << 18;
    let mut rng = Rng::new(0x1EA2);
    let messages = (0..MESSAGES)
        .map(|j| {
            let i = if j % 4 == 3 {
                10_000_000 + rng.below(1_000_000)
            } else {
                rng.below(sure)
            };
            bytes::Bytes::from(
                serde_json::json!({
                    "subject": { "type": "email", "value": email(i) },
                    "purpose": PURPOSE,
                })
                .to_string(),
            )
        })
        .collect();
    crate::json::Calls {
        endpoint: endpoint.to_string(),
        path: "/custodia.consent.v1.ConsentService/CheckConsent".into(),
        bearer: ADMIN_TOKEN.into(),
        messages,
        check: |j, answer| {
            let json: serde_json::Value =
                serde_json::from_slice(answer).map_err(|e| format!("not JSON: {e}"))?;
            let allowed = json["result"]["allowed"].as_bool().unwrap_or(false);
            let want = j % 4 != 3;
            if allowed == want {
                Ok(())
            } else {
                Err(format!("message {j}: allowed = {allowed}, expected {want}"))
            }
        },
        concurrency: args.concurrency,
        seconds: args.seconds,
        pick: |slot, n, len| (Rng::new(0x1EA2 ^ (slot << 32) ^ n).next_u64() % len as u64) as usize,
    }
}

/// One BatchCheckConsent call; an answer without one result per subject is an error.
async fn batch_check(c: &mut Client, subjects: Vec<SubjectRef>) -> Result<(), tonic::Status> {
    let results = c
        .batch_check_consent(authed(
            BatchCheckConsentRequest {
                purpose: PURPOSE.into(),
                subjects,
            },
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner()
        .results;
    if results.len() as u64 != BATCH {
        return Err(tonic::Status::internal(format!(
            "{} results",
            results.len()
        )));
    }
    Ok(())
}

/// HTTP/2 connections the load is spread over.
fn connection_count(args: &Args) -> u64 {
    match args.connections {
        0 => args.concurrency,
        n => n.min(args.concurrency),
    }
}

/// One channel per call in flight (`--concurrency`), spread round robin over
/// `--connections` HTTP/2 connections to `endpoint`.
async fn channels(endpoint: &str, args: &Args) -> anyhow::Result<Vec<Channel>> {
    let connections = connection_count(args);
    let mut open = Vec::new();
    for _ in 0..connections {
        open.push(
            tonic::transport::Endpoint::from_shared(endpoint.to_string())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok((0..args.concurrency)
        .map(|i| open[(i % connections) as usize].clone())
        .collect())
}

/// grpc.health Check at `--concurrency` over `channels` for `--seconds`.
async fn ping(
    channels: &[Channel],
    args: &Args,
    server: Option<u32>,
    title: &str,
) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu0 = Cpu::now(server);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for channel in channels {
        let mut c = HealthClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut phase = Phase::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = c
                    .check(HealthCheckRequest {
                        service: "custodia.consent.v1.ConsentService".into(),
                    })
                    .await;
                phase.outcome(t.elapsed(), r.map(|_| ()));
            }
            phase
        }));
    }
    let mut total = Phase::new();
    for t in tasks {
        total.merge(t.await?);
    }
    header(&format!(
        "{title}, {} in flight over {} connections",
        args.concurrency,
        connection_count(args)
    ));
    report(
        &total,
        (t0.elapsed(), cpu0.since(server)),
        "calls",
        TARGET_CHECKS_PER_SEC,
        TARGET_CHECK_P99,
    );
    Ok(())
}

/// `--ping-bare`: a tonic server with the health service alone, nothing else.
async fn ping_bare(args: &Args) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            "custodia.consent.v1.ConsentService",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    let channels = channels(&endpoint, args).await?;
    let result = ping(
        &channels,
        args,
        None,
        "grpc.health.v1.Health/Check on a bare tonic server",
    )
    .await;
    server.abort();
    result
}

/// What h2load reported, and the CPU both processes used meanwhile.
struct H2loadRun {
    /// h2load's summary lines (`finished in`, `requests:`, `time for request:`).
    summary: Vec<String>,
    succeeded: u64,
    failed: u64,
    elapsed: Duration,
    cpu: Cpu,
    h2load_cpu: Option<Duration>,
    /// Per-request times from h2load's log (`--log-file`).
    latencies: Latencies,
}

impl H2loadRun {
    fn report(&self, args: &Args) {
        line(
            "load",
            format!(
                "{} streams in flight over {} connections, one h2load thread",
                args.concurrency,
                connection_count(args)
            ),
        );
        let rate = self.succeeded as f64 / self.elapsed.as_secs_f64();
        line(
            "calls ok (HTTP errors)",
            format!("{} ({})", self.succeeded, self.failed),
        );
        line(
            "throughput",
            format!(
                "{rate:.0} checks/s  [target >= {TARGET_CHECKS_PER_SEC:.0}: {}]",
                verdict(rate >= TARGET_CHECKS_PER_SEC && self.failed == 0)
            ),
        );
        for s in &self.summary {
            line("h2load", s);
        }
        line("latency", self.latencies.summary());
        p99_line(self.latencies.quantile(0.99), TARGET_CHECK_P99);
        line(
            "CPU of h2load",
            cpu_per_call(self.h2load_cpu, self.succeeded + self.failed, self.elapsed),
        );
        self.cpu.report(self.succeeded + self.failed, self.elapsed);
    }
}

/// Runs h2load against `endpoint` for `--seconds`, sending `request` to CheckConsent.
async fn h2load(
    args: &Args,
    endpoint: &str,
    request: &CheckConsentRequest,
    server: Option<u32>,
) -> anyhow::Result<H2loadRun> {
    use prost::Message;
    // One gRPC message: uncompressed flag, big-endian length, the protobuf.
    let message = request.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let dir = tempfile::tempdir()?;
    let body_file = dir.path().join("check.bin");
    std::fs::write(&body_file, &body)?;
    let log_file = dir.path().join("requests.tsv");
    let connections = connection_count(args);
    let streams = args.concurrency.div_ceil(connections);
    let cpu0 = Cpu::now(server);
    let children0 = children_cpu();
    let t0 = Instant::now();
    let out = tokio::process::Command::new(&args.h2load)
        .arg(format!("--duration={}", args.seconds))
        .arg(format!("--clients={connections}"))
        .arg(format!("--max-concurrent-streams={streams}"))
        .arg("--threads=1")
        .args(["--header", "content-type: application/grpc"])
        .args(["--header", "te: trailers"])
        .args(["--header", &format!("authorization: Bearer {ADMIN_TOKEN}")])
        .arg(format!("--data={}", body_file.display()))
        .arg(format!("--log-file={}", log_file.display()))
        .arg(format!(
            "{endpoint}/custodia.consent.v1.ConsentService/CheckConsent"
        ))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", args.h2load.display()))?;
    let elapsed = t0.elapsed();
    let cpu = cpu0.since(server);
    let h2load_cpu = cpu_between(children0, children_cpu());
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "h2load failed: {text}");
    let summary: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("finished in")
                || l.starts_with("requests:")
                || l.starts_with("time for request:")
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    // "requests: N total, N started, N done, N succeeded, N failed, ..."
    let count = |word: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| {
                l.split(',')
                    .find(|part| part.trim().ends_with(word))
                    .and_then(|part| part.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    // One line per request: start (µs since the epoch), HTTP status, µs to the end
    // of the response.
    let mut latencies = Latencies::new();
    for l in std::fs::read_to_string(&log_file)?.lines() {
        if let Some(us) = l
            .split('\t')
            .nth(2)
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            latencies.record(Duration::from_micros(us));
        }
    }
    Ok(H2loadRun {
        summary,
        succeeded: count("succeeded"),
        failed: count("failed"),
        elapsed,
        cpu,
        h2load_cpu,
        latencies,
    })
}
