//! Consent records through the API, on both backends: decisions with evidence,
//! checks with every reason, withdrawal and objection effective for the very next
//! check, material notice changes, minors, history, idempotency, bad input, and
//! races between grants and withdrawals. One file per scenario; the helpers
//! below are what they share.

mod bad_input;
mod batch;
mod changes;
mod decisions;
mod erasure;
mod notices;
mod races;
mod receipts;

use custodia_proto::consent::v1::{
    ConsentChannel, CreatePurposeRequest, Decision, Evidence, LawfulBasis, Purpose,
    PurposeCategory, PurposeDecision, PurposeState, RecordConsentRequest, UpdatePurposeRequest,
    WithdrawConsentRequest,
};
use custodia_tests::{TestApp, check, email, events_of, publish_privacy_notice as publish};

type Client = custodia_tests::ConsentClient;

/// Evidence of a web form showing `notice`, collected now.
fn evidence(app: &TestApp, notice: &str) -> Evidence {
    Evidence {
        collect_time: Some(app.timestamp()),
        channel: ConsentChannel::WebForm as i32,
        notice: notice.into(),
        source_ip: "203.0.113.77".into(),
        user_agent: "Mozilla/5.0".into(),
        form_id: "newsletter-footer".into(),
        ..Default::default()
    }
}

/// Creates purpose `id` on `basis`, direct marketing or not, re-consent every `reconsent`.
async fn purpose(c: &mut Client, id: &str, basis: LawfulBasis, dm: bool, reconsent: &str) {
    c.create_purpose(CreatePurposeRequest {
        purpose_id: id.into(),
        purpose: Some(Purpose {
            display_name: id.into(),
            lawful_basis: basis as i32,
            category: PurposeCategory::Communication as i32,
            direct_marketing: dm,
            reconsent_interval: reconsent.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
}

/// A client of `app`, with the consent-based direct-marketing purpose
/// `newsletter` (re-consent every year) and notice v1 covering it.
async fn newsletter(app: &TestApp) -> (Client, String) {
    let mut c = app.consent().await;
    purpose(&mut c, "newsletter", LawfulBasis::Consent, true, "P1Y").await;
    let v1 = publish(&mut c, "We send a monthly newsletter.", false).await;
    (c, v1)
}

/// Retires purpose `id` (new grants are refused from then on).
pub(crate) async fn retire(c: &mut Client, id: &str) {
    c.update_purpose(UpdatePurposeRequest {
        purpose: Some(Purpose {
            name: format!("purposes/{id}"),
            state: PurposeState::Retired as i32,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["state".into()],
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
}

/// RecordConsent of `decision` on each of `purposes` by `who`, under `notice`.
fn decide(
    app: &TestApp,
    who: &str,
    purposes: &[&str],
    decision: Decision,
    notice: &str,
    request_id: &str,
) -> RecordConsentRequest {
    RecordConsentRequest {
        subject: Some(email(who)),
        decisions: purposes
            .iter()
            .map(|p| PurposeDecision {
                purpose: format!("purposes/{p}"),
                decision: decision as i32,
            })
            .collect(),
        evidence: Some(evidence(app, notice)),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// RecordConsent granting the newsletter to `who` under `notice`.
fn grant(app: &TestApp, who: &str, notice: &str) -> RecordConsentRequest {
    decide(app, who, &["newsletter"], Decision::Granted, notice, "")
}

/// WithdrawConsent of `who` from purpose `p`, through an unsubscribe link.
fn withdraw(app: &TestApp, who: &str, p: &str) -> WithdrawConsentRequest {
    WithdrawConsentRequest {
        subject: Some(email(who)),
        purposes: vec![format!("purposes/{p}")],
        evidence: Some(Evidence {
            channel: ConsentChannel::EmailLink as i32,
            ..evidence(app, "")
        }),
        reason: "unsubscribe link".into(),
        ..Default::default()
    }
}
