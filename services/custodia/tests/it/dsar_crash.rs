//! kill -9 of custodia during a dsar erasure fan-out (issue 5, reliability):
//! on restart the request resumes, the interrupted source is asked again with
//! the same idempotency key (so it erases once and counts once), the source
//! that had answered is not asked again, and none is skipped.
//!
//! The sources are the reference SQL connector as the "CRM" and "Moodle" (real
//! gRPC servers in this process, each over its own SQLite file), each behind a
//! small proxy that records every EraseSubject call by `request_id`. The CRM's
//! proxy forwards the first call, so the CRM really erases and records its
//! answer under the key, then holds the answer back: custodia is killed while
//! that call is in flight, as if it died just before the answer arrived.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use custodia_connector_sql::testing::{
    self, CRM_CONFIG, CRM_SCHEMA, DSAR_TOKEN, MOODLE_CONFIG, MOODLE_SCHEMA,
};
use custodia_core::ServiceName;
use custodia_proto::{
    common::v1::SubjectRef,
    connector::v1::{
        self as cpb, Capability,
        data_source_client::DataSourceClient,
        data_source_server::{DataSource as DataSourceApi, DataSourceServer},
    },
    dsar::v1::{
        CompleteRequestRequest, DataSource, GetRequestRequest, IdentityVerification,
        IdentityVerificationMethod, IdentityVerificationOutcome, RegisterDataSourceRequest,
        Request as DsarRequest, RequestState, RequestType, Requester, RequesterRole,
        SourceTaskState, StartProcessingRequest, SubmitRequestRequest, VerifyIdentityRequest,
        dsar_service_client::DsarServiceClient,
    },
};
use custodia_tests::authed;
use tonic::{Request, Response, Status, transport::Channel};

use crate::crash::{TOKEN, connect_service, free_port};

/// Environment variable holding the connectors' token (`credentials_ref = "env:..."`).
const TOKEN_VAR: &str = "DSAR_CRASH_CONNECTOR_TOKEN";

/// Starts the real binary with audit-log, consent and dsar over `data_dir`.
fn start(data_dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_custodia"))
        .args(["serve", "audit-log", "consent", "dsar", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .env("CUSTODIA_ADMIN_TOKEN", TOKEN)
        .env("CUSTODIA__DSAR__POLL_INTERVAL_MS", "50")
        .env(TOKEN_VAR, DSAR_TOKEN)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("custodia starts")
}

/// What a proxy saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// `request_id` of every EraseSubject call, in order.
    erase_calls: Vec<String>,
    /// Every answer the connector gave to those calls.
    answers: Vec<cpb::EraseSubjectResponse>,
}

/// A DataSource forwarding to a reference SQL connector, recording EraseSubject
/// calls; with `hold_first`, the first call's answer is never sent back.
#[derive(Clone)]
struct Proxy {
    upstream: String,
    hold_first: bool,
    seen: Arc<Mutex<Seen>>,
    /// Signalled when the held call has been carried out by the connector.
    held: Arc<tokio::sync::Notify>,
}

impl Proxy {
    async fn client(&self) -> Result<DataSourceClient<Channel>, Status> {
        DataSourceClient::connect(self.upstream.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

fn upstream<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {DSAR_TOKEN}").parse().expect("header"),
    );
    r
}

// The other RPCs answer UNIMPLEMENTED: an erasure asks none of them.
#[tonic::async_trait]
impl DataSourceApi for Proxy {
    type ExportSubjectStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<cpb::ExportSubjectResponse, Status>> + Send>,
    >;

    async fn export_subject(
        &self,
        _: Request<cpb::ExportSubjectRequest>,
    ) -> Result<Response<Self::ExportSubjectStream>, Status> {
        Err(Status::unimplemented("the proxy forwards erasures only"))
    }

    async fn restrict_subject(
        &self,
        _: Request<cpb::RestrictSubjectRequest>,
    ) -> Result<Response<cpb::RestrictSubjectResponse>, Status> {
        Err(Status::unimplemented("the proxy forwards erasures only"))
    }

    async fn rectify_subject(
        &self,
        _: Request<cpb::RectifySubjectRequest>,
    ) -> Result<Response<cpb::RectifySubjectResponse>, Status> {
        Err(Status::unimplemented("the proxy forwards erasures only"))
    }

    async fn apply_retention(
        &self,
        _: Request<cpb::ApplyRetentionRequest>,
    ) -> Result<Response<cpb::ApplyRetentionResponse>, Status> {
        Err(Status::unimplemented("the proxy forwards erasures only"))
    }

    async fn get_capabilities(
        &self,
        request: Request<cpb::GetCapabilitiesRequest>,
    ) -> Result<Response<cpb::GetCapabilitiesResponse>, Status> {
        self.client()
            .await?
            .get_capabilities(upstream(request.into_inner()))
            .await
    }

    async fn erase_subject(
        &self,
        request: Request<cpb::EraseSubjectRequest>,
    ) -> Result<Response<cpb::EraseSubjectResponse>, Status> {
        let request = request.into_inner();
        let first = {
            let mut seen = self.seen.lock().unwrap();
            seen.erase_calls.push(request.request_id.clone());
            seen.erase_calls.len() == 1
        };
        let answer = self
            .client()
            .await?
            .erase_subject(upstream(request))
            .await?
            .into_inner();
        self.seen.lock().unwrap().answers.push(answer.clone());
        if self.hold_first && first {
            // Erased and recorded by the connector; the answer never leaves.
            self.held.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(Response::new(answer))
    }
}

/// Serves `proxy` on 127.0.0.1:0; returns its endpoint.
async fn serve(proxy: Proxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DataSourceServer::new(proxy))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    endpoint
}

fn proxy(upstream: &str, hold_first: bool) -> Proxy {
    Proxy {
        upstream: upstream.into(),
        hold_first,
        seen: Arc::default(),
        held: Arc::default(),
    }
}

const CRM_SEED: &str = r#"
INSERT INTO contacts (id, email, first_name, last_name, created_at, updated_at, last_activity_at)
VALUES (1, 'ada@example.edu', 'Ada', 'Lovelace', '2020-01-15T10:00:00Z', '2024-05-01T08:30:00Z', '2025-06-01T00:00:00Z'),
       (2, 'bob@example.edu', 'Bob', 'Martin', '2021-02-01T10:00:00Z', '2021-02-01T10:00:00Z', '2026-01-01T00:00:00Z');
INSERT INTO interactions (contact_id, channel, note, occurred_at)
VALUES (1, 'email', 'enquiry', '2025-03-01T09:00:00Z'), (1, 'phone', 'call', '2025-04-01T09:00:00Z'),
       (2, 'email', 'bob asks', '2025-05-01T09:00:00Z');
INSERT INTO invoices (id, contact_id, billing_email, billing_name, amount_cents, issued_at)
VALUES (10, 1, 'ada@example.edu', 'Ada Lovelace', 120000, '2024-03-01');
"#;

const MOODLE_SEED: &str = r#"
INSERT INTO mdl_user (id, username, email, idnumber, firstname, lastname, timecreated, timemodified, lastaccess)
VALUES (7, 'ada', 'ada@example.edu', 'AB1234', 'Ada', 'Lovelace', 1700000000, 1700000000, 1760000000);
INSERT INTO mdl_grade_grades (userid, itemname, finalgrade, timecreated, timemodified)
VALUES (7, 'Analytical engines', 19.5, 1700000000, 1700000000);
"#;

async fn register(c: &mut DsarServiceClient<Channel>, id: &str, endpoint: &str) {
    c.register_data_source(authed(
        RegisterDataSourceRequest {
            data_source_id: id.into(),
            data_source: Some(DataSource {
                display_name: id.into(),
                endpoint: endpoint.into(),
                credentials_ref: format!("env:{TOKEN_VAR}"),
                capabilities: vec![Capability::Erase as i32],
                ..Default::default()
            }),
            request_id: String::new(),
        },
        TOKEN,
    ))
    .await
    .expect("register");
}

async fn get(c: &mut DsarServiceClient<Channel>, name: &str) -> DsarRequest {
    c.get_request(authed(GetRequestRequest { name: name.into() }, TOKEN))
        .await
        .expect("get")
        .into_inner()
        .request
        .expect("request")
}

/// Polls GetRequest (every 20 ms, at most 30 s) until `check` holds.
async fn wait_for(
    c: &mut DsarServiceClient<Channel>,
    name: &str,
    what: &str,
    check: impl Fn(&DsarRequest) -> bool,
) -> DsarRequest {
    for _ in 0..1500 {
        let r = get(c, name).await;
        if check(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not reached within 30 s: {:#?}", get(c, name).await);
}

fn task<'a>(r: &'a DsarRequest, source: &str) -> &'a custodia_proto::dsar::v1::SourceTask {
    r.source_tasks
        .iter()
        .find(|t| t.data_source == format!("dataSources/{source}"))
        .unwrap_or_else(|| panic!("no task for {source}: {:?}", r.source_tasks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_erasure_fan_out_resumes_without_double_count_or_skip() {
    let crm = testing::spawn_sqlite(CRM_SCHEMA, CRM_CONFIG).await.unwrap();
    crm.execute(CRM_SEED).await.unwrap();
    let moodle = testing::spawn_sqlite(MOODLE_SCHEMA, MOODLE_CONFIG)
        .await
        .unwrap();
    moodle.execute(MOODLE_SEED).await.unwrap();
    let crm_proxy = proxy(&crm.endpoint, true);
    let moodle_proxy = proxy(&moodle.endpoint, false);
    let crm_endpoint = serve(crm_proxy.clone()).await;
    let moodle_endpoint = serve(moodle_proxy.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port);
    let mut c = DsarServiceClient::new(connect_service(port, ServiceName::Dsar).await);
    register(&mut c, "crm", &crm_endpoint).await;
    register(&mut c, "moodle", &moodle_endpoint).await;

    let r = c
        .submit_request(authed(
            SubmitRequestRequest {
                request: Some(DsarRequest {
                    r#type: RequestType::Erasure as i32,
                    subject_identifiers: vec![SubjectRef {
                        r#type: "email".into(),
                        value: "ada@example.edu".into(),
                    }],
                    requester: Some(Requester {
                        role: RequesterRole::Subject as i32,
                        ..Default::default()
                    }),
                    details: "Please erase my data".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
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
        TOKEN,
    ))
    .await
    .unwrap();
    c.start_processing(authed(
        StartProcessingRequest {
            name: r.name.clone(),
            request_id: String::new(),
        },
        TOKEN,
    ))
    .await
    .unwrap();

    // The CRM has erased, its answer is held; Moodle has answered and that is
    // recorded. Then the process dies mid-call.
    tokio::time::timeout(Duration::from_secs(30), crm_proxy.held.notified())
        .await
        .expect("the CRM's EraseSubject call is in flight within 30 s");
    let before = wait_for(&mut c, &r.name, "moodle settled", |r| {
        task(r, "moodle").state() == SourceTaskState::Succeeded
    })
    .await;
    assert_eq!(task(&before, "crm").state(), SourceTaskState::Running);
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM contacts WHERE id = 1")
            .await
            .unwrap(),
        0,
        "the CRM erased before the kill"
    );
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    // Restart on the same data dir: the interrupted task is asked again.
    let mut child = start(dir.path(), port);
    let mut c = DsarServiceClient::new(connect_service(port, ServiceName::Dsar).await);
    let done = wait_for(&mut c, &r.name, "every task settled", |r| {
        r.source_tasks.iter().all(|t| {
            matches!(
                t.state(),
                SourceTaskState::Succeeded | SourceTaskState::Failed
            )
        })
    })
    .await;

    // No source skipped: the two connectors and custodia's own records.
    let names: Vec<&str> = done
        .source_tasks
        .iter()
        .map(|t| t.data_source.as_str())
        .collect();
    for s in ["crm", "moodle", "custodia-consent", "custodia-audit-log"] {
        assert_eq!(
            task(&done, s).state(),
            SourceTaskState::Succeeded,
            "{s}: {:?} (tasks: {names:?})",
            task(&done, s)
        );
    }

    // The CRM was asked twice with one key; the second answer is the stored
    // first one, so the erasure happened and was counted once.
    let crm_seen = crm_proxy.seen.lock().unwrap().clone();
    assert_eq!(crm_seen.erase_calls.len(), 2, "{:?}", crm_seen.erase_calls);
    assert_eq!(
        crm_seen.erase_calls[0], crm_seen.erase_calls[1],
        "same idempotency key"
    );
    let key = &crm_seen.erase_calls[0];
    assert!(key.starts_with("dsar-") && key.ends_with("-crm"), "{key}");
    assert_eq!(crm_seen.answers.len(), 2);
    assert_eq!(
        crm_seen.answers[0], crm_seen.answers[1],
        "the repeat is answered from the first erasure, not counted again"
    );
    let crm_task = task(&done, "crm");
    assert_eq!(crm_task.attempt_count, 2, "{crm_task:?}");
    assert_eq!(crm_task.affected, crm_seen.answers[0].erased);
    let count = |category: &str| {
        crm_task
            .affected
            .iter()
            .find(|c| c.category == category)
            .map(|c| c.count)
    };
    assert_eq!(count("contacts"), Some(1), "{:?}", crm_task.affected);
    assert_eq!(count("interactions"), Some(2), "{:?}", crm_task.affected);
    let kept: Vec<_> = done
        .retained
        .iter()
        .filter(|k| k.category == "invoices")
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", done.retained);
    assert_eq!(kept[0].record_count, 1);
    assert!(
        done.actions
            .iter()
            .any(|a| a.action == "source_resumed" && a.data_source.ends_with("/crm")),
        "the resumption is on the record: {:?}",
        done.actions
    );

    // Moodle had answered before the kill: asked once.
    let moodle_seen = moodle_proxy.seen.lock().unwrap().clone();
    assert_eq!(
        moodle_seen.erase_calls.len(),
        1,
        "{:?}",
        moodle_seen.erase_calls
    );
    assert!(moodle_seen.erase_calls[0].ends_with("-moodle"));
    assert_eq!(task(&done, "moodle").attempt_count, 1);

    // The data: Ada's CRM contact and Moodle account are gone, Bob's contact
    // and Ada's invoice (kept by law) remain.
    for (sql, n) in [
        ("SELECT COUNT(*) FROM contacts WHERE id = 1", 0),
        ("SELECT COUNT(*) FROM interactions WHERE contact_id = 1", 0),
        ("SELECT COUNT(*) FROM invoices WHERE id = 10", 1),
        ("SELECT COUNT(*) FROM contacts WHERE id = 2", 1),
    ] {
        assert_eq!(crm.count(sql).await.unwrap(), n, "{sql}");
    }
    assert_eq!(
        moodle
            .count("SELECT COUNT(*) FROM mdl_user WHERE email = 'ada@example.edu'")
            .await
            .unwrap(),
        0
    );

    // Every task settled, so the request can be completed.
    let completed = c
        .complete_request(authed(
            CompleteRequestRequest {
                name: r.name.clone(),
                response_summary: "Erased everywhere; invoices kept by law".into(),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(completed.state(), RequestState::Completed);
    child.kill().unwrap();
    child.wait().unwrap();
}
