//! The register of processing (Art. 30, R-1, R-5): what a purpose must hold,
//! how it is validated, and the review cycle.

use chrono::{DateTime, Utc};
use custodia_core::{
    legal_time::CalendarPeriod,
    storage::{from_micros, to_micros},
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::{RetentionAction, SpecialCategory},
    consent::v1::{
        Article9Condition, LawfulBasis, Purpose, PurposeCategory, PurposeState, TransferSafeguard,
    },
};

/// How often the register must be reviewed (R-5: at least annually).
pub const REVIEW_INTERVAL: CalendarPeriod = CalendarPeriod {
    years: 1,
    months: 0,
    weeks: 0,
    days: 0,
    hours: 0,
    minutes: 0,
    seconds: 0,
};

/// Resource name of purpose `id`.
pub fn purpose_name(id: &str) -> String {
    format!("purposes/{id}")
}

/// What a field naming a purpose must hold.
const PURPOSE_NAME: &str = "must be `purposes/{id}`";

/// The id in a `purposes/{id}` name; INVALID_ARGUMENT on `field` otherwise.
pub fn purpose_id<'a>(name: &'a str, field: &str) -> Result<&'a str, custodia_core::ApiError> {
    name.strip_prefix("purposes/")
        .filter(|id| valid_id(id))
        .ok_or_else(|| custodia_core::ApiError::invalid(field, PURPOSE_NAME))
}

/// Like [`purpose_id`] for one entry of a list: the violation goes to `v`, so
/// that every bad entry is named at once.
pub fn checked_purpose_id<'a>(v: &mut Validator, name: &'a str, field: &str) -> Option<&'a str> {
    let id = name.strip_prefix("purposes/").filter(|id| valid_id(id));
    if id.is_none() {
        v.add(field, PURPOSE_NAME);
    }
    id
}

/// Checks that `id` (request field `field`) is a [`valid_id`].
pub fn check_id(v: &mut Validator, field: &str, id: &str) {
    v.check(
        valid_id(id),
        field,
        "must be 1-63 lowercase letters, digits or hyphens, starting with a letter",
    );
}

/// AIP-122 style ids: lowercase letters, digits and hyphens, starting with a letter.
pub fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn period(v: &mut Validator, field: &str, text: &str, allow_session: bool) {
    if text.is_empty() || (allow_session && text == "session") {
        return;
    }
    match text.parse::<CalendarPeriod>() {
        Ok(p) if p.is_zero() => v.add(field, "must be longer than zero"),
        Ok(_) => {}
        Err(e) => v.add(field, e.to_string()),
    }
}

fn country(v: &mut Validator, field: &str, code: &str, required: bool) {
    if code.is_empty() {
        if required {
            v.add(field, "is required (ISO 3166-1 alpha-2, e.g. US)");
        }
    } else if code.len() != 2 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        v.add(
            field,
            "must be an ISO 3166-1 alpha-2 code in capitals, e.g. US",
        );
    }
}

/// Most recipients of one purpose (its processors and other recipients).
const MAX_RECIPIENTS: usize = 100;
/// Most international transfers of one purpose.
const MAX_TRANSFERS: usize = 100;
/// Most cookies of one purpose: its K-4 table, a few dozen on most sites.
const MAX_COOKIES: usize = 500;

/// Special categories (Art. 9, R-4): each a known one, named once, and only
/// with the Art. 9(2) condition that allows processing them; explicit consent
/// (Art. 9(2)(a)) only on the consent basis.
fn special_categories(p: &Purpose, f: &impl Fn(&str) -> String, v: &mut Validator) {
    let mut seen = std::collections::HashSet::new();
    v.max_items(&f("special_categories"), p.special_categories.len(), 8);
    for (i, c) in p.special_categories.iter().enumerate().take(8) {
        match SpecialCategory::try_from(*c) {
            Ok(SpecialCategory::Unspecified) | Err(_) => v.add(
                f(&format!("special_categories[{i}]")),
                "is not a special category of Art. 9(1)",
            ),
            Ok(_) if !seen.insert(*c) => {
                v.add(f(&format!("special_categories[{i}]")), "is named twice")
            }
            Ok(_) => {}
        }
    }
    let condition = Article9Condition::try_from(p.article9_condition);
    match (p.special_categories.is_empty(), condition) {
        (_, Err(_)) => v.add(f("article9_condition"), "is not a condition of Art. 9(2)"),
        (false, Ok(Article9Condition::Unspecified)) => v.add(
            f("article9_condition"),
            "is required when special categories are processed: their processing is \
             prohibited unless a condition of Art. 9(2) applies (R-4)",
        ),
        (true, Ok(c)) if c != Article9Condition::Unspecified => v.add(
            f("article9_condition"),
            "applies to special categories only; name them in special_categories",
        ),
        (false, Ok(Article9Condition::ExplicitConsent))
            if p.lawful_basis != LawfulBasis::Consent as i32 =>
        {
            v.add(
                f("article9_condition"),
                "EXPLICIT_CONSENT (Art. 9(2)(a)) needs the CONSENT lawful basis",
            )
        }
        _ => {}
    }
}

/// Validates the caller-settable fields of `p`, naming fields under `prefix`
/// (e.g. `purpose.`); `now` bounds the review time.
pub fn validate(p: &Purpose, prefix: &str, now: DateTime<Utc>, v: &mut Validator) {
    let f = |name: &str| format!("{prefix}{name}");
    v.required(&f("display_name"), &p.display_name, MAX_ID);
    v.max_len(&f("description"), &p.description, MAX_TEXT);
    v.max_len(
        &f("lawful_basis_details"),
        &p.lawful_basis_details,
        MAX_TEXT,
    );
    match LawfulBasis::try_from(p.lawful_basis) {
        Ok(LawfulBasis::Unspecified) | Err(_) => {
            v.add(f("lawful_basis"), "is required (Art. 6(1))")
        }
        Ok(_) => {}
    }
    match PurposeCategory::try_from(p.category) {
        Ok(PurposeCategory::Unspecified) | Err(_) => v.add(f("category"), "is required"),
        Ok(_) => {}
    }
    if PurposeState::try_from(p.state).is_err() {
        v.add(f("state"), "is not a known state");
    }
    special_categories(p, &f, v);
    for (list, name) in [
        (&p.data_categories, "data_categories"),
        (&p.subject_categories, "subject_categories"),
        (&p.systems, "systems"),
    ] {
        if list.len() > 100 {
            v.add(f(name), "at most 100 entries");
        }
        for (i, item) in list.iter().enumerate() {
            v.required(&f(&format!("{name}[{i}]")), item, MAX_ID);
        }
    }
    v.max_items(&f("recipients"), p.recipients.len(), MAX_RECIPIENTS);
    v.max_items(&f("transfers"), p.transfers.len(), MAX_TRANSFERS);
    v.max_items(&f("cookies"), p.cookies.len(), MAX_COOKIES);
    for (i, r) in p.recipients.iter().enumerate().take(MAX_RECIPIENTS) {
        v.required(&f(&format!("recipients[{i}].name")), &r.name, MAX_ID);
        country(
            v,
            &f(&format!("recipients[{i}].country_code")),
            &r.country_code,
            false,
        );
        v.max_len(
            &f(&format!("recipients[{i}].description")),
            &r.description,
            MAX_TEXT,
        );
    }
    for (i, t) in p.transfers.iter().enumerate().take(MAX_TRANSFERS) {
        v.required(
            &f(&format!("transfers[{i}].recipient")),
            &t.recipient,
            MAX_ID,
        );
        country(
            v,
            &f(&format!("transfers[{i}].country_code")),
            &t.country_code,
            true,
        );
        if matches!(
            TransferSafeguard::try_from(t.safeguard),
            Ok(TransferSafeguard::Unspecified) | Err(_)
        ) {
            v.add(
                f(&format!("transfers[{i}].safeguard")),
                "is required (adequacy decision, SCCs, BCRs, ...)",
            );
        }
        v.max_len(&f(&format!("transfers[{i}].details")), &t.details, MAX_TEXT);
    }
    if let Some(r) = &p.retention {
        period(v, &f("retention.period"), &r.period, false);
        v.max_len(&f("retention.anchor"), &r.anchor, MAX_ID);
        v.max_len(&f("retention.criteria"), &r.criteria, MAX_TEXT);
        if RetentionAction::try_from(r.action).is_err() {
            v.add(f("retention.action"), "is not a known action");
        }
    }
    period(v, &f("reconsent_interval"), &p.reconsent_interval, false);
    period(v, &f("cookie_lifetime"), &p.cookie_lifetime, true);
    for (i, c) in p.cookies.iter().enumerate().take(MAX_COOKIES) {
        v.required(&f(&format!("cookies[{i}].name")), &c.name, MAX_ID);
        v.max_len(&f(&format!("cookies[{i}].provider")), &c.provider, MAX_ID);
        period(v, &f(&format!("cookies[{i}].lifetime")), &c.lifetime, true);
        v.max_len(
            &f(&format!("cookies[{i}].description")),
            &c.description,
            MAX_TEXT,
        );
    }
    if let Some(age) = p.digital_consent_age
        && !(13..=16).contains(&age)
    {
        v.add(
            f("digital_consent_age"),
            "must be between 13 and 16 (Art. 8(1))",
        );
    }
    if let Some(t) = &p.last_review_time
        && from_timestamp(t) > now
    {
        v.add(f("last_review_time"), "must not be in the future");
    }
}

/// A protobuf timestamp as UTC (out-of-range values clamp to the epoch).
pub fn from_timestamp(t: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32).unwrap_or_default()
}

/// UTC as a protobuf timestamp.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// When the purpose is next due for review.
pub fn next_review(p: &Purpose, created: DateTime<Utc>) -> DateTime<Utc> {
    let last = p
        .last_review_time
        .as_ref()
        .map(from_timestamp)
        .unwrap_or(created);
    REVIEW_INTERVAL.after(last)
}

/// Fills the output-only fields of a stored purpose for `now`.
pub fn with_outputs(
    mut p: Purpose,
    create_us: i64,
    update_us: i64,
    etag: &str,
    now: DateTime<Utc>,
) -> Purpose {
    let created = from_micros(create_us);
    let next = next_review(&p, created);
    p.next_review_time = Some(timestamp(next));
    p.review_overdue = now > next;
    p.create_time = Some(timestamp(created));
    p.update_time = Some(timestamp(from_micros(update_us)));
    p.etag = etag.to_string();
    p
}

/// Clears output-only fields before storing.
pub fn without_outputs(mut p: Purpose) -> Purpose {
    p.next_review_time = None;
    p.review_overdue = false;
    p.create_time = None;
    p.update_time = None;
    p.etag = String::new();
    p.notice = String::new();
    p
}

/// µs of the next review, for the overdue filter.
pub fn next_review_us(p: &Purpose, create_us: i64) -> i64 {
    to_micros(next_review(p, from_micros(create_us)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert!(valid_id("newsletter") && valid_id("cookies-analytics"));
        assert!(!valid_id("News") && !valid_id("1x") && !valid_id("") && !valid_id("a_b"));
        assert_eq!(
            purpose_id("purposes/newsletter", "name").unwrap(),
            "newsletter"
        );
        assert!(purpose_id("newsletter", "name").is_err());
        let mut v = Validator::new();
        assert_eq!(
            checked_purpose_id(&mut v, "purposes/newsletter", "p[0]"),
            Some("newsletter")
        );
        assert!(v.is_ok());
        assert_eq!(checked_purpose_id(&mut v, "purposes/News", "p[1]"), None);
        let Err(custodia_core::ApiError::InvalidArgument(list)) = v.finish() else {
            panic!("a bad name accepted");
        };
        assert_eq!(
            (list[0].field.as_str(), list[0].description.as_str()),
            ("p[1]", PURPOSE_NAME)
        );
    }
}
