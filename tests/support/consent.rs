//! The starting point of most consent scenarios: `purposes/newsletter`, the
//! privacy notice covering it, and a grant collected under that notice.

use custodia_proto::consent::v1::{
    CheckConsentRequest, CheckReason, ConsentChannel, ConsentEvent, CreatePurposeRequest, Decision,
    Evidence, LawfulBasis, ListConsentEventsRequest, Notice, PublishNoticeRequest, Purpose,
    PurposeCategory, PurposeDecision, RecordConsentRequest, notice::Content,
};

use crate::{ConsentClient, TestApp, email};

/// CreatePurpose of `purposes/newsletter`: a communication purpose whose lawful
/// basis is consent, as the consent tests and the load generator use it.
pub fn newsletter_purpose() -> CreatePurposeRequest {
    CreatePurposeRequest {
        purpose_id: "newsletter".into(),
        purpose: Some(Purpose {
            display_name: "Newsletter".into(),
            lawful_basis: LawfulBasis::Consent as i32,
            category: PurposeCategory::Communication as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

/// RecordConsent granting `purposes/newsletter` to `who` (an e-mail address),
/// collected now through a web form showing `notice`.
pub fn grant(app: &TestApp, who: &str, notice: &str) -> RecordConsentRequest {
    RecordConsentRequest {
        subject: Some(email(who)),
        decisions: vec![PurposeDecision {
            purpose: "purposes/newsletter".into(),
            decision: Decision::Granted as i32,
        }],
        evidence: Some(Evidence {
            collect_time: Some(app.timestamp()),
            channel: ConsentChannel::WebForm as i32,
            notice: notice.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Publishes a version of the privacy notice (`notices/privacy`) covering
/// `purposes/newsletter`, a material change or not; returns the version's name.
pub async fn publish_privacy_notice(c: &mut ConsentClient, text: &str, material: bool) -> String {
    c.publish_notice(PublishNoticeRequest {
        notice_id: "privacy".into(),
        notice: Some(Notice {
            title: "Privacy policy".into(),
            content: Some(Content::Text(text.into())),
            purposes: vec!["purposes/newsletter".into()],
            material_change: material,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .notice
    .unwrap()
    .name
}

/// CheckConsent of `who` (an e-mail address) for purpose `purpose_id`: whether
/// it is allowed, and why.
pub async fn check(c: &mut ConsentClient, who: &str, purpose_id: &str) -> (bool, CheckReason) {
    let r = c
        .check_consent(CheckConsentRequest {
            subject: Some(email(who)),
            purpose: format!("purposes/{purpose_id}"),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    (r.allowed, CheckReason::try_from(r.reason).unwrap())
}

/// The consent trail of `who` (an e-mail address), up to 1,000 events.
pub async fn events_of(c: &mut ConsentClient, who: &str) -> Vec<ConsentEvent> {
    c.list_consent_events(ListConsentEventsRequest {
        subject_identifiers: vec![email(who)],
        page_size: 1_000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events
}

impl TestApp {
    /// Creates `purposes/newsletter` ([`newsletter_purpose`]) and publishes the
    /// privacy notice covering it; returns the notice's name
    /// (`notices/privacy/versions/1`).
    pub async fn newsletter_notice(&self) -> String {
        let mut c = self.consent().await;
        c.create_purpose(newsletter_purpose()).await.unwrap();
        publish_privacy_notice(&mut c, "We send a monthly newsletter.", false).await
    }
}
