//! Retention runs: the consent register's purpose retention
//! applied through the connectors, dry run first, with counts per source.

use custodia_proto::{
    common::v1::{RetentionAction, RetentionPolicy},
    consent::v1::{CreatePurposeRequest, LawfulBasis, Purpose, PurposeCategory},
    dsar::v1::{
        ApplyRetentionRequest, GetRetentionRunRequest, ListRetentionRunsRequest, RetentionRun,
        RetentionRunState,
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
    // The CRM holds only the prospects' data: one rule applies.
    assert_eq!(dry.results.len(), 1, "{:?}", dry.results);
    let r = &dry.results[0];
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
    assert_eq!(real.results[0].deleted[0].count, 4);
    let calls = crm.state.retention.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert!(calls[0].1 && !calls[1].1, "dry run first: {calls:?}");

    // A failing source fails the run, with the error per source.
    crm.set(Mode::Error);
    app.clock.advance(chrono::Duration::minutes(5));
    let failed = run(&mut c, false, "").await;
    assert_eq!(failed.state(), RetentionRunState::Failed);
    let err = failed.results[0].error.clone().unwrap();
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
