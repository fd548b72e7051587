//! The breach lifecycle, report -> complete -> assess -> notify -> communicate
//! -> report to the authority -> close -> delete after retention, as one
//! sequence of steps on one breach (each step starts where the previous one
//! left it); at the end, every call of the sequence is an access event.

use std::collections::BTreeSet;

use custodia_core::legal_time::Clock;
use custodia_proto::{
    audit::v1::ListEventsRequest,
    breach::v1::{
        AddTimelineEntryRequest, AssignTeamRequest, Breach, BreachNature, BreachState, ClockStatus,
        CommunicationChannel, EvidenceReference, GenerateAuthorityReportRequest,
        ListBreachesRequest, ListTimelineEntriesRequest, NotificationPhase, RiskLevel, Severity,
        SubjectCommunication, TeamMember, TeamRole, TimelineEntry, TimelineEntryKind,
        UpdateBreachRequest, WaiverGround,
    },
    common::v1::{Contact, ExportFormat},
};
use custodia_tests::{Backend, TestApp, assert_code, at, audit_events_until, time_of};
use tonic::Code;

use super::{
    AWARE, Client, DEADLINE, SERVICE, assess, clock_status, close, communicate, delete, get,
    high_risk_inputs, list, minimal, notify, report, waive,
};

custodia_tests::both_backends!(lifecycle);

async fn lifecycle(backend: Backend) {
    let app = TestApp::spawn(
        backend,
        &[custodia_audit_log::SERVICE, custodia_breach::SERVICE],
    )
    .await;
    app.clock.set(at(AWARE));
    let mut client = app.breach().await;
    let name = &report_at_once(&mut client).await;
    bad_input_writes_nothing(&mut client).await;
    complete_the_record(&mut client, name).await;
    team_and_timeline(&mut client, name).await;
    assess_the_risk(&mut client, name).await;
    notify_the_authority_and_the_subjects(&app, &mut client, name).await;
    report_to_the_authority(&mut client, name).await;
    close_then_refuse_changes(&app, &mut client, name).await;
    keep_then_delete(&app, &mut client, name).await;
    every_call_is_an_access_event(&app, name).await;
    app.stop().await;
}

/// A timeline entry preserving evidence whose digest is `sha`.
fn evidence(sha: &str) -> TimelineEntry {
    TimelineEntry {
        kind: TimelineEntryKind::EvidencePreserved as i32,
        description: "Badge logs of the car park exported".into(),
        evidence: vec![EvidenceReference {
            description: "car park badge logs".into(),
            location: "ticket SEC-42".into(),
            sha256: sha.into(),
        }],
        ..Default::default()
    }
}

/// AddTimelineEntry of well-formed evidence to breach `name`.
fn add_evidence(name: &str, request_id: &str) -> AddTimelineEntryRequest {
    AddTimelineEntryRequest {
        parent: name.into(),
        entry: Some(evidence(&"ab".repeat(32))),
        request_id: request_id.into(),
    }
}

/// Reported at once with little information, the 72-hour clock running from
/// awareness; a retry returns the same breach. Returns its name.
async fn report_at_once(client: &mut Client) -> String {
    let b = report(client, minimal(at(AWARE)), "report-1")
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
    let again = report(client, minimal(at(AWARE)), "report-1")
        .await
        .unwrap();
    assert_eq!(again.name, name);
    let read = get(client, &name).await.unwrap();
    assert_eq!(read.description, b.description);
    assert_eq!(
        list(client, ListBreachesRequest::default()).await,
        [name.as_str()]
    );
    name
}

/// Bad input names the field and writes nothing.
async fn bad_input_writes_nothing(client: &mut Client) {
    let mut bad = minimal(at(AWARE));
    bad.description = String::new();
    bad.natures = vec![BreachNature::Confidentiality as i32, 0];
    bad.affected_countries = vec!["france".into()];
    let err = report(client, bad, "report-bad").await.unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &[
            "breach.description",
            "breach.natures[1]",
            "breach.affected_countries[0]",
        ],
    );
    let err = report(client, minimal(at("2026-03-29T00:00:00Z")), "")
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["breach.detect_time", "future"],
    );
    assert_eq!(list(client, ListBreachesRequest::default()).await.len(), 1);
    let err = get(client, "nope").await.unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["name"]);
    let err = get(client, "breaches/unknown").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// The DPO completes the record (Art. 33(3)) through a field mask.
async fn complete_the_record(client: &mut Client, name: &str) {
    let completion = Breach {
        name: name.into(),
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
        .update_breach(UpdateBreachRequest {
            breach: Some(completion.clone()),
            update_mask: Some(mask(&["natures", "state"])),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["update_mask.paths[1]"]);
    let updated = client
        .update_breach(UpdateBreachRequest {
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
        })
        .await
        .unwrap()
        .into_inner()
        .breach
        .unwrap();
    assert_eq!(updated.approximate_subject_count, Some(240));
    assert_eq!(
        updated.description,
        minimal(at(AWARE)).description,
        "unmasked fields kept"
    );
}

/// A response team, and evidence on the timeline (a retry appends nothing).
async fn team_and_timeline(client: &mut Client, name: &str) {
    let err = client
        .assign_team(AssignTeamRequest {
            name: name.into(),
            members: vec![TeamMember::default()],
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["members[0].role", "members[0].contact"],
    );
    let teamed = client
        .assign_team(AssignTeamRequest {
            name: name.into(),
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
        })
        .await
        .unwrap()
        .into_inner()
        .breach
        .unwrap();
    assert_eq!(teamed.team.len(), 2);
    let err = client
        .add_timeline_entry(AddTimelineEntryRequest {
            entry: Some(evidence("not-a-hash")),
            ..add_evidence(name, "")
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["entry.evidence[0].sha256"]);
    let entry = client
        .add_timeline_entry(add_evidence(name, "tl-1"))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert!(entry.name.starts_with(&format!("{name}/timelineEntries/")));
    let retried = client
        .add_timeline_entry(add_evidence(name, "tl-1"))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(retried.name, entry.name, "a retry appends nothing");
    let timeline = client
        .list_timeline_entries(ListTimelineEntriesRequest {
            parent: name.into(),
            ..Default::default()
        })
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
}

/// The ENISA method says high risk; an override needs a justification.
async fn assess_the_risk(client: &mut Client, name: &str) {
    let err = assess(client, name, high_risk_inputs(), RiskLevel::Risk, "")
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["assessment.override_justification"],
    );
    let mut wrong = high_risk_inputs();
    wrong.ease_of_identification = 0.6;
    let err = assess(client, name, wrong, RiskLevel::Unspecified, "")
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["assessment.inputs.ease_of_identification"],
    );
    let assessed = assess(client, name, high_risk_inputs(), RiskLevel::Unspecified, "")
        .await
        .unwrap();
    let a = assessed.risk_assessments.last().unwrap();
    assert_eq!(a.severity_score, 3.0);
    assert_eq!(a.severity(), Severity::High);
    assert_eq!(a.computed_risk_level(), RiskLevel::HighRisk);
    assert_eq!(assessed.risk_level(), RiskLevel::HighRisk);
}

/// A high-risk breach cannot close before the authority and the subjects are
/// told: notified 71:59 after awareness (in time), then the subjects by e-mail.
async fn notify_the_authority_and_the_subjects(app: &TestApp, client: &mut Client, name: &str) {
    let err = close(client, name).await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["is OPEN", "no authority notification"],
    );
    app.clock
        .advance(chrono::Duration::hours(71) + chrono::Duration::minutes(59));
    let notified = notify(client, name, NotificationPhase::Initial, "")
        .await
        .unwrap();
    assert_eq!(clock_status(&notified), ClockStatus::NotifiedInTime);
    assert_eq!(
        time_of(&notified.authority_notifications[0].send_time),
        app.clock.now(),
        "the send time defaults to now"
    );
    notify(client, name, NotificationPhase::FollowUp, "")
        .await
        .unwrap();
    let err = close(client, name).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN", "HIGH_RISK"]);
    let justification = "240 former students without current addresses";
    let err = waive(
        client,
        name,
        WaiverGround::DisproportionateEffort,
        justification,
    )
    .await
    .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is OPEN", "PUBLIC"]);
    let err = waive(client, name, WaiverGround::Unspecified, justification)
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["waiver.ground"]);
    let told = communicate(
        client,
        name,
        SubjectCommunication {
            channel: CommunicationChannel::Email as i32,
            reached_count: 240,
            message: "Your exam results were on a stolen laptop. What to do: ...".into(),
            language: "fr".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(told.subject_communications.len(), 1);
}

/// The Art. 33(3) report, as JSON and Markdown, in English and French.
async fn report_to_the_authority(client: &mut Client, name: &str) {
    let report_doc = |format: ExportFormat| GenerateAuthorityReportRequest {
        name: name.into(),
        format: format as i32,
        language: String::new(),
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
    let in_language = |language: &str| GenerateAuthorityReportRequest {
        name: name.into(),
        format: ExportFormat::Markdown as i32,
        language: language.into(),
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
}

/// Closed, kept 5 years; a closed breach refuses changes, naming its state.
async fn close_then_refuse_changes(app: &TestApp, client: &mut Client, name: &str) {
    let closed = close(client, name).await.unwrap();
    assert_eq!(closed.state(), BreachState::Closed);
    let close_time = time_of(&closed.close_time);
    assert_eq!(close_time, app.clock.now());
    assert_eq!(
        time_of(&closed.retain_until_time),
        at("2031-03-31T22:29:00Z"),
        "5 years after closing"
    );
    let err = close(client, name).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is CLOSED"]);
    let err = assess(client, name, high_risk_inputs(), RiskLevel::Unspecified, "")
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is CLOSED"]);
    let err = client
        .add_timeline_entry(add_evidence(name, ""))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["is CLOSED"]);
}

/// Not deletable before its retention ends; deletable after, and a retried
/// delete succeeds again.
async fn keep_then_delete(app: &TestApp, client: &mut Client, name: &str) {
    let err = delete(client, name, "del-1").await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["is CLOSED", "2031-03-31T22:29:00Z"],
    );
    app.clock
        .advance(chrono::Duration::days(5 * 365 + 2) + chrono::Duration::days(1));
    delete(client, name, "del-1").await.unwrap();
    assert_eq!(get(client, name).await.unwrap_err().code(), Code::NotFound);
    delete(client, name, "del-1")
        .await
        .expect("a retried delete succeeds again");
}

/// Every read and change of the sequence is an access event in audit-log, by
/// the admin, on this breach; changes recorded once each, reads once per call.
async fn every_call_is_an_access_event(app: &TestApp, name: &str) {
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
}
