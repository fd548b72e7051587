//! Erasure keeps what honours the subject's choices (C-4, C-8, D-7): an
//! objector erased, then re-imported from the CRM, stays objected; a withdrawal
//! stays as proof; only the subject can grant again.

use custodia_proto::{
    common::v1::RetentionGround,
    consent::v1::{
        CheckReason, ConsentChannel, ConsentState, Decision, EraseSubjectRequest, Evidence,
        LawfulBasis, RecordConsentRequest, RecordObjectionRequest,
    },
};
use custodia_tests::{Backend, TestApp, assert_code, email};
use tonic::Code;

use super::{Client, check, decide, events_of, evidence, newsletter, purpose, withdraw};

custodia_tests::both_backends!(erasure_keeps_suppressions);

/// `who`'s consent to `purposes`, as a CRM import relays it.
fn crm_import(app: &TestApp, who: &str, purposes: &[&str], notice: &str) -> RecordConsentRequest {
    let mut r = decide(app, who, purposes, Decision::Granted, notice, "");
    r.evidence = Some(Evidence {
        channel: ConsentChannel::CrmImport as i32,
        ..evidence(app, notice)
    });
    r
}

/// EraseSubject of `who` under `request_id`.
async fn erase(
    c: &mut Client,
    who: &str,
    request_id: &str,
) -> custodia_proto::consent::v1::EraseSubjectResponse {
    c.erase_subject(EraseSubjectRequest {
        subject_identifiers: vec![email(who)],
        dsar_request: "requests/r-1".into(),
        request_id: request_id.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Ada withdraws from the newsletter, Bob objects to direct marketing; both
/// also consent to research. Both are erased: research goes, the withdrawal and
/// the objection stay (minimised) and are reported in `retained`; checks answer
/// WITHDRAWN / OBJECTED; a CRM re-import of the newsletter is refused with
/// SUBJECT_SUPPRESSED, a fresh web-form consent is not.
async fn erasure_keeps_suppressions(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    purpose(&mut c, "research", LawfulBasis::Consent, false, "").await;
    purpose(&mut c, "events", LawfulBasis::LegitimateInterests, true, "").await;
    for who in ["ada@example.edu", "bob@example.edu"] {
        c.record_consent(decide(
            &app,
            who,
            &["newsletter", "research"],
            Decision::Granted,
            &v1,
            "",
        ))
        .await
        .unwrap();
    }
    c.withdraw_consent(withdraw(&app, "ada@example.edu", "newsletter"))
        .await
        .unwrap();
    c.record_objection(RecordObjectionRequest {
        subject: Some(email("bob@example.edu")),
        direct_marketing: true,
        grounds: "no more marketing please".into(),
        evidence: Some(evidence(&app, "")),
        ..Default::default()
    })
    .await
    .unwrap();

    let ada = erase(&mut c, "ada@example.edu", "erase-ada").await;
    assert_eq!(
        ada.erased_event_count, 2,
        "both grants; the withdrawal stays"
    );
    assert_eq!(ada.retained.len(), 1, "{:?}", ada.retained);
    let kept = &ada.retained[0];
    assert_eq!(kept.category, "consent_withdrawals");
    assert_eq!(kept.record_count, 1);
    assert_eq!(kept.ground, RetentionGround::LegalClaims as i32);
    assert!(
        kept.description.contains("newsletter"),
        "{}",
        kept.description
    );
    assert!(kept.retain_until_time.is_some());
    // request_id is honoured: a retry answers the first call's counts.
    assert_eq!(erase(&mut c, "ada@example.edu", "erase-ada").await, ada);

    let bob = erase(&mut c, "bob@example.edu", "erase-bob").await;
    assert_eq!(bob.erased_event_count, 2);
    assert_eq!(bob.retained.len(), 1, "{:?}", bob.retained);
    assert_eq!(bob.retained[0].category, "consent_objections");
    assert_eq!(
        bob.retained[0].ground,
        RetentionGround::LegalObligation as i32
    );
    assert!(bob.retained[0].description.contains("direct marketing"));

    // Checks keep honouring the choices; nothing else stays.
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn)
    );
    assert_eq!(
        check(&mut c, "ada@example.edu", "research").await,
        (false, CheckReason::NoRecord)
    );
    for p in ["newsletter", "events"] {
        assert_eq!(
            check(&mut c, "bob@example.edu", p).await,
            (false, CheckReason::Objected),
            "{p}"
        );
    }
    // What stays is the decision, not the person: no address, browser,
    // reason or receipt.
    for who in ["ada@example.edu", "bob@example.edu"] {
        let trail = events_of(&mut c, who).await;
        assert_eq!(trail.len(), 1, "{who}: {trail:?}");
        let e = &trail[0];
        assert!(
            [
                ConsentState::Withdrawn as i32,
                ConsentState::Objected as i32
            ]
            .contains(&e.state)
        );
        let ev = e.evidence.as_ref().expect("channel and time stay");
        assert!(ev.collect_time.is_some());
        assert!(ev.source_ip.is_empty() && ev.user_agent.is_empty() && ev.form_id.is_empty());
        assert!(e.reason.is_empty() && e.receipt.is_empty(), "{e:?}");
        assert!(e.subject.as_ref().is_some_and(|s| s.value.is_empty()));
    }

    // The CRM re-imports both: refused, naming why; research (never objected
    // to) may be granted again.
    for who in ["ada@example.edu", "bob@example.edu"] {
        let refused = c
            .record_consent(crm_import(&app, who, &["newsletter"], &v1))
            .await
            .unwrap_err();
        assert_code(&refused, Code::FailedPrecondition, &["erased", "web form"]);
        let info = tonic_types::StatusExt::get_details_error_info(&refused).expect("error info");
        assert_eq!(info.reason, "SUBJECT_SUPPRESSED");
    }
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn),
        "nothing was half-written"
    );
    c.record_consent(crm_import(&app, "ada@example.edu", &["research"], &v1))
        .await
        .unwrap();

    // Ada subscribes again herself, on the web site: granted, and from then on
    // her fresh consent, not the suppression, is what stands.
    c.record_consent(decide(
        &app,
        "ada@example.edu",
        &["newsletter"],
        Decision::Granted,
        &v1,
        "",
    ))
    .await
    .unwrap();
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (true, CheckReason::Granted)
    );
    c.record_consent(crm_import(&app, "ada@example.edu", &["newsletter"], &v1))
        .await
        .expect("the suppression no longer stands");
    app.stop().await;
}
