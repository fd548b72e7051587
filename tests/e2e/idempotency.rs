//! Idempotency keys through the public API, on both backends (issue #24,
//! finding 1): a key belongs to (principal, method) and is bound to the request
//! body. Another principal's key is a new key for it (nothing of the first
//! call comes back); the same principal reusing a key with another body is
//! refused with IDEMPOTENCY_KEY_REUSED; a retry with the same body gets the
//! first answer and is an access event.

use custodia_core::config::PrincipalConfig;
use custodia_proto::{
    audit::v1::{ListEventsRequest, ShredSubjectRequest},
    breach::v1::{Breach, ReportBreachRequest, breach_service_client::BreachServiceClient},
    consent::v1::{CheckConsentRequest, EraseSubjectRequest, RecordConsentRequest},
    dsar::v1::{
        Request as DsarRequest, RequestType, Requester, RequesterRole, SubmitRequestRequest,
        dsar_service_client::DsarServiceClient,
    },
};
use custodia_tests::{Backend, TestApp, audit_events_until, authed, email, grant};
use prost::Message;
use tonic::{Code, Status};

use crate::all_services;

const CRM: &str = "crm-token-0123456789abcdef";
const MOODLE: &str = "moodle-token-0123456789abcdef";

/// Two calling systems with the same write scopes; `moodle` may not read requests.
async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, &all_services(), |c| {
        for (name, token, scopes) in [
            (
                "crm",
                CRM,
                &[
                    "consent.write",
                    "consent.check",
                    "dsar.write",
                    "dsar.read",
                    "breach.report",
                ][..],
            ),
            (
                "moodle",
                MOODLE,
                &[
                    "consent.write",
                    "consent.check",
                    "dsar.write",
                    "breach.report",
                ][..],
            ),
        ] {
            c.auth.principals.insert(
                name.into(),
                PrincipalConfig {
                    token: Some(token.to_string().into()),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            );
        }
    })
    .await
}

fn assert_reused(err: Status) {
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("request_id"), "{}", err.message());
    let info = tonic_types::StatusExt::get_details_error_info(&err).expect("error info");
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
}

/// Waits until crm's RecordConsent access events in audit-log satisfy `done`.
async fn crm_record_consents_until(
    app: &TestApp,
    done: impl Fn(&[custodia_proto::audit::v1::AccessEvent]) -> bool,
) {
    audit_events_until(
        app.channel().await,
        ListEventsRequest {
            actor: "crm".into(),
            ..Default::default()
        },
        |events| {
            let consents: Vec<_> = events
                .iter()
                .filter(|e| e.method == "RecordConsent")
                .cloned()
                .collect();
            done(&consents)
        },
    )
    .await;
}

/// The newsletter grant of `who` under `notice`, sent with `request_id`.
fn keyed(app: &TestApp, who: &str, notice: &str, request_id: &str) -> RecordConsentRequest {
    RecordConsentRequest {
        request_id: request_id.into(),
        ..grant(app, who, notice)
    }
}

async fn record_consent(backend: Backend) {
    let app = spawn(backend).await;
    let notice = app.newsletter_notice().await;
    let mut c = app.consent().await;

    let first = c
        .record_consent(authed(keyed(&app, "ada@example.edu", &notice, "k1"), CRM))
        .await
        .unwrap()
        .into_inner();

    // Another principal's use of the key records its own subject, and nothing of
    // the first call (its receipt names ada in clear) comes back.
    let other = c
        .record_consent(authed(
            keyed(&app, "bob@example.edu", &notice, "k1"),
            MOODLE,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.events[0].name, first.events[0].name);
    let bytes = other.encode_to_vec();
    assert!(
        !bytes.windows(15).any(|w| w == b"ada@example.edu"),
        "moodle's answer carries crm's subject"
    );
    let checker = c.clone();
    let allowed = |who: &'static str| {
        let mut c = checker.clone();
        async move {
            c.check_consent(authed(
                CheckConsentRequest {
                    subject: Some(email(who)),
                    purpose: "purposes/newsletter".into(),
                },
                CRM,
            ))
            .await
            .unwrap()
            .into_inner()
            .result
            .expect("a result")
            .allowed
        }
    };
    assert!(allowed("bob@example.edu").await, "bob's grant was recorded");

    // The same principal retrying the same body gets the first answer.
    let again = c
        .record_consent(authed(keyed(&app, "ada@example.edu", &notice, "k1"), CRM))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.events, first.events);
    assert_eq!(again.receipt, first.receipt);

    // ...and reusing the key with another body is refused; nothing is recorded.
    let err = c
        .record_consent(authed(keyed(&app, "cy@example.edu", &notice, "k1"), CRM))
        .await
        .unwrap_err();
    assert_reused(err);
    assert!(
        !allowed("cy@example.edu").await,
        "cy's grant was not recorded"
    );

    // Erasure: a retry answers what the first call erased (a second erasure
    // would find nothing), another body with the key is refused, and the
    // audit log's shredding keeps its first answer the same way.
    let erase = |who: &str| EraseSubjectRequest {
        subject_identifiers: vec![email(who)],
        dsar_request: String::new(),
        request_id: "e1".into(),
    };
    let erased = c
        .erase_subject(erase("bob@example.edu"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.erased_event_count, 1);
    let retried = c
        .erase_subject(erase("bob@example.edu"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, erased);
    assert_reused(c.erase_subject(erase("ada@example.edu")).await.unwrap_err());
    assert!(allowed("ada@example.edu").await, "ada was not erased");
    let mut audit = app.audit().await;
    let shred = |who: &str| ShredSubjectRequest {
        subject_identifiers: vec![email(who)],
        dsar_request: String::new(),
        request_id: "s1".into(),
    };
    let shredded = audit
        .shred_subject(shred("bob@example.edu"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shredded.shredded_key_count, 1);
    assert_eq!(
        audit
            .shred_subject(shred("bob@example.edu"))
            .await
            .unwrap()
            .into_inner(),
        shredded
    );
    assert_reused(
        audit
            .shred_subject(shred("ada@example.edu"))
            .await
            .unwrap_err(),
    );

    // The replay is an access event of crm's, beside the first call's.
    crm_record_consents_until(&app, |events| events.len() >= 2).await;
    app.stop().await;
}

fn dsar_request(who: &str) -> DsarRequest {
    DsarRequest {
        r#type: RequestType::Access as i32,
        subject_identifiers: vec![email(who)],
        requester: Some(Requester {
            role: RequesterRole::Subject as i32,
            ..Default::default()
        }),
        details: "Everything you hold about me".into(),
        ..Default::default()
    }
}

async fn submit_request(backend: Backend) {
    let app = spawn(backend).await;
    let mut d = DsarServiceClient::new(app.channel().await);
    let mut submit = async |who: &str, token: &str| {
        let request = SubmitRequestRequest {
            request: Some(dsar_request(who)),
            request_id: "k2".into(),
        };
        d.submit_request(authed(request, token))
            .await
            .map(|r| r.into_inner().request.expect("request"))
    };
    let first = submit("ada@example.edu", CRM).await.unwrap();
    // moodle (without dsar.read) gets a request of its own, not crm's.
    let other = submit("bob@example.edu", MOODLE).await.unwrap();
    assert_ne!(other.name, first.name);
    assert_eq!(other.subject_identifiers[0].value, "bob@example.edu");
    let again = submit("ada@example.edu", CRM).await.unwrap();
    assert_eq!(again.name, first.name);
    assert_reused(submit("cy@example.edu", CRM).await.unwrap_err());
    app.stop().await;
}

async fn report_breach(backend: Backend) {
    let app = spawn(backend).await;
    let mut b = BreachServiceClient::new(app.channel().await);
    let mut report = async |title: &str, token: &str| {
        let request = ReportBreachRequest {
            breach: Some(Breach {
                title: title.into(),
                description: "A laptop was stolen".into(),
                detect_time: Some(app.timestamp()),
                ..Default::default()
            }),
            request_id: "k3".into(),
        };
        b.report_breach(authed(request, token))
            .await
            .map(|r| r.into_inner().breach.expect("breach"))
    };
    let first = report("Stolen laptop", CRM).await.unwrap();
    let other = report("Lost USB key", MOODLE).await.unwrap();
    assert_ne!(other.name, first.name);
    assert_eq!(other.title, "Lost USB key");
    let again = report("Stolen laptop", CRM).await.unwrap();
    assert_eq!(again.name, first.name);
    assert_reused(report("Phishing", CRM).await.unwrap_err());
    app.stop().await;
}

/// Erasures with the same key at once: one works, the others are told to
/// retry or answer what it did (never "nothing erased"), and a retry answered from the key
/// after the register changed (its purpose retired) is an access event too.
async fn concurrent_erasures_and_late_replays(backend: Backend) {
    let app = spawn(backend).await;
    let notice = app.newsletter_notice().await;
    let mut c = app.consent().await;
    c.record_consent(authed(keyed(&app, "eve@example.edu", &notice, "g1"), CRM))
        .await
        .unwrap();
    let erase = EraseSubjectRequest {
        subject_identifiers: vec![email("eve@example.edu")],
        dsar_request: String::new(),
        request_id: "same".into(),
    };
    let calls = (0..4).map(|_| {
        let mut c = c.clone();
        let r = erase.clone();
        async move { c.erase_subject(r).await.map(|a| a.into_inner()) }
    });
    let answers = futures::future::join_all(calls).await;
    // One call erases; the others either saw it working (UNAVAILABLE: retry)
    // or answer what it did. None answers "nothing erased".
    let mut answered: Vec<_> = Vec::new();
    for a in answers {
        match a {
            Ok(a) => answered.push(a),
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{}", e.message()),
        }
    }
    answered.push(c.erase_subject(erase.clone()).await.unwrap().into_inner());
    assert!(
        answered.iter().all(|a| a.erased_event_count == 1),
        "{answered:?}"
    );

    let first = c
        .record_consent(authed(keyed(&app, "fay@example.edu", &notice, "late"), CRM))
        .await
        .unwrap()
        .into_inner();
    crate::consent_records::retire(&mut c, "newsletter").await;
    let again = c
        .record_consent(authed(keyed(&app, "fay@example.edu", &notice, "late"), CRM))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.events, first.events);
    crm_record_consents_until(&app, |events| {
        events
            .iter()
            .filter(|e| {
                e.details
                    .as_ref()
                    .is_some_and(|d| d.fields.contains_key("replay"))
            })
            .count()
            == 1
    })
    .await;
    app.stop().await;
}

custodia_tests::both_backends!(
    record_consent,
    submit_request,
    report_breach,
    concurrent_erasures_and_late_replays
);
