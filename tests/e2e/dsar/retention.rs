//! Retention runs: the consent register's purpose retention
//! applied through the connectors, dry run first, with counts per source.

use custodia_proto::{
    common::v1::{RetentionAction, RetentionPolicy},
    consent::v1::{CreatePurposeRequest, LawfulBasis, Purpose, PurposeCategory},
    dsar::v1::{
        ApplyRetentionRequest, GetRetentionRunRequest, ListRetentionRunsRequest, RetentionResult,
        RetentionRun, RetentionRunState,
    },
};
use custodia_tests::{Backend, eventually};
use tonic::Code;

use super::{
    connector::{FakeSource, Mode},
    fanout::register,
    *,
};

custodia_tests::both_backends!(retention_runs, scheduled_retention);

async fn purpose(app: &custodia_tests::TestApp, id: &str, period: &str) {
    let mut c = app.consent().await;
    c.create_purpose(CreatePurposeRequest {
        purpose_id: id.into(),
        purpose: Some(Purpose {
            display_name: id.into(),
            lawful_basis: LawfulBasis::LegitimateInterests as i32,
            category: PurposeCategory::Communication as i32,
            retention: Some(RetentionPolicy {
                period: period.into(),
                anchor: "last_activity".into(),
                criteria: "after the last contact".into(),
                action: RetentionAction::Delete as i32,
            }),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("create purpose");
}

async fn run(c: &mut Client, dry_run: bool, request_id: &str) -> RetentionRun {
    let started = c
        .apply_retention(ApplyRetentionRequest {
            dry_run,
            request_id: request_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert!(started.name.starts_with("retentionRuns/"));
    eventually(|| {
        let mut c = c.clone();
        let name = started.name.clone();
        async move {
            let r = c
                .get_retention_run(GetRetentionRunRequest { name })
                .await
                .unwrap()
                .into_inner()
                .run
                .unwrap();
            (r.state() != RetentionRunState::Running).then_some(r)
        }
    })
    .await
}

/// The results of `run` that apply the register's rules.
fn of_register(run: &RetentionRun) -> Vec<&RetentionResult> {
    run.results
        .iter()
        .filter(|r| r.purpose.starts_with("purposes/"))
        .collect()
}

async fn retention_runs(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    purpose(&app, "prospects", "P3Y").await;
    purpose(&app, "browsing", "P13M").await;
    let crm = FakeSource::start("ada@example.edu", &[("contacts", 4)], vec![]).await;
    register(&mut c, "crm", &crm.endpoint, None).await;

    // A dry run only counts.
    let dry = run(&mut c, true, "ret-1").await;
    assert_eq!(dry.state(), RetentionRunState::Succeeded, "{dry:?}");
    assert!(dry.dry_run);
    assert_eq!(dry.actor.as_ref().unwrap().principal, "admin");
    // The CRM holds only the prospects' data: one rule applies (beside
    // custodia's own records, see `own_records_retention`).
    let register = of_register(&dry);
    assert_eq!(register.len(), 1, "{:?}", dry.results);
    let r = register[0];
    assert_eq!(r.data_source, "dataSources/crm");
    assert_eq!(r.purpose, "purposes/prospects");
    assert_eq!(
        time_of(&r.cutoff_time),
        at("2023-11-02T09:00:00Z"),
        "3 years before now"
    );
    assert_eq!(r.matched[0].count, 4);
    assert!(r.deleted.is_empty());
    // The same request_id returns the same run.
    let again = c
        .apply_retention(ApplyRetentionRequest {
            dry_run: true,
            request_id: "ret-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(again.name, dry.name);

    // The real run deletes, recorded with counts.
    app.clock.advance(chrono::Duration::minutes(5));
    let real = run(&mut c, false, "").await;
    assert_eq!(real.state(), RetentionRunState::Succeeded);
    assert_eq!(of_register(&real)[0].deleted[0].count, 4);
    let calls = crm.state.retention.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert!(calls[0].1 && !calls[1].1, "dry run first: {calls:?}");

    // A failing source fails the run, with the error per source.
    crm.set(Mode::Error);
    app.clock.advance(chrono::Duration::minutes(5));
    let failed = run(&mut c, false, "").await;
    assert_eq!(failed.state(), RetentionRunState::Failed);
    let err = of_register(&failed)[0].error.clone().unwrap();
    assert_eq!(err.code, Code::Unavailable as i32);

    // Newest first, paged.
    let page = c
        .list_retention_runs(ListRetentionRunsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = page.runs.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, [failed.name.clone(), real.name.clone()]);
    let rest = c
        .list_retention_runs(ListRetentionRunsRequest {
            page_size: 2,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.runs.len(), 1);
    assert_eq!(rest.runs[0].name, dry.name);
    assert!(rest.next_page_token.is_empty());
    app.stop().await;
}

async fn scheduled_runs(c: &Client) -> Vec<RetentionRun> {
    let mut c = c.clone();
    c.list_retention_runs(ListRetentionRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs
        .into_iter()
        .filter(|r| r.scheduled && r.state() != RetentionRunState::Running)
        .collect()
}

async fn scheduled_retention(backend: Backend) {
    let app = custodia_tests::TestApp::spawn_with(backend, SERVICES, |c| {
        c.dsar.poll_interval_ms = 50;
        c.dsar.retention_interval_secs = 24 * 3600;
    })
    .await;
    purpose(&app, "prospects", "P3Y").await;
    let mut c = client(&app).await;
    let crm = FakeSource::start("ada@example.edu", &[("contacts", 4)], vec![]).await;
    register(&mut c, "crm", &crm.endpoint, None).await;
    // One run per day on the service clock, applied for real, by custodia.
    let first = eventually(|| {
        let c = c.clone();
        async move {
            let runs = scheduled_runs(&c).await;
            (runs.len() == 1).then(|| runs[0].clone())
        }
    })
    .await;
    assert!(!first.dry_run);
    assert_eq!(first.actor.as_ref().unwrap().principal, "custodia");
    app.clock.advance(chrono::Duration::days(1));
    eventually(|| {
        let c = c.clone();
        async move { (scheduled_runs(&c).await.len() == 2).then_some(()) }
    })
    .await;
    assert!(!crm.state.retention.lock().unwrap().is_empty());
    app.stop().await;
}

custodia_tests::both_backends!(own_records_retention);

/// custodia's own records (R-3, `[retention]`): two years on, with one-year
/// periods, a retention run deletes the trail of a withdrawn consent (events
/// and receipts), the closed request and the access log's search index, and
/// says so in its results; a current consent, an objection and an open request
/// stay. A dry run before only counts.
async fn own_records_retention(backend: Backend) {
    let app = custodia_tests::TestApp::spawn_with(backend, SERVICES, |c| {
        c.dsar.poll_interval_ms = 50;
        c.retention.consent_trails = "P1Y".into();
        c.retention.closed_requests = "P1Y".into();
        c.retention.audit_index = "P1Y".into();
    })
    .await;
    let notice = app.newsletter_notice().await;
    let mut consent = app.consent().await;
    for who in ["ada@example.edu", "bob@example.edu"] {
        consent
            .record_consent(custodia_tests::grant(&app, who, &notice))
            .await
            .unwrap();
    }
    consent
        .withdraw_consent(custodia_proto::consent::v1::WithdrawConsentRequest {
            subject: Some(email("ada@example.edu")),
            purposes: vec!["purposes/newsletter".into()],
            evidence: Some(custodia_proto::consent::v1::Evidence {
                collect_time: Some(app.timestamp()),
                channel: custodia_proto::consent::v1::ConsentChannel::EmailLink as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    consent
        .record_objection(custodia_proto::consent::v1::RecordObjectionRequest {
            subject: Some(email("cy@example.edu")),
            purposes: vec!["purposes/newsletter".into()],
            evidence: Some(custodia_proto::consent::v1::Evidence {
                collect_time: Some(app.timestamp()),
                channel: custodia_proto::consent::v1::ConsentChannel::WebForm as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut c = client(&app).await;
    let closed = received(&mut c, RequestType::Access, "dan@example.edu").await;
    c.cancel_request(custodia_proto::dsar::v1::CancelRequestRequest {
        name: closed.name.clone(),
        reason: "sent by mistake".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    custodia_tests::eventually(|| async {
        (audit_count(&app, "ada@example.edu").await > 0).then_some(())
    })
    .await;
    // ...and a signed head covers her entries before time moves on (heads say
    // when entries were appended).
    let last = audit_events(&app, "ada@example.edu")
        .await
        .iter()
        .map(|e| e.sequence)
        .max()
        .unwrap();
    custodia_tests::eventually(|| async {
        let head = app
            .audit()
            .await
            .get_signed_tree_head(custodia_proto::audit::v1::GetSignedTreeHeadRequest::default())
            .await
            .ok()?
            .into_inner()
            .head?;
        (head.tree_size > last).then_some(())
    })
    .await;

    app.clock.advance(chrono::Duration::days(730));
    let open = received(&mut c, RequestType::Access, "eve@example.edu").await;
    let own = |run: &RetentionRun, rule: &str| {
        run.results
            .iter()
            .find(|r| r.purpose == rule)
            .unwrap_or_else(|| panic!("no {rule} in {:?}", run.results))
            .clone()
    };
    let counts = |r: &RetentionResult, deleted: bool| -> Vec<(String, i64)> {
        let list = if deleted { &r.deleted } else { &r.matched };
        list.iter().map(|c| (c.category.clone(), c.count)).collect()
    };
    let dry = run(&mut c, true, "").await;
    assert_eq!(dry.state(), RetentionRunState::Succeeded, "{dry:?}");
    let trails = own(&dry, "custodia/consent-trails");
    assert_eq!(trails.data_source, "dataSources/custodia-consent");
    let expected = [
        ("consent_states".to_string(), 1),
        ("consent_events".to_string(), 2),
        ("receipts".to_string(), 2),
        ("erasure_suppressions".to_string(), 0),
    ];
    assert_eq!(counts(&trails, false), expected);
    assert!(trails.deleted.is_empty(), "a dry run deletes nothing");
    assert_eq!(
        counts(&own(&dry, "custodia/closed-requests"), false),
        [("requests".to_string(), 1)]
    );

    let real = run(&mut c, false, "").await;
    assert_eq!(real.state(), RetentionRunState::Succeeded, "{real:?}");
    assert_eq!(
        counts(&own(&real, "custodia/consent-trails"), true),
        expected
    );
    let index = own(&real, "custodia/audit-index");
    assert_eq!(index.data_source, "dataSources/custodia-audit-log");
    assert!(index.deleted[0].count > 0, "{index:?}");
    // (Before any check below, itself an access naming the subject.)
    assert_eq!(audit_count(&app, "ada@example.edu").await, 0);
    assert_eq!(events_count(&mut consent, "ada@example.edu").await, 0);
    assert_eq!(
        events_count(&mut consent, "bob@example.edu").await,
        1,
        "current"
    );
    assert_eq!(
        custodia_tests::check(&mut consent, "cy@example.edu", "newsletter").await,
        (false, custodia_proto::consent::v1::CheckReason::Objected),
        "objections are kept"
    );
    let gone = c
        .get_request(custodia_proto::dsar::v1::GetRequestRequest { name: closed.name })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    c.get_request(custodia_proto::dsar::v1::GetRequestRequest { name: open.name })
        .await
        .expect("open requests stay");
    app.stop().await;
}

/// Access events naming `who` in the audit log.
async fn audit_count(app: &custodia_tests::TestApp, who: &str) -> usize {
    audit_events(app, who).await.len()
}

/// The access events naming `who` (up to 100).
async fn audit_events(
    app: &custodia_tests::TestApp,
    who: &str,
) -> Vec<custodia_proto::audit::v1::AccessEvent> {
    app.audit()
        .await
        .list_events(custodia_proto::audit::v1::ListEventsRequest {
            subject: Some(email(who)),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

/// Consent events of `who`.
async fn events_count(c: &mut custodia_tests::ConsentClient, who: &str) -> usize {
    custodia_tests::events_of(c, who).await.len()
}
