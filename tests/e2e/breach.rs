//! The breach register through its public gRPC API, on SQLite and PostgreSQL:
//! the report -> assess -> notify -> communicate -> close lifecycle, the
//! 72-hour clock across a DST change, the state machine's refusals, bad input
//! by field, idempotent reports, retention before deletion, and every call as
//! an access event in audit-log.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use custodia_core::legal_time::Clock;
use custodia_proto::{
    audit::v1::ListEventsRequest,
    breach::v1::{
        AddTimelineEntryRequest, AssessRiskRequest, AssignTeamRequest, AuthorityNotification,
        Breach, BreachNature, BreachState, ClockStatus, CloseBreachRequest, CommunicationChannel,
        CommunicationWaiver, DeleteBreachRequest, EnisaInputs, EvidenceReference,
        GenerateAuthorityReportRequest, GetBreachRequest, ListBreachesRequest,
        ListTimelineEntriesRequest, NotificationPhase, RecordAuthorityNotificationRequest,
        RecordCommunicationWaiverRequest, RecordSubjectCommunicationRequest, ReportBreachRequest,
        RiskAssessment, RiskLevel, Severity, SubjectCommunication, TeamMember, TeamRole,
        TimelineEntry, TimelineEntryKind, UpdateBreachRequest, WaiverGround,
        breach_service_client::BreachServiceClient,
    },
    common::v1::{Contact, ExportFormat},
};
use custodia_tests::{
    ADMIN_TOKEN, Backend, TestApp, assert_code, at, audit_events_until, authed, time_of, ts,
};
use tonic::{Code, Status, transport::Channel};

type Client = BreachServiceClient<Channel>;

const SERVICE: &str = "custodia.breach.v1.BreachService";

/// 23:30 in Paris on Saturday 28 March 2026; clocks go forward at 02:00 the
/// next night, so the deadline 72 elapsed hours later is 00:30 CEST on 1 April.
const AWARE: &str = "2026-03-28T22:30:00Z";
const DEADLINE: &str = "2026-03-31T22:30:00Z";

fn minimal(detect: DateTime<Utc>) -> Breach {
    Breach {
        title: "Laptop with exam results stolen".into(),
        description: "A teacher's laptop was stolen from a car".into(),
        detect_time: Some(ts(detect)),
        ..Default::default()
    }
}

async fn report(client: &mut Client, breach: Breach, request_id: &str) -> Result<Breach, Status> {
    client
        .report_breach(authed(
            ReportBreachRequest {
                breach: Some(breach),
                request_id: request_id.into(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn get(client: &mut Client, name: &str) -> Result<Breach, Status> {
    client
        .get_breach(authed(GetBreachRequest { name: name.into() }, ADMIN_TOKEN))
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn list(client: &mut Client, request: ListBreachesRequest) -> Vec<String> {
    client
        .list_breaches(authed(request, ADMIN_TOKEN))
        .await
        .expect("list")
        .into_inner()
        .breaches
        .into_iter()
        .map(|b| b.name)
        .collect()
}

async fn notify(
    client: &mut Client,
    name: &str,
    phase: NotificationPhase,
    delay_reasons: &str,
) -> Result<Breach, Status> {
    client
        .record_authority_notification(authed(
            RecordAuthorityNotificationRequest {
                name: name.into(),
                notification: Some(AuthorityNotification {
                    phase: phase as i32,
                    authority: "CNIL".into(),
                    method: "CNIL online notification service".into(),
                    delay_reasons: delay_reasons.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn assess(
    client: &mut Client,
    name: &str,
    inputs: EnisaInputs,
    override_level: RiskLevel,
    justification: &str,
) -> Result<Breach, Status> {
    client
        .assess_risk(authed(
            AssessRiskRequest {
                name: name.into(),
                assessment: Some(RiskAssessment {
                    inputs: Some(inputs),
                    override_risk_level: override_level as i32,
                    override_justification: justification.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn close(client: &mut Client, name: &str) -> Result<Breach, Status> {
    client
        .close_breach(authed(
            CloseBreachRequest {
                name: name.into(),
                lessons_learned: "Encrypt every laptop disk".into(),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn delete(client: &mut Client, name: &str, request_id: &str) -> Result<(), Status> {
    client
        .delete_breach(authed(
            DeleteBreachRequest {
                name: name.into(),
                request_id: request_id.into(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .map(|_| ())
}

fn high_risk_inputs() -> EnisaInputs {
    // Exam results (DPC 2), named files (EI 1), unknown recipients (0.5), theft (+0.5).
    EnisaInputs {
        data_processing_context: 2,
        data_processing_context_rationale: "exam results: behavioural data".into(),
        ease_of_identification: 1.0,
        confidentiality_loss: 0.5,
        malicious_intent: true,
        ..Default::default()
    }
}

fn clock_status(b: &Breach) -> ClockStatus {
    b.authority_clock.as_ref().expect("clock").status()
}

async fn lifecycle(backend: Backend) {
    let app = TestApp::spawn(
        backend,
        &[custodia_audit_log::SERVICE, custodia_breach::SERVICE],
    )
    .await;
    app.clock.set(at(AWARE));
    let mut client = BreachServiceClient::new(app.channel().await);

    // Report at once with little information; a retry returns the same breach.
    let b = report(&mut client, minimal(at(AWARE)), "report-1")
        .await
        .unwrap();
    let name = b.name.clone();
    assert!(name.starts_with("breaches/"), "{name}");
    assert_eq!(b.state(), BreachState::Open);
    assert_eq!(time_of(&b.awareness_time), at(AWARE));
    let clock = b.authority_clock.unwrap();
    assert_eq!(time_of(&clock.deadline_time), at(DEADLINE));
    assert_eq!(clock.remaining.unwrap().seconds, 72 * 3600);
    assert_eq!(clock_status(&b), ClockStatus::Running);
    let again = report(&mut client, minimal(at(AWARE)), "report-1")
        .await
        .unwrap();
    assert_eq!(again.name, name);
    let read = get(&mut client, &name).await.unwrap();
    assert_eq!(read.description, b.description);
    assert_eq!(
        list(&mut client, ListBreachesRequest::default()).await,
        [name.as_str()]
    );

    // Bad input names the field and writes nothing.
    let mut bad = minimal(at(AWARE));
    bad.description = String::new();
    bad.natures = vec![BreachNature::Confidentiality as i32, 0];
    bad.affected_countries = vec!["france".into()];
    let err = report(&mut client, bad, "report-bad").await.unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &[
            "breach.description",
            "breach.natures[1]",
            "breach.affected_countries[0]",
        ],
    );
    let err = report(&mut client, minimal(at("2026-03-29T00:00:00Z")), "")
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["breach.detect_time", "future"],
    );
    assert_eq!(
        list(&mut client, ListBreachesRequest::default())
            .await
            .len(),
        1
    );
    let err = get(&mut client, "nope").await.unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["name"]);
    let err = get(&mut client, "breaches/unknown").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The DPO completes the record (Art. 33(3)).
    let completion = Breach {
        name: name.clone(),
        natures: vec![BreachNature::Confidentiality as i32],
        data_categories: vec!["exam results".into(), "names".into()],
        subject_categories: vec!["students".into()],
        approximate_subject_count: Some(240),
        likely_consequences: "Disclosure of grades to strangers".into(),
        measures_taken: "Laptop account revoked; police report filed".into(),
        dpo_contact: Some(Contact {
            display_name: "Data Protection Officer".into(),
            email: "dpo@example.edu".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mask = |paths: &[&str]| prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    };
    let err = client
        .update_breach(authed(
            UpdateBreachRequest {
                breach: Some(completion.clone()),
                update_mask: Some(mask(&["natures", "state"])),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["update_mask.paths[1]"]);
    let updated = client
        .update_breach(authed(
            UpdateBreachRequest {
                breach: Some(completion),
                update_mask: Some(mask(&[
                    "natures",
                    "data_categories",
                    "subject_categories",
                    "approximate_subject_count",
                    "likely_consequences",
                    "measures_taken",
                    "dpo_contact",
                ])),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .breach
        .unwrap();
    assert_eq!(updated.approximate_subject_count, Some(240));
    assert_eq!(updated.description, b.description, "unmasked fields kept");

    // Team and timeline.
    let err = client
        .assign_team(authed(
            AssignTeamRequest {
                name: name.clone(),
                members: vec![TeamMember::default()],
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["members[0].role", "members[0].contact"],
    );
    let teamed = client
        .assign_team(authed(
            AssignTeamRequest {
                name: name.clone(),
                members: vec![
                    TeamMember {
                        role: TeamRole::Dpo as i32,
                        contact: Some(Contact {
                            display_name: "Claire DPO".into(),
                            ..Default::default()
                        }),
                        principal: "dpo".into(),
                    },
                    TeamMember {
                        role: TeamRole::It as i32,
                        contact: Some(Contact {
                            email: "security@example.edu".into(),
                            ..Default::default()
                        }),
                        principal: String::new(),
                    },
                ],
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .breach
        .unwrap();
    assert_eq!(teamed.team.len(), 2);
    let evidence = |sha: &str| TimelineEntry {
        kind: TimelineEntryKind::EvidencePreserved as i32,
        description: "Badge logs of the car park exported".into(),
        evidence: vec![EvidenceReference {
            description: "car park badge logs".into(),
            location: "ticket SEC-42".into(),
            sha256: sha.into(),
        }],
        ..Default::default()
    };
    let err = client
        .add_timeline_entry(authed(
            AddTimelineEntryRequest {
                parent: name.clone(),
                entry: Some(evidence("not-a-hash")),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["entry.evidence[0].sha256"]);
    let add = |request_id: &str| {
        authed(
            AddTimelineEntryRequest {
                parent: name.clone(),
                entry: Some(evidence(&"ab".repeat(32))),
                request_id: request_id.into(),
            },
            ADMIN_TOKEN,
        )
    };
    let entry = client
        .add_timeline_entry(add("tl-1"))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert!(entry.name.starts_with(&format!("{name}/timelineEntries/")));
    let retried = client
        .add_timeline_entry(add("tl-1"))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(retried.name, entry.name, "a retry appends nothing");
    let timeline = client
        .list_timeline_entries(authed(
            ListTimelineEntriesRequest {
                parent: name.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(timeline[0].kind(), TimelineEntryKind::System, "reported");
    assert_eq!(
        timeline
            .iter()
            .filter(|e| e.kind() == TimelineEntryKind::EvidencePreserved)
            .count(),
        1
    );

    // Risk: the ENISA method says high; an override needs a justification.
    let err = assess(&mut client, &name, high_risk_inputs(), RiskLevel::Risk, "")
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["assessment.override_justification"],
    );
    let mut wrong = high_risk_inputs();
    wrong.ease_of_identification = 0.6;
    let err = assess(&mut client, &name, wrong, RiskLevel::Unspecified, "")
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["assessment.inputs.ease_of_identification"],
    );
    let assessed = assess(
        &mut client,
        &name,
        high_risk_inputs(),
        RiskLevel::Unspecified,
        "",
    )
    .await
    .unwrap();
    let a = assessed.risk_assessments.last().unwrap();
    assert_eq!(a.severity_score, 3.0);
    assert_eq!(a.severity(), Severity::High);
    assert_eq!(a.computed_risk_level(), RiskLevel::HighRisk);
    assert_eq!(assessed.risk_level(), RiskLevel::HighRisk);

    // A high-risk breach cannot close before the authority and the subjects are told.
    let err = close(&mut client, &name).await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["is OPEN", "no authority notification"],
    );
    app.clock
        .advance(chrono::Duration::hours(71) + chrono::Duration::minutes(59));
    let notified = notify(&mut client, &name, NotificationPhase::Initial, "")
        .await
        .unwrap();
    assert_eq!(clock_status(&notified), ClockStatus::NotifiedInTime);
    assert_eq!(
        time_of(&notified.authority_notifications[0].send_time),
        app.clock.now(),
        "the send time defaults to now"
    );
    notify(&mut client, &name, NotificationPhase::FollowUp, "")
        .await
        .unwrap();
    let err = close(&mut client, &name).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN", "HIGH_RISK"]);
    let waive = |ground: WaiverGround| {
        authed(
            RecordCommunicationWaiverRequest {
                name: name.clone(),
                waiver: Some(CommunicationWaiver {
                    ground: ground as i32,
                    justification: "240 former students without current addresses".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        )
    };
    let err = client
        .record_communication_waiver(waive(WaiverGround::DisproportionateEffort))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN", "PUBLIC"]);
    let err = client
        .record_communication_waiver(waive(WaiverGround::Unspecified))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["waiver.ground"]);
    let told = client
        .record_subject_communication(authed(
            RecordSubjectCommunicationRequest {
                name: name.clone(),
                communication: Some(SubjectCommunication {
                    channel: CommunicationChannel::Email as i32,
                    reached_count: 240,
                    message: "Your exam results were on a stolen laptop. What to do: ...".into(),
                    language: "fr".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .breach
        .unwrap();
    assert_eq!(told.subject_communications.len(), 1);

    // The Art. 33(3) report, as JSON and Markdown.
    let report_doc = |format: ExportFormat| {
        authed(
            GenerateAuthorityReportRequest {
                name: name.clone(),
                format: format as i32,
                language: String::new(),
            },
            ADMIN_TOKEN,
        )
    };
    let json = client
        .generate_authority_report(report_doc(ExportFormat::Json))
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    assert_eq!(json.content_type, "application/json");
    let value: serde_json::Value = serde_json::from_slice(&json.content).unwrap();
    assert_eq!(value["timing"]["authority_deadline"], DEADLINE);
    assert_eq!(value["nature"]["approximate_subject_count"], 240);
    assert_eq!(value["dpo_contact"]["email"], "dpo@example.edu");
    let md = client
        .generate_authority_report(report_doc(ExportFormat::Markdown))
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    let md = String::from_utf8(md.content).unwrap();
    assert!(
        md.contains("Art. 33(3)(a)") && md.contains("exam results"),
        "{md}"
    );
    let in_language = |language: &str| {
        authed(
            GenerateAuthorityReportRequest {
                name: name.clone(),
                format: ExportFormat::Markdown as i32,
                language: language.into(),
            },
            ADMIN_TOKEN,
        )
    };
    let fr = client
        .generate_authority_report(in_language("fr-FR"))
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    let fr = String::from_utf8(fr.content).unwrap();
    assert!(
        fr.contains("Nature de la violation (art. 33(3)(a))"),
        "{fr}"
    );
    let err = client
        .generate_authority_report(in_language("de"))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["language"]);
    let err = client
        .generate_authority_report(report_doc(ExportFormat::Csv))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["format"]);

    // Close; a closed breach refuses changes, naming its state.
    let closed = close(&mut client, &name).await.unwrap();
    assert_eq!(closed.state(), BreachState::Closed);
    let close_time = time_of(&closed.close_time);
    assert_eq!(close_time, app.clock.now());
    assert_eq!(
        time_of(&closed.retain_until_time),
        at("2031-03-31T22:29:00Z"),
        "5 years after closing"
    );
    let err = close(&mut client, &name).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is CLOSED"]);
    let err = assess(
        &mut client,
        &name,
        high_risk_inputs(),
        RiskLevel::Unspecified,
        "",
    )
    .await
    .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is CLOSED"]);
    let err = client.add_timeline_entry(add("")).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is CLOSED"]);

    // Kept 5 years; deletable after.
    let err = delete(&mut client, &name, "del-1").await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["is CLOSED", "2031-03-31T22:29:00Z"],
    );
    app.clock
        .advance(chrono::Duration::days(5 * 365 + 2) + chrono::Duration::days(1));
    delete(&mut client, &name, "del-1").await.unwrap();
    assert_eq!(
        get(&mut client, &name).await.unwrap_err().code(),
        Code::NotFound
    );
    delete(&mut client, &name, "del-1")
        .await
        .expect("a retried delete succeeds again");

    // Every read and change is an access event in audit-log.
    let expected: BTreeSet<&str> = [
        "ReportBreach",
        "GetBreach",
        "ListBreaches",
        "UpdateBreach",
        "AssignTeam",
        "AddTimelineEntry",
        "ListTimelineEntries",
        "AssessRisk",
        "RecordAuthorityNotification",
        "RecordSubjectCommunication",
        "GenerateAuthorityReport",
        "CloseBreach",
        "DeleteBreach",
    ]
    .into_iter()
    .collect();
    let events = audit_events_until(
        app.channel().await,
        ListEventsRequest {
            service: SERVICE.into(),
            ..Default::default()
        },
        |events| {
            let methods: BTreeSet<&str> = events.iter().map(|e| e.method.as_str()).collect();
            expected.is_subset(&methods)
        },
    )
    .await;
    for e in &events {
        if e.method != "ListBreaches" {
            assert_eq!(e.resource, name, "{e:?}");
        }
        assert_eq!(e.actor.as_ref().unwrap().principal, "admin");
    }
    // Changes recorded once each, reads once per call.
    let count = |m: &str| events.iter().filter(|e| e.method == m).count();
    assert_eq!(count("RecordAuthorityNotification"), 2);
    assert_eq!(count("CloseBreach"), 1);
    app.stop().await;
}

custodia_tests::both_backends!(lifecycle);

async fn clock_across_dst(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_breach::SERVICE]).await;
    app.clock.set(at(AWARE));
    let mut client = BreachServiceClient::new(app.channel().await);
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
        .list_breaches(authed(
            ListBreachesRequest {
                page_size: 2,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.breaches.len(), 2);
    let rest = client
        .list_breaches(authed(
            ListBreachesRequest {
                page_size: 2,
                page_token: page.next_page_token.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.breaches.len(), 1);
    assert!(rest.next_page_token.is_empty());
    let err = client
        .list_breaches(authed(
            ListBreachesRequest {
                page_size: 2,
                page_token: page.next_page_token,
                overdue: true,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
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
        .list_breaches(authed(
            ListBreachesRequest {
                state: 9,
                page_size: -1,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
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

custodia_tests::both_backends!(clock_across_dst);

const STAFF_TOKEN: &str = "staff-token-0123456789abcdef";

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
    let mut client = BreachServiceClient::new(app.channel().await);

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
        .update_breach(authed(
            UpdateBreachRequest {
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
            },
            ADMIN_TOKEN,
        ))
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
        .update_breach(authed(
            UpdateBreachRequest {
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
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN", "etag"]);
    let timeline = client
        .list_timeline_entries(authed(
            ListTimelineEntriesRequest {
                parent: b.name.clone(),
                page_size: 1,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.entries.len(), 1);
    let second = client
        .list_timeline_entries(authed(
            ListTimelineEntriesRequest {
                parent: b.name.clone(),
                page_size: 10,
                page_token: timeline.next_page_token,
            },
            ADMIN_TOKEN,
        ))
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
    client
        .record_subject_communication(authed(
            RecordSubjectCommunicationRequest {
                name: b.name.clone(),
                communication: Some(SubjectCommunication {
                    channel: CommunicationChannel::Public as i32,
                    message: "Notice on the institution's web site".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap();
    let waived = client
        .record_communication_waiver(authed(
            RecordCommunicationWaiverRequest {
                name: b.name.clone(),
                waiver: Some(CommunicationWaiver {
                    ground: WaiverGround::DisproportionateEffort as i32,
                    justification: "Former students without known addresses".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .breach
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

custodia_tests::both_backends!(waivers_overrides_and_append_only);

async fn concurrent_calls(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_breach::SERVICE]).await;
    app.clock.set(at(AWARE));
    let client = BreachServiceClient::new(app.channel().await);

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

custodia_tests::both_backends!(concurrent_calls);
