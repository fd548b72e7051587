//! What a decision must meet before it is recorded (what the register forbids
//! (K-1, retired purposes), C-6 and Art. 8), and when a grant lapses (C-5, K-3).

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use custodia_core::{
    ApiError,
    legal_time::CalendarPeriod,
    storage::{from_micros, to_micros},
};
use custodia_proto::consent::v1::{
    self as pb, Evidence, LawfulBasis, Purpose, age_attestation::Age,
};

use crate::{cache::CachedPurpose, notices::notice_ref};

/// When a grant made at `collect_us` lapses: the re-consent interval or the cookie
/// lifetime, whichever comes first (C-5, K-3).
pub fn expiry(p: &Purpose, collect_us: i64) -> Option<i64> {
    let at = from_micros(collect_us);
    [&p.reconsent_interval, &p.cookie_lifetime]
        .into_iter()
        .filter_map(|text| text.parse::<CalendarPeriod>().ok())
        .map(|period| to_micros(period.after(at)))
        .min()
}

/// Digital age of consent in `country` (Art. 8(1)): `configured`
/// (`consent.digital_consent_ages`, any case) first, else the member states' laws,
/// else the GDPR default of 16.
fn consent_age(country: &str, configured: &BTreeMap<String, i32>) -> i32 {
    let country = country.to_ascii_uppercase();
    if let Some(age) = configured
        .iter()
        .find_map(|(c, age)| c.eq_ignore_ascii_case(&country).then_some(*age))
    {
        return age;
    }
    match country.as_str() {
        "FR" | "CZ" | "GR" | "SI" => 15,
        "AT" | "BG" | "CY" | "ES" | "IT" | "LT" => 14,
        "BE" | "DK" | "EE" | "FI" | "LV" | "MT" | "PT" | "SE" => 13,
        _ => 16,
    }
}

/// C-6: a grant collected under notice version `notice` is refused when a later
/// material version of the same notice had taken effect by the time the consent
/// was collected: the subject was shown terms that no longer held. (Consents
/// collected before the change are kept, and checks answer NOTICE_CHANGED until
/// they are re-confirmed; a grant under another notice covering the purpose is
/// not refused here.)
fn superseded_notice(
    notice: &str,
    purpose: &CachedPurpose,
    collect_us: i64,
    pid: &str,
) -> Result<(), ApiError> {
    let Some((id, shown)) = notice_ref(notice) else {
        return Ok(());
    };
    match purpose.superseding(id, shown, collect_us) {
        Some((version, effective_us)) => Err(ApiError::precondition(
            "NOTICE_SUPERSEDED",
            format!(
                // The notice as parsed, not as sent: the version may carry any
                // number of leading zeros.
                "evidence.notice notices/{id}/versions/{shown} was superseded for \
                 purposes/{pid} by the material change notices/{id}/versions/{version}, in \
                 effect since {} (before the consent was collected): show the current \
                 notice and record the consent under it",
                from_micros(effective_us).to_rfc3339()
            ),
        )),
        None => Ok(()),
    }
}

/// Where a subject's age is judged (Art. 8): the institution's jurisdiction
/// (`legal.jurisdiction`) when the request names no country, and the
/// configured ages of consent.
pub(crate) struct AgeRules<'a> {
    pub(crate) jurisdiction: &'a str,
    pub(crate) configured: &'a BTreeMap<String, i32>,
}

/// Checks Art. 8: a grant for a child below the digital age of consent needs a guardian.
fn check_age(
    r: &pb::RecordConsentRequest,
    purpose: &Purpose,
    pid: &str,
    now: DateTime<Utc>,
    rules: &AgeRules<'_>,
) -> Result<(), ApiError> {
    let Some(age) = &r.age else { return Ok(()) };
    // No country given: the institution's jurisdiction (`legal.jurisdiction`).
    let country = match age.country_code.as_str() {
        "" => rules.jurisdiction,
        code => code,
    };
    let threshold = purpose
        .digital_consent_age
        .unwrap_or_else(|| consent_age(country, rules.configured));
    let years = match &age.age {
        Some(Age::BirthDate(text)) => {
            let born = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| ApiError::invalid("age.birth_date", "must be YYYY-MM-DD"))?;
            let today = now.date_naive();
            if born > today {
                return Err(ApiError::invalid("age.birth_date", "is in the future"));
            }
            let mut y = today.year() - born.year();
            if (today.month(), today.day()) < (born.month(), born.day()) {
                y -= 1;
            }
            Some(y)
        }
        Some(Age::AgeYears(y)) if (0..=150).contains(y) => Some(*y),
        Some(Age::AgeYears(_)) => {
            return Err(ApiError::invalid(
                "age.age_years",
                "must be between 0 and 150",
            ));
        }
        Some(Age::AtOrAboveConsentAge(true)) | None => None,
        Some(Age::AtOrAboveConsentAge(false)) => Some(-1),
    };
    if let Some(y) = years
        && y < threshold
        && r.guardian.is_none()
    {
        let age_text = if y < 0 {
            "below the age".to_string()
        } else {
            format!("{y}")
        };
        return Err(ApiError::precondition(
            "GUARDIAN_CONSENT_REQUIRED",
            format!(
                "the subject is {age_text}, under the digital age of consent ({threshold}) for purposes/{pid}: \
                 a parent's or guardian's consent is required (GDPR Art. 8); send it in `guardian`"
            ),
        ));
    }
    Ok(())
}

/// Whether decision `i` (granted or denied, of purpose `pid`) may be recorded:
/// what the register forbids (K-1, retired purposes), C-6 and Art. 8.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decision_allowed(
    i: usize,
    granted: bool,
    pid: &str,
    cached: &CachedPurpose,
    evidence: &Evidence,
    collect_us: i64,
    r: &pb::RecordConsentRequest,
    now: DateTime<Utc>,
    ages: &AgeRules<'_>,
) -> Result<(), ApiError> {
    let purpose = &cached.purpose;
    if !granted && purpose.category == pb::PurposeCategory::StrictlyNecessary as i32 {
        return Err(ApiError::invalid(
            format!("decisions[{i}].decision"),
            format!("purposes/{pid} is strictly necessary (K-1): it cannot be refused"),
        ));
    }
    if !granted {
        return Ok(());
    }
    if purpose.state == pb::PurposeState::Retired as i32 {
        return Err(ApiError::precondition(
            "PURPOSE_RETIRED",
            format!("purposes/{pid} is retired: new grants are refused (its history is kept)"),
        ));
    }
    if purpose.lawful_basis == LawfulBasis::Consent as i32 {
        if evidence.notice.is_empty() {
            return Err(ApiError::invalid(
                "evidence.notice",
                "is required to grant a consent-based purpose (which notice was shown)",
            ));
        }
        superseded_notice(&evidence.notice, cached, collect_us, pid)?;
    }
    check_age(r, purpose, pid, now, ages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_expiry() {
        let none = BTreeMap::new();
        assert_eq!(consent_age("FR", &none), 15);
        assert_eq!(consent_age("fr", &none), 15);
        assert_eq!(consent_age("LU", &none), 16);
        assert_eq!(consent_age("BE", &none), 13);
        let configured = BTreeMap::from([("fr".to_string(), 14), ("DE".to_string(), 13)]);
        assert_eq!(consent_age("FR", &configured), 14);
        assert_eq!(consent_age("de", &configured), 13);
        assert_eq!(consent_age("BE", &configured), 13);
        let p = Purpose {
            reconsent_interval: "P1Y".into(),
            cookie_lifetime: "P6M".into(),
            ..Default::default()
        };
        let t = to_micros("2026-01-31T00:00:00Z".parse().unwrap());
        assert_eq!(
            from_micros(expiry(&p, t).unwrap()).to_rfc3339(),
            "2026-07-31T00:00:00+00:00"
        );
        assert_eq!(expiry(&Purpose::default(), t), None);
    }

    #[test]
    fn a_child_under_the_age_needs_a_guardian() {
        let configured = BTreeMap::new();
        let rules = AgeRules {
            jurisdiction: "FR",
            configured: &configured,
        };
        let now: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
        let request = |age: Age| pb::RecordConsentRequest {
            age: Some(pb::AgeAttestation {
                age: Some(age),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = Purpose::default();
        let check = |r: &pb::RecordConsentRequest| check_age(r, &p, "newsletter", now, &rules);
        assert!(check(&request(Age::AgeYears(15))).is_ok());
        let Err(ApiError::FailedPrecondition { reason, .. }) = check(&request(Age::AgeYears(14)))
        else {
            panic!("a 14-year-old in France granted alone");
        };
        assert_eq!(reason, "GUARDIAN_CONSENT_REQUIRED");
        // Fifteen tomorrow: fourteen today.
        assert!(check(&request(Age::BirthDate("2011-03-02".into()))).is_err());
        assert!(check(&request(Age::BirthDate("2011-03-01".into()))).is_ok());
        assert!(check(&request(Age::AtOrAboveConsentAge(false))).is_err());
        assert!(check(&request(Age::AtOrAboveConsentAge(true))).is_ok());
        assert!(check(&request(Age::AgeYears(151))).is_err());
        let mut guarded = request(Age::AgeYears(10));
        guarded.guardian = Some(pb::GuardianConsent::default());
        assert!(check(&guarded).is_ok());
    }
}
