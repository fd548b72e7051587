//! Requests without connectors: legal deadlines, the state machine, the
//! action record, listings, the register, data sources and bad input.

use custodia_proto::{
    common::v1::{ExportFormat, SubjectRef},
    connector::v1::Capability,
    dsar::v1::{
        ActionResult, ApplyRetentionRequest, CancelRequestRequest, CompleteRequestRequest,
        DataSource, DataSourceState, ExportRegisterRequest, ExtendDeadlineRequest,
        GetDataSourceRequest, GetExportRequest, GetRequestRequest, GetRetentionRunRequest,
        IdentityVerificationOutcome, ListDataSourcesRequest, ListRequestsRequest,
        ListRetentionRunsRequest, MarkSourceHandledManuallyRequest, RecipientNotification,
        RecordRecipientNotificationRequest, RegisterDataSourceRequest, RejectRequestRequest,
        RejectionReason, RequestState, RequestType, RetrySourceRequest, StartProcessingRequest,
        SubmitRequestRequest, UpdateDataSourceRequest, VerifyIdentityRequest,
    },
};
use custodia_tests::{ADMIN_TOKEN, Backend, authed};
use tonic::Code;

use super::*;

custodia_tests::both_backends!(deadlines, lifecycle, bad_input, data_sources);

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
        .extend_deadline(authed(
            ExtendDeadlineRequest {
                name: name.into(),
                months,
                reasons: "Complex request spanning five systems".into(),
                subject_notify_time: Some(ts(told)),
                subject_notify_channel: "email".into(),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
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
    assert!(r.source_tasks.is_empty(), "an objection asks no source");
    let done = c
        .complete_request(authed(
            CompleteRequestRequest {
                name: first.name.clone(),
                response_summary: "Objection recorded; marketing stopped".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(done.state(), RequestState::Completed);
    assert!(done.completion.unwrap().response_time.is_some());
    let actions: Vec<&str> = done.actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "submitted",
            "identity_checked",
            "identity_checked",
            "processing_started",
            "completed"
        ]
    );
    for a in &done.actions {
        assert_eq!(a.actor.as_ref().unwrap().principal, "admin");
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
    let err = c
        .reject_request(authed(reject(&first.name), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["COMPLETED"]);
    let err = c
        .cancel_request(authed(
            CancelRequestRequest {
                name: first.name.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["COMPLETED"]);
    let err = verify(&mut c, &first.name, IdentityVerificationOutcome::Verified)
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["COMPLETED"]);

    // Rejection with a reason shown to the subject; then nothing else.
    let rejected = c
        .reject_request(authed(reject(&other.name), ADMIN_TOKEN))
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
        .complete_request(authed(
            CompleteRequestRequest {
                name: other.name.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["REJECTED"]);

    // A third request, cancelled; a fourth left open and overdue later.
    let third = submit(
        &mut c,
        new_request(RequestType::Access, "cy@example.edu"),
        "",
    )
    .await
    .unwrap();
    let cancelled = c
        .cancel_request(authed(
            CancelRequestRequest {
                name: third.name.clone(),
                reason: "Withdrawn by email".into(),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(cancelled.state(), RequestState::Cancelled);
    let open = submit(
        &mut c,
        new_request(RequestType::Access, "dee@example.edu"),
        "",
    )
    .await
    .unwrap();

    // Listings.
    let names = |list: Vec<Request>| list.into_iter().map(|r| r.name).collect::<Vec<_>>();
    let list = |req: ListRequestsRequest| {
        let mut c = c.clone();
        async move {
            c.list_requests(authed(req, ADMIN_TOKEN))
                .await
                .unwrap()
                .into_inner()
        }
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
        .export_register(authed(ExportRegisterRequest::default(), ADMIN_TOKEN))
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
        .export_register(authed(
            ExportRegisterRequest {
                format: ExportFormat::Json as i32,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
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

async fn bad_input(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    let ok = submit(
        &mut c,
        new_request(RequestType::Access, "ada@example.edu"),
        "",
    )
    .await
    .unwrap();
    let name = ok.name.clone();

    async fn expect(r: Result<impl Sized, Status>, field: &str) {
        match r {
            Ok(_) => panic!("accepted bad `{field}`"),
            Err(e) => {
                assert_eq!(e.code(), Code::InvalidArgument, "{field}: {}", e.message());
                assert!(
                    e.message().contains(field),
                    "`{}` does not name `{field}`",
                    e.message()
                );
            }
        }
    }

    // SubmitRequest: each bad field named.
    let mut r = new_request(RequestType::Access, "not-an-email");
    expect(
        submit(&mut c, r.clone(), "").await,
        "request.subject_identifiers[0].value",
    )
    .await;
    r = new_request(RequestType::Unspecified, "ada@example.edu");
    expect(submit(&mut c, r, "").await, "request.type").await;
    r = new_request(RequestType::Access, "ada@example.edu");
    r.subject_identifiers.clear();
    expect(submit(&mut c, r, "").await, "request.subject_identifiers").await;
    r = new_request(RequestType::Access, "ada@example.edu");
    r.requester = None;
    expect(submit(&mut c, r, "").await, "request.requester").await;
    r = new_request(RequestType::Access, "ada@example.edu");
    r.requester.as_mut().unwrap().role =
        custodia_proto::dsar::v1::RequesterRole::Representative as i32;
    expect(
        submit(&mut c, r, "").await,
        "request.requester.authority_basis",
    )
    .await;
    r = new_request(RequestType::Rectification, "ada@example.edu");
    expect(submit(&mut c, r, "").await, "request.corrections").await;
    r = new_request(RequestType::Access, "ada@example.edu");
    r.receive_time = Some(ts(at("2030-01-01T00:00:00Z")));
    expect(submit(&mut c, r, "").await, "request.receive_time").await;
    r = new_request(RequestType::Objection, "ada@example.edu");
    r.purposes = vec!["newsletter".into()];
    expect(submit(&mut c, r, "").await, "request.purposes[0]").await;
    expect(
        c.submit_request(authed(SubmitRequestRequest::default(), ADMIN_TOKEN))
            .await,
        "request",
    )
    .await;

    // Every other RPC.
    expect(
        c.get_request(authed(
            GetRequestRequest { name: "bad".into() },
            ADMIN_TOKEN,
        ))
        .await,
        "name",
    )
    .await;
    expect(
        c.list_requests(authed(
            ListRequestsRequest {
                page_size: -1,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "page_size",
    )
    .await;
    expect(
        c.list_requests(authed(
            ListRequestsRequest {
                states: vec![99],
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "states[0]",
    )
    .await;
    expect(
        c.list_requests(authed(
            ListRequestsRequest {
                page_token: "zzz".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "page_token",
    )
    .await;
    expect(
        c.verify_identity(authed(
            VerifyIdentityRequest {
                name: name.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "verification",
    )
    .await;
    expect(
        c.start_processing(authed(
            StartProcessingRequest {
                name: "requests/".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "name",
    )
    .await;
    expect(
        c.extend_deadline(authed(
            ExtendDeadlineRequest {
                name: name.clone(),
                months: 1,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "reasons",
    )
    .await;
    expect(
        c.extend_deadline(authed(
            ExtendDeadlineRequest {
                name: name.clone(),
                months: 1,
                reasons: "x".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "subject_notify_time",
    )
    .await;
    expect(
        c.reject_request(authed(
            RejectRequestRequest {
                name: name.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "reason",
    )
    .await;
    expect(
        c.reject_request(authed(
            RejectRequestRequest {
                name: name.clone(),
                reason: RejectionReason::Other as i32,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "explanation",
    )
    .await;
    expect(
        c.cancel_request(authed(
            CancelRequestRequest {
                name: name.clone(),
                request_id: "x".repeat(200),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "request_id",
    )
    .await;
    expect(
        c.complete_request(authed(
            CompleteRequestRequest {
                name: name.clone(),
                response_time: Some(ts(at("2031-01-01T00:00:00Z"))),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "response_time",
    )
    .await;
    expect(
        c.mark_source_handled_manually(authed(
            MarkSourceHandledManuallyRequest {
                name: name.clone(),
                data_source: "dataSources/crm".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "reason",
    )
    .await;
    expect(
        c.mark_source_handled_manually(authed(
            MarkSourceHandledManuallyRequest {
                name: name.clone(),
                data_source: "crm".into(),
                reason: "x".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "data_source",
    )
    .await;
    expect(
        c.retry_source(authed(
            RetrySourceRequest {
                name: name.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "data_source",
    )
    .await;
    expect(
        c.record_recipient_notification(authed(
            RecordRecipientNotificationRequest {
                name: name.clone(),
                notification: Some(RecipientNotification::default()),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "notification.recipient",
    )
    .await;
    let export = c
        .get_export(authed(GetExportRequest { name: name.clone() }, ADMIN_TOKEN))
        .await;
    expect(export.map(|_| ()), "name").await;
    expect(
        c.export_register(authed(
            ExportRegisterRequest {
                format: ExportFormat::Markdown as i32,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "format",
    )
    .await;
    expect(
        c.register_data_source(authed(
            RegisterDataSourceRequest {
                data_source_id: "CRM!".into(),
                data_source: Some(DataSource {
                    endpoint: "http://x:1".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await,
        "data_source_id",
    )
    .await;
    expect(
        c.register_data_source(authed(
            RegisterDataSourceRequest {
                data_source_id: "crm".into(),
                data_source: Some(DataSource {
                    endpoint: "ftp://x".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await,
        "data_source.endpoint",
    )
    .await;
    expect(
        c.get_data_source(authed(
            GetDataSourceRequest {
                name: "sources/x".into(),
            },
            ADMIN_TOKEN,
        ))
        .await,
        "name",
    )
    .await;
    expect(
        c.list_data_sources(authed(
            ListDataSourcesRequest {
                page_size: -5,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "page_size",
    )
    .await;
    expect(
        c.update_data_source(authed(
            UpdateDataSourceRequest {
                data_source: Some(DataSource {
                    name: "dataSources/crm".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "update_mask",
    )
    .await;
    expect(
        c.apply_retention(authed(
            ApplyRetentionRequest {
                purposes: vec!["bad".into()],
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "purposes[0]",
    )
    .await;
    expect(
        c.get_retention_run(authed(
            GetRetentionRunRequest {
                name: "runs/1".into(),
            },
            ADMIN_TOKEN,
        ))
        .await,
        "name",
    )
    .await;
    expect(
        c.list_retention_runs(authed(
            ListRetentionRunsRequest {
                page_size: -1,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await,
        "page_size",
    )
    .await;
    app.stop().await;
}

async fn data_sources(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    let crm = DataSource {
        display_name: "CRM".into(),
        endpoint: "http://127.0.0.1:9".into(),
        credentials_ref: "config:crm".into(),
        capabilities: vec![Capability::Export as i32, Capability::Erase as i32],
        data_categories: vec!["contacts".into(), "invoices".into()],
        purposes: vec!["purposes/prospects".into()],
        recipients: vec!["MailChimp".into()],
        ..Default::default()
    };
    let register = |id: &str, s: DataSource, rid: &str| RegisterDataSourceRequest {
        data_source_id: id.into(),
        data_source: Some(s),
        request_id: rid.into(),
    };
    let made = c
        .register_data_source(authed(register("crm", crm.clone(), "reg-1"), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .data_source
        .unwrap();
    assert_eq!(made.name, "dataSources/crm");
    assert_eq!(made.state(), DataSourceState::Enabled);
    assert!(!made.builtin);
    // Idempotent; a second registration under the same id is refused.
    let again = c
        .register_data_source(authed(register("crm", crm.clone(), "reg-1"), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .data_source
        .unwrap();
    assert_eq!(again.name, made.name);
    let err = c
        .register_data_source(authed(register("crm", crm.clone(), ""), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // A secret is not a credentials reference.
    let mut secret = crm.clone();
    secret.credentials_ref = "s3cr3t-token-value".into();
    let err = c
        .register_data_source(authed(register("moodle", secret, ""), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["data_source.credentials_ref"],
    );
    assert!(!err.message().contains("s3cr3t"));
    let err = c
        .register_data_source(authed(register("custodia-x", crm.clone(), ""), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["data_source_id", "reserved"]);

    // Listed by name with the built-in sources.
    let list = c
        .list_data_sources(authed(ListDataSourcesRequest::default(), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.data_sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dataSources/crm",
            "dataSources/custodia-audit-log",
            "dataSources/custodia-consent"
        ]
    );
    assert!(list.data_sources[1].builtin);
    let page = c
        .list_data_sources(authed(
            ListDataSourcesRequest {
                page_size: 2,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.data_sources.len(), 2);
    let rest = c
        .list_data_sources(authed(
            ListDataSourcesRequest {
                page_size: 2,
                page_token: page.next_page_token,
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.data_sources[0].name, "dataSources/custodia-consent");

    // Update by mask, with the etag.
    let updated = c
        .update_data_source(authed(
            UpdateDataSourceRequest {
                data_source: Some(DataSource {
                    name: "dataSources/crm".into(),
                    state: DataSourceState::Disabled as i32,
                    display_name: "ignored: not in the mask".into(),
                    etag: made.etag.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["state".into()],
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .data_source
        .unwrap();
    assert_eq!(updated.state(), DataSourceState::Disabled);
    assert_eq!(updated.display_name, "CRM");
    assert_ne!(updated.etag, made.etag);
    let stale = c
        .update_data_source(authed(
            UpdateDataSourceRequest {
                data_source: Some(DataSource {
                    name: "dataSources/crm".into(),
                    etag: made.etag.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let builtin = c
        .update_data_source(authed(
            UpdateDataSourceRequest {
                data_source: Some(DataSource {
                    name: "dataSources/custodia-consent".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["state".into()],
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(builtin.code(), Code::FailedPrecondition);
    let got = c
        .get_data_source(authed(
            GetDataSourceRequest {
                name: "dataSources/crm".into(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .data_source
        .unwrap();
    assert_eq!(got.credentials_ref, "config:crm");
    let missing = c
        .get_data_source(authed(
            GetDataSourceRequest {
                name: "dataSources/nope".into(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    app.stop().await;
}
