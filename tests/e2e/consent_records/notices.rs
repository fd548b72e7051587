//! Notices and re-consent: a material change of the privacy notice requires
//! re-confirmation of what was granted under the old version, a grant under the
//! current one is valid, and grants expire after the purpose's re-consent
//! interval; ListReconsentDue pages through what falls due.

use custodia_proto::consent::v1::{
    CheckReason, ConsentChannel, GetNoticeRequest, LawfulBasis, ListReconsentDueRequest,
    ListSubjectConsentsRequest, Notice, PublishNoticeRequest, notice::Content,
};
use custodia_tests::{Backend, TestApp, email};
use tonic::Code;

use super::{check, events_of, grant, newsletter, publish, purpose};

custodia_tests::both_backends!(material_notice_change_then_expiry, reconsent_due);

/// A grant under v1 needs re-confirmation once v2 is a material change: a new
/// grant collected under v1 is refused (an import collected before v2 is kept,
/// and needs re-confirmation too), while a material change of another notice
/// supersedes nothing; a grant under v2 is valid until the re-consent interval
/// has passed.
async fn material_notice_change_then_expiry(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;

    // A material notice change requires re-confirmation; a new grant under it is valid.
    c.record_consent(grant(&app, "cleo@example.edu", &v1))
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::minutes(1));
    let v2 = publish(&mut c, "We now also send SMS.", true).await;
    app.clock.advance(chrono::Duration::minutes(1));
    assert_eq!(
        check(&mut c, "cleo@example.edu", "newsletter").await,
        (false, CheckReason::NoticeChanged)
    );
    // A grant collected now under v1 (a page still showing the old notice) is
    // refused, and nothing is stored; one collected before v2 took effect (an
    // import of older records) is kept, and needs re-confirmation like cleo's.
    let before = events_of(&mut c, "cleo@example.edu").await.len();
    let err = c
        .record_consent(grant(&app, "cleo@example.edu", &v1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&v1) && err.message().contains("superseded"),
        "{}",
        err.message()
    );
    assert_eq!(events_of(&mut c, "cleo@example.edu").await.len(), before);
    let mut import = grant(&app, "gus@example.edu", &v1);
    let evidence = import.evidence.as_mut().unwrap();
    evidence.channel = ConsentChannel::CrmImport as i32;
    evidence.collect_time.as_mut().unwrap().seconds -= 90;
    c.record_consent(import).await.unwrap();
    assert_eq!(
        check(&mut c, "gus@example.edu", "newsletter").await,
        (false, CheckReason::NoticeChanged)
    );
    // A material change of another notice covering the purpose does not
    // supersede the privacy notice: a grant under its current version stands.
    c.publish_notice(PublishNoticeRequest {
        notice_id: "sms-terms".into(),
        notice: Some(Notice {
            content: Some(Content::Text("SMS terms.".into())),
            purposes: vec!["purposes/newsletter".into()],
            material_change: true,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    app.clock.advance(chrono::Duration::minutes(1));
    c.record_consent(grant(&app, "ivy@example.edu", &v2))
        .await
        .unwrap();
    assert_eq!(
        check(&mut c, "ivy@example.edu", "newsletter").await,
        (true, CheckReason::Granted)
    );
    let state = c
        .list_subject_consents(ListSubjectConsentsRequest {
            subject_identifiers: vec![email("cleo@example.edu")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert!(state[0].reconfirmation_required);
    c.record_consent(grant(&app, "cleo@example.edu", &v2))
        .await
        .unwrap();
    assert_eq!(
        check(&mut c, "cleo@example.edu", "newsletter").await,
        (true, CheckReason::Granted)
    );

    // Expiry after the re-consent interval (the clock is injected).
    app.clock.advance(chrono::Duration::days(366));
    assert_eq!(
        check(&mut c, "cleo@example.edu", "newsletter").await,
        (false, CheckReason::Expired)
    );
    let v2_now = c
        .get_notice(GetNoticeRequest {
            name: "notices/privacy/versions/latest".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .notice
        .unwrap();
    assert_eq!(v2_now.name, v2);

    app.stop().await;
}

async fn reconsent_due(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = app.consent().await;
    purpose(&mut c, "newsletter", LawfulBasis::Consent, false, "P1Y").await;
    let v1 = publish(&mut c, "Monthly news.", false).await;
    let t0 = app.timestamp().seconds;
    c.record_consent(grant(&app, "ada@example.edu", &v1))
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::days(1));
    c.record_consent(grant(&app, "bob@example.edu", &v1))
        .await
        .unwrap();
    let due = |before_secs: i64, page_size: i32, page_token: String, reconfirm: bool| {
        ListReconsentDueRequest {
            purpose: "purposes/newsletter".into(),
            expire_before_time: Some(prost_types::Timestamp {
                seconds: before_secs,
                nanos: 0,
            }),
            include_reconfirmation_required: reconfirm,
            page_size,
            page_token,
        }
    };
    let year = 365 * 24 * 3600;
    let soon = c
        .list_reconsent_due(due(t0 + year + 12 * 3600, 0, String::new(), false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        soon.consents.len(),
        1,
        "only ada's grant expires before then"
    );
    let page1 = c
        .list_reconsent_due(due(t0 + 2 * year, 1, String::new(), false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.consents.len(), 1);
    let page2 = c
        .list_reconsent_due(due(t0 + 2 * year, 1, page1.next_page_token.clone(), false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.consents.len(), 1);
    assert!(
        page1.consents[0].expire_time.unwrap().seconds
            < page2.consents[0].expire_time.unwrap().seconds
    );
    assert_ne!(
        page1.consents[0].consent_event,
        page2.consents[0].consent_event
    );
    // After a material notice change both need re-confirmation, whatever their expiry.
    app.clock.advance(chrono::Duration::minutes(1));
    publish(&mut c, "Monthly news and SMS.", true).await;
    app.clock.advance(chrono::Duration::minutes(1));
    let all = c
        .list_reconsent_due(due(t0, 0, String::new(), true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.consents.len(), 2);
    assert!(all.consents.iter().all(|s| s.reconfirmation_required));
    app.stop().await;
}
