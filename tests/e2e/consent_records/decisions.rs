//! Decisions and what the next check answers: a withdrawal wins at once and the
//! trail keeps every event; an objection refuses a purpose that is not
//! consent-based, and an objection to direct marketing refuses the newsletter
//! whatever was granted; decisions the register forbids are refused before
//! anything is written; a minor's grant (Art. 8) needs a guardian's under the
//! digital age of consent of the subject's country.

use custodia_proto::consent::v1::{
    AgeAttestation, CheckReason, ConsentState, CreatePurposeRequest, Decision, GuardianConsent,
    LawfulBasis, ListSubjectConsentsRequest, Purpose, PurposeCategory, RecordObjectionRequest,
    age_attestation::Age,
};
use custodia_tests::{Backend, TestApp, email};
use tonic::Code;

use super::{
    Client, check, decide, events_of, evidence, grant, newsletter, publish, purpose, retire,
    withdraw,
};

custodia_tests::both_backends!(
    withdrawal_wins_at_once,
    objections,
    refused_decisions,
    a_child_needs_a_guardian,
    minors_by_country
);

/// A withdrawal is effective for the very next check; the subject's trail keeps
/// the grant and the withdrawal, in order, without the raw identifier.
async fn withdrawal_wins_at_once(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    c.record_consent(grant(&app, "ada@example.edu", &v1))
        .await
        .unwrap();
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (true, CheckReason::Granted)
    );

    c.withdraw_consent(withdraw(&app, "ada@example.edu", "newsletter"))
        .await
        .unwrap();
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn)
    );

    // The trail is complete and in order; nothing was overwritten.
    let trail = events_of(&mut c, "ada@example.edu").await;
    let states: Vec<i32> = trail.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [ConsentState::Granted as i32, ConsentState::Withdrawn as i32]
    );
    assert!(
        trail
            .iter()
            .all(|e| e.subject.as_ref().unwrap().value.is_empty()),
        "raw identifiers are not stored"
    );
    app.stop().await;
}

/// A purpose that is not consent-based is allowed until the subject objects;
/// an objection to direct marketing is absolute, whatever was granted.
async fn objections(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    purpose(&mut c, "enrolment", LawfulBasis::Contract, false, "").await;

    // Not consent-based: allowed unless an objection exists.
    assert_eq!(
        check(&mut c, "bob@example.edu", "enrolment").await,
        (true, CheckReason::NotConsentBased)
    );
    c.record_objection(RecordObjectionRequest {
        subject: Some(email("bob@example.edu")),
        purposes: vec!["purposes/enrolment".into()],
        grounds: "particular situation".into(),
        evidence: Some(evidence(&app, "")),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        check(&mut c, "bob@example.edu", "enrolment").await,
        (false, CheckReason::Objected)
    );

    // Objection to direct marketing is absolute.
    c.record_consent(grant(&app, "bob@example.edu", &v1))
        .await
        .unwrap();
    assert!(check(&mut c, "bob@example.edu", "newsletter").await.0);
    c.record_objection(RecordObjectionRequest {
        subject: Some(email("bob@example.edu")),
        direct_marketing: true,
        evidence: Some(evidence(&app, "")),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        check(&mut c, "bob@example.edu", "newsletter").await,
        (false, CheckReason::Objected)
    );
    app.stop().await;
}

/// Decisions the register forbids are refused before anything is written: a purpose
/// decided twice in one call, a strictly necessary purpose denied (K-1), a retired
/// purpose granted.
async fn refused_decisions(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = app.consent().await;
    purpose(&mut c, "newsletter", LawfulBasis::Consent, true, "P1Y").await;
    c.create_purpose(CreatePurposeRequest {
        purpose_id: "session-cookies".into(),
        purpose: Some(Purpose {
            display_name: "Session cookies".into(),
            lawful_basis: LawfulBasis::LegitimateInterests as i32,
            category: PurposeCategory::StrictlyNecessary as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    purpose(&mut c, "old-survey", LawfulBasis::Consent, false, "").await;
    retire(&mut c, "old-survey").await;
    let v1 = publish(&mut c, "We send a monthly newsletter.", false).await;
    let who = "hal@example.edu";

    let mut twice = decide(
        &app,
        who,
        &["newsletter", "newsletter"],
        Decision::Granted,
        &v1,
        "",
    );
    twice.decisions[1].decision = Decision::Denied as i32;
    let err = c.record_consent(twice).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("decisions[1].purpose"),
        "{}",
        err.message()
    );

    // Denying every cookie category at once still cannot refuse the necessary ones.
    let mut deny_all = decide(
        &app,
        who,
        &["newsletter", "session-cookies"],
        Decision::Denied,
        &v1,
        "",
    );
    deny_all.request_id = "banner-reject-all".into();
    let err = c.record_consent(deny_all).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("decisions[1].decision")
            && err.message().contains("strictly necessary"),
        "{}",
        err.message()
    );

    let err = c
        .record_consent(decide(
            &app,
            who,
            &["newsletter", "old-survey"],
            Decision::Granted,
            &v1,
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("retired"), "{}", err.message());

    // None of the refused calls stored anything, not even the valid decisions.
    let trail = events_of(&mut c, who).await;
    assert!(trail.is_empty(), "{trail:?}");
    assert_eq!(
        check(&mut c, who, "newsletter").await,
        (false, CheckReason::NoRecord)
    );
    // A retired purpose may still be denied, and the necessary one granted.
    c.record_consent(decide(
        &app,
        who,
        &["old-survey"],
        Decision::Denied,
        &v1,
        "",
    ))
    .await
    .unwrap();
    c.record_consent(decide(
        &app,
        who,
        &["session-cookies"],
        Decision::Granted,
        &v1,
        "",
    ))
    .await
    .unwrap();
    // Three states now, listed two per page; a token is only good for its subject.
    c.record_consent(grant(&app, who, &v1)).await.unwrap();
    let page = async |c: &mut Client, who: &str, page_token: String| {
        c.list_subject_consents(ListSubjectConsentsRequest {
            subject_identifiers: vec![email(who)],
            page_size: 2,
            page_token,
        })
        .await
    };
    let first = page(&mut c, who, String::new()).await.unwrap().into_inner();
    assert_eq!(first.consents.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = page(&mut c, who, first.next_page_token.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.consents.len(), 1);
    assert!(second.next_page_token.is_empty());
    let mut purposes: Vec<_> = first
        .consents
        .iter()
        .chain(&second.consents)
        .map(|s| s.purpose.clone())
        .collect();
    purposes.sort();
    assert_eq!(
        purposes,
        [
            "purposes/newsletter",
            "purposes/old-survey",
            "purposes/session-cookies"
        ]
    );
    let err = page(&mut c, "ines@example.edu", first.next_page_token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"), "{}", err.message());
    // Nor can a strictly necessary purpose be withdrawn from or objected to; a
    // withdrawal from everything leaves it out.
    let err = c
        .withdraw_consent(withdraw(&app, who, "session-cookies"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("purposes[0]"), "{}", err.message());
    let err = c
        .record_objection(RecordObjectionRequest {
            subject: Some(email(who)),
            purposes: vec!["purposes/session-cookies".into()],
            evidence: Some(evidence(&app, "")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut everything = withdraw(&app, who, "newsletter");
    everything.purposes.clear();
    everything.all_purposes = true;
    let withdrawn = c
        .withdraw_consent(everything)
        .await
        .unwrap()
        .into_inner()
        .events;
    let mut names: Vec<_> = withdrawn.iter().map(|e| e.purpose.as_str()).collect();
    names.sort();
    assert_eq!(names, ["purposes/newsletter", "purposes/old-survey"]);
    assert_eq!(
        check(&mut c, who, "session-cookies").await,
        (true, CheckReason::NotConsentBased)
    );
    // A retry of a grant recorded before its purpose was retired gets the first
    // call's answer (idempotency), not PURPOSE_RETIRED; a new call is refused.
    purpose(&mut c, "poll", LawfulBasis::Consent, false, "").await;
    let mut poll = decide(&app, who, &["poll"], Decision::Granted, &v1, "poll-1");
    let first = c.record_consent(poll.clone()).await.unwrap().into_inner();
    retire(&mut c, "poll").await;
    let retried = c.record_consent(poll.clone()).await.unwrap().into_inner();
    assert_eq!(retried.events, first.events);
    assert_eq!(
        retried.receipt.as_ref().map(|r| &r.name),
        first.receipt.as_ref().map(|r| &r.name)
    );
    poll.request_id = "poll-2".into();
    let err = c.record_consent(poll).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.stop().await;
}

/// 14 in France needs a guardian; with one, the grant is stored linked to the
/// guardian and the check allows.
async fn a_child_needs_a_guardian(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let mut child = grant(&app, "dan@example.edu", &v1);
    child.age = Some(AgeAttestation {
        age: Some(Age::AgeYears(14)),
        country_code: "FR".into(),
    });
    let err = c.record_consent(child.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("guardian"), "{}", err.message());
    child.guardian = Some(GuardianConsent {
        guardian: Some(email("parent@example.org")),
        relationship: "mother".into(),
        verification: "signed form".into(),
    });
    let ok = c.record_consent(child).await.unwrap().into_inner();
    assert_eq!(
        ok.events[0].guardian.as_ref().unwrap().relationship,
        "mother"
    );
    // The receipt names the guardian as it names the child: by keyed hash.
    let receipt = ok.receipt.unwrap();
    let guardian = receipt.guardian.unwrap();
    assert_eq!(guardian.r#type, "email");
    assert!(guardian.value.starts_with("hmac-sha256:"), "{guardian:?}");
    let doc: serde_json::Value = serde_json::from_slice(&receipt.payload).unwrap();
    assert_eq!(doc["guardian"], format!("email:{}", guardian.value));
    assert!(!String::from_utf8_lossy(&receipt.payload).contains("parent@"));
    assert!(check(&mut c, "dan@example.edu", "newsletter").await.0);

    app.stop().await;
}

/// The digital age of consent (Art. 8(1)) comes from the subject's country:
/// configured (`consent.digital_consent_ages`), else the member states' laws,
/// else 16; without a country, the institution's jurisdiction (France here).
async fn minors_by_country(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[custodia_consent::SERVICE], |config| {
        config.consent.digital_consent_ages = [("DE".to_string(), 14)].into();
    })
    .await;
    let (mut c, v1) = newsletter(&app).await;
    let mut record = async |who: &str, years: i32, country: &str| {
        let mut r = grant(&app, who, &v1);
        r.age = Some(AgeAttestation {
            age: Some(Age::AgeYears(years)),
            country_code: country.into(),
        });
        c.record_consent(r).await
    };
    record("ines@example.edu", 15, "").await.unwrap();
    let err = record("jo@example.edu", 15, "LU").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("(16)"), "{}", err.message());
    record("kai@example.edu", 14, "DE").await.unwrap();
    let err = record("lea@example.edu", 13, "de").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("(14)"), "{}", err.message());
    app.stop().await;
}
