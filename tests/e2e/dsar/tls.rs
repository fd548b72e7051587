//! `https://` connectors (issue #26): a data source behind an institution's own
//! CA is reached when `[outbound.tls] ca_file` names that CA, and is not when
//! it does not (its certificate is then unknown). The certificates are made in
//! the test.

use custodia_proto::dsar::v1::{RequestType, SourceTaskState};
use custodia_tests::{Backend, TestApp};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use super::{
    connector::FakeSource,
    fanout::{register, wait_for},
    *,
};

/// A CA (PEM) and a `localhost` server identity it signed.
fn pki() -> (String, tonic::transport::Identity) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca_cert.pem(),
        tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem()),
    )
}

async fn app_trusting(ca_file: Option<std::path::PathBuf>) -> TestApp {
    TestApp::spawn_with(
        Backend::Sqlite,
        &[
            custodia_audit_log::SERVICE,
            custodia_consent::SERVICE,
            custodia_dsar::SERVICE,
        ],
        |c| {
            c.dsar.poll_interval_ms = 50;
            c.outbound.tls.ca_file = ca_file;
        },
    )
    .await
}

async fn started_access_request(app: &TestApp, endpoint: &str) -> (Client, String) {
    let mut c = client(app).await;
    register(&mut c, "crm", endpoint, Some(5_000)).await;
    let r = started(&mut c, RequestType::Access, "ada@example.edu").await;
    (c, r.name)
}

fn crm_task(r: &custodia_proto::dsar::v1::Request) -> &custodia_proto::dsar::v1::SourceTask {
    r.source_tasks
        .iter()
        .find(|t| t.data_source.ends_with("/crm"))
        .expect("the crm task")
}

#[tokio::test]
async fn an_https_connector_behind_a_configured_ca_is_reached() {
    let (ca_pem, identity) = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("institution-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let crm = FakeSource::start_tls("ada@example.edu", identity).await;
    assert!(crm.endpoint.starts_with("https://"));

    let app = app_trusting(Some(ca_file)).await;
    let (c, name) = started_access_request(&app, &crm.endpoint).await;
    let done = wait_for(&c, &name, |r| {
        crm_task(r).state() == SourceTaskState::Succeeded
    })
    .await;
    assert_eq!(crm_task(&done).exported_record_count, 2);
    assert_eq!(crm.calls("ExportSubject").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_https_connector_of_an_unknown_ca_is_refused() {
    let (_, identity) = pki();
    let crm = FakeSource::start_tls("ada@example.edu", identity).await;
    let app = app_trusting(None).await;
    let (c, name) = started_access_request(&app, &crm.endpoint).await;
    let failed = wait_for(&c, &name, |r| crm_task(r).last_error.is_some()).await;
    let error = crm_task(&failed).last_error.clone().unwrap();
    assert_eq!(error.code, tonic::Code::Unavailable as i32, "{error:?}");
    assert!(crm.calls("ExportSubject").is_empty(), "never reached");
    app.stop().await;
}
