//! The register as a document a DPO hands to the supervisory authority
//! (Art. 30): JSON (every field) and CSV (one row per purpose).

use custodia_proto::{
    common::v1::{Document, RetentionAction},
    consent::v1::{LawfulBasis, Purpose, PurposeCategory, RecipientRole, TransferSafeguard},
};
use serde_json::json;

use crate::register::from_timestamp;

fn lawful_basis(v: i32) -> &'static str {
    match LawfulBasis::try_from(v).unwrap_or_default() {
        LawfulBasis::Consent => "consent (Art. 6(1)(a))",
        LawfulBasis::Contract => "contract (Art. 6(1)(b))",
        LawfulBasis::LegalObligation => "legal obligation (Art. 6(1)(c))",
        LawfulBasis::VitalInterests => "vital interests (Art. 6(1)(d))",
        LawfulBasis::PublicTask => "public task (Art. 6(1)(e))",
        LawfulBasis::LegitimateInterests => "legitimate interests (Art. 6(1)(f))",
        LawfulBasis::Unspecified => "",
    }
}

fn category(v: i32) -> &'static str {
    match PurposeCategory::try_from(v).unwrap_or_default() {
        PurposeCategory::StrictlyNecessary => "strictly necessary",
        PurposeCategory::Preference => "preference",
        PurposeCategory::Analytics => "analytics",
        PurposeCategory::Marketing => "marketing",
        PurposeCategory::Communication => "communication",
        PurposeCategory::Other => "other",
        PurposeCategory::Unspecified => "",
    }
}

fn safeguard(v: i32) -> &'static str {
    match TransferSafeguard::try_from(v).unwrap_or_default() {
        TransferSafeguard::AdequacyDecision => "adequacy decision (Art. 45)",
        TransferSafeguard::StandardContractualClauses => {
            "standard contractual clauses (Art. 46(2)(c))"
        }
        TransferSafeguard::BindingCorporateRules => "binding corporate rules (Art. 47)",
        TransferSafeguard::OtherSafeguard => "other appropriate safeguard (Art. 46)",
        TransferSafeguard::Derogation => "derogation (Art. 49)",
        TransferSafeguard::Unspecified => "",
    }
}

fn role(v: i32) -> &'static str {
    match RecipientRole::try_from(v).unwrap_or_default() {
        RecipientRole::Internal => "internal",
        RecipientRole::Processor => "processor",
        RecipientRole::JointController => "joint controller",
        RecipientRole::ThirdParty => "third party",
        RecipientRole::PublicAuthority => "public authority",
        RecipientRole::Unspecified => "",
    }
}

fn action(v: i32) -> &'static str {
    match RetentionAction::try_from(v).unwrap_or_default() {
        RetentionAction::Delete => "delete",
        RetentionAction::Anonymise => "anonymise",
        RetentionAction::Unspecified => "",
    }
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| from_timestamp(t).to_rfc3339())
        .unwrap_or_default()
}

fn to_json(p: &Purpose) -> serde_json::Value {
    let retention = p.retention.as_ref();
    json!({
        "name": p.name,
        "display_name": p.display_name,
        "description": p.description,
        "lawful_basis": lawful_basis(p.lawful_basis),
        "lawful_basis_details": p.lawful_basis_details,
        "category": category(p.category),
        "direct_marketing": p.direct_marketing,
        "data_categories": p.data_categories,
        "subject_categories": p.subject_categories,
        "recipients": p.recipients.iter().map(|r| json!({
            "name": r.name, "role": role(r.role), "country": r.country_code, "description": r.description,
        })).collect::<Vec<_>>(),
        "international_transfers": p.transfers.iter().map(|t| json!({
            "recipient": t.recipient, "country": t.country_code,
            "safeguard": safeguard(t.safeguard), "details": t.details,
        })).collect::<Vec<_>>(),
        "retention": {
            "period": retention.map(|r| r.period.as_str()).unwrap_or_default(),
            "counted_from": retention.map(|r| r.anchor.as_str()).unwrap_or_default(),
            "criteria": retention.map(|r| r.criteria.as_str()).unwrap_or_default(),
            "end_action": retention.map(|r| action(r.action)).unwrap_or_default(),
        },
        "reconsent_interval": p.reconsent_interval,
        "cookie_lifetime": p.cookie_lifetime,
        "cookies": p.cookies.iter().map(|c| json!({
            "name": c.name, "provider": c.provider, "lifetime": c.lifetime, "description": c.description,
        })).collect::<Vec<_>>(),
        "digital_consent_age": p.digital_consent_age,
        "systems": p.systems,
        "special_categories": special_categories(p),
        "article9_condition": article9_condition(p.article9_condition),
        "last_review_time": time(&p.last_review_time),
        "next_review_time": time(&p.next_review_time),
        "review_overdue": p.review_overdue,
    })
}

/// The special categories (Art. 9) of `p`, in words.
fn special_categories(p: &Purpose) -> Vec<String> {
    p.special_categories
        .iter()
        .filter_map(|c| custodia_proto::common::v1::SpecialCategory::try_from(*c).ok())
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("SPECIAL_CATEGORY_")
                .to_ascii_lowercase()
                .replace('_', " ")
        })
        .collect()
}

/// The Art. 9(2) condition, in words with its point.
fn article9_condition(c: i32) -> &'static str {
    use custodia_proto::consent::v1::Article9Condition as C;
    match C::try_from(c).unwrap_or_default() {
        C::Unspecified => "",
        C::ExplicitConsent => "explicit consent (Art. 9(2)(a))",
        C::EmploymentSocialProtection => "employment and social protection law (Art. 9(2)(b))",
        C::VitalInterests => "vital interests (Art. 9(2)(c))",
        C::NotForProfitBody => "not-for-profit body, its members (Art. 9(2)(d))",
        C::MadePublicBySubject => "made public by the subject (Art. 9(2)(e))",
        C::LegalClaims => "legal claims (Art. 9(2)(f))",
        C::SubstantialPublicInterest => "substantial public interest (Art. 9(2)(g))",
        C::HealthOrSocialCare => "health or social care (Art. 9(2)(h))",
        C::PublicHealth => "public health (Art. 9(2)(i))",
        C::ArchivingResearchStatistics => "archiving, research or statistics (Art. 9(2)(j))",
    }
}

/// The register as JSON.
pub fn json_document(purposes: &[Purpose], generated: &str) -> Document {
    let body = json!({
        "register_of_processing_activities": purposes.iter().map(to_json).collect::<Vec<_>>(),
        "generated_at": generated,
        "legal_basis": "GDPR Art. 30(1)",
    });
    Document {
        content_type: "application/json".into(),
        filename: format!("register-{}.json", &generated[..10.min(generated.len())]),
        content: serde_json::to_vec_pretty(&body).expect("JSON values serialise"),
    }
}

/// The register as CSV, one row per purpose; lists are joined with `; `.
pub fn csv_document(purposes: &[Purpose], generated: &str) -> Document {
    let header = [
        "name",
        "display_name",
        "description",
        "lawful_basis",
        "category",
        "direct_marketing",
        "data_categories",
        "subject_categories",
        "recipients",
        "international_transfers",
        "retention_period",
        "retention_counted_from",
        "retention_criteria",
        "retention_end_action",
        "reconsent_interval",
        "cookie_lifetime",
        "cookies",
        "systems",
        "special_categories",
        "article9_condition",
        "last_review_time",
        "next_review_time",
        "review_overdue",
    ];
    let mut rows = Vec::with_capacity(purposes.len());
    for p in purposes {
        let r = p.retention.clone().unwrap_or_default();
        let row = [
            p.name.clone(),
            p.display_name.clone(),
            p.description.clone(),
            lawful_basis(p.lawful_basis).to_string(),
            category(p.category).to_string(),
            p.direct_marketing.to_string(),
            p.data_categories.join("; "),
            p.subject_categories.join("; "),
            p.recipients
                .iter()
                .map(|r| format!("{} ({})", r.name, role(r.role)))
                .collect::<Vec<_>>()
                .join("; "),
            p.transfers
                .iter()
                .map(|t| {
                    format!(
                        "{} in {}: {}",
                        t.recipient,
                        t.country_code,
                        safeguard(t.safeguard)
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            r.period,
            r.anchor,
            r.criteria,
            action(r.action).to_string(),
            p.reconsent_interval.clone(),
            p.cookie_lifetime.clone(),
            p.cookies
                .iter()
                .map(|c| format!("{} ({})", c.name, c.lifetime))
                .collect::<Vec<_>>()
                .join("; "),
            p.systems.join("; "),
            special_categories(p).join("; "),
            article9_condition(p.article9_condition).to_string(),
            time(&p.last_review_time),
            time(&p.next_review_time),
            p.review_overdue.to_string(),
        ];
        rows.push(row);
    }
    Document {
        content_type: "text/csv; charset=utf-8".into(),
        filename: format!("register-{}.csv", &generated[..10.min(generated.len())]),
        content: custodia_core::csv_out::document(&header, rows).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let p = Purpose {
            name: "purposes/newsletter".into(),
            display_name: "=HYPERLINK(\"http://x\")".into(),
            description: "say \"hi\", monthly".into(),
            ..Default::default()
        };
        let doc = csv_document(&[p], "2026-12-05T00:00:00Z");
        let text = String::from_utf8(doc.content).unwrap();
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with(
                "purposes/newsletter,\"'=HYPERLINK(\"\"http://x\"\")\",\"say \"\"hi\"\", monthly\","
            ),
            "{row}"
        );
        assert_eq!(doc.filename, "register-2026-12-05.csv");
    }
}
