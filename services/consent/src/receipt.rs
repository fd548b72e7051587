//! Consent receipts: a signed, self-contained record of what a subject agreed to,
//! in the Kantara Consent Receipt v1.1 shape (with the ISO/IEC TS 27560 notice and
//! decision added). `payload` is the exact JSON that was signed with Ed25519; anyone
//! holding the public key from `ListReceiptKeys` can verify it offline.

use custodia_core::{Config, signing::Ed25519Key};
use custodia_proto::{
    common::v1::{Contact, SpecialCategory, SubjectRef},
    consent::v1::{
        ConsentChannel, ConsentReceipt, ConsentState, LawfulBasis, Purpose, PurposeCategory,
        ReceiptController, ReceiptPurpose,
    },
};
use serde_json::json;

/// Kantara version string.
pub const RECEIPT_VERSION: &str = "KI-CR-v1.1.0";
/// Prefix of a subject's value in a receipt: what follows is the keyed hash
/// (HMAC-SHA256, hex) of the identifier, not the identifier.
pub const HASHED: &str = "hmac-sha256:";
/// File holding the generated seed in the embedded default.
pub const SEED_FILE: &str = "consent-receipt.key";

/// The resource name of receipt `id`: `receipts/{id}`.
pub fn name(id: &str) -> String {
    format!("receipts/{id}")
}

/// The id in a receipt's resource name, if `name` has the form `receipts/{id}`
/// with an id of 1-64 ASCII letters and digits (ids are UUIDv7 in simple form).
pub fn id_of(name: &str) -> Option<&str> {
    name.strip_prefix("receipts/").filter(|id| {
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|c| c.is_ascii_alphanumeric())
    })
}

/// The receipt signing key of this process.
pub fn signing_key(config: &Config) -> anyhow::Result<Ed25519Key> {
    Ed25519Key::configured_or_generated(
        config,
        config.consent.receipt_signing_key.as_ref(),
        "consent.receipt_signing_key",
        SEED_FILE,
    )
}

fn channel(c: i32) -> &'static str {
    match ConsentChannel::try_from(c).unwrap_or_default() {
        ConsentChannel::WebBanner => "web banner",
        ConsentChannel::WebForm => "web form",
        ConsentChannel::EmailLink => "email link",
        ConsentChannel::CrmImport => "CRM import",
        ConsentChannel::Staff => "staff",
        ConsentChannel::Paper => "paper form",
        ConsentChannel::Other | ConsentChannel::Unspecified => "other",
    }
}

fn state_text(s: ConsentState) -> &'static str {
    match s {
        ConsentState::Granted => "granted",
        ConsentState::Denied => "denied",
        ConsentState::Withdrawn => "withdrawn",
        ConsentState::Objected => "objected",
        ConsentState::Unspecified => "",
    }
}

/// One purpose line of a receipt.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// The purpose's resource name.
    pub name: String,
    /// The purpose.
    pub purpose: &'a Purpose,
    /// The state the decision set.
    pub state: ConsentState,
    /// When a grant expires (RFC 3339), if it does.
    pub expires: Option<String>,
}

/// Everything a receipt states.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// Receipt id.
    pub id: String,
    /// Jurisdiction code (FR, LU).
    pub jurisdiction: &'a str,
    /// Decision time, seconds since the epoch.
    pub consent_time: prost_types::Timestamp,
    /// Collection channel.
    pub channel: i32,
    /// The subject: its identifier's type and keyed hash ([`HASHED`]).
    pub subject: SubjectRef,
    /// Language shown, BCP 47.
    pub language: String,
    /// The notice version shown.
    pub notice: String,
    /// The consent events this receipt covers.
    pub events: Vec<String>,
    /// The guardian, for a child, named like the subject.
    pub guardian: Option<SubjectRef>,
    /// One line per purpose.
    pub lines: Vec<Line<'a>>,
}

/// Builds and signs the receipt.
pub fn issue(config: &Config, key: &Ed25519Key, f: Facts<'_>) -> ConsentReceipt {
    let c = &config.consent;
    let controller_name = if c.controller_name.is_empty() {
        "the data controller"
    } else {
        &c.controller_name
    };
    let purposes: Vec<ReceiptPurpose> = f
        .lines
        .iter()
        .map(|l| ReceiptPurpose {
            purpose: l.name.clone(),
            description: if l.purpose.description.is_empty() {
                l.purpose.display_name.clone()
            } else {
                l.purpose.description.clone()
            },
            category: format!(
                "{:?}",
                PurposeCategory::try_from(l.purpose.category).unwrap_or_default()
            ),
            consent_type: "EXPLICIT".into(),
            state: l.state as i32,
            lawful_basis: l.purpose.lawful_basis,
            data_categories: l.purpose.data_categories.clone(),
            primary_purpose: false,
            termination: l
                .expires
                .clone()
                .unwrap_or_else(|| "until withdrawn".into()),
            third_party_disclosure: !l.purpose.recipients.is_empty(),
            third_party_names: l
                .purpose
                .recipients
                .iter()
                .map(|r| r.name.clone())
                .collect(),
            retention_period: l
                .purpose
                .retention
                .as_ref()
                .map(|r| r.period.clone())
                .unwrap_or_default(),
            expire_time: None,
        })
        .collect();
    // Kantara `sensitive` / `spiCat`: the special categories (Art. 9) the
    // purposes process.
    let mut special: Vec<String> = f
        .lines
        .iter()
        .flat_map(|l| l.purpose.special_categories.iter())
        .filter_map(|c| SpecialCategory::try_from(*c).ok())
        .filter(|c| *c != SpecialCategory::Unspecified)
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("SPECIAL_CATEGORY_")
                .to_ascii_lowercase()
        })
        .collect();
    special.sort();
    special.dedup();
    let sensitive = !special.is_empty();
    // The signed document: Kantara CR v1.1 field names, plus the ISO/IEC TS 27560
    // notice reference and per-purpose decision.
    let document = json!({
        "version": RECEIPT_VERSION,
        "jurisdiction": f.jurisdiction,
        "consentTimestamp": f.consent_time.seconds,
        "collectionMethod": channel(f.channel),
        "consentReceiptID": f.id,
        "publicKey": hex::encode(key.public_key().as_bytes()),
        "language": f.language,
        "piiPrincipalId": format!("{}:{}", f.subject.r#type, f.subject.value),
        "piiControllers": [{
            "piiController": controller_name,
            "onBehalf": false,
            "contact": c.controller_email,
            "email": c.controller_email,
            "piiControllerUrl": c.controller_url,
        }],
        "policyUrl": c.policy_url,
        "notice": f.notice,
        "services": [{
            "service": controller_name,
            "purposes": f.lines.iter().map(|l| json!({
                "purpose": l.name,
                "purposeCategory": [format!("{:?}", PurposeCategory::try_from(l.purpose.category).unwrap_or_default())],
                "consentType": "EXPLICIT",
                "piiCategory": l.purpose.data_categories,
                "primaryPurpose": false,
                "termination": l.expires.clone().unwrap_or_else(|| "until withdrawn".into()),
                "thirdPartyDisclosure": !l.purpose.recipients.is_empty(),
                "thirdPartyName": l.purpose.recipients.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                "lawfulBasis": format!("{:?}", LawfulBasis::try_from(l.purpose.lawful_basis).unwrap_or_default()),
                "decision": state_text(l.state),
            })).collect::<Vec<_>>(),
        }],
        "sensitive": sensitive,
        "spiCat": special,
        "guardian": f.guardian.as_ref().map(|g| format!("{}:{}", g.r#type, g.value)),
        "consentEvents": f.events,
    });
    let payload = serde_json::to_vec(&document).expect("JSON values serialise");
    let signature = key.sign(&payload).to_vec();
    ConsentReceipt {
        name: name(&f.id),
        version: RECEIPT_VERSION.into(),
        jurisdiction: f.jurisdiction.into(),
        consent_time: Some(f.consent_time),
        collection_method: channel(f.channel).into(),
        subject: Some(f.subject),
        language: f.language,
        controllers: vec![ReceiptController {
            name: controller_name.into(),
            on_behalf: false,
            contact: Some(Contact {
                display_name: controller_name.into(),
                email: c.controller_email.clone(),
                ..Default::default()
            }),
            url: c.controller_url.clone(),
        }],
        policy_url: c.policy_url.clone(),
        notice: f.notice,
        purposes,
        sensitive,
        special_categories: special,
        guardian: f.guardian,
        consent_events: f.events,
        payload,
        signature,
        key_id: key.key_id().to_string(),
        signature_algorithm: "Ed25519".into(),
    }
}
