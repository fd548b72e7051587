//! `loadgen dsar`: time to an access request's export package for a subject with
//! many records across three sources (issue 5, "Performance": 10,000 records
//! ready <= 1 s, 100,000 <= 10 s, memory bounded).
//!
//! Three stand-ins run in this process, each the reference SQL connector
//! (`custodia connector sql`) on 127.0.0.1:0 over its own SQLite file: a CRM
//! (contacts, interactions, invoices), Moodle (account, grades, activity log)
//! and a mailing tool (sends, opens, clicks). Together they hold `--records`
//! records of the subject (a third each, seeded with one `INSERT ... SELECT`
//! per table in one transaction), plus records of other people that the
//! connectors must leave out. custodia runs in process with audit-log, consent
//! and dsar (the built-in sources of custodia's own records need the first two),
//! over a fresh SQLite dir or PostgreSQL database.
//!
//! Measured: from the StartProcessing call to the export package being READY
//! (GetRequest polled every 2 ms); then GetExport is streamed to a file, its
//! SHA-256 compared with the package's, and `manifest.json` read back (record
//! counts per source). Memory: the process's peak RSS (`VmHWM`), reset through
//! `/proc/self/clear_refs` just before StartProcessing, so the figure is the
//! peak while the request is processed (connectors, custodia and this client
//! together).

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use custodia_connector_sql::testing::{
    self, CRM_CONFIG, CRM_SCHEMA, DSAR_TOKEN, MOODLE_CONFIG, MOODLE_SCHEMA, TestConnector,
};
use custodia_proto::{
    common::v1::SubjectRef,
    connector::v1::Capability,
    dsar::v1::{
        DataSource, ExportState, GetExportRequest, GetRequestRequest, IdentityVerification,
        IdentityVerificationMethod, IdentityVerificationOutcome, RegisterDataSourceRequest,
        Request, RequestType, Requester, RequesterRole, SourceTaskState, StartProcessingRequest,
        SubmitRequestRequest, VerifyIdentityRequest, dsar_service_client::DsarServiceClient,
    },
};
use custodia_tests::{ADMIN_TOKEN, authed};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::{
    BackendArg,
    server::BenchEnv,
    stats::{header, line, verdict},
};

type Client = DsarServiceClient<Channel>;

/// Options of `loadgen dsar`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database backend of custodia (the three sources are always SQLite files).
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Records of the subject across the three sources (30..=1,000,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(30..=1_000_000))]
    records: u64,
    /// Records of other people in each source, which the export must leave out.
    #[arg(long, default_value_t = 1_000)]
    others: u64,
    /// `dsar.poll_interval_ms` of the server. StartProcessing and every finished
    /// source task wake the worker at once, so this only bounds how late work
    /// found by the clock alone (retries, expiry) starts.
    #[arg(long, default_value_t = 1_000)]
    poll_interval_ms: u64,
    /// Database pool size of the server (production default: 16).
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
}

const SUBJECT_EMAIL: &str = "ada@example.edu";
const STUDENT_NUMBER: &str = "AB1234";
/// GetRequest polling period while waiting for the package.
const POLL: Duration = Duration::from_millis(2);
/// Give up waiting for the package after this long.
const LIMIT: Duration = Duration::from_secs(600);

/// The mailing-tool stand-in: one row per send, open or click, found by email.
const MAILING_SCHEMA: &str = r#"
CREATE TABLE mail_events (
    id INTEGER PRIMARY KEY,
    email TEXT,
    campaign TEXT,
    event TEXT,
    user_agent TEXT,
    occurred_at TEXT
);
CREATE INDEX mail_events_email ON mail_events (email);
"#;

const MAILING_CONFIG: &str = r#"
display_name = "Mailing tool"

[auth.principals.dsar]
token = "test-dsar-connector-token-0123456789"
scopes = ["connector.read", "connector.write"]

[[tables]]
name = "mail_events"
category = "email_activity"
description = "Newsletter sends, opens and clicks"
purposes = ["purposes/newsletter"]
recipients = ["Mailing provider (processor)"]
primary_key = "id"
identifiers = { email = "email" }
created_column = "occurred_at"
retention = { anchor_column = "occurred_at", anchor = "collection", period = "P13M" }
"#;

/// Indexes a real CRM and Moodle have on their foreign keys.
const CRM_INDEXES: &str = "CREATE INDEX interactions_contact ON interactions (contact_id);
CREATE INDEX invoices_contact ON invoices (contact_id);
CREATE INDEX contacts_email ON contacts (email);";
const MOODLE_INDEXES: &str = "CREATE INDEX grades_user ON mdl_grade_grades (userid);
CREATE INDEX log_user ON mdl_logstore_standard_log (userid);
CREATE INDEX user_email ON mdl_user (email);";

/// `INSERT INTO {table} ({columns}) SELECT {select} FROM n` over `n(i)` = 1..=count.
fn insert_series(table: &str, columns: &str, select: &str, count: u64) -> String {
    if count == 0 {
        return String::new();
    }
    format!(
        "INSERT INTO {table} ({columns}) WITH RECURSIVE n(i) AS \
         (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) SELECT {select} FROM n;\n"
    )
}

/// How the subject's records are spread.
#[derive(Debug, Clone, Copy)]
struct Split {
    crm: u64,
    moodle: u64,
    mailing: u64,
}

impl Split {
    fn of(total: u64) -> Self {
        let crm = total / 3;
        let moodle = total / 3;
        Self {
            crm,
            moodle,
            mailing: total - crm - moodle,
        }
    }
}

/// CRM: the contact, 1 invoice in 20, the rest interactions; `others` other
/// contacts with one interaction each.
fn crm_seed(n: u64, others: u64) -> String {
    let invoices = (n - 1) / 20;
    let interactions = n - 1 - invoices;
    let mut s = String::from("BEGIN;\n");
    s.push_str(
        "INSERT INTO contacts (id, email, first_name, last_name, phone, created_at, updated_at, last_activity_at) \
         VALUES (1, 'ada@example.edu', 'Ada', 'Lovelace', '+33 6 12 34 56 78', '2020-01-15T10:00:00Z', '2024-05-01T08:30:00Z', '2026-06-01T00:00:00Z');\n",
    );
    s.push_str(&insert_series(
        "contacts",
        "id, email, first_name, last_name, created_at, updated_at, last_activity_at",
        "i + 1, 'person' || i || '@example.edu', 'First' || i, 'Last' || i, \
         '2021-02-01T10:00:00Z', '2021-02-01T10:00:00Z', '2026-01-01T00:00:00Z'",
        others,
    ));
    s.push_str(&insert_series(
        "interactions",
        "contact_id, channel, note, occurred_at",
        "1, CASE i % 3 WHEN 0 THEN 'email' WHEN 1 THEN 'phone' ELSE 'meeting' END, \
         'Follow-up #' || i || ' about the application and the scholarship', \
         strftime('%Y-%m-%dT%H:%M:%SZ', 1700000000 + i * 600, 'unixepoch')",
        interactions,
    ));
    s.push_str(&insert_series(
        "interactions",
        "contact_id, channel, note, occurred_at",
        "i + 1, 'email', 'enquiry', '2025-05-01T09:00:00Z'",
        others,
    ));
    s.push_str(&insert_series(
        "invoices",
        "contact_id, billing_email, billing_name, amount_cents, issued_at",
        "1, 'ada@example.edu', 'Ada Lovelace', 1000 + i, \
         strftime('%Y-%m-%d', 1600000000 + i * 86400, 'unixepoch')",
        invoices,
    ));
    s.push_str("COMMIT;\n");
    s
}

/// Moodle: the account, 1 grade in 5, the rest activity log; `others` other
/// accounts with one log row each.
fn moodle_seed(n: u64, others: u64) -> String {
    let grades = (n - 1) / 5;
    let logs = n - 1 - grades;
    let mut s = String::from("BEGIN;\n");
    s.push_str(
        "INSERT INTO mdl_user (id, username, email, idnumber, firstname, lastname, timecreated, timemodified, lastaccess) \
         VALUES (7, 'ada', 'ada@example.edu', 'AB1234', 'Ada', 'Lovelace', 1700000000, 1700000000, 1760000000);\n",
    );
    s.push_str(&insert_series(
        "mdl_user",
        "id, username, email, idnumber, firstname, lastname, timecreated, timemodified, lastaccess",
        "i + 1000, 'user' || i, 'person' || i || '@example.edu', 'ZZ' || i, 'First' || i, \
         'Last' || i, 1700000000, 1700000000, 1760000000",
        others,
    ));
    s.push_str(&insert_series(
        "mdl_grade_grades",
        "userid, itemname, finalgrade, timecreated, timemodified",
        "7, 'Assignment ' || i, (i % 200) / 10.0, 1700000000 + i, 1700000000 + i",
        grades,
    ));
    s.push_str(&insert_series(
        "mdl_logstore_standard_log",
        "userid, eventname, timecreated",
        "7, '\\mod_forum\\event\\discussion_viewed', 1750000000 + i * 60",
        logs,
    ));
    s.push_str(&insert_series(
        "mdl_logstore_standard_log",
        "userid, eventname, timecreated",
        "i + 1000, '\\core\\event\\user_loggedin', 1750000000",
        others,
    ));
    s.push_str("COMMIT;\n");
    s
}

/// Mailing tool: `n` events of the subject, `others` of other people.
fn mailing_seed(n: u64, others: u64) -> String {
    let mut s = String::from("BEGIN;\n");
    s.push_str(&insert_series(
        "mail_events",
        "email, campaign, event, user_agent, occurred_at",
        "'ada@example.edu', 'newsletter-' || (i / 3), \
         CASE i % 3 WHEN 0 THEN 'sent' WHEN 1 THEN 'opened' ELSE 'clicked' END, \
         'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0', \
         strftime('%Y-%m-%dT%H:%M:%SZ', 1760000000 + i * 60, 'unixepoch')",
        n,
    ));
    s.push_str(&insert_series(
        "mail_events",
        "email, campaign, event, occurred_at",
        "'person' || i || '@example.edu', 'newsletter-1', 'sent', '2026-01-01T00:00:00Z'",
        others,
    ));
    s.push_str("COMMIT;\n");
    s
}

/// A `VmHWM` / `VmRSS` line of `/proc/self/status`, in KiB.
fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets `VmHWM` to the current RSS (Linux >= 4.0); false when refused.
fn reset_peak_rss() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .and_then(|mut f| f.write_all(b"5"))
        .is_ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("unknown".into(), |k| {
        format!("{:.1} MiB", k as f64 / 1024.0)
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut env = BenchEnv::new(args.backend.into(), args.db_connections).await;
    env.config.dsar.poll_interval_ms = args.poll_interval_ms;
    for id in ["crm", "moodle", "mailing"] {
        env.config
            .dsar
            .credentials
            .insert(id.to_string(), DSAR_TOKEN.to_string().into());
    }
    let result = run_on(&env, &args).await;
    env.cleanup().await;
    result
}

async fn source(
    schema: &str,
    indexes: &str,
    config: &str,
    seed: String,
) -> anyhow::Result<TestConnector> {
    let c = testing::spawn_sqlite(&format!("{schema}\n{indexes}"), config).await?;
    c.execute(&seed).await?;
    Ok(c)
}

async fn register(c: &mut Client, id: &str, endpoint: &str) -> anyhow::Result<()> {
    c.register_data_source(authed(
        RegisterDataSourceRequest {
            data_source_id: id.into(),
            data_source: Some(DataSource {
                display_name: id.into(),
                endpoint: endpoint.into(),
                credentials_ref: format!("config:{id}"),
                capabilities: [Capability::Export, Capability::Erase]
                    .iter()
                    .map(|c| *c as i32)
                    .collect(),
                ..Default::default()
            }),
            request_id: String::new(),
        },
        ADMIN_TOKEN,
    ))
    .await?;
    Ok(())
}

async fn get(c: &mut Client, name: &str) -> anyhow::Result<Request> {
    c.get_request(authed(GetRequestRequest { name: name.into() }, ADMIN_TOKEN))
        .await?
        .into_inner()
        .request
        .ok_or_else(|| anyhow::anyhow!("GetRequest without a request"))
}

/// A submitted and verified access request for the subject.
async fn verified_request(c: &mut Client) -> anyhow::Result<Request> {
    let r = c
        .submit_request(authed(
            SubmitRequestRequest {
                request: Some(Request {
                    r#type: RequestType::Access as i32,
                    subject_identifiers: vec![
                        SubjectRef {
                            r#type: "email".into(),
                            value: SUBJECT_EMAIL.into(),
                        },
                        SubjectRef {
                            r#type: "student_number".into(),
                            value: STUDENT_NUMBER.into(),
                        },
                    ],
                    requester: Some(Requester {
                        role: RequesterRole::Subject as i32,
                        ..Default::default()
                    }),
                    details: "Please send me everything you hold about me".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner()
        .request
        .ok_or_else(|| anyhow::anyhow!("SubmitRequest without a request"))?;
    c.verify_identity(authed(
        VerifyIdentityRequest {
            name: r.name.clone(),
            verification: Some(IdentityVerification {
                method: IdentityVerificationMethod::AuthenticatedAccount as i32,
                outcome: IdentityVerificationOutcome::Verified as i32,
                description: "Logged in through the student portal".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        },
        ADMIN_TOKEN,
    ))
    .await?;
    Ok(r)
}

/// What GetExport gave.
struct Downloaded {
    size: u64,
    sha256: String,
    took: Duration,
    manifest: serde_json::Value,
}

/// Streams the package to a file in `dir`, hashing it on the way, then reads
/// `manifest.json` back from the zip.
async fn download(c: &mut Client, name: &str, dir: &std::path::Path) -> anyhow::Result<Downloaded> {
    let t0 = Instant::now();
    let mut stream = c
        .get_export(authed(
            GetExportRequest {
                name: format!("{name}/export"),
            },
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner();
    let path = dir.join("export.zip");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut hash = Sha256::new();
    let mut size = 0u64;
    while let Some(m) = stream.message().await? {
        hash.update(&m.chunk);
        size += m.chunk.len() as u64;
        file.write_all(&m.chunk)?;
    }
    file.flush()?;
    drop(file);
    let took = t0.elapsed();
    let manifest = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&path)?)?;
        let mut text = String::new();
        zip.by_name("manifest.json")?.read_to_string(&mut text)?;
        Ok(serde_json::from_str(&text)?)
    })
    .await??;
    Ok(Downloaded {
        size,
        sha256: hex::encode(hash.finalize()),
        took,
        manifest,
    })
}

async fn run_on(env: &BenchEnv, args: &Args) -> anyhow::Result<()> {
    let split = Split::of(args.records);
    eprintln!(
        "seeding {} records (crm {}, moodle {}, mailing {}) ...",
        args.records, split.crm, split.moodle, split.mailing
    );
    let t0 = Instant::now();
    let (crm, moodle, mailing) = tokio::try_join!(
        source(
            CRM_SCHEMA,
            CRM_INDEXES,
            CRM_CONFIG,
            crm_seed(split.crm, args.others)
        ),
        source(
            MOODLE_SCHEMA,
            MOODLE_INDEXES,
            MOODLE_CONFIG,
            moodle_seed(split.moodle, args.others)
        ),
        source(
            MAILING_SCHEMA,
            "",
            MAILING_CONFIG,
            mailing_seed(split.mailing, args.others)
        ),
    )?;
    let seeding = t0.elapsed();

    let server = env
        .start_services(&[
            custodia_audit_log::SERVICE,
            custodia_consent::SERVICE,
            custodia_dsar::SERVICE,
        ])
        .await?;
    let mut c =
        DsarServiceClient::new(server.channel().await?).max_decoding_message_size(64 * 1024 * 1024);
    for (id, s) in [("crm", &crm), ("moodle", &moodle), ("mailing", &mailing)] {
        register(&mut c, id, &s.endpoint).await?;
    }
    let r = verified_request(&mut c).await?;

    eprintln!("StartProcessing and waiting for the package ...");
    let rss_before = proc_status_kib("VmRSS");
    let peak_since_start = proc_status_kib("VmHWM");
    let reset = reset_peak_rss();
    let started_at = chrono::Utc::now();
    let t0 = Instant::now();
    c.start_processing(authed(
        StartProcessingRequest {
            name: r.name.clone(),
            request_id: String::new(),
        },
        ADMIN_TOKEN,
    ))
    .await?;
    let mut polls = 0u64;
    let ready = loop {
        let got = get(&mut c, &r.name).await?;
        polls += 1;
        let export = got.export.as_ref().map(|e| e.state());
        if export == Some(ExportState::Ready) {
            break got;
        }
        if matches!(export, Some(ExportState::Failed | ExportState::Expired))
            || got
                .source_tasks
                .iter()
                .any(|t| t.state() == SourceTaskState::Failed)
        {
            anyhow::bail!("the request did not produce a package: {got:#?}");
        }
        anyhow::ensure!(
            t0.elapsed() < LIMIT,
            "no package within {LIMIT:?}: {got:#?}"
        );
        tokio::time::sleep(POLL).await;
    };
    let to_ready = t0.elapsed();
    let peak_during = proc_status_kib("VmHWM");

    let dir = tempfile::tempdir()?;
    let got = download(&mut c, &r.name, dir.path()).await?;
    let peak_after_download = proc_status_kib("VmHWM");
    server.stop().await?;
    for s in [crm, moodle, mailing] {
        s.stop().await;
    }

    let package = ready.export.clone().unwrap_or_default();
    let per_source: Vec<(String, i64)> = got.manifest["sources"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["data_source"].as_str().unwrap_or("?").to_string(),
                        s["record_count"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let external: i64 = per_source
        .iter()
        .filter(|(s, _)| !s.starts_with("dataSources/custodia-"))
        .map(|(_, n)| n)
        .sum();
    let complete = external == args.records as i64
        && got.size == package.size_bytes as u64
        && got.sha256 == package.sha256
        && got.manifest["record_count"].as_i64() == Some(package.record_count);
    let target = if args.records <= 10_000 {
        Some(Duration::from_secs(1))
    } else if args.records <= 100_000 {
        Some(Duration::from_secs(10))
    } else {
        None
    };

    header(&format!("dsar access export ({:?})", env.backend));
    line("store", env.describe());
    line(
        "sources",
        format!(
            "3 reference SQL connectors over SQLite, in process: crm {}, moodle {}, mailing {} \
             subject records (+{} other people each); + custodia-consent, custodia-audit-log",
            split.crm, split.moodle, split.mailing, args.others
        ),
    );
    line(
        "worker",
        format!(
            "dsar.poll_interval_ms = {} (StartProcessing and each finished task wake it at once)",
            args.poll_interval_ms
        ),
    );
    line("seeding", format!("{:.2} s", seeding.as_secs_f64()));
    header("StartProcessing -> export READY");
    // Server-side times (same machine, same wall clock) split the figure.
    let after_start = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
            .map_or("?".to_string(), |t| {
                format!(
                    "{:.3} s",
                    (t - started_at).num_microseconds().unwrap_or(0) as f64 / 1e6
                )
            })
    };
    for t in &ready.source_tasks {
        line(
            &t.data_source,
            format!(
                "{:?}, {} records, done at +{}",
                t.state(),
                t.exported_record_count,
                after_start(&t.complete_time)
            ),
        );
    }
    line(
        "package built at",
        format!("+{}", after_start(&package.create_time)),
    );
    line(
        "records in the package",
        format!(
            "{} ({} from the three sources, expected {}: {})",
            package.record_count,
            external,
            args.records,
            if external == args.records as i64 {
                "ok"
            } else {
                "WRONG"
            }
        ),
    );
    line(
        "time to READY",
        match target {
            Some(t) => format!(
                "{:.3} s [target <= {} s: {}]",
                to_ready.as_secs_f64(),
                t.as_secs(),
                verdict(to_ready <= t && complete)
            ),
            None => format!("{:.3} s (no target above 100,000)", to_ready.as_secs_f64()),
        },
    );
    line(
        "throughput",
        format!(
            "{:.0} records/s ({polls} GetRequest polls)",
            package.record_count as f64 / to_ready.as_secs_f64()
        ),
    );
    header("memory (VmHWM of the whole process)");
    line("RSS before StartProcessing", mib(rss_before));
    line("peak before (seeding, startup)", mib(peak_since_start));
    if reset {
        line("peak while processing", mib(peak_during));
        line("peak incl. GetExport", mib(peak_after_download));
    } else {
        line(
            "peak (clear_refs refused)",
            format!("{} (includes seeding)", mib(peak_after_download)),
        );
    }
    header("GetExport");
    line(
        "package",
        format!(
            "{} bytes ({:.1} MiB), SHA-256 {}",
            got.size,
            got.size as f64 / (1024.0 * 1024.0),
            if got.sha256 == package.sha256 {
                "matches"
            } else {
                "DIFFERS"
            }
        ),
    );
    line(
        "manifest",
        per_source
            .iter()
            .map(|(s, n)| format!("{} {n}", s.trim_start_matches("dataSources/")))
            .collect::<Vec<_>>()
            .join(", "),
    );
    line(
        "stream time",
        format!(
            "{:.3} s ({:.0} MiB/s)",
            got.took.as_secs_f64(),
            got.size as f64 / (1024.0 * 1024.0) / got.took.as_secs_f64().max(1e-9)
        ),
    );
    anyhow::ensure!(complete, "the package is incomplete or corrupt");
    Ok(())
}
