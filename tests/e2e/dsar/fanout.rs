//! The fan-out to real connector servers: an access request producing a zip
//! whose manifest hashes verify, connectors that hang, fail or answer
//! garbage, retries with backoff, manual handling, erasure listing retained
//! data, restriction, rectification and recipient notifications.

use std::io::Read;

use custodia_proto::{
    connector::v1::Correction,
    dsar::v1::{
        CompleteRequestRequest, DataSource, ExportState, GetExportRequest,
        MarkSourceHandledManuallyRequest, RecipientNotification, RecipientNotificationOutcome,
        RecordRecipientNotificationRequest, RegisterDataSourceRequest, RequestState, RequestType,
        RetrySourceRequest, SourceTaskState,
    },
};
use custodia_tests::{Backend, TestApp, eventually};
use sha2::{Digest, Sha256};
use tonic::Code;

use super::{
    connector::{FakeSource, Mode, every_capability, invoices_kept},
    *,
};

custodia_tests::both_backends!(access_end_to_end, failing_connectors, erasure_and_friends);

pub(super) async fn register(c: &mut Client, id: &str, endpoint: &str, timeout_ms: Option<i64>) {
    register_holding(c, id, endpoint, &["prospects"], &["MailChimp"], timeout_ms).await;
}

/// Registers source `id` at `endpoint` with every capability, holding data of
/// `purposes` (ids) and disclosing it to `recipients`.
pub(super) async fn register_holding(
    c: &mut Client,
    id: &str,
    endpoint: &str,
    purposes: &[&str],
    recipients: &[&str],
    timeout_ms: Option<i64>,
) {
    c.register_data_source(RegisterDataSourceRequest {
        data_source_id: id.into(),
        data_source: Some(DataSource {
            display_name: format!("{id} system"),
            endpoint: endpoint.into(),
            capabilities: every_capability(),
            purposes: purposes.iter().map(|p| format!("purposes/{p}")).collect(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            call_timeout: timeout_ms.map(|ms| prost_types::Duration {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("register");
}

/// Waits until `check` holds for the request.
pub(super) async fn wait_for(c: &Client, name: &str, check: impl Fn(&Request) -> bool) -> Request {
    eventually(|| {
        let mut c = c.clone();
        let name = name.to_string();
        let check = &check;
        async move {
            let r = get(&mut c, &name).await;
            check(&r).then_some(r)
        }
    })
    .await
}

pub(super) fn task<'a>(r: &'a Request, source: &str) -> &'a custodia_proto::dsar::v1::SourceTask {
    r.source_tasks
        .iter()
        .find(|t| t.data_source == format!("dataSources/{source}"))
        .unwrap_or_else(|| panic!("no task for {source}: {:?}", r.source_tasks))
}

async fn download(
    c: &mut Client,
    name: &str,
) -> Result<(custodia_proto::dsar::v1::ExportPackage, Vec<u8>), tonic::Status> {
    let mut stream = c
        .get_export(GetExportRequest {
            name: format!("{name}/export"),
        })
        .await?
        .into_inner();
    let mut package = None;
    let mut bytes = Vec::new();
    while let Some(msg) = stream.message().await? {
        if msg.package.is_some() {
            assert!(package.is_none(), "package only in the first message");
            package = msg.package;
        }
        bytes.extend_from_slice(&msg.chunk);
    }
    Ok((package.expect("package"), bytes))
}

pub(super) async fn complete(c: &mut Client, name: &str) -> Result<Request, tonic::Status> {
    c.complete_request(CompleteRequestRequest {
        name: name.into(),
        response_summary: "Answered".into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().request.unwrap())
}

async fn access_end_to_end(backend: Backend) {
    let app: TestApp = spawn(backend).await;
    let mut c = client(&app).await;
    let crm = FakeSource::start(
        "ada@example.edu",
        &[("contacts", 2), ("invoices", 3)],
        vec![],
    )
    .await;
    let moodle = FakeSource::start("ada@example.edu", &[("enrolments", 20)], vec![]).await;
    register(&mut c, "crm", &crm.endpoint, None).await;
    register(&mut c, "moodle", &moodle.endpoint, None).await;

    let r = received(&mut c, RequestType::Access, "ada@example.edu").await;
    // No data is released before the identity check.
    let err = download(&mut c, &r.name).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["RECEIVED"]);
    let started = verify_and_start(&mut c, &r.name).await;
    assert_eq!(started.source_tasks.len(), 4, "{:?}", started.source_tasks);
    assert_eq!(
        started.export.as_ref().unwrap().state(),
        ExportState::Building
    );

    let ready = wait_for(&c, &r.name, |r| {
        r.export
            .as_ref()
            .is_some_and(|e| e.state() == ExportState::Ready)
    })
    .await;
    for s in ["crm", "moodle", "custodia-consent", "custodia-audit-log"] {
        assert_eq!(task(&ready, s).state(), SourceTaskState::Succeeded, "{s}");
        assert_eq!(task(&ready, s).attempt_count, 1);
    }
    assert_eq!(task(&ready, "crm").exported_record_count, 5);
    assert_eq!(task(&ready, "moodle").exported_record_count, 20);
    let export = ready.export.clone().unwrap();
    assert!(export.record_count >= 25);
    assert!(ready.actions.iter().any(|a| a.action == "export_ready"));
    assert!(
        ready
            .actions
            .iter()
            .any(|a| a.action == "source_exported" && a.data_source == "dataSources/crm")
    );

    // The package holds the subject's whole data: owner-only, like its directory.
    #[cfg(unix)]
    {
        let files = custodia_tests::assert_owner_only(&app.config.data_dir.join("dsar-exports"));
        assert!(
            files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "zip")),
            "{files:?}"
        );
    }
    let (package, zip_bytes) = download(&mut c, &r.name).await.unwrap();
    assert_eq!(package.size_bytes as usize, zip_bytes.len());
    assert_eq!(package.sha256, hex::encode(Sha256::digest(&zip_bytes)));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut manifest = String::new();
    zip.by_name("manifest.json")
        .unwrap()
        .read_to_string(&mut manifest)
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest["request"], r.name.as_str());
    assert!(manifest["generated_at"].is_string());
    let files = manifest["files"].as_array().unwrap();
    assert!(files.len() >= 9, "{files:?}");
    for f in files {
        let mut body = Vec::new();
        zip.by_name(f["path"].as_str().unwrap())
            .unwrap()
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&body)),
            f["sha256"].as_str().unwrap(),
            "{f}"
        );
    }
    let sources = manifest["sources"].as_array().unwrap();
    let crm_entry = sources
        .iter()
        .find(|s| s["data_source"] == "dataSources/crm")
        .unwrap();
    assert_eq!(crm_entry["record_count"], 5);
    assert_eq!(crm_entry["categories"]["invoices"], 3);
    let mut data = String::new();
    zip.by_name("data/moodle.json")
        .unwrap()
        .read_to_string(&mut data)
        .unwrap();
    let records: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(records.as_array().unwrap().len(), 20);
    assert_eq!(records[0]["fields"]["email"], "ada@example.edu");
    let mut csv = String::new();
    zip.by_name("data/crm.csv")
        .unwrap()
        .read_to_string(&mut csv)
        .unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    let mut summary = String::new();
    zip.by_name("summary.md")
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    for needle in [
        "Purposes",
        "Recipients (c)",
        "Ministry of Education",
        "P3Y",
        "supervisory authority",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle}:\n{summary}"
        );
    }

    let downloaded = get(&mut c, &r.name).await;
    assert!(
        downloaded
            .actions
            .iter()
            .any(|a| a.action == "export_downloaded")
    );
    let done = complete(&mut c, &r.name).await.unwrap();
    assert_eq!(done.state(), RequestState::Completed);

    // The package expires and is deleted.
    app.clock.advance(chrono::Duration::days(8));
    let expired = wait_for(&c, &r.name, |r| {
        r.export
            .as_ref()
            .is_some_and(|e| e.state() == ExportState::Expired)
    })
    .await;
    assert!(expired.actions.iter().any(|a| a.action == "export_expired"));
    let err = download(&mut c, &r.name).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["EXPIRED"]);
    let dir = app.config.data_dir.join("dsar-exports");
    let leftover: Vec<_> = walk(&dir);
    assert!(leftover.is_empty(), "files left after expiry: {leftover:?}");
    app.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn failing_connectors(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    let hang = FakeSource::start("ada@example.edu", &[("contacts", 1)], vec![]).await;
    let error = FakeSource::start("ada@example.edu", &[("contacts", 1)], vec![]).await;
    let garbage = FakeSource::start("ada@example.edu", &[("contacts", 1)], vec![]).await;
    hang.set(Mode::Hang);
    error.set(Mode::Error);
    garbage.set(Mode::Garbage);
    register(&mut c, "hang", &hang.endpoint, Some(300)).await;
    register(&mut c, "error", &error.endpoint, None).await;
    register(&mut c, "garbage", &garbage.endpoint, None).await;

    let r = started(&mut c, RequestType::Access, "ada@example.edu").await;
    let failed = wait_for(&c, &r.name, |r| {
        ["hang", "error", "garbage"]
            .iter()
            .all(|s| task(r, s).state() == SourceTaskState::Failed)
    })
    .await;
    assert_eq!(
        failed.state(),
        RequestState::InProgress,
        "the request stays open"
    );
    let err_of = |s: &str| task(&failed, s).last_error.clone().unwrap();
    assert_eq!(err_of("hang").code, Code::DeadlineExceeded as i32);
    assert_eq!(err_of("error").code, Code::Unavailable as i32);
    assert!(err_of("error").message.contains("database is down"));
    assert_eq!(err_of("garbage").code, Code::DataLoss as i32);
    assert!(task(&failed, "error").next_attempt_time.is_some());
    assert!(failed.actions.iter().any(|a| a.action == "source_failed"
        && a.data_source == "dataSources/garbage"
        && a.result() == custodia_proto::dsar::v1::ActionResult::Failed));
    assert_eq!(
        failed.export.as_ref().unwrap().state(),
        ExportState::Building
    );
    // Nothing is marked done that was not done.
    let err = complete(&mut c, &r.name).await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["IN_PROGRESS", "dataSources/error", "FAILED"],
    );

    // The error clears; the retry comes with the backoff, by the clock.
    error.set(Mode::Normal);
    let calls = error.calls("ExportSubject").len();
    let garbage_attempts = task(&failed, "garbage").attempt_count;
    app.clock.advance(chrono::Duration::seconds(61));
    let retried = wait_for(&c, &r.name, |r| {
        task(r, "error").state() == SourceTaskState::Succeeded
            // Garbage came due too: its automatic retry (still garbage) is over, so
            // the retry asked for below finds the task FAILED, not RUNNING.
            && task(r, "garbage").attempt_count > garbage_attempts
            && task(r, "garbage").state() == SourceTaskState::Failed
    })
    .await;
    assert!(task(&retried, "error").attempt_count >= 2);
    assert!(error.calls("ExportSubject").len() > calls);

    // Garbage fixed: retried at once on request.
    garbage.set(Mode::Normal);
    c.retry_source(RetrySourceRequest {
        name: r.name.clone(),
        data_source: "dataSources/garbage".into(),
        request_id: String::new(),
    })
    .await
    .unwrap();
    wait_for(&c, &r.name, |r| {
        task(r, "garbage").state() == SourceTaskState::Succeeded
    })
    .await;
    // A retry of a task that is not failed is refused.
    let err = c
        .retry_source(RetrySourceRequest {
            name: r.name.clone(),
            data_source: "dataSources/garbage".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["SUCCEEDED"]);

    // The hanging system is handled by hand; then the export is built.
    let manual = c
        .mark_source_handled_manually(MarkSourceHandledManuallyRequest {
            name: r.name.clone(),
            data_source: "dataSources/hang".into(),
            reason: "Connector down for maintenance".into(),
            description: "Extract sent by the CRM team on paper".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let t = task(&manual, "hang");
    assert_eq!(t.state(), SourceTaskState::HandledManually);
    let m = t.manual_handling.clone().unwrap();
    assert_eq!(m.actor.unwrap().principal, "admin");
    assert_eq!(m.reason, "Connector down for maintenance");
    wait_for(&c, &r.name, |r| {
        r.export
            .as_ref()
            .is_some_and(|e| e.state() == ExportState::Ready)
    })
    .await;
    assert_eq!(
        complete(&mut c, &r.name).await.unwrap().state(),
        RequestState::Completed
    );
    app.stop().await;
}

async fn erasure_and_friends(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    let until = ts(at("2035-12-31T00:00:00Z"));
    let crm = FakeSource::start(
        "ada@example.edu",
        &[("contacts", 2)],
        vec![invoices_kept(until)],
    )
    .await;
    register(&mut c, "crm", &crm.endpoint, None).await;

    // Erasure: every source, custodia's own records included; retained data listed.
    let r = started(&mut c, RequestType::Erasure, "ada@example.edu").await;
    assert_eq!(r.source_tasks.len(), 3, "{:?}", r.source_tasks);
    assert!(r.export.is_none());
    let done = wait_for(&c, &r.name, |r| {
        r.source_tasks
            .iter()
            .all(|t| t.state() == SourceTaskState::Succeeded)
    })
    .await;
    let t = task(&done, "crm");
    assert_eq!(t.affected[0].category, "contacts");
    assert_eq!(t.affected[0].count, 2);
    assert_eq!(done.retained.len(), 1, "{:?}", done.retained);
    let kept = &done.retained[0];
    assert_eq!(kept.category, "invoices");
    assert_eq!(kept.record_count, 3);
    assert_eq!(
        kept.ground(),
        custodia_proto::common::v1::RetentionGround::LegalObligation
    );
    assert_eq!(time_of(&kept.retain_until_time), at("2035-12-31T00:00:00Z"));
    assert!(
        done.actions
            .iter()
            .any(|a| a.action == "source_erased" && a.description.contains("kept"))
    );
    // Exactly one erasure call, with the deterministic key.
    let calls = crm.calls("EraseSubject");
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].starts_with("dsar-") && calls[0].ends_with("-crm"),
        "{calls:?}"
    );

    // Recipients told (Art. 19).
    let notified = c
        .record_recipient_notification(RecordRecipientNotificationRequest {
            name: r.name.clone(),
            notification: Some(RecipientNotification {
                recipient: "MailChimp".into(),
                outcome: RecipientNotificationOutcome::Notified as i32,
                method: "API call".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(notified.recipient_notifications.len(), 1);
    assert_eq!(
        notified.recipient_notifications[0]
            .actor
            .as_ref()
            .unwrap()
            .principal,
        "admin"
    );
    assert_eq!(
        complete(&mut c, &r.name).await.unwrap().state(),
        RequestState::Completed
    );

    // An access request cannot record recipient notifications.
    let access = started(&mut c, RequestType::Objection, "ada@example.edu").await;
    let err = c
        .record_recipient_notification(RecordRecipientNotificationRequest {
            name: access.name.clone(),
            notification: Some(RecipientNotification {
                recipient: "MailChimp".into(),
                outcome: RecipientNotificationOutcome::Notified as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["IN_PROGRESS"]);

    // Restriction: external sources only.
    let r = started(&mut c, RequestType::Restriction, "ada@example.edu").await;
    assert_eq!(r.source_tasks.len(), 1);
    let done = wait_for(&c, &r.name, |r| {
        task(r, "crm").state() == SourceTaskState::Succeeded
    })
    .await;
    assert_eq!(task(&done, "crm").affected[0].count, 2);
    assert_eq!(crm.calls("RestrictSubject").len(), 1);

    // Rectification carries the corrections.
    let mut rect = new_request(RequestType::Rectification, "ada@example.edu");
    rect.corrections = vec![Correction {
        category: "contacts".into(),
        field: "last_name".into(),
        record_id: String::new(),
        value: Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("Lovelace".into())),
        }),
    }];
    let r = submit(&mut c, rect, "").await.unwrap();
    verify_and_start(&mut c, &r.name).await;
    let done = wait_for(&c, &r.name, |r| {
        task(r, "crm").state() == SourceTaskState::Succeeded
    })
    .await;
    let t = task(&done, "crm");
    assert_eq!(t.correction_results.len(), 1);
    assert!(t.correction_results[0].applied);
    app.stop().await;
}
