//! The per-principal quota on access events naming subjects (issue 24, finding
//! 3): a principal's reads may name at most `audit.max_subject_events_per_minute`
//! subjects a minute; past it a call answers RESOURCE_EXHAUSTED with a
//! RetryInfo and writes nothing, and the allowance comes back with time (the
//! server's injected clock, never a sleep).

use std::time::Duration;

use custodia_core::config::PrincipalConfig;
use custodia_proto::{
    audit::v1::audit_log_service_client::AuditLogServiceClient,
    audit::v1::{ListEventsRequest, ListSubjectAccessesRequest},
    consent::v1::{
        BatchCheckConsentRequest, CheckConsentRequest, ListConsentEventsRequest,
        consent_service_client::ConsentServiceClient,
    },
};
use custodia_tests::{
    ADMIN_TOKEN, Backend, TestApp, audit_events_until, authed, newsletter_purpose, subject,
    subjects,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

const CRM_TOKEN: &str = "crm-token-0123456789abcdef";
const CONSENT: &str = "custodia.consent.v1.ConsentService";

fn check(i: usize) -> CheckConsentRequest {
    CheckConsentRequest {
        subject: Some(subject(i)),
        purpose: "purposes/newsletter".into(),
    }
}

fn batch(n: usize) -> BatchCheckConsentRequest {
    BatchCheckConsentRequest {
        purpose: "purposes/newsletter".into(),
        subjects: subjects(n),
    }
}

/// The delay a RESOURCE_EXHAUSTED answer tells the caller to wait.
fn retry_delay(status: &Status) -> Option<Duration> {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

custodia_tests::both_backends!(quota_refuses_with_retry_info_then_recovers);

/// A quota of 100 a minute (one back every 600 ms), shared by the process's
/// services: a batch of 100 spends it; the next check is refused with a
/// RetryInfo of 600 ms, as is a ListSubjectAccesses of audit-log, and is
/// answered once the clock has moved 600 ms. A call of more than 100 subjects
/// never fits (no RetryInfo). The refused calls wrote no access event, and the
/// admin is not counted.
async fn quota_refuses_with_retry_info_then_recovers(backend: Backend) {
    let services = [custodia_audit_log::SERVICE, custodia_consent::SERVICE];
    let app = TestApp::spawn_with(backend, &services, |config| {
        config.audit.max_subject_events_per_minute = 100;
        config.auth.principals.insert(
            "crm".into(),
            PrincipalConfig {
                token: Some(CRM_TOKEN.to_string().into()),
                scopes: vec![
                    "consent.check".into(),
                    "consent.read".into(),
                    "audit.read".into(),
                ],
                ..Default::default()
            },
        );
    })
    .await;
    let channel = app.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let mut audit = AuditLogServiceClient::new(channel.clone());
    consent
        .create_purpose(authed(newsletter_purpose(), ADMIN_TOKEN))
        .await
        .unwrap();

    consent
        .batch_check_consent(authed(batch(100), CRM_TOKEN))
        .await
        .expect("the whole quota at once");
    let refused = consent
        .check_consent(authed(check(1000), CRM_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(retry_delay(&refused), Some(Duration::from_millis(600)));
    assert!(refused.message().contains("crm"), "{}", refused.message());
    let refused = consent
        .list_consent_events(authed(
            ListConsentEventsRequest {
                subject_identifiers: vec![subject(1001)],
                ..Default::default()
            },
            CRM_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(retry_delay(&refused), Some(Duration::from_millis(600)));
    // One allowance for the process: audit-log's reads take from it too.
    let refused = audit
        .list_subject_accesses(authed(
            ListSubjectAccessesRequest {
                subject_identifiers: vec![subject(1002)],
                ..Default::default()
            },
            CRM_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(retry_delay(&refused), Some(Duration::from_millis(600)));
    // The admin is not counted.
    consent
        .batch_check_consent(authed(batch(10_000), ADMIN_TOKEN))
        .await
        .expect("the admin is exempt");

    app.clock.advance(chrono::Duration::milliseconds(599));
    let refused = consent
        .check_consent(authed(check(1000), CRM_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(retry_delay(&refused), Some(Duration::from_millis(1)));
    app.clock.advance(chrono::Duration::milliseconds(1));
    consent
        .check_consent(authed(check(1000), CRM_TOKEN))
        .await
        .expect("one back after 600 ms");

    // More than the quota at once never fits: no RetryInfo, and nothing taken.
    app.clock.advance(chrono::Duration::minutes(1));
    let refused = consent
        .batch_check_consent(authed(batch(101), CRM_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(retry_delay(&refused), None);
    consent
        .batch_check_consent(authed(batch(100), CRM_TOKEN))
        .await
        .expect("the refused 101 took nothing");

    // One more check once a 600 ms later, to know when the crm's events have
    // all arrived (they come in order): then there is no event of a refused call.
    app.clock.advance(chrono::Duration::milliseconds(600));
    let last = consent
        .check_consent(authed(check(2000), CRM_TOKEN))
        .await
        .expect("one back after 600 ms")
        .into_inner()
        .result
        .unwrap()
        .check_time;
    let events = audit_events_until(
        channel,
        ListEventsRequest {
            actor: "crm".into(),
            service: CONSENT.into(),
            ..Default::default()
        },
        |events| {
            events
                .iter()
                .any(|e| e.method == "CheckConsent" && e.event_time == last)
        },
    )
    .await;
    let calls = |m: &str| events.iter().filter(|e| e.method == m).count();
    assert_eq!(calls("CheckConsent"), 2, "only the checks answered");
    assert_eq!(
        calls("ListConsentEvents"),
        0,
        "the refused listing wrote nothing"
    );
    app.stop().await;
}
