//! Data-subject requests through the public gRPC API, on SQLite and
//! PostgreSQL: deadlines, the state machine, bad input, data sources, the
//! fan-out to real connector servers, export packages, erasure and retention.

mod bad_input;
mod connector;
mod data_sources;
mod deadlines;
mod fanout;
mod lifecycle;
mod restart;
mod retention;
mod rights;
mod sql_sources;
mod tls;

use chrono::{DateTime, Utc};
use custodia_core::server::ServiceDef;
use custodia_proto::{
    common::v1::SubjectRef,
    dsar::v1::{
        GetRequestRequest, IdentityVerification, IdentityVerificationMethod,
        IdentityVerificationOutcome, Request, RequestType, Requester, RequesterRole,
        StartProcessingRequest, SubmitRequestRequest, VerifyIdentityRequest,
    },
};
use custodia_tests::{Backend, TestApp, assert_code, at, email, time_of, ts};
use tonic::Status;

type Client = custodia_tests::DsarClient;

/// audit-log, consent and dsar (the built-in sources need the first two).
const SERVICES: &[ServiceDef] = &[
    custodia_audit_log::SERVICE,
    custodia_consent::SERVICE,
    custodia_dsar::SERVICE,
];

/// Starts [`SERVICES`], polling every 50 ms.
async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, SERVICES, |c| {
        c.dsar.poll_interval_ms = 50;
        c.dsar.retry_initial_secs = 60;
        c.dsar.retry_max_secs = 3600;
        c.dsar.export_ttl_secs = 7 * 24 * 3600;
    })
    .await
}

async fn client(app: &TestApp) -> Client {
    app.dsar().await
}

fn new_request(kind: RequestType, subject: &str) -> Request {
    Request {
        r#type: kind as i32,
        subject_identifiers: vec![
            email(subject),
            SubjectRef {
                r#type: "student_number".into(),
                value: "ab1234".into(),
            },
        ],
        requester: Some(Requester {
            role: RequesterRole::Subject as i32,
            ..Default::default()
        }),
        details: "Please send me everything you hold about me".into(),
        ..Default::default()
    }
}

async fn submit(
    client: &mut Client,
    request: Request,
    request_id: &str,
) -> Result<Request, Status> {
    client
        .submit_request(SubmitRequestRequest {
            request: Some(request),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().request.expect("request"))
}

async fn get(client: &mut Client, name: &str) -> Request {
    client
        .get_request(GetRequestRequest { name: name.into() })
        .await
        .expect("get")
        .into_inner()
        .request
        .expect("request")
}

async fn verify(
    client: &mut Client,
    name: &str,
    outcome: IdentityVerificationOutcome,
) -> Result<Request, Status> {
    client
        .verify_identity(VerifyIdentityRequest {
            name: name.into(),
            verification: Some(IdentityVerification {
                method: IdentityVerificationMethod::AuthenticatedAccount as i32,
                outcome: outcome as i32,
                description: "Logged in through the student portal".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().request.expect("request"))
}

async fn start(client: &mut Client, name: &str) -> Result<Request, Status> {
    client
        .start_processing(StartProcessingRequest {
            name: name.into(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().request.expect("request"))
}

/// Submits a new request of `kind` for `subject`, without a request id.
async fn received(client: &mut Client, kind: RequestType, subject: &str) -> Request {
    submit(client, new_request(kind, subject), "")
        .await
        .unwrap()
}

/// Verifies the identity behind request `name` and starts processing it.
async fn verify_and_start(client: &mut Client, name: &str) -> Request {
    verify(client, name, IdentityVerificationOutcome::Verified)
        .await
        .unwrap();
    start(client, name).await.unwrap()
}

/// Submits, verifies and starts a request.
async fn started(client: &mut Client, kind: RequestType, subject: &str) -> Request {
    let r = received(client, kind, subject).await;
    verify_and_start(client, &r.name).await
}
