//! Legal deadlines of requests without connectors: one month from receipt,
//! moved past weekends and French public holidays, extended once by up to two
//! months before the original deadline, overdue after it.

use custodia_proto::dsar::v1::ExtendDeadlineRequest;
use custodia_tests::Backend;
use tonic::Code;

use super::*;

custodia_tests::both_backends!(deadlines);

async fn due_of(client: &mut Client, received: &str) -> (DateTime<Utc>, Request) {
    let mut r = new_request(RequestType::Access, "ada@example.edu");
    r.receive_time = Some(ts(at(received)));
    let r = submit(client, r, "").await.unwrap();
    (time_of(&r.due_time), r)
}

async fn extend(
    client: &mut Client,
    name: &str,
    months: i32,
    told: DateTime<Utc>,
) -> Result<Request, Status> {
    client
        .extend_deadline(ExtendDeadlineRequest {
            name: name.into(),
            months,
            reasons: "Complex request spanning five systems".into(),
            subject_notify_time: Some(ts(told)),
            subject_notify_channel: "email".into(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().request.expect("request"))
}

async fn deadlines(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;

    // 31 January + one month = the end of February (28th, a Friday), end of day in Paris.
    let (due, r) = due_of(&mut c, "2025-01-31T10:00:00Z").await;
    assert_eq!(due, at("2025-02-28T22:59:59.999999Z"));
    assert_eq!(time_of(&r.original_due_time), due);
    // A leap year: the 29th.
    let (due, _) = due_of(&mut c, "2024-01-31T10:00:00Z").await;
    assert_eq!(due, at("2024-02-29T22:59:59.999999Z"));
    // Due on Saturday 10 October 2026: moves to Monday 12 (CEST).
    let (due, r) = due_of(&mut c, "2026-09-10T10:00:00Z").await;
    assert_eq!(due, at("2026-10-12T21:59:59.999999Z"));
    assert!(
        r.actions[0].description.contains("not a working day"),
        "{:?}",
        r.actions[0]
    );
    // Due on 11 November 2026 (Armistice, a public holiday in France): Thursday 12.
    let (due, _) = due_of(&mut c, "2026-10-11T10:00:00Z").await;
    assert_eq!(due, at("2026-11-12T22:59:59.999999Z"));

    // An extension: computed from receipt as one period (31 Jan + 3 months = 30 April).
    app.clock.set(at("2025-02-10T09:00:00Z"));
    let (_, r) = due_of(&mut c, "2025-01-31T10:00:00Z").await;
    let e = extend(&mut c, &r.name, 2, at("2025-02-10T08:00:00Z"))
        .await
        .unwrap();
    assert!(e.extended);
    assert_eq!(time_of(&e.due_time), at("2025-04-30T21:59:59.999999Z"));
    assert_eq!(
        time_of(&e.original_due_time),
        at("2025-02-28T22:59:59.999999Z")
    );
    let ext = e.extension.clone().unwrap();
    assert_eq!(ext.months, 2);
    assert_eq!(
        time_of(&ext.subject_notify_time),
        at("2025-02-10T08:00:00Z")
    );
    assert_eq!(ext.actor.unwrap().principal, "admin");
    assert_eq!(e.actions.last().unwrap().action, "deadline_extended");
    // Only once.
    let err = extend(&mut c, &r.name, 1, at("2025-02-10T08:00:00Z"))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["RECEIVED", "once"]);
    // Not by three months.
    let err = extend(&mut c, &r.name, 3, at("2025-02-10T08:00:00Z"))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["months"]);
    // Not after the original deadline.
    let (_, late) = due_of(&mut c, "2025-01-05T10:00:00Z").await;
    app.clock.set(at("2025-02-10T09:00:00Z"));
    let err = extend(&mut c, &late.name, 1, at("2025-02-10T08:00:00Z"))
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["RECEIVED", "original deadline"],
    );
    // Overdue once the deadline passed.
    assert!(get(&mut c, &late.name).await.overdue);
    assert!(!get(&mut c, &r.name).await.overdue);
    app.stop().await;
}

custodia_tests::both_backends!(alsace_moselle_deadlines);

/// An institution in Alsace-Moselle (`jurisdiction = "FR-57"`) also stops on
/// Good Friday and St Stephen's Day; the rest of France does not.
async fn alsace_moselle_deadlines(backend: Backend) {
    let app = TestApp::spawn_with(backend, SERVICES, |c| {
        c.legal.jurisdiction = "FR-57".into();
    })
    .await;
    let mut c = client(&app).await;
    // Due on Good Friday, 18 April 2025: then Saturday, Sunday and Easter Monday,
    // so Tuesday 22 April (CEST).
    let (due, r) = due_of(&mut c, "2025-03-18T10:00:00Z").await;
    assert_eq!(due, at("2025-04-22T21:59:59.999999Z"));
    assert!(r.actions[0].description.contains("not a working day"));
    // Due on Friday 26 December 2025, St Stephen's Day: Monday 29.
    let (due, _) = due_of(&mut c, "2025-11-26T10:00:00Z").await;
    assert_eq!(due, at("2025-12-29T22:59:59.999999Z"));
    app.stop().await;
    // In Paris, Good Friday is a working day.
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    let (due, _) = due_of(&mut c, "2025-03-18T10:00:00Z").await;
    assert_eq!(due, at("2025-04-18T21:59:59.999999Z"));
    app.stop().await;
}
