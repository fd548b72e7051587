//! "May we, for this subject and this purpose, now?" — the rule, in one pure
//! function so every check (single, batch, any replica) answers alike.

use custodia_proto::consent::v1::{CheckReason, ConsentState, LawfulBasis, Purpose, PurposeState};

/// The stored state of one subject for one purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    /// Granted, denied, withdrawn or objected.
    pub state: ConsentState,
    /// When the subject decided (µs).
    pub decision_us: i64,
    /// When a grant lapses (µs), if it does.
    pub expire_us: Option<i64>,
}

/// The answer and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether processing is allowed now.
    pub allowed: bool,
    /// Why.
    pub reason: CheckReason,
}

fn verdict(allowed: bool, reason: CheckReason) -> Verdict {
    Verdict { allowed, reason }
}

/// Decides a check.
///
/// - `row`: the subject's state for this purpose; `objected_direct_marketing`:
///   the subject objected to all direct marketing (Art. 21(2), absolute);
/// - `material_notice_us`: effective time of the latest material notice change
///   covering the purpose, if any (C-6).
pub fn decide(
    purpose: &Purpose,
    row: Option<&StateRow>,
    objected_direct_marketing: bool,
    material_notice_us: Option<i64>,
    now_us: i64,
) -> Verdict {
    if purpose.state == PurposeState::Retired as i32 {
        return verdict(false, CheckReason::PurposeRetired);
    }
    let objected = row.is_some_and(|r| r.state == ConsentState::Objected)
        || (purpose.direct_marketing && objected_direct_marketing);
    if objected {
        return verdict(false, CheckReason::Objected);
    }
    if purpose.lawful_basis != LawfulBasis::Consent as i32 {
        return verdict(true, CheckReason::NotConsentBased);
    }
    let Some(row) = row else {
        return verdict(false, CheckReason::NoRecord);
    };
    match row.state {
        ConsentState::Denied => verdict(false, CheckReason::Denied),
        ConsentState::Withdrawn => verdict(false, CheckReason::Withdrawn),
        ConsentState::Granted => {
            if row.expire_us.is_some_and(|e| e <= now_us) {
                verdict(false, CheckReason::Expired)
            } else if material_notice_us.is_some_and(|m| m > row.decision_us) {
                verdict(false, CheckReason::NoticeChanged)
            } else {
                verdict(true, CheckReason::Granted)
            }
        }
        ConsentState::Objected | ConsentState::Unspecified => verdict(false, CheckReason::NoRecord),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purpose(basis: LawfulBasis, dm: bool) -> Purpose {
        Purpose {
            lawful_basis: basis as i32,
            direct_marketing: dm,
            state: PurposeState::Active as i32,
            ..Default::default()
        }
    }

    fn row(state: ConsentState, decision_us: i64, expire_us: Option<i64>) -> StateRow {
        StateRow {
            state,
            decision_us,
            expire_us,
        }
    }

    #[test]
    fn every_reason() {
        let consent = purpose(LawfulBasis::Consent, false);
        let granted = row(ConsentState::Granted, 100, Some(1_000));
        assert_eq!(
            decide(&consent, Some(&granted), false, None, 500),
            verdict(true, CheckReason::Granted)
        );
        assert_eq!(
            decide(&consent, Some(&granted), false, None, 1_000).reason,
            CheckReason::Expired
        );
        assert_eq!(
            decide(&consent, Some(&granted), false, Some(200), 500).reason,
            CheckReason::NoticeChanged
        );
        assert_eq!(
            decide(&consent, Some(&granted), false, Some(50), 500).reason,
            CheckReason::Granted
        );
        assert_eq!(
            decide(&consent, None, false, None, 500).reason,
            CheckReason::NoRecord
        );
        let withdrawn = row(ConsentState::Withdrawn, 100, None);
        assert_eq!(
            decide(&consent, Some(&withdrawn), false, None, 500).reason,
            CheckReason::Withdrawn
        );
        let denied = row(ConsentState::Denied, 100, None);
        assert_eq!(
            decide(&consent, Some(&denied), false, None, 500).reason,
            CheckReason::Denied
        );
        let objected = row(ConsentState::Objected, 100, None);
        let contract = purpose(LawfulBasis::Contract, false);
        assert_eq!(
            decide(&contract, None, false, None, 500),
            verdict(true, CheckReason::NotConsentBased)
        );
        assert_eq!(
            decide(&contract, Some(&objected), false, None, 500).reason,
            CheckReason::Objected
        );
        // Objection to direct marketing is absolute, whatever the basis or the grant.
        let marketing = purpose(LawfulBasis::LegitimateInterests, true);
        assert_eq!(
            decide(&marketing, None, true, None, 500).reason,
            CheckReason::Objected
        );
        let dm_consent = purpose(LawfulBasis::Consent, true);
        assert_eq!(
            decide(&dm_consent, Some(&granted), true, None, 500).reason,
            CheckReason::Objected
        );
        let mut retired = consent.clone();
        retired.state = PurposeState::Retired as i32;
        assert_eq!(
            decide(&retired, Some(&granted), false, None, 500).reason,
            CheckReason::PurposeRetired
        );
    }
}
