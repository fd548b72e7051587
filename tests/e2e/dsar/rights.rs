//! Every right acts (D-1, D-8): an objection request records the objection in
//! consent and has the sources holding the purpose restrict it; an
//! automated-decision request cannot be answered before a human review; the
//! recipients to tell of an erasure are derived from the sources and the
//! register, and completion waits for each; special-category data a source
//! holds against the register is flagged and its destruction recorded.

use custodia_proto::{
    common::v1::SpecialCategory,
    consent::v1::{
        Article9Condition, CheckReason, CreatePurposeRequest, LawfulBasis, Purpose,
        PurposeCategory, Recipient,
    },
    dsar::v1::{
        ExportState, HumanReview, HumanReviewOutcome, RecipientNotification,
        RecipientNotificationOutcome, RecordDestructionRequest, RecordHumanReviewRequest,
        RecordRecipientNotificationRequest, RequestState, RequestType, SourceTaskState,
    },
};
use custodia_tests::{Backend, check, grant};
use tonic::Code;

use super::{
    connector::FakeSource,
    fanout::{complete, register_holding, task, wait_for},
    *,
};

custodia_tests::both_backends!(
    an_objection_request_objects,
    an_automated_decision_is_reviewed_by_a_person,
    recipients_are_derived_and_told
);

/// Whether every source task of `r` is settled.
fn settled(r: &Request) -> bool {
    r.source_tasks.iter().all(|t| {
        matches!(
            t.state(),
            SourceTaskState::Succeeded | SourceTaskState::HandledManually
        )
    })
}

/// Ada, on the newsletter, objects to it through a request: consent records
/// the objection, the CRM (which holds newsletter data) is asked to restrict,
/// Moodle (which does not) is not asked; once complete, checks answer OBJECTED.
async fn an_objection_request_objects(backend: Backend) {
    let app = spawn(backend).await;
    let notice = app.newsletter_notice().await;
    let mut consent = app.consent().await;
    consent
        .record_consent(grant(&app, "ada@example.edu", &notice))
        .await
        .unwrap();
    let mut c = client(&app).await;
    let crm = FakeSource::start("ada@example.edu", &[("contacts", 1)], vec![]).await;
    let moodle = FakeSource::start("ada@example.edu", &[("enrolments", 3)], vec![]).await;
    register_holding(&mut c, "crm", &crm.endpoint, &["newsletter"], &[], None).await;
    register_holding(
        &mut c,
        "moodle",
        &moodle.endpoint,
        &["enrolment"],
        &[],
        None,
    )
    .await;

    let mut objection = new_request(RequestType::Objection, "ada@example.edu");
    objection.purposes = vec!["purposes/newsletter".into()];
    objection.details = "I no longer want the newsletter".into();
    let r = submit(&mut c, objection, "").await.unwrap();
    let started = verify_and_start(&mut c, &r.name).await;
    let mut asked: Vec<&str> = started
        .source_tasks
        .iter()
        .map(|t| t.data_source.as_str())
        .collect();
    asked.sort_unstable();
    assert_eq!(asked, ["dataSources/crm", "dataSources/custodia-consent"]);
    assert_eq!(
        task(&started, "crm").operation,
        custodia_proto::connector::v1::Capability::Restrict as i32,
        "restricted pending the objection's verification (Art. 18(1)(d))"
    );
    let done = wait_for(&c, &r.name, settled).await;
    assert_eq!(
        task(&done, "custodia-consent").affected[0].count,
        2,
        "one per identifier"
    );
    assert_eq!(crm.calls("RestrictSubject").len(), 1);
    assert!(moodle.calls("RestrictSubject").is_empty());
    let completed = complete(&mut c, &r.name).await.unwrap();
    assert_eq!(completed.state(), RequestState::Completed);
    assert_eq!(
        check(&mut consent, "ada@example.edu", "newsletter").await,
        (false, CheckReason::Objected)
    );
    app.stop().await;
}

/// An automated-decision request cannot be answered until a person reviewed
/// the decision (Art. 22(3)); the review is kept on the request.
async fn an_automated_decision_is_reviewed_by_a_person(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    let r = started(&mut c, RequestType::AutomatedDecision, "ada@example.edu").await;
    assert!(r.actions.iter().any(|a| a.action == "human_review_opened"));
    let err = complete(&mut c, &r.name).await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["Art. 22(3)", "RecordHumanReview"],
    );

    let review = |explanation: &str| RecordHumanReviewRequest {
        name: r.name.clone(),
        review: Some(HumanReview {
            decision: "scholarship refused by the scoring engine on 2026-10-01".into(),
            subject_view: "my income dropped this year".into(),
            outcome: HumanReviewOutcome::Changed as i32,
            explanation: explanation.into(),
            reviewer: "Head of student services".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let bad = c.record_human_review(review("")).await.unwrap_err();
    assert_code(&bad, Code::InvalidArgument, &["review.explanation"]);
    let reviewed = c
        .record_human_review(review("2026 income documents re-read: scholarship granted"))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let kept = reviewed.human_review.as_ref().unwrap();
    assert_eq!(kept.outcome(), HumanReviewOutcome::Changed);
    assert_eq!(kept.actor.as_ref().unwrap().principal, "admin");
    assert!(kept.review_time.is_some());
    let done = complete(&mut c, &r.name).await.unwrap();
    assert_eq!(done.state(), RequestState::Completed);

    // Only an automated-decision request is reviewed.
    let erasure = started(&mut c, RequestType::Erasure, "bob@example.edu").await;
    let mut other = review("n/a");
    other.name = erasure.name;
    let err = c.record_human_review(other).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["AUTOMATED_DECISION"]);
    app.stop().await;
}

/// An erasure's recipients come from the sources asked and from the register
/// (the purposes they hold); the request is complete only once each is told
/// or recorded as impossible to tell, with the reason (Art. 19).
async fn recipients_are_derived_and_told(backend: Backend) {
    let app = spawn(backend).await;
    let mut consent = app.consent().await;
    consent
        .create_purpose(CreatePurposeRequest {
            purpose_id: "newsletter".into(),
            purpose: Some(Purpose {
                display_name: "Newsletter".into(),
                lawful_basis: LawfulBasis::Consent as i32,
                category: PurposeCategory::Communication as i32,
                recipients: vec![Recipient {
                    name: "MailChimp (Intuit Inc.)".into(),
                    country_code: "US".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut c = client(&app).await;
    let crm = FakeSource::start("ada@example.edu", &[("contacts", 1)], vec![]).await;
    register_holding(
        &mut c,
        "crm",
        &crm.endpoint,
        &["newsletter"],
        &["Payroll bureau"],
        None,
    )
    .await;

    let r = started(&mut c, RequestType::Erasure, "ada@example.edu").await;
    assert_eq!(
        r.recipients_to_notify,
        ["MailChimp (Intuit Inc.)", "Payroll bureau"]
    );
    wait_for(&c, &r.name, settled).await;
    let err = complete(&mut c, &r.name).await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["MailChimp (Intuit Inc.)", "Payroll bureau", "Art. 19"],
    );
    let tell = |recipient: &str, outcome: RecipientNotificationOutcome, details: &str| {
        RecordRecipientNotificationRequest {
            name: r.name.clone(),
            notification: Some(RecipientNotification {
                recipient: recipient.into(),
                outcome: outcome as i32,
                method: "API call".into(),
                details: details.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }
    };
    c.record_recipient_notification(tell(
        "MailChimp (Intuit Inc.)",
        RecipientNotificationOutcome::Notified,
        "",
    ))
    .await
    .unwrap();
    let err = complete(&mut c, &r.name).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["Payroll bureau"]);
    assert!(!err.message().contains("MailChimp"), "{}", err.message());
    c.record_recipient_notification(tell(
        "Payroll bureau",
        RecipientNotificationOutcome::Impossible,
        "the bureau closed in 2025; its successor never received the data",
    ))
    .await
    .unwrap();
    let done = complete(&mut c, &r.name).await.unwrap();
    assert_eq!(done.state(), RequestState::Completed);
    assert_eq!(done.recipient_notifications.len(), 2);
    app.stop().await;
}

custodia_tests::both_backends!(special_categories_found_are_destroyed);

/// the CRM answers an access request with medical notes although no
/// purpose it holds allows health data: the request is flagged, cannot be
/// completed until their destruction is recorded; the infirmary, whose purpose
/// allows health data (Art. 9(2)(h)), is not flagged.
async fn special_categories_found_are_destroyed(backend: Backend) {
    let app = spawn(backend).await;
    let mut consent = app.consent().await;
    consent
        .create_purpose(CreatePurposeRequest {
            purpose_id: "health-care".into(),
            purpose: Some(Purpose {
                display_name: "Student health service".into(),
                lawful_basis: LawfulBasis::PublicTask as i32,
                category: PurposeCategory::Other as i32,
                special_categories: vec![SpecialCategory::Health as i32],
                article9_condition: Article9Condition::HealthOrSocialCare as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut c = client(&app).await;
    let crm = FakeSource::start(
        "ada@example.edu",
        &[("contacts", 1), ("medical_notes", 2)],
        vec![],
    )
    .await;
    let infirmary = FakeSource::start("ada@example.edu", &[("medical_visits", 4)], vec![]).await;
    register_holding(&mut c, "crm", &crm.endpoint, &["prospects"], &[], None).await;
    register_holding(
        &mut c,
        "infirmary",
        &infirmary.endpoint,
        &["health-care"],
        &[],
        None,
    )
    .await;

    let r = started(&mut c, RequestType::Access, "ada@example.edu").await;
    let flagged = wait_for(&c, &r.name, |r| {
        settled(r)
            && r.export
                .as_ref()
                .is_some_and(|e| e.state() == ExportState::Ready)
    })
    .await;
    let findings = &flagged.special_category_findings;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].data_source, "dataSources/crm");
    assert_eq!(findings[0].category, "medical_notes");
    assert_eq!(findings[0].special_category(), SpecialCategory::Health);
    assert_eq!(findings[0].record_count, 2);
    assert!(!findings[0].destroyed);
    assert!(
        flagged
            .actions
            .iter()
            .any(|a| a.action == "special_category_found")
    );
    let err = complete(&mut c, &r.name).await.unwrap_err();
    assert_code(
        &err,
        Code::FailedPrecondition,
        &["R-4", "dataSources/crm medical_notes"],
    );

    let destroy = |category: &str| RecordDestructionRequest {
        name: r.name.clone(),
        data_source: "dataSources/crm".into(),
        category: category.into(),
        destruction: "deleted from the CRM by its administrator, ticket 4411".into(),
        request_id: String::new(),
    };
    let err = c.record_destruction(destroy("contacts")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let done = c
        .record_destruction(destroy("medical_notes"))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let f = &done.special_category_findings[0];
    assert!(f.destroyed && f.destroy_time.is_some());
    assert_eq!(f.actor.as_ref().unwrap().principal, "admin");
    let err = c
        .record_destruction(destroy("medical_notes"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let completed = complete(&mut c, &r.name).await.unwrap();
    assert_eq!(completed.state(), RequestState::Completed);
    app.stop().await;
}
