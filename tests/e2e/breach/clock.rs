//! The 72-hour clock of Art. 33(1) across a DST change: in time at 71:59 of
//! elapsed time, overdue at 72:01 (late notifications need reasons), listings by
//! deadline and risk, and the state machine's refusals.

use custodia_proto::breach::v1::{
    BreachState, ClockStatus, ListBreachesRequest, NotificationPhase, RiskLevel,
};
use custodia_tests::{Backend, TestApp, assert_code, at, ts};
use tonic::Code;

use super::{
    AWARE, DEADLINE, assess, clock_status, close, delete, get, high_risk_inputs, list, minimal,
    notify, report,
};

custodia_tests::both_backends!(clock_across_dst);

/// Three breaches the same night: one notified in time, one late, one of low risk
/// that needs no notification.
async fn clock_across_dst(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_breach::SERVICE]).await;
    app.clock.set(at(AWARE));
    let mut client = app.breach().await;
    let early = report(&mut client, minimal(at(AWARE)), "")
        .await
        .unwrap()
        .name;
    let late = report(&mut client, minimal(at(AWARE)), "")
        .await
        .unwrap()
        .name;
    let low = report(&mut client, minimal(at(AWARE)), "")
        .await
        .unwrap()
        .name;

    // Follow-up before the initial notification is an illegal transition.
    let err = notify(&mut client, &early, NotificationPhase::FollowUp, "")
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN", "INITIAL"]);
    let err = notify(&mut client, &early, NotificationPhase::Unspecified, "")
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["notification.phase"]);

    // A low-risk breach needs no notification and closes once documented.
    let mut inputs = high_risk_inputs();
    inputs.data_processing_context = 1;
    inputs.ease_of_identification = 0.25;
    inputs.malicious_intent = false;
    let b = assess(&mut client, &low, inputs, RiskLevel::Unspecified, "")
        .await
        .unwrap();
    assert_eq!(b.risk_level(), RiskLevel::NoRisk);
    assert_eq!(clock_status(&b), ClockStatus::NotRequired);

    // 71:59 after awareness (73 wall-clock hours minus one minute in Paris): in time.
    app.clock
        .advance(chrono::Duration::hours(71) + chrono::Duration::minutes(59));
    let b = get(&mut client, &late).await.unwrap();
    assert_eq!(b.authority_clock.unwrap().remaining.unwrap().seconds, 60);
    let b = notify(&mut client, &early, NotificationPhase::Initial, "")
        .await
        .unwrap();
    assert_eq!(clock_status(&b), ClockStatus::NotifiedInTime);
    let err = notify(&mut client, &early, NotificationPhase::Initial, "")
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN", "initial"]);

    // 72:01: refused without reasons, accepted with them.
    app.clock.advance(chrono::Duration::minutes(2));
    let b = get(&mut client, &late).await.unwrap();
    let clock = b.authority_clock.unwrap();
    assert_eq!(clock.status(), ClockStatus::Overdue);
    assert_eq!(clock.overdue.unwrap().seconds, 60);
    assert_eq!(clock.remaining.unwrap().seconds, 0);
    assert_eq!(
        list(
            &mut client,
            ListBreachesRequest {
                overdue: true,
                ..Default::default()
            }
        )
        .await,
        [late.as_str()]
    );
    assert_eq!(
        list(
            &mut client,
            ListBreachesRequest {
                state: BreachState::Open as i32,
                deadline_before_time: Some(ts(at("2026-04-01T00:00:00Z"))),
                ..Default::default()
            }
        )
        .await
        .len(),
        3
    );
    assert!(
        list(
            &mut client,
            ListBreachesRequest {
                deadline_before_time: Some(ts(at(DEADLINE))),
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );
    let err = notify(&mut client, &late, NotificationPhase::Initial, "")
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["is OPEN", DEADLINE.trim_end_matches('Z'), "delay_reasons"],
    );
    let b = notify(
        &mut client,
        &late,
        NotificationPhase::Initial,
        "Theft reported by the teacher only after the Easter weekend",
    )
    .await
    .unwrap();
    assert_eq!(clock_status(&b), ClockStatus::NotifiedLate);
    assert!(
        list(
            &mut client,
            ListBreachesRequest {
                overdue: true,
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );

    // Pages follow the deadline order and are bound to their filter.
    let page = client
        .list_breaches(ListBreachesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.breaches.len(), 2);
    let rest = client
        .list_breaches(ListBreachesRequest {
            page_size: 2,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.breaches.len(), 1);
    assert!(rest.next_page_token.is_empty());
    let err = client
        .list_breaches(ListBreachesRequest {
            page_size: 2,
            page_token: page.next_page_token,
            overdue: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["page_token"]);

    assert_eq!(
        list(
            &mut client,
            ListBreachesRequest {
                risk_level: RiskLevel::NoRisk as i32,
                ..Default::default()
            }
        )
        .await,
        [low.as_str()]
    );
    let err = client
        .list_breaches(ListBreachesRequest {
            state: 9,
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["state", "page_size"]);

    // Deleting an open breach is an illegal transition.
    let err = delete(&mut client, &low, "").await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN"]);
    let closed = close(&mut client, &low).await.unwrap();
    assert_eq!(closed.state(), BreachState::Closed);
    app.stop().await;
}
