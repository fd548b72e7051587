//! The register's guarantees beyond the lifecycle: who may report and read,
//! corrections and overrides that keep what they replace, append-only storage,
//! and concurrent calls.

use std::collections::BTreeSet;

use custodia_proto::breach::v1::{
    Breach, CommunicationChannel, EnisaInputs, GetBreachRequest, ListBreachesRequest,
    ListTimelineEntriesRequest, NotificationPhase, ReportBreachRequest, RiskLevel,
    SubjectCommunication, UpdateBreachRequest, WaiverGround,
};
use custodia_tests::{Backend, TestApp, assert_code, at, authed, time_of, ts};
use tonic::Code;

use super::{
    AWARE, DEADLINE, assess, close, communicate, get, list, minimal, notify, report, waive,
};

custodia_tests::both_backends!(waivers_overrides_and_append_only, concurrent_calls);

const STAFF_TOKEN: &str = "staff-token-0123456789abcdef";

/// The breach database `app` writes, opened directly (not through the API).
async fn database_of(app: &TestApp, backend: Backend) -> custodia_core::storage::Db {
    let url: secrecy::SecretString = match backend {
        Backend::Sqlite => {
            custodia_core::storage::sqlite_file_url(&app.config.data_dir.join("breach.db")).into()
        }
        Backend::Postgres => app.config.database.url.clone().expect("postgres url"),
    };
    custodia_core::storage::connect(&url, "breach", 1)
        .await
        .expect("connects")
}

/// Staff may report but not read; the DPO corrects the awareness time (the
/// deadline follows, a stale etag is refused), overrides the computed risk, and
/// waives the communication once a public one is recorded; what is kept is
/// append-only in the database itself.
async fn waivers_overrides_and_append_only(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[custodia_breach::SERVICE], |config| {
        config.auth.principals.insert(
            "staff".into(),
            custodia_core::config::PrincipalConfig {
                token: Some(STAFF_TOKEN.to_string().into()),
                scopes: vec!["breach.report".into()],
                ..Default::default()
            },
        );
    })
    .await;
    app.clock.set(at(AWARE));
    let mut client = app.breach().await;

    // Any staff member may report; reading the register needs breach.read.
    let staff = |request: ReportBreachRequest| authed(request, STAFF_TOKEN);
    let b = client
        .report_breach(staff(ReportBreachRequest {
            breach: Some(minimal(at(AWARE))),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .breach
        .unwrap();
    assert_eq!(b.reporter.as_ref().unwrap().principal, "staff");
    let err = client
        .get_breach(authed(
            GetBreachRequest {
                name: b.name.clone(),
            },
            STAFF_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // The DPO corrects the awareness time: the deadline follows, the timeline keeps it.
    let earlier = at(AWARE) - chrono::Duration::hours(2);
    let updated = client
        .update_breach(UpdateBreachRequest {
            breach: Some(Breach {
                name: b.name.clone(),
                awareness_time: Some(ts(earlier)),
                etag: b.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["awareness_time".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .breach
        .unwrap();
    assert_eq!(
        time_of(&updated.authority_clock.unwrap().deadline_time),
        at(DEADLINE) - chrono::Duration::hours(2)
    );
    // A stale etag is refused.
    let err = client
        .update_breach(UpdateBreachRequest {
            breach: Some(Breach {
                name: b.name.clone(),
                title: "x".into(),
                etag: b.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["title".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN", "etag"]);
    let timeline = client
        .list_timeline_entries(ListTimelineEntriesRequest {
            parent: b.name.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.entries.len(), 1);
    let second = client
        .list_timeline_entries(ListTimelineEntriesRequest {
            parent: b.name.clone(),
            page_size: 10,
            page_token: timeline.next_page_token,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        second
            .iter()
            .any(|e| e.description.contains("Awareness time corrected")),
        "{second:?}"
    );

    // An override keeps the computed level beside it.
    let low = EnisaInputs {
        data_processing_context: 1,
        ease_of_identification: 0.25,
        ..Default::default()
    };
    let assessed = assess(
        &mut client,
        &b.name,
        low,
        RiskLevel::HighRisk,
        "Grades of minors: the DPO judges the impact high",
    )
    .await
    .unwrap();
    let a = assessed.risk_assessments.last().unwrap();
    assert_eq!(a.computed_risk_level(), RiskLevel::NoRisk);
    assert_eq!(a.override_risk_level(), RiskLevel::HighRisk);
    assert_eq!(a.risk_level(), RiskLevel::HighRisk);
    assert_eq!(assessed.risk_level(), RiskLevel::HighRisk);

    // Disproportionate effort: accepted once a public communication is recorded.
    notify(&mut client, &b.name, NotificationPhase::Initial, "")
        .await
        .unwrap();
    communicate(
        &mut client,
        &b.name,
        SubjectCommunication {
            channel: CommunicationChannel::Public as i32,
            message: "Notice on the institution's web site".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let waived = waive(
        &mut client,
        &b.name,
        WaiverGround::DisproportionateEffort,
        "Former students without known addresses",
    )
    .await
    .unwrap();
    assert_eq!(
        waived.communication_waiver.unwrap().ground(),
        WaiverGround::DisproportionateEffort
    );
    close(&mut client, &b.name).await.unwrap();

    // The kept parts are append-only in the database itself, and an open
    // breach cannot be deleted even there.
    let open = report(&mut client, minimal(at(AWARE)), "").await.unwrap();
    let db = database_of(&app, backend).await;
    for sql in [
        "UPDATE breach_items SET create_us = create_us + 1",
        "DELETE FROM breach_items",
    ] {
        assert!(
            sqlx::query(sql).execute(db.pool()).await.is_err(),
            "{sql} must be refused"
        );
    }
    let open_id = open.name.trim_start_matches("breaches/").to_string();
    assert!(
        sqlx::query("DELETE FROM breaches WHERE id = $1")
            .bind(open_id)
            .execute(db.pool())
            .await
            .is_err()
    );
    db.close().await;
    app.stop().await;
}

/// Racing retries of one report record one breach; of racing initial
/// notifications exactly one wins.
async fn concurrent_calls(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_breach::SERVICE]).await;
    app.clock.set(at(AWARE));
    let client = app.breach().await;

    // Retries racing each other still record one breach.
    let reports = futures::future::join_all((0..6).map(|_| {
        let mut c = client.clone();
        async move { report(&mut c, minimal(at(AWARE)), "race-1").await }
    }))
    .await;
    let names: BTreeSet<String> = reports.into_iter().map(|r| r.unwrap().name).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names.into_iter().next().unwrap();
    let mut c = client.clone();
    assert_eq!(list(&mut c, ListBreachesRequest::default()).await.len(), 1);

    // Racing initial notifications: exactly one wins, the others name the state.
    let results = futures::future::join_all((0..6).map(|_| {
        let mut c = client.clone();
        let name = name.clone();
        async move { notify(&mut c, &name, NotificationPhase::Initial, "").await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_code(err, Code::FailedPrecondition, &["is OPEN", "initial"]);
    }
    let b = get(&mut c, &name).await.unwrap();
    assert_eq!(b.authority_notifications.len(), 1);
    app.stop().await;
}
