//! Every repeated field of a request has a maximum (issue 24, finding 3): one
//! entry more is INVALID_ARGUMENT naming the field, before any query or access
//! event; a list at its maximum is served on both backends; and the store reads
//! lists longer than one SQL statement may bind in chunks instead of failing.

use std::{future::Future, pin::Pin};

use custodia_consent::{
    records::{NewRecord, WriteJob},
    store::ConsentStore,
};
use custodia_core::{
    ServiceName,
    outbox::{AccessEvent, Outcome},
    storage,
};
use custodia_proto::{
    audit::v1::{
        ListSubjectAccessesRequest, ShredSubjectRequest,
        audit_log_service_client::AuditLogServiceClient,
    },
    breach::v1::{
        AddTimelineEntryRequest, AssignTeamRequest, Breach, BreachNature, EvidenceReference,
        ReportBreachRequest, TeamMember, TeamRole, TimelineEntry, TimelineEntryKind,
        UpdateBreachRequest, breach_service_client::BreachServiceClient,
    },
    common::v1::{Contact, RetainedData, RetentionGround},
    connector::v1::{Capability, CategoryCount, Correction},
    consent::v1::{
        self as consent, BatchCheckConsentRequest, ConsentChannel, ConsentEvent, ConsentState,
        Cookie, CreatePurposeRequest, Decision, EraseSubjectRequest, Evidence,
        InternationalTransfer, LawfulBasis, ListConsentEventsRequest, ListSubjectConsentsRequest,
        Notice, PublishNoticeRequest, Purpose, PurposeCategory, PurposeDecision, Recipient,
        RecordConsentRequest, RecordObjectionRequest, TransferSafeguard, UpdatePurposeRequest,
        WatchConsentChangesRequest, WithdrawConsentRequest,
        consent_service_client::ConsentServiceClient,
    },
    dsar::v1::{
        self as dsar, ApplyRetentionRequest, DataSource, ListRequestsRequest,
        MarkSourceHandledManuallyRequest, RegisterDataSourceRequest, RequestState, RequestType,
        Requester, RequesterRole, SubmitRequestRequest, UpdateDataSourceRequest,
        dsar_service_client::DsarServiceClient,
    },
};
use custodia_tests::{
    ADMIN_TOKEN, Backend, TestApp, authed, newsletter_purpose, subject, subjects,
};
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// `n` distinct purpose names.
fn purposes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("purposes/p{i}")).collect()
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("value-{i}")).collect()
}

fn mask(n: usize, path: &str) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: vec![path.to_string(); n],
    })
}

fn evidence(app: &TestApp) -> Evidence {
    Evidence {
        collect_time: Some(app.timestamp()),
        channel: ConsentChannel::EmailLink as i32,
        ..Default::default()
    }
}

/// A purpose that is valid but for the lists `with` sets.
fn purpose(with: impl FnOnce(&mut Purpose)) -> Option<Purpose> {
    let mut p = Purpose {
        display_name: "Newsletter".into(),
        lawful_basis: LawfulBasis::Consent as i32,
        category: PurposeCategory::Communication as i32,
        ..Default::default()
    };
    with(&mut p);
    Some(p)
}

/// A data-subject request that is valid but for the lists `with` sets.
fn request(with: impl FnOnce(&mut dsar::Request)) -> SubmitRequestRequest {
    let mut r = dsar::Request {
        r#type: RequestType::Access as i32,
        subject_identifiers: subjects(1),
        requester: Some(Requester {
            role: RequesterRole::Subject as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    with(&mut r);
    SubmitRequestRequest {
        request: Some(r),
        request_id: String::new(),
    }
}

/// A data source that is valid but for the lists `with` sets.
fn source(with: impl FnOnce(&mut DataSource)) -> RegisterDataSourceRequest {
    let mut s = DataSource {
        endpoint: "http://127.0.0.1:1".into(),
        ..Default::default()
    };
    with(&mut s);
    RegisterDataSourceRequest {
        data_source_id: "crm".into(),
        data_source: Some(s),
        request_id: String::new(),
    }
}

/// A breach that is valid but for the lists `with` sets.
fn breach(app: &TestApp, with: impl FnOnce(&mut Breach)) -> ReportBreachRequest {
    let mut b = Breach {
        description: "A laptop was stolen".into(),
        detect_time: Some(app.timestamp()),
        ..Default::default()
    };
    with(&mut b);
    ReportBreachRequest {
        breach: Some(b),
        request_id: String::new(),
    }
}

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
    let channel = app.channel().await;
    let consent = ConsentServiceClient::new(channel.clone());
    let dsar = DsarServiceClient::new(channel.clone());
    let breach_client = BreachServiceClient::new(channel.clone());
    let audit = AuditLogServiceClient::new(channel.clone());

    let mut cases: Vec<(&str, &str, Answer)> = Vec::new();
    macro_rules! case {
        ($field:expr, $client:ident . $method:ident ($request:expr)) => {{
            let mut client = $client.clone();
            let request = authed($request, ADMIN_TOKEN);
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
    let channel = app.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let mut audit = AuditLogServiceClient::new(channel);
    let status = consent
        .list_consent_events(authed(
            ListConsentEventsRequest {
                subject_identifiers: subjects(100_001),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_names(&status, "subject_identifiers", "ListConsentEvents");
    let status = consent
        .watch_consent_changes(authed(
            WatchConsentChangesRequest {
                purposes: purposes(100_001),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .map(drop)
        .unwrap_err();
    assert_names(&status, "purposes", "WatchConsentChanges");
    let status = audit
        .list_subject_accesses(authed(
            ListSubjectAccessesRequest {
                subject_identifiers: subjects(100_001),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_names(&status, "subject_identifiers", "ListSubjectAccesses");
    app.stop().await;
}

custodia_tests::both_backends!(lists_at_their_maximum_are_served);

/// ListConsentEvents with 100 identifiers, WatchConsentChanges with 1,000
/// purposes and ListSubjectAccesses with 100 identifiers answer as with one.
async fn lists_at_their_maximum_are_served(backend: Backend) {
    let services = crate::all_services();
    let app = TestApp::spawn(backend, &services).await;
    let channel = app.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let audit = AuditLogServiceClient::new(channel);
    consent
        .create_purpose(authed(newsletter_purpose(), ADMIN_TOKEN))
        .await
        .unwrap();
    let mut filter = purposes(999);
    filter.push("purposes/newsletter".into());
    let mut changes = consent
        .watch_consent_changes(authed(
            WatchConsentChangesRequest {
                purposes: filter,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();

    // The last of 100 identifiers withdraws (recorded even without a grant).
    consent
        .withdraw_consent(authed(
            WithdrawConsentRequest {
                subject: Some(subject(99)),
                purposes: vec!["purposes/newsletter".into()],
                evidence: Some(evidence(&app)),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap();
    let change = changes.next().await.expect("a change").unwrap();
    let event = change.event.expect("an event, not a heartbeat");
    assert_eq!(event.purpose, "purposes/newsletter");
    assert_eq!(event.state, ConsentState::Withdrawn as i32);

    let events = consent
        .list_consent_events(authed(
            ListConsentEventsRequest {
                subject_identifiers: subjects(100),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name, event.name);

    // The withdrawal's access event, naming subject 99, is found among 100.
    let accesses = custodia_tests::eventually(|| {
        let mut audit = audit.clone();
        async move {
            let accesses = audit
                .list_subject_accesses(authed(
                    ListSubjectAccessesRequest {
                        subject_identifiers: subjects(100),
                        ..Default::default()
                    },
                    ADMIN_TOKEN,
                ))
                .await
                .unwrap()
                .into_inner()
                .accesses;
            // (The reads' own access events come in too: wait for the write's.)
            accesses
                .iter()
                .any(|a| a.action == "update")
                .then_some(accesses)
        }
    })
    .await;
    let withdrawal = accesses.iter().find(|a| a.action == "update").unwrap();
    assert_eq!(withdrawal.service, "custodia.consent.v1.ConsentService");
    assert_eq!(withdrawal.purpose, "newsletter");
    assert_eq!(withdrawal.access_count, 1, "{accesses:?}");
    drop(changes);
    app.stop().await;
}

custodia_tests::both_backends!(store_reads_lists_longer_than_a_statement_binds_in_chunks);

/// Records `state` of `subject` (a hash) for `purpose` through the store.
async fn record(store: &ConsentStore, subject: &str, purpose: &str, state: ConsentState) -> String {
    let name = format!("consentEvents/{}", uuid::Uuid::now_v7().simple());
    let job = WriteJob {
        key: None,
        records: vec![NewRecord {
            subject_hash: subject.into(),
            purpose_id: purpose.into(),
            event: ConsentEvent {
                name: name.clone(),
                purpose: format!("purposes/{purpose}"),
                state: state as i32,
                ..Default::default()
            },
            decision_us: 1_000,
            expire_us: None,
        }],
        receipt: None,
        access: AccessEvent::new(
            chrono::Utc::now(),
            "test",
            "custodia.consent.v1.ConsentService",
            "RecordConsent",
            Outcome::Ok,
        ),
        now_us: 2_000,
    };
    store.record_all(vec![job]).await.unwrap()[0]
        .as_ref()
        .expect("recorded");
    name
}

/// The consent store's reads over a list of values (a subject's trail, the
/// change feed for some purposes) stay under SQLite's 32,766 and PostgreSQL's
/// 65,535 parameters of a statement whatever the list's length: 70,000 values
/// are read in chunks, the rows the chunks find merged in change order.
async fn store_reads_lists_longer_than_a_statement_binds_in_chunks(backend: Backend) {
    let (config, _dir, database) = custodia_tests::test_config(backend).await;
    let db = storage::open_service(&config, ServiceName::Consent)
        .await
        .unwrap();
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    let store = ConsentStore::new(db.clone());
    let first = record(&store, "ada", "newsletter", ConsentState::Granted).await;
    let second = record(&store, "bob", "alumni", ConsentState::Granted).await;
    record(&store, "cy", "other", ConsentState::Granted).await;
    let third = record(&store, "ada", "alumni", ConsentState::Withdrawn).await;
    let names = |rows: Vec<ConsentEvent>| rows.into_iter().map(|e| e.name).collect::<Vec<_>>();

    // ada and bob far apart among 70,000 subjects, ada given twice.
    let mut subjects: Vec<String> = (0..70_000).map(|i| format!("h{i}")).collect();
    subjects[1] = "ada".into();
    subjects[69_998] = "bob".into();
    subjects.push("ada".into());
    let events = store
        .events(&subjects, None, None, 1000)
        .await
        .expect("70,000 subjects are read in chunks");
    assert_eq!(
        names(events.into_iter().map(|(_, e)| e).collect()),
        [first.clone(), second.clone(), third.clone()],
        "in change order, each once"
    );
    let events = store.events(&subjects, None, None, 2).await.unwrap();
    assert_eq!(
        names(events.into_iter().map(|(_, e)| e).collect()),
        [first.clone(), second.clone()],
        "the limit holds across chunks"
    );

    let mut filter: Vec<String> = (0..70_000).map(|i| format!("p{i}")).collect();
    filter[2] = "newsletter".into();
    filter[69_999] = "alumni".into();
    let changes = store
        .changes(0, &filter, 500)
        .await
        .expect("70,000 purposes are read in chunks");
    assert_eq!(
        names(changes.into_iter().map(|c| c.3).collect()),
        [first.clone(), second.clone(), third.clone()]
    );
    db.close().await;
    if let Some(database) = database {
        database.drop_now().await;
    }
}
