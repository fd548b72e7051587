//! BatchCheckConsent: many subjects, one purpose, one answer each, and one
//! access event for the call.

use custodia_proto::{
    audit::v1::ListEventsRequest,
    common::v1::SubjectRef,
    consent::v1::{BatchCheckConsentRequest, CheckReason, Decision},
};
use custodia_tests::{Backend, TestApp, audit_events_until, email};
use tonic::Code;

use super::{check, decide, newsletter, withdraw};

custodia_tests::both_backends!(batch_check);

/// BatchCheckConsent answers per subject, in order, with the same reasons as
/// CheckConsent, and logs one access event per subject (delivered to audit-log
/// from the outbox, where the events of one call are stored together).
async fn batch_check(backend: Backend) {
    let app = TestApp::spawn(
        backend,
        &[custodia_consent::SERVICE, custodia_audit_log::SERVICE],
    )
    .await;
    let (mut c, v1) = newsletter(&app).await;
    for (who, decision) in [
        ("ada@example.edu", Decision::Granted),
        ("bob@example.edu", Decision::Denied),
        ("cy@example.edu", Decision::Granted),
    ] {
        c.record_consent(decide(&app, who, &["newsletter"], decision, &v1, ""))
            .await
            .unwrap();
    }
    c.withdraw_consent(withdraw(&app, "cy@example.edu", "newsletter"))
        .await
        .unwrap();

    let batch = |subjects: Vec<SubjectRef>, purpose: &str| BatchCheckConsentRequest {
        purpose: purpose.into(),
        subjects,
    };
    // Bad input names the field; unknown purposes are NOT_FOUND.
    let err = c
        .batch_check_consent(batch(vec![], "purposes/newsletter"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("subjects"), "{}", err.message());
    let too_many = (0..10_001)
        .map(|i| email(&format!("s{i}@example.edu")))
        .collect();
    let err = c
        .batch_check_consent(batch(too_many, "purposes/newsletter"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let bad = vec![
        email("ada@example.edu"),
        email("bob@example.edu"),
        email(""),
    ];
    let err = c
        .batch_check_consent(batch(bad, "purposes/newsletter"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("subjects[2]"), "{}", err.message());
    let err = c
        .batch_check_consent(batch(vec![email("ada@example.edu")], "purposes/nope"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Big enough to be split over threads (2,000 and up): the first bad subject
    // is still the one named.
    let mut bad: Vec<_> = (0..3_000)
        .map(|i| email(&format!("b{i}@example.edu")))
        .collect();
    bad[1_600] = email("not an address");
    bad[2_900] = email("");
    let err = c
        .batch_check_consent(batch(bad, "purposes/newsletter"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("subjects[1600]"),
        "{}",
        err.message()
    );

    // 3,000 subjects (split over threads): two known ones first, people with no
    // record, and the withdrawn one last.
    let mut subjects = vec![email("ada@example.edu"), email("bob@example.edu")];
    subjects.extend((2..2_999).map(|i| email(&format!("p{i}@example.edu"))));
    subjects.push(email("cy@example.edu"));
    let results = c
        .batch_check_consent(batch(subjects, "purposes/newsletter"))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 3_000);
    // In the request's order; only the identifier's type comes back.
    let verdict = |i: usize| {
        let subject = results[i].subject.as_ref().unwrap();
        assert_eq!(
            (subject.r#type.as_str(), subject.value.as_str()),
            ("email", "")
        );
        assert_eq!(results[i].purpose, "purposes/newsletter");
        (
            results[i].allowed,
            CheckReason::try_from(results[i].reason).unwrap(),
        )
    };
    assert_eq!(verdict(0), (true, CheckReason::Granted));
    assert_eq!(verdict(1), (false, CheckReason::Denied));
    assert_eq!(verdict(1_500), (false, CheckReason::NoRecord));
    assert_eq!(verdict(2_999), (false, CheckReason::Withdrawn));
    // The same answers as one-by-one checks.
    assert_eq!(
        check(&mut c, "cy@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn)
    );

    // Every subject of the batch is in the audit log once, as a BatchCheckConsent.
    // (The last subject's event arrives last: the outbox delivers in order.)
    for who in [
        "ada@example.edu",
        "p3@example.edu",
        "p1499@example.edu",
        "cy@example.edu",
    ] {
        let events = audit_events_until(
            app.channel().await,
            ListEventsRequest {
                subject: Some(email(who)),
                ..Default::default()
            },
            |events| events.iter().any(|e| e.method == "BatchCheckConsent"),
        )
        .await;
        let batch_events: Vec<_> = events
            .iter()
            .filter(|e| e.method == "BatchCheckConsent")
            .collect();
        assert_eq!(batch_events.len(), 1, "{who}: {events:?}");
        let e = batch_events[0];
        assert_eq!(e.resource, "purposes/newsletter");
        assert_eq!(e.action, "check");
        // One entry for the call, each subject in it by type and keyed hash only
        // (issue #24: a batch is stored compactly).
        assert!(e.subject.is_none() && e.subject_hash.is_empty());
        assert!(
            e.subjects
                .iter()
                .all(|s| s.r#type == "email" && s.subject_hash.len() == 32),
            "searchable by keyed hash only"
        );
    }
    let mut audit = app.audit().await;
    let mut total = 0;
    let mut token = String::new();
    loop {
        let page = audit
            .list_events(ListEventsRequest {
                action: "check".into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        total += page
            .events
            .iter()
            .filter(|e| e.method == "BatchCheckConsent")
            .map(|e| e.subjects.len())
            .sum::<usize>();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(total, 3_000, "every subject, each once");
    app.stop().await;
}
