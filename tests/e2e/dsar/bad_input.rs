//! Bad input to every dsar RPC: INVALID_ARGUMENT naming the field.

use custodia_proto::{
    common::v1::ExportFormat,
    dsar::v1::{
        ApplyRetentionRequest, CancelRequestRequest, CompleteRequestRequest, DataSource,
        ExportRegisterRequest, ExtendDeadlineRequest, GetDataSourceRequest, GetExportRequest,
        GetRequestRequest, GetRetentionRunRequest, ListDataSourcesRequest, ListRequestsRequest,
        ListRetentionRunsRequest, MarkSourceHandledManuallyRequest, RecipientNotification,
        RecordRecipientNotificationRequest, RegisterDataSourceRequest, RejectRequestRequest,
        RejectionReason, RetrySourceRequest, StartProcessingRequest, SubmitRequestRequest,
        UpdateDataSourceRequest, VerifyIdentityRequest,
    },
};
use custodia_tests::Backend;
use tonic::Code;

use super::*;

custodia_tests::both_backends!(bad_input);

async fn bad_input(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    let ok = received(&mut c, RequestType::Access, "ada@example.edu").await;
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
        c.submit_request(SubmitRequestRequest::default()).await,
        "request",
    )
    .await;

    // Every other RPC.
    expect(
        c.get_request(GetRequestRequest { name: "bad".into() })
            .await,
        "name",
    )
    .await;
    expect(
        c.list_requests(ListRequestsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await,
        "page_size",
    )
    .await;
    expect(
        c.list_requests(ListRequestsRequest {
            states: vec![99],
            ..Default::default()
        })
        .await,
        "states[0]",
    )
    .await;
    expect(
        c.list_requests(ListRequestsRequest {
            page_token: "zzz".into(),
            ..Default::default()
        })
        .await,
        "page_token",
    )
    .await;
    expect(
        c.verify_identity(VerifyIdentityRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await,
        "verification",
    )
    .await;
    expect(
        c.start_processing(StartProcessingRequest {
            name: "requests/".into(),
            ..Default::default()
        })
        .await,
        "name",
    )
    .await;
    expect(
        c.extend_deadline(ExtendDeadlineRequest {
            name: name.clone(),
            months: 1,
            ..Default::default()
        })
        .await,
        "reasons",
    )
    .await;
    expect(
        c.extend_deadline(ExtendDeadlineRequest {
            name: name.clone(),
            months: 1,
            reasons: "x".into(),
            ..Default::default()
        })
        .await,
        "subject_notify_time",
    )
    .await;
    expect(
        c.reject_request(RejectRequestRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await,
        "reason",
    )
    .await;
    expect(
        c.reject_request(RejectRequestRequest {
            name: name.clone(),
            reason: RejectionReason::Other as i32,
            ..Default::default()
        })
        .await,
        "explanation",
    )
    .await;
    expect(
        c.cancel_request(CancelRequestRequest {
            name: name.clone(),
            request_id: "x".repeat(200),
            ..Default::default()
        })
        .await,
        "request_id",
    )
    .await;
    expect(
        c.complete_request(CompleteRequestRequest {
            name: name.clone(),
            response_time: Some(ts(at("2031-01-01T00:00:00Z"))),
            ..Default::default()
        })
        .await,
        "response_time",
    )
    .await;
    expect(
        c.mark_source_handled_manually(MarkSourceHandledManuallyRequest {
            name: name.clone(),
            data_source: "dataSources/crm".into(),
            ..Default::default()
        })
        .await,
        "reason",
    )
    .await;
    expect(
        c.mark_source_handled_manually(MarkSourceHandledManuallyRequest {
            name: name.clone(),
            data_source: "crm".into(),
            reason: "x".into(),
            ..Default::default()
        })
        .await,
        "data_source",
    )
    .await;
    expect(
        c.retry_source(RetrySourceRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await,
        "data_source",
    )
    .await;
    expect(
        c.record_recipient_notification(RecordRecipientNotificationRequest {
            name: name.clone(),
            notification: Some(RecipientNotification::default()),
            ..Default::default()
        })
        .await,
        "notification.recipient",
    )
    .await;
    let export = c.get_export(GetExportRequest { name: name.clone() }).await;
    expect(export.map(|_| ()), "name").await;
    expect(
        c.export_register(ExportRegisterRequest {
            format: ExportFormat::Markdown as i32,
            ..Default::default()
        })
        .await,
        "format",
    )
    .await;
    expect(
        c.register_data_source(RegisterDataSourceRequest {
            data_source_id: "CRM!".into(),
            data_source: Some(DataSource {
                endpoint: "http://x:1".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await,
        "data_source_id",
    )
    .await;
    expect(
        c.register_data_source(RegisterDataSourceRequest {
            data_source_id: "crm".into(),
            data_source: Some(DataSource {
                endpoint: "ftp://x".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await,
        "data_source.endpoint",
    )
    .await;
    expect(
        c.get_data_source(GetDataSourceRequest {
            name: "sources/x".into(),
        })
        .await,
        "name",
    )
    .await;
    expect(
        c.list_data_sources(ListDataSourcesRequest {
            page_size: -5,
            ..Default::default()
        })
        .await,
        "page_size",
    )
    .await;
    expect(
        c.update_data_source(UpdateDataSourceRequest {
            data_source: Some(DataSource {
                name: "dataSources/crm".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await,
        "update_mask",
    )
    .await;
    expect(
        c.apply_retention(ApplyRetentionRequest {
            purposes: vec!["bad".into()],
            ..Default::default()
        })
        .await,
        "purposes[0]",
    )
    .await;
    expect(
        c.get_retention_run(GetRetentionRunRequest {
            name: "runs/1".into(),
        })
        .await,
        "name",
    )
    .await;
    expect(
        c.list_retention_runs(ListRetentionRunsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await,
        "page_size",
    )
    .await;
    app.stop().await;
}
