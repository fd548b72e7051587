//! Ready-made purposes: the cookie categories of K-1..K-3 with their lifetimes
//! (necessary = session, preference 6 months, analytics 13 months, marketing 13
//! months; the consent choice itself is asked again after 13 months at most).

use custodia_proto::{
    common::v1::{RetentionAction, RetentionPolicy},
    consent::v1::{
        Cookie, InternationalTransfer, LawfulBasis, Purpose, PurposeCategory, PurposeState,
        Recipient, RecipientRole, TransferSafeguard,
    },
};

fn cookie_purpose(
    display_name: &str,
    description: &str,
    basis: LawfulBasis,
    category: PurposeCategory,
    lifetime: &str,
    data: &[&str],
) -> Purpose {
    Purpose {
        display_name: display_name.into(),
        description: description.into(),
        lawful_basis: basis as i32,
        category: category as i32,
        data_categories: data.iter().map(|s| s.to_string()).collect(),
        subject_categories: vec!["website visitors".into()],
        cookie_lifetime: lifetime.into(),
        reconsent_interval: if basis == LawfulBasis::Consent {
            "P13M".into()
        } else {
            String::new()
        },
        retention: Some(RetentionPolicy {
            period: if lifetime == "session" {
                "P1D".into()
            } else {
                lifetime.into()
            },
            anchor: "collection".into(),
            criteria: format!(
                "cookie lifetime for the {} category (K-3)",
                display_name.to_lowercase()
            ),
            action: RetentionAction::Delete as i32,
        }),
        state: PurposeState::Active as i32,
        ..Default::default()
    }
}

/// `(id, purpose)` pairs of a preset; `None` for an unknown preset name.
pub fn preset(name: &str) -> Option<Vec<(&'static str, Purpose)>> {
    match name {
        "cookies" => Some(vec![
            (
                "cookies-necessary",
                Purpose {
                    cookies: vec![Cookie {
                        name: "session".into(),
                        provider: "first party".into(),
                        lifetime: "session".into(),
                        description: "keeps the visitor's session and their cookie choice".into(),
                    }],
                    ..cookie_purpose(
                        "Strictly necessary cookies",
                        "Cookies without which the site cannot work; they cannot be refused (K-1).",
                        LawfulBasis::LegitimateInterests,
                        PurposeCategory::StrictlyNecessary,
                        "session",
                        &["session identifier", "cookie choice"],
                    )
                },
            ),
            (
                "cookies-preference",
                cookie_purpose(
                    "Preference cookies",
                    "Remember the visitor's choices (language, display) between visits.",
                    LawfulBasis::Consent,
                    PurposeCategory::Preference,
                    "P6M",
                    &["language", "display settings"],
                ),
            ),
            (
                "cookies-analytics",
                Purpose {
                    recipients: vec![Recipient {
                        name: "Google (Analytics)".into(),
                        role: RecipientRole::Processor as i32,
                        country_code: "US".into(),
                        description: "audience measurement; data kept 12 months".into(),
                    }],
                    transfers: vec![InternationalTransfer {
                        recipient: "Google (Analytics)".into(),
                        country_code: "US".into(),
                        safeguard: TransferSafeguard::AdequacyDecision as i32,
                        details: "EU-US Data Privacy Framework".into(),
                    }],
                    ..cookie_purpose(
                        "Analytics cookies",
                        "Measure the audience of the site to improve it.",
                        LawfulBasis::Consent,
                        PurposeCategory::Analytics,
                        "P13M",
                        &[
                            "pages visited",
                            "device and browser",
                            "truncated IP address",
                        ],
                    )
                },
            ),
            (
                "cookies-marketing",
                cookie_purpose(
                    "Marketing cookies",
                    "Show and measure advertising for the institution's programmes.",
                    LawfulBasis::Consent,
                    PurposeCategory::Marketing,
                    "P13M",
                    &["advertising identifiers", "pages visited"],
                ),
            ),
        ]),
        _ => None,
    }
}

/// Names of the presets there are.
pub const PRESETS: &[&str] = &["cookies"];

/// Creates the purposes of `preset` through the consent service at `endpoint`;
/// returns one line per purpose saying what happened.
pub async fn seed(endpoint: &str, token: &str, preset_name: &str) -> anyhow::Result<Vec<String>> {
    use custodia_proto::consent::v1::{
        CreatePurposeRequest, consent_service_client::ConsentServiceClient,
    };
    let purposes = preset(preset_name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown preset `{preset_name}` (known: {})",
            PRESETS.join(", ")
        )
    })?;
    let mut client = ConsentServiceClient::connect(endpoint.to_string()).await?;
    let authorization: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut lines = Vec::new();
    for (id, purpose) in purposes {
        let mut request = tonic::Request::new(CreatePurposeRequest {
            purpose_id: id.to_string(),
            purpose: Some(purpose),
            request_id: format!("seed-{preset_name}-{id}"),
        });
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
        match client.create_purpose(request).await {
            Ok(_) => lines.push(format!("purposes/{id}: created")),
            Err(s) if s.code() == tonic::Code::AlreadyExists => lines.push(format!(
                "purposes/{id}: already in the register, left as it is"
            )),
            Err(s) => anyhow::bail!("purposes/{id}: {:?}: {}", s.code(), s.message()),
        }
    }
    Ok(lines)
}
