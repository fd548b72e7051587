//! Subject identifiers through the API, on both backends: invisible characters
//! are refused naming the field, and equivalent spellings of one identifier are
//! one subject (issue 24, "ghost subjects").

use custodia_proto::consent::v1::{
    CheckConsentRequest, ConsentChannel, Decision, Evidence, Notice, PublishNoticeRequest,
    PurposeDecision, RecordConsentRequest, consent_service_client::ConsentServiceClient,
    notice::Content,
};
use custodia_tests::{ADMIN_TOKEN, Backend, TestApp, authed, email, newsletter_purpose};
use tonic::{Code, transport::Channel};

type Client = ConsentServiceClient<Channel>;

/// A client of a consent server with `purposes/newsletter` and a notice covering
/// it; the notice's name.
async fn newsletter(app: &TestApp) -> (Client, String) {
    let mut c = ConsentServiceClient::new(app.channel().await);
    c.create_purpose(authed(newsletter_purpose(), ADMIN_TOKEN))
        .await
        .unwrap();
    let notice = c
        .publish_notice(authed(
            PublishNoticeRequest {
                notice_id: "privacy".into(),
                notice: Some(Notice {
                    title: "Privacy policy".into(),
                    content: Some(Content::Text("We send a monthly newsletter.".into())),
                    purposes: vec!["purposes/newsletter".into()],
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .notice
        .unwrap()
        .name;
    (c, notice)
}

fn grant(app: &TestApp, who: &str, notice: &str) -> RecordConsentRequest {
    let now = custodia_core::legal_time::Clock::now(&*app.clock);
    RecordConsentRequest {
        subject: Some(email(who)),
        decisions: vec![PurposeDecision {
            purpose: "purposes/newsletter".into(),
            decision: Decision::Granted as i32,
        }],
        evidence: Some(Evidence {
            collect_time: Some(prost_types::Timestamp {
                seconds: now.timestamp(),
                nanos: 0,
            }),
            channel: ConsentChannel::WebForm as i32,
            notice: notice.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn allowed(c: &mut Client, who: &str) -> bool {
    c.check_consent(authed(
        CheckConsentRequest {
            subject: Some(email(who)),
            purpose: "purposes/newsletter".into(),
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap()
    .into_inner()
    .result
    .unwrap()
    .allowed
}

async fn one_subject_however_spelled(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, notice) = newsletter(&app).await;

    // A zero-width space would have made a second subject: refused, naming the
    // field and not echoing the value.
    let err = c
        .record_consent(authed(
            grant(&app, "ghost\u{200B}@example.edu", &notice),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("subject.value"), "{}", err.message());
    assert!(!err.message().contains("ghost"), "{}", err.message());
    assert!(!allowed(&mut c, "ghost@example.edu").await);

    // Granted with decomposed accents (e + U+0301) and an upper-case Unicode
    // domain; checked with the composed form, and with the IDNA ASCII domain.
    c.record_consent(authed(
        grant(&app, "E\u{301}lodie@E\u{301}cole.FR", &notice),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    assert!(allowed(&mut c, "\u{E9}lodie@\u{E9}cole.fr").await);
    assert!(allowed(&mut c, "\u{E9}lodie@xn--cole-9oa.fr").await);
    app.stop().await;
}

custodia_tests::both_backends!(one_subject_however_spelled);
