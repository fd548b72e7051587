//! Subject identifiers through the API, on both backends: invisible characters
//! are refused naming the field, and equivalent spellings of one identifier are
//! one subject (issue 24, "ghost subjects").

use custodia_proto::{common::v1::SubjectRef, consent::v1::CheckConsentRequest};
use custodia_tests::{Backend, ConsentClient, TestApp, check, grant};
use tonic::Code;

/// Whether `who` may get the newsletter.
async fn allowed(c: &mut ConsentClient, who: &str) -> bool {
    check(c, who, "newsletter").await.0
}

async fn one_subject_however_spelled(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let notice = app.newsletter_notice().await;
    let mut c = app.consent().await;

    // A zero-width space would have made a second subject: refused, naming the
    // field and not echoing the value.
    let err = c
        .record_consent(grant(&app, "ghost\u{200B}@example.edu", &notice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("subject.value"), "{}", err.message());
    assert!(!err.message().contains("ghost"), "{}", err.message());
    assert!(!allowed(&mut c, "ghost@example.edu").await);

    // Granted with decomposed accents (e + U+0301) and an upper-case Unicode
    // domain; checked with the composed form, and with the IDNA ASCII domain.
    c.record_consent(grant(&app, "E\u{301}lodie@E\u{301}cole.FR", &notice))
        .await
        .unwrap();
    assert!(allowed(&mut c, "\u{E9}lodie@\u{E9}cole.fr").await);
    assert!(allowed(&mut c, "\u{E9}lodie@xn--cole-9oa.fr").await);

    // A phone number written nationally and internationally is one person
    // (E.164, read in the jurisdiction's plan); a number that is none is refused.
    let by_phone = |number: &str| SubjectRef {
        r#type: "phone".into(),
        value: number.into(),
    };
    let mut r = grant(&app, "unused@example.edu", &notice);
    r.subject = Some(by_phone("06 12 34 56 78"));
    c.record_consent(r.clone()).await.unwrap();
    let checked = c
        .check_consent(CheckConsentRequest {
            subject: Some(by_phone("+33 6 12 34 56 78")),
            purpose: "purposes/newsletter".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(checked.allowed, "{checked:?}");
    r.subject = Some(by_phone("+33 1"));
    let err = c.record_consent(r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("subject.value"), "{}", err.message());
    app.stop().await;
}

custodia_tests::both_backends!(one_subject_however_spelled);
