//! The request state machine without connectors: idempotent submission,
//! identity verification before processing (D-4), completion, rejection and
//! cancellation, terminal states that refuse changes, the action record,
//! listings by state, type, subject and deadline, and the register export.

use custodia_proto::{
    common::v1::{ExportFormat, SubjectRef},
    dsar::v1::{
        ActionResult, CancelRequestRequest, CompleteRequestRequest, ExportRegisterRequest,
        IdentityVerificationOutcome, ListRequestsRequest, RejectRequestRequest, RejectionReason,
        RequestState, RequestType, SourceTaskState,
    },
};
use custodia_tests::Backend;
use tonic::Code;

use super::*;

custodia_tests::both_backends!(lifecycle);

async fn lifecycle(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;

    // Idempotent submission.
    let first = submit(
        &mut c,
        new_request(RequestType::Objection, "ada@example.edu"),
        "sub-1",
    )
    .await
    .unwrap();
    let again = submit(
        &mut c,
        new_request(RequestType::Objection, "ada@example.edu"),
        "sub-1",
    )
    .await
    .unwrap();
    assert_eq!(first.name, again.name);
    assert_eq!(first.state(), RequestState::Received);
    assert_eq!(first.subject_identifiers[1].value, "AB1234", "normalised");
    let other = submit(
        &mut c,
        new_request(RequestType::Erasure, "Bob@Example.edu"),
        "sub-2",
    )
    .await
    .unwrap();
    assert_ne!(other.name, first.name);
    assert_eq!(other.subject_identifiers[0].value, "bob@example.edu");

    // Nothing is processed before identity is verified (D-4).
    let err = start(&mut c, &first.name).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["RECEIVED"]);
    let r = verify(&mut c, &first.name, IdentityVerificationOutcome::Pending)
        .await
        .unwrap();
    assert_eq!(r.state(), RequestState::IdentityVerification);
    let err = start(&mut c, &first.name).await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["IDENTITY_VERIFICATION", "VERIFIED"],
    );
    verify(&mut c, &first.name, IdentityVerificationOutcome::Verified)
        .await
        .unwrap();
    let r = start(&mut c, &first.name).await.unwrap();
    assert_eq!(r.state(), RequestState::InProgress);
    // An objection naming no purpose objects to direct marketing: custodia's
    // consent records take it (and no connector holds an objected purpose).
    let sources: Vec<&str> = r
        .source_tasks
        .iter()
        .map(|t| t.data_source.as_str())
        .collect();
    assert_eq!(sources, ["dataSources/custodia-consent"]);
    super::fanout::wait_for(&c, &first.name, |r| {
        r.source_tasks[0].state() == SourceTaskState::Succeeded
    })
    .await;
    let done = c
        .complete_request(CompleteRequestRequest {
            name: first.name.clone(),
            response_summary: "Objection recorded; marketing stopped".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(done.state(), RequestState::Completed);
    assert!(done.completion.unwrap().response_time.is_some());
    let actions: Vec<&str> = done.actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions[..4],
        [
            "submitted",
            "identity_checked",
            "identity_checked",
            "processing_started",
        ]
    );
    assert_eq!(actions.last(), Some(&"completed"), "{actions:?}");
    for a in &done.actions {
        // People act as themselves; the fan-out worker as custodia.
        let by = if a.data_source.is_empty() {
            "admin"
        } else {
            "custodia"
        };
        assert_eq!(a.actor.as_ref().unwrap().principal, by, "{a:?}");
        assert!(a.time.is_some());
        assert_ne!(a.result(), ActionResult::Unspecified);
    }

    // Terminal states refuse every change, naming the state.
    let reject = |name: &str| RejectRequestRequest {
        name: name.into(),
        reason: RejectionReason::ManifestlyUnfounded as i32,
        explanation: "The request names no data held by the school".into(),
        request_id: String::new(),
    };
    let err = c.reject_request(reject(&first.name)).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["COMPLETED"]);
    let err = c
        .cancel_request(CancelRequestRequest {
            name: first.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["COMPLETED"]);
    let err = verify(&mut c, &first.name, IdentityVerificationOutcome::Verified)
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["COMPLETED"]);

    // Rejection with a reason shown to the subject; then nothing else.
    let rejected = c
        .reject_request(reject(&other.name))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(rejected.state(), RequestState::Rejected);
    assert_eq!(
        rejected.rejection.unwrap().reason(),
        RejectionReason::ManifestlyUnfounded
    );
    let err = c
        .complete_request(CompleteRequestRequest {
            name: other.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["REJECTED"]);

    // A third request, cancelled; a fourth left open and overdue later.
    let third = received(&mut c, RequestType::Access, "cy@example.edu").await;
    let cancelled = c
        .cancel_request(CancelRequestRequest {
            name: third.name.clone(),
            reason: "Withdrawn by email".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(cancelled.state(), RequestState::Cancelled);
    let open = received(&mut c, RequestType::Access, "dee@example.edu").await;

    // Listings.
    let names = |list: Vec<Request>| list.into_iter().map(|r| r.name).collect::<Vec<_>>();
    let list = |req: ListRequestsRequest| {
        let mut c = c.clone();
        async move { c.list_requests(req).await.unwrap().into_inner() }
    };
    let all = list(ListRequestsRequest::default()).await;
    assert_eq!(all.requests.len(), 4);
    let by_state = list(ListRequestsRequest {
        states: vec![
            RequestState::Rejected as i32,
            RequestState::Cancelled as i32,
        ],
        ..Default::default()
    })
    .await;
    let mut got = names(by_state.requests);
    got.sort();
    let mut want = vec![other.name.clone(), third.name.clone()];
    want.sort();
    assert_eq!(got, want);
    let by_type = list(ListRequestsRequest {
        r#type: RequestType::Objection as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(names(by_type.requests), [first.name.as_str()]);
    let by_subject = list(ListRequestsRequest {
        subject: Some(SubjectRef {
            r#type: "email".into(),
            value: "BOB@example.edu ".into(),
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(names(by_subject.requests), [other.name.as_str()]);
    // Pages of one.
    let page1 = list(ListRequestsRequest {
        page_size: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(page1.requests.len(), 3);
    let page2 = list(ListRequestsRequest {
        page_size: 3,
        page_token: page1.next_page_token.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(page2.requests.len(), 1);
    assert!(page2.next_page_token.is_empty());
    // Overdue and due-before, after the month has passed.
    assert!(
        list(ListRequestsRequest {
            overdue: true,
            ..Default::default()
        })
        .await
        .requests
        .is_empty()
    );
    app.clock.advance(chrono::Duration::days(40));
    let overdue = list(ListRequestsRequest {
        overdue: true,
        ..Default::default()
    })
    .await;
    assert_eq!(names(overdue.requests.clone()), [open.name.as_str()]);
    assert!(overdue.requests[0].overdue);
    let before = list(ListRequestsRequest {
        due_before_time: Some(ts(at("2026-12-01T00:00:00Z"))),
        ..Default::default()
    })
    .await;
    assert!(before.requests.is_empty());
    let before = list(ListRequestsRequest {
        due_before_time: Some(ts(at("2026-12-31T00:00:00Z"))),
        ..Default::default()
    })
    .await;
    assert_eq!(before.requests.len(), 4);

    // The register, as CSV and JSON, without subject identifiers.
    let csv = c
        .export_register(ExportRegisterRequest::default())
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    assert_eq!(csv.content_type, "text/csv");
    let text = String::from_utf8(csv.content).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.starts_with("name,type,state,"));
    assert!(text.contains("REJECTED") && text.contains("OBJECTION"));
    assert!(!text.contains("bob@example.edu"));
    let json = c
        .export_register(ExportRegisterRequest {
            format: ExportFormat::Json as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.content).unwrap();
    assert_eq!(v["requests"].as_array().unwrap().len(), 4);
    let overdue_rows: Vec<_> = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["overdue"] == true)
        .collect();
    assert_eq!(overdue_rows.len(), 1);
    app.stop().await;
}
