//! Periods without a calendar: months per Reg 1182/71, hours, retention years.
//!
//! Results saturate at chrono's limits (year ±262,143) instead of panicking; callers
//! validating client input should reject such instants long before.

use chrono::{DateTime, Duration, Months, NaiveDate, Utc};

/// A data-subject request is answered within one month of receipt (GDPR Art 12(3)).
pub const DSAR_PERIOD_MONTHS: u32 = 1;

/// The DSAR period may be extended by at most two further months (GDPR Art 12(3)).
pub const DSAR_EXTENSION_MAX_MONTHS: u32 = 2;

/// The authority is notified within 72 hours of awareness (GDPR Art 33(1)).
pub const BREACH_NOTIFICATION_HOURS: i64 = 72;

/// The date `n` months after `date`: same day of the month, or that month's last
/// day when the day does not exist (Reg 1182/71 Art 3(2)(c)).
///
/// 31 Jan + 1 = 28 Feb (29 Feb in a leap year); 29 Feb 2024 + 12 = 28 Feb 2025.
pub fn add_months(date: NaiveDate, n: u32) -> NaiveDate {
    // chrono clamps to the month's last day, which is exactly 1182/71's rule.
    date.checked_add_months(Months::new(n))
        .unwrap_or(NaiveDate::MAX)
}

/// When the supervisory authority must have been notified: `aware` + 72 elapsed
/// hours (GDPR Art 33(1)); a period in hours is never moved off weekends, holidays
/// or DST changes.
pub fn breach_authority_deadline(aware: DateTime<Utc>) -> DateTime<Utc> {
    aware
        .checked_add_signed(Duration::hours(BREACH_NOTIFICATION_HOURS))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The earliest instant a record closed at `closed` may be deleted when it must be
/// kept `years` years: the same UTC time on the same date `years` later (28 Feb
/// for 29 Feb), per [`add_months`].
pub fn retention_until(closed: DateTime<Utc>, years: u32) -> DateTime<Utc> {
    let date = add_months(closed.date_naive(), years.saturating_mul(12));
    date.and_time(closed.time()).and_utc()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use chrono_tz::Europe::Paris;

    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("valid date")
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    #[test]
    fn month_end_31_january_to_february() {
        assert_eq!(add_months(d(2026, 1, 31), 1), d(2026, 2, 28));
        assert_eq!(add_months(d(2024, 1, 31), 1), d(2024, 2, 29));
        assert_eq!(add_months(d(2100, 1, 31), 1), d(2100, 2, 28)); // not a leap year
    }

    #[test]
    fn month_end_shorter_and_longer_months() {
        assert_eq!(add_months(d(2026, 4, 30), 1), d(2026, 5, 30));
        assert_eq!(add_months(d(2026, 3, 31), 1), d(2026, 4, 30));
        assert_eq!(add_months(d(2026, 2, 28), 1), d(2026, 3, 28));
    }

    #[test]
    fn leap_day_plus_twelve_months() {
        assert_eq!(add_months(d(2024, 2, 29), 12), d(2025, 2, 28));
        assert_eq!(add_months(d(2024, 2, 29), 48), d(2028, 2, 29));
    }

    #[test]
    fn year_rollover() {
        assert_eq!(add_months(d(2025, 12, 15), 1), d(2026, 1, 15));
        assert_eq!(add_months(d(2025, 12, 31), 2), d(2026, 2, 28));
    }

    #[test]
    fn zero_months_is_the_same_date() {
        assert_eq!(add_months(d(2026, 1, 31), 0), d(2026, 1, 31));
    }

    #[test]
    fn add_months_saturates_instead_of_panicking() {
        assert_eq!(add_months(NaiveDate::MAX, 1), NaiveDate::MAX);
    }

    #[test]
    fn breach_72_hours_across_spring_forward() {
        // 23:30 CET on Sat 28 Mar 2026; clocks go 02:00 -> 03:00 on Sun 29 Mar.
        let aware = Paris
            .with_ymd_and_hms(2026, 3, 28, 23, 30, 0)
            .single()
            .expect("unambiguous")
            .to_utc();
        assert_eq!(aware, at("2026-03-28T22:30:00Z"));
        let due = breach_authority_deadline(aware);
        assert_eq!(due, at("2026-03-31T22:30:00Z"));
        assert_eq!(due - aware, Duration::hours(72));
        // The lost hour shows on the wall clock: 00:30 CEST on Wed 1 Apr.
        assert_eq!(
            due.with_timezone(&Paris).naive_local(),
            d(2026, 4, 1).and_hms_opt(0, 30, 0).expect("time")
        );
    }

    #[test]
    fn breach_72_hours_across_fall_back() {
        // 23:30 CEST on Sat 24 Oct 2026; clocks go 03:00 -> 02:00 on Sun 25 Oct.
        let aware = Paris
            .with_ymd_and_hms(2026, 10, 24, 23, 30, 0)
            .single()
            .expect("unambiguous")
            .to_utc();
        assert_eq!(aware, at("2026-10-24T21:30:00Z"));
        let due = breach_authority_deadline(aware);
        assert_eq!(due, at("2026-10-27T21:30:00Z"));
        assert_eq!(due - aware, Duration::hours(72));
        // The repeated hour shows on the wall clock: 22:30 CET on Tue 27 Oct.
        assert_eq!(
            due.with_timezone(&Paris).naive_local(),
            d(2026, 10, 27).and_hms_opt(22, 30, 0).expect("time")
        );
    }

    #[test]
    fn breach_deadline_is_not_moved_off_a_weekend() {
        // Aware Wed 15:00 UTC -> due Sat 15:00 UTC, not Monday.
        assert_eq!(
            breach_authority_deadline(at("2026-07-08T15:00:00Z")),
            at("2026-07-11T15:00:00Z")
        );
    }

    #[test]
    fn breach_deadline_saturates() {
        assert_eq!(
            breach_authority_deadline(DateTime::<Utc>::MAX_UTC),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn retention_five_years() {
        assert_eq!(
            retention_until(at("2026-03-31T10:15:00Z"), 5),
            at("2031-03-31T10:15:00Z")
        );
        assert_eq!(
            retention_until(at("2024-02-29T08:00:00Z"), 5),
            at("2029-02-28T08:00:00Z")
        );
        assert_eq!(
            retention_until(at("2024-02-29T08:00:00Z"), 0),
            at("2024-02-29T08:00:00Z")
        );
    }
}
