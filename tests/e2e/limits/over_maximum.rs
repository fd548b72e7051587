//! One entry over each maximum is INVALID_ARGUMENT naming the field.

use std::{future::Future, pin::Pin};

use custodia_proto::{
    audit::v1::{ListSubjectAccessesRequest, ShredSubjectRequest},
    breach::v1::{
        AddTimelineEntryRequest, AssignTeamRequest, Breach, BreachNature, EvidenceReference,
        TeamMember, TeamRole, TimelineEntry, TimelineEntryKind, UpdateBreachRequest,
    },
    common::v1::{Contact, RetainedData, RetentionGround},
    connector::v1::{Capability, CategoryCount, Correction},
    consent::v1::{
        self as consent, BatchCheckConsentRequest, Cookie, CreatePurposeRequest, Decision,
        EraseSubjectRequest, InternationalTransfer, ListConsentEventsRequest,
        ListSubjectConsentsRequest, Notice, PublishNoticeRequest, Purpose, PurposeDecision,
        Recipient, RecordConsentRequest, RecordObjectionRequest, TransferSafeguard,
        UpdatePurposeRequest, WatchConsentChangesRequest, WithdrawConsentRequest,
    },
    dsar::v1::{
        ApplyRetentionRequest, DataSource, ListRequestsRequest, MarkSourceHandledManuallyRequest,
        RequestState, RequestType, UpdateDataSourceRequest,
    },
};
use custodia_tests::{Backend, TestApp, subject, subjects};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{breach, evidence, mask, purpose, purposes, request, source, texts};

type Answer = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// Asserts that `status` is INVALID_ARGUMENT with a violation of `field`.
fn assert_names(status: &Status, field: &str, case: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("BadRequest").field_violations;
    assert!(
        violations.iter().any(|v| v.field == field),
        "{case}: no violation of {field} in {violations:?}"
    );
}

/// One entry over the maximum of each repeated field of the public API's
/// requests: INVALID_ARGUMENT naming the field. (Fields of a message that
/// several requests carry, such as Purpose's lists, are checked once, through
/// the create call; updates validate the same way.)
#[tokio::test]
async fn one_entry_over_each_maximum_is_invalid_argument_naming_the_field() {
    let services = crate::all_services();
    let app = TestApp::spawn(Backend::Sqlite, &services).await;
    let consent = app.consent().await;
    let dsar = app.dsar().await;
    let breach_client = app.breach().await;
    let audit = app.audit().await;

    let mut cases: Vec<(&str, &str, Answer)> = Vec::new();
    macro_rules! case {
        ($field:expr, $client:ident . $method:ident ($request:expr)) => {{
            let mut client = $client.clone();
            let request = $request;
            cases.push((
                stringify!($method),
                $field,
                Box::pin(async move { client.$method(request).await.map(drop) }),
            ));
        }};
    }
    let create = |with: fn(&mut Purpose)| CreatePurposeRequest {
        purpose_id: "newsletter".into(),
        purpose: purpose(with),
        request_id: String::new(),
    };

    // consent
    case!(
        "purpose.data_categories",
        consent.create_purpose(create(|p| p.data_categories = texts(101)))
    );
    case!(
        "purpose.subject_categories",
        consent.create_purpose(create(|p| p.subject_categories = texts(101)))
    );
    case!(
        "purpose.systems",
        consent.create_purpose(create(|p| p.systems = texts(101)))
    );
    case!(
        "purpose.recipients",
        consent.create_purpose(create(|p| {
            p.recipients = vec![
                Recipient {
                    name: "MailChimp".into(),
                    ..Default::default()
                };
                101
            ]
        }))
    );
    case!(
        "purpose.transfers",
        consent.create_purpose(create(|p| {
            p.transfers = vec![
                InternationalTransfer {
                    recipient: "Zoom".into(),
                    country_code: "US".into(),
                    safeguard: TransferSafeguard::StandardContractualClauses as i32,
                    details: String::new(),
                };
                101
            ]
        }))
    );
    case!(
        "purpose.cookies",
        consent.create_purpose(create(|p| {
            p.cookies = vec![
                Cookie {
                    name: "_ga".into(),
                    ..Default::default()
                };
                501
            ]
        }))
    );
    case!(
        "update_mask.paths",
        consent.update_purpose(UpdatePurposeRequest {
            purpose: Some(Purpose {
                name: "purposes/newsletter".into(),
                ..Default::default()
            }),
            update_mask: mask(101, "description"),
            request_id: String::new(),
        })
    );
    case!(
        "notice.purposes",
        consent.publish_notice(PublishNoticeRequest {
            notice_id: "privacy".into(),
            notice: Some(Notice {
                title: "Privacy policy".into(),
                content: Some(consent::notice::Content::Text("We are careful.".into())),
                purposes: purposes(1001),
                ..Default::default()
            }),
            request_id: String::new(),
        })
    );
    case!(
        "decisions",
        consent.record_consent(RecordConsentRequest {
            subject: Some(subject(0)),
            decisions: purposes(101)
                .into_iter()
                .map(|purpose| PurposeDecision {
                    purpose,
                    decision: Decision::Granted as i32,
                })
                .collect(),
            evidence: Some(evidence(&app)),
            ..Default::default()
        })
    );
    case!(
        "purposes",
        consent.withdraw_consent(WithdrawConsentRequest {
            subject: Some(subject(0)),
            purposes: purposes(101),
            evidence: Some(evidence(&app)),
            ..Default::default()
        })
    );
    case!(
        "purposes",
        consent.record_objection(RecordObjectionRequest {
            subject: Some(subject(0)),
            purposes: purposes(101),
            evidence: Some(evidence(&app)),
            ..Default::default()
        })
    );
    case!(
        "subject_identifiers",
        consent.list_consent_events(ListConsentEventsRequest {
            subject_identifiers: subjects(101),
            ..Default::default()
        })
    );
    case!(
        "subject_identifiers",
        consent.list_subject_consents(ListSubjectConsentsRequest {
            subject_identifiers: subjects(101),
            ..Default::default()
        })
    );
    case!(
        "subject_identifiers",
        consent.erase_subject(EraseSubjectRequest {
            subject_identifiers: subjects(101),
            ..Default::default()
        })
    );
    case!(
        "subjects",
        consent.batch_check_consent(BatchCheckConsentRequest {
            purpose: "purposes/newsletter".into(),
            subjects: subjects(10_001),
        })
    );
    case!(
        "purposes",
        consent.watch_consent_changes(WatchConsentChangesRequest {
            purposes: purposes(1001),
            ..Default::default()
        })
    );

    // dsar
    case!(
        "request.subject_identifiers",
        dsar.submit_request(request(|r| r.subject_identifiers = subjects(21)))
    );
    case!(
        "request.corrections",
        dsar.submit_request(request(|r| {
            r.r#type = RequestType::Rectification as i32;
            r.corrections = vec![
                Correction {
                    category: "students".into(),
                    field: "last_name".into(),
                    ..Default::default()
                };
                101
            ];
        }))
    );
    case!(
        "request.purposes",
        dsar.submit_request(request(|r| r.purposes = purposes(101)))
    );
    case!(
        "request.categories",
        dsar.submit_request(request(|r| r.categories = texts(101)))
    );
    case!(
        "states",
        dsar.list_requests(ListRequestsRequest {
            states: vec![RequestState::Received as i32; 11],
            ..Default::default()
        })
    );
    let manual = MarkSourceHandledManuallyRequest {
        name: "requests/0199a0b4c5d6e7f8".into(),
        data_source: "dataSources/crm".into(),
        reason: "the connector is down".into(),
        ..Default::default()
    };
    case!(
        "affected",
        dsar.mark_source_handled_manually(MarkSourceHandledManuallyRequest {
            affected: vec![
                CategoryCount {
                    category: "students".into(),
                    count: 1,
                };
                1001
            ],
            ..manual.clone()
        })
    );
    case!(
        "retained",
        dsar.mark_source_handled_manually(MarkSourceHandledManuallyRequest {
            retained: vec![
                RetainedData {
                    category: "invoices".into(),
                    ground: RetentionGround::LegalObligation as i32,
                    ..Default::default()
                };
                101
            ],
            ..manual
        })
    );
    case!(
        "data_source.capabilities",
        dsar.register_data_source(source(
            |s| s.capabilities = vec![Capability::Export as i32; 201]
        ))
    );
    case!(
        "data_source.identifier_types",
        dsar.register_data_source(source(|s| s.identifier_types = vec!["email".into(); 201]))
    );
    case!(
        "data_source.data_categories",
        dsar.register_data_source(source(|s| s.data_categories = texts(201)))
    );
    case!(
        "data_source.purposes",
        dsar.register_data_source(source(|s| s.purposes = purposes(201)))
    );
    case!(
        "data_source.recipients",
        dsar.register_data_source(source(|s| s.recipients = texts(201)))
    );
    case!(
        "update_mask.paths",
        dsar.update_data_source(UpdateDataSourceRequest {
            data_source: Some(DataSource {
                name: "dataSources/crm".into(),
                ..Default::default()
            }),
            update_mask: mask(101, "display_name"),
            request_id: String::new(),
        })
    );
    case!(
        "data_sources",
        dsar.apply_retention(ApplyRetentionRequest {
            data_sources: (0..1001).map(|i| format!("dataSources/s{i}")).collect(),
            ..Default::default()
        })
    );
    case!(
        "purposes",
        dsar.apply_retention(ApplyRetentionRequest {
            purposes: purposes(1001),
            ..Default::default()
        })
    );

    // breach
    case!(
        "breach.natures",
        breach_client.report_breach(breach(&app, |b| b.natures =
            vec![BreachNature::Confidentiality as i32; 11]))
    );
    case!(
        "breach.data_categories",
        breach_client.report_breach(breach(&app, |b| b.data_categories = texts(101)))
    );
    case!(
        "breach.subject_categories",
        breach_client.report_breach(breach(&app, |b| b.subject_categories = texts(101)))
    );
    case!(
        "breach.affected_countries",
        breach_client
            .report_breach(breach(&app, |b| b.affected_countries = vec!["FR".into(); 251]))
    );
    case!(
        "breach.systems",
        breach_client.report_breach(breach(&app, |b| b.systems = texts(101)))
    );
    case!(
        "update_mask.paths",
        breach_client.update_breach(UpdateBreachRequest {
            breach: Some(Breach {
                name: "breaches/b1".into(),
                ..Default::default()
            }),
            update_mask: mask(101, "title"),
            request_id: String::new(),
        })
    );
    case!(
        "members",
        breach_client.assign_team(AssignTeamRequest {
            name: "breaches/b1".into(),
            members: vec![
                TeamMember {
                    role: TeamRole::Dpo as i32,
                    contact: Some(Contact {
                        display_name: "Dana".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                101
            ],
            request_id: String::new(),
        })
    );
    case!(
        "entry.evidence",
        breach_client.add_timeline_entry(AddTimelineEntryRequest {
            parent: "breaches/b1".into(),
            entry: Some(TimelineEntry {
                kind: TimelineEntryKind::EvidencePreserved as i32,
                description: "Disk images taken".into(),
                evidence: vec![
                    EvidenceReference {
                        description: "disk image".into(),
                        ..Default::default()
                    };
                    51
                ],
                ..Default::default()
            }),
            request_id: String::new(),
        })
    );

    // audit
    case!(
        "subject_identifiers",
        audit.list_subject_accesses(ListSubjectAccessesRequest {
            subject_identifiers: subjects(101),
            ..Default::default()
        })
    );
    case!(
        "subject_identifiers",
        audit.shred_subject(ShredSubjectRequest {
            subject_identifiers: subjects(101),
            ..Default::default()
        })
    );

    for (method, field, answer) in cases {
        match answer.await {
            Ok(()) => panic!("{method}: {field} over its maximum was accepted"),
            Err(status) => assert_names(&status, field, method),
        }
    }
    app.stop().await;
}

/// What the outside probe sent (100,001 entries): ListConsentEvents and
/// WatchConsentChanges answered INTERNAL ("too many SQL variables"),
/// ListSubjectAccesses ran 9 s and wrote 100,001 access events.
#[tokio::test]
async fn the_probes_lists_of_100001_entries_are_invalid_argument() {
    let services = crate::all_services();
    let app = TestApp::spawn(Backend::Sqlite, &services).await;
    let mut consent = app.consent().await;
    let mut audit = app.audit().await;
    let status = consent
        .list_consent_events(ListConsentEventsRequest {
            subject_identifiers: subjects(100_001),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_names(&status, "subject_identifiers", "ListConsentEvents");
    let status = consent
        .watch_consent_changes(WatchConsentChangesRequest {
            purposes: purposes(100_001),
            ..Default::default()
        })
        .await
        .map(drop)
        .unwrap_err();
    assert_names(&status, "purposes", "WatchConsentChanges");
    let status = audit
        .list_subject_accesses(ListSubjectAccessesRequest {
            subject_identifiers: subjects(100_001),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_names(&status, "subject_identifiers", "ListSubjectAccesses");
    app.stop().await;
}
