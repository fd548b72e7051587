//! Bad input to every consent RPC: INVALID_ARGUMENT naming the field, or
//! NOT_FOUND naming what is missing; nothing of a refused call is stored.

use custodia_proto::consent::v1::{
    CheckConsentRequest, CheckReason, Decision, ListConsentEventsRequest,
    ListSubjectConsentsRequest, Notice, PublishNoticeRequest, RecordObjectionRequest,
    notice::Content,
};
use custodia_tests::{Backend, TestApp, email};
use tonic::Code;

use super::{check, decide, events_of, evidence, grant, newsletter, withdraw};

custodia_tests::both_backends!(refused_grants_store_nothing, bad_input_names_the_field);

/// A grant without a subject, collected in the future, without a notice, for an
/// unknown purpose or under an unknown notice version is refused, and the
/// subject has no record afterwards.
async fn refused_grants_store_nothing(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    assert_eq!(v1, "notices/privacy/versions/1");

    let mut bad = grant(&app, "", &v1);
    let err = c.record_consent(bad.clone()).await.unwrap_err();
    assert!(err.message().contains("subject.value"), "{}", err.message());
    bad.subject = Some(email("ada@example.edu"));
    bad.evidence.as_mut().unwrap().collect_time = Some(prost_types::Timestamp {
        seconds: app.timestamp().seconds + 3600,
        nanos: 0,
    });
    let err = c.record_consent(bad.clone()).await.unwrap_err();
    assert!(
        err.message().contains("evidence.collect_time"),
        "{}",
        err.message()
    );
    let err = c
        .record_consent(grant(&app, "ada@example.edu", ""))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("evidence.notice"),
        "{}",
        err.message()
    );
    let err = c
        .record_consent(decide(
            &app,
            "ada@example.edu",
            &["nope"],
            Decision::Granted,
            &v1,
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .record_consent(grant(&app, "ada@example.edu", "notices/privacy/versions/9"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::NoRecord)
    );
    assert!(events_of(&mut c, "ada@example.edu").await.is_empty());
    app.stop().await;
}

/// A RecordConsentRequest whose subject's value is not UTF-8 (prost would refuse
/// to build it, so the bytes are laid out by hand): field 1, the subject, holds
/// `type = "email"` and `value = 0xFF 0xFE`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawRecordConsent {
    #[prost(bytes = "vec", tag = "1")]
    subject: Vec<u8>,
}

/// Bad input to every RPC that takes a subject, a purpose, evidence or a name:
/// INVALID_ARGUMENT naming the field, or NOT_FOUND naming what is missing; and
/// nothing of the refused calls is stored.
async fn bad_input_names_the_field(backend: Backend) {
    use custodia_proto::{
        common::v1::Document,
        consent::v1::{GetReceiptRequest, ListNoticesRequest, ListReconsentDueRequest},
    };
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let who = "zed@example.edu";
    let expect = |what: &str, r: Result<(), tonic::Status>, code: Code, names: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(names), "{what}: {}", err.message());
    };
    let future = prost_types::Timestamp {
        seconds: app.timestamp().seconds + 3600,
        nanos: 0,
    };

    // RecordConsent.
    let ok = || grant(&app, who, &v1);
    let mut r = ok();
    r.evidence.as_mut().unwrap().collect_time = Some(future);
    let mut long_agent = ok();
    long_agent.evidence.as_mut().unwrap().user_agent = "x".repeat(2048);
    let mut big_proof = ok();
    big_proof.evidence.as_mut().unwrap().proof = Some(Document {
        content: vec![b'x'; 65 * 1024],
        ..Default::default()
    });
    let mut long_key = ok();
    long_key.request_id = "k".repeat(200);
    let mut bad_ip = ok();
    bad_ip.evidence.as_mut().unwrap().source_ip = "somewhere".into();
    for (what, request, names) in [
        ("future evidence", r, "evidence.collect_time"),
        ("long user agent", long_agent, "evidence.user_agent"),
        ("big proof", big_proof, "evidence.proof.content"),
        ("long request id", long_key, "request_id"),
        ("bad source ip", bad_ip, "evidence.source_ip"),
        ("empty subject", grant(&app, "", &v1), "subject"),
    ] {
        let r = c.record_consent(request).await;
        expect(what, r.map(|_| ()), Code::InvalidArgument, names);
    }
    let r = c
        .record_consent(decide(&app, who, &["nope"], Decision::Granted, &v1, ""))
        .await;
    expect(
        "unknown purpose",
        r.map(|_| ()),
        Code::NotFound,
        "`purposes/nope` not found (field `decisions[0].purpose`)",
    );
    let r = app
        .call_raw::<_, custodia_proto::consent::v1::RecordConsentResponse>(
            "/custodia.consent.v1.ConsentService/RecordConsent",
            RawRecordConsent {
                subject: [&[0x0a, 0x05][..], b"email", &[0x12, 0x02, 0xff, 0xfe]].concat(),
            },
        )
        .await;
    expect(
        "invalid UTF-8",
        r.map(|_| ()),
        Code::InvalidArgument,
        "value",
    );

    // WithdrawConsent and RecordObjection.
    let mut future_withdrawal = withdraw(&app, who, "newsletter");
    future_withdrawal.evidence.as_mut().unwrap().collect_time = Some(future);
    let mut no_purposes = withdraw(&app, who, "newsletter");
    no_purposes.purposes.clear();
    for (what, request, code, names) in [
        (
            "future withdrawal",
            future_withdrawal,
            Code::InvalidArgument,
            "evidence.collect_time",
        ),
        (
            "no purposes",
            no_purposes,
            Code::InvalidArgument,
            "purposes",
        ),
        (
            "withdrawal without subject",
            withdraw(&app, "", "newsletter"),
            Code::InvalidArgument,
            "subject",
        ),
        (
            "withdrawal of unknown purpose",
            withdraw(&app, who, "nope"),
            Code::NotFound,
            "`purposes/nope` not found (field `purposes[0]`)",
        ),
    ] {
        let r = c.withdraw_consent(request).await;
        expect(what, r.map(|_| ()), code, names);
    }
    let objection = |subject: &str, purpose: &str| RecordObjectionRequest {
        subject: Some(email(subject)),
        purposes: vec![format!("purposes/{purpose}")],
        grounds: "particular situation".into(),
        evidence: Some(evidence(&app, "")),
        ..Default::default()
    };
    let r = c.record_objection(objection("", "newsletter")).await;
    expect(
        "objection without subject",
        r.map(|_| ()),
        Code::InvalidArgument,
        "subject",
    );
    let r = c.record_objection(objection(who, "nope")).await;
    expect(
        "objection to unknown purpose",
        r.map(|_| ()),
        Code::NotFound,
        "`purposes/nope` not found (field `purposes[0]`)",
    );

    // PublishNotice.
    let notice = |id: &str, content: Option<Content>, purposes: &[&str]| PublishNoticeRequest {
        notice_id: id.into(),
        notice: Some(Notice {
            content,
            purposes: purposes.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let text = || Some(Content::Text("Terms.".into()));
    for (what, request, code, names) in [
        (
            "empty notice id",
            notice("", text(), &["purposes/newsletter"]),
            Code::InvalidArgument,
            "notice_id",
        ),
        (
            "no content",
            notice("privacy", None, &["purposes/newsletter"]),
            Code::InvalidArgument,
            "notice.content",
        ),
        (
            "no purposes",
            notice("privacy", text(), &[]),
            Code::InvalidArgument,
            "notice.purposes",
        ),
        (
            "text over 1 MiB",
            notice(
                "privacy",
                Some(Content::Text("x".repeat((1 << 20) + 1))),
                &["purposes/newsletter"],
            ),
            Code::InvalidArgument,
            "notice.text",
        ),
        (
            "unknown purpose",
            notice("privacy", text(), &["purposes/nope"]),
            Code::InvalidArgument,
            "notice.purposes[0]",
        ),
    ] {
        let r = c.publish_notice(request).await;
        expect(what, r.map(|_| ()), code, names);
    }

    // Reads.
    let r = c
        .check_consent(CheckConsentRequest {
            subject: Some(email("")),
            purpose: "purposes/newsletter".into(),
        })
        .await;
    expect(
        "check without subject",
        r.map(|_| ()),
        Code::InvalidArgument,
        "subject",
    );
    let r = c
        .check_consent(CheckConsentRequest {
            subject: Some(email(who)),
            purpose: String::new(),
        })
        .await;
    expect(
        "check without purpose",
        r.map(|_| ()),
        Code::InvalidArgument,
        "purpose",
    );
    let r = c
        .list_consent_events(ListConsentEventsRequest::default())
        .await;
    expect(
        "events of nobody",
        r.map(|_| ()),
        Code::InvalidArgument,
        "subject_identifiers",
    );
    let r = c
        .list_consent_events(ListConsentEventsRequest {
            subject_identifiers: vec![email(who)],
            page_size: -1,
            ..Default::default()
        })
        .await;
    expect(
        "negative page size",
        r.map(|_| ()),
        Code::InvalidArgument,
        "page_size",
    );
    let r = c
        .list_subject_consents(ListSubjectConsentsRequest::default())
        .await;
    expect(
        "states of nobody",
        r.map(|_| ()),
        Code::InvalidArgument,
        "subject_identifiers",
    );
    let r = c
        .list_reconsent_due(ListReconsentDueRequest {
            purpose: "purposes/newsletter".into(),
            ..Default::default()
        })
        .await;
    expect(
        "reconsent due without a date",
        r.map(|_| ()),
        Code::InvalidArgument,
        "expire_before_time",
    );
    let r = c.get_receipt(GetReceiptRequest { name: "42".into() }).await;
    expect("receipt name", r.map(|_| ()), Code::InvalidArgument, "name");
    let r = c
        .get_receipt(GetReceiptRequest {
            name: "receipts/0123456789abcdef".into(),
        })
        .await;
    expect(
        "unknown receipt",
        r.map(|_| ()),
        Code::NotFound,
        "`receipts/0123456789abcdef` not found (field `name`)",
    );

    // Nothing of the refused calls was stored.
    let trail = events_of(&mut c, who).await;
    assert!(trail.is_empty(), "{trail:?}");
    let notices = c
        .list_notices(ListNoticesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .notices;
    assert_eq!(notices.len(), 1, "only v1");
    app.stop().await;
}
