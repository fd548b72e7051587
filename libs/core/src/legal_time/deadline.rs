//! Deadlines of data-subject requests and the time left before any deadline.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{
    LegalCalendar, LegalTimeError,
    period::{DSAR_EXTENSION_MAX_MONTHS, DSAR_PERIOD_MONTHS, add_months},
};

/// When a period expressed in months ends, per Reg 1182/71 Art 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Deadline {
    /// The last local day of the period, after moving off weekends and holidays.
    pub due_date: NaiveDate,
    /// The last instant of `due_date` in the calendar's timezone; in time iff `at <= due_time`.
    pub due_time: DateTime<Utc>,
    /// The day with the same date `n` months on, before moving off weekends and holidays.
    pub unshifted_date: NaiveDate,
}

impl Deadline {
    /// Whether the last day was moved to a later working day (Art 3(4)).
    pub fn was_shifted(&self) -> bool {
        self.due_date != self.unshifted_date
    }

    /// Time left before `due_time` at `now`, or time overdue.
    pub fn time_left(&self, now: DateTime<Utc>) -> TimeLeft {
        TimeLeft::between(self.due_time, now)
    }

    /// Whether `now` is past `due_time`.
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        is_overdue(self.due_time, now)
    }
}

impl LegalCalendar {
    /// The end of a period of `months` months running from `event` (Reg 1182/71 Art 3):
    /// the event's local day is not counted, the period ends with the last instant of
    /// the same date `months` later (or that month's last day), moved to the next
    /// working day when that day is a Saturday, Sunday or holiday.
    pub fn months_after(&self, event: DateTime<Utc>, months: u32) -> Deadline {
        let unshifted_date = add_months(self.local_date(event), months);
        let due_date = self.next_working_day_on_or_after(unshifted_date);
        Deadline {
            due_date,
            due_time: self.end_of_local_day(due_date),
            unshifted_date,
        }
    }

    /// The answer to a data-subject request received at `received` is due one month
    /// later (GDPR Art 12(3)), moved off weekends and holidays (EDPB Guidelines 01/2022).
    pub fn dsar_deadline(&self, received: DateTime<Utc>) -> Deadline {
        self.months_after(received, DSAR_PERIOD_MONTHS)
    }

    /// The deadline once extended by `extra_months` (1 or 2) further months.
    ///
    /// Reading of Art 12(3) implemented: the extension prolongs the one-month period,
    /// so the whole period of 1 + `extra_months` months runs from receipt and is
    /// computed once (31 Jan + 3 months = 30 Apr, not 28 Feb + 2 = 28 Apr); the move
    /// off a weekend or holiday applies only to the end of the extended period, never
    /// to the original deadline first. Whether an extension is still allowed (before
    /// the original deadline, once, with the subject told) is the caller's decision.
    pub fn dsar_extended_deadline(
        &self,
        received: DateTime<Utc>,
        extra_months: u32,
    ) -> Result<Deadline, LegalTimeError> {
        if !(1..=DSAR_EXTENSION_MAX_MONTHS).contains(&extra_months) {
            return Err(LegalTimeError::InvalidExtension(extra_months));
        }
        Ok(self.months_after(received, DSAR_PERIOD_MONTHS + extra_months))
    }
}

/// Time remaining before a deadline, or elapsed past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeLeft {
    /// The deadline has not passed; this much is left (zero at the deadline itself).
    Remaining(Duration),
    /// The deadline passed this long ago (always positive).
    Overdue(Duration),
}

impl TimeLeft {
    /// The time left before `deadline` at `now`.
    pub fn between(deadline: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        let left = time_left(deadline, now);
        if left < Duration::zero() {
            TimeLeft::Overdue(-left)
        } else {
            TimeLeft::Remaining(left)
        }
    }

    /// Whether the deadline has passed.
    pub fn is_overdue(&self) -> bool {
        matches!(self, TimeLeft::Overdue(_))
    }

    /// Time left as one signed duration: negative when overdue.
    pub fn signed(&self) -> Duration {
        match *self {
            TimeLeft::Remaining(d) => d,
            TimeLeft::Overdue(d) => -d,
        }
    }
}

/// `deadline - now`: negative when overdue.
pub fn time_left(deadline: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    deadline.signed_duration_since(now)
}

/// Whether `now` is past `deadline`; the deadline instant itself is still in time.
pub fn is_overdue(deadline: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now > deadline
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legal_time::{LegalTimeConfig, breach_authority_deadline};

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("valid date")
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    fn fr() -> LegalCalendar {
        LegalCalendar::from_config(&LegalTimeConfig::default()).expect("valid")
    }

    fn lu() -> LegalCalendar {
        LegalCalendar::from_config(&LegalTimeConfig {
            jurisdiction: "LU".into(),
            ..LegalTimeConfig::default()
        })
        .expect("valid")
    }

    /// (unshifted, due) of a request received at 10:00 UTC on `received`.
    fn due(cal: &LegalCalendar, received: NaiveDate) -> (NaiveDate, NaiveDate) {
        let dl = cal.dsar_deadline(received.and_hms_opt(10, 0, 0).expect("time").and_utc());
        (dl.unshifted_date, dl.due_date)
    }

    #[test]
    fn plain_month_ends_at_end_of_local_day() {
        // Received Tue 10 Feb 2026 -> Tue 10 Mar 2026, 23:59:59.999999 CET.
        let dl = fr().dsar_deadline(at("2026-02-10T14:00:00Z"));
        assert_eq!(
            dl,
            Deadline {
                due_date: d(2026, 3, 10),
                due_time: at("2026-03-10T22:59:59.999999Z"),
                unshifted_date: d(2026, 3, 10),
            }
        );
        assert!(!dl.was_shifted());
    }

    #[test]
    fn due_time_in_summer_is_end_of_cest_day() {
        // Received Fri 10 Jul 2026 -> Mon 10 Aug 2026, 23:59:59.999999 CEST.
        let dl = fr().dsar_deadline(at("2026-07-10T08:00:00Z"));
        assert_eq!(dl.due_date, d(2026, 8, 10));
        assert_eq!(dl.due_time, at("2026-08-10T21:59:59.999999Z"));
    }

    #[test]
    fn end_of_january_to_end_of_february() {
        // 31 Jan 2026 -> 28 Feb 2026 (Saturday) -> Mon 2 Mar 2026.
        assert_eq!(due(&fr(), d(2026, 1, 31)), (d(2026, 2, 28), d(2026, 3, 2)));
        // 31 Jan 2024 -> Thu 29 Feb 2024 (leap year), a working day.
        assert_eq!(due(&fr(), d(2024, 1, 31)), (d(2024, 2, 29), d(2024, 2, 29)));
    }

    #[test]
    fn shorter_months_and_year_rollover() {
        // 30 Apr 2026 -> Sat 30 May -> Mon 1 Jun; 31 Mar 2026 -> Thu 30 Apr.
        assert_eq!(due(&fr(), d(2026, 4, 30)), (d(2026, 5, 30), d(2026, 6, 1)));
        assert_eq!(due(&fr(), d(2026, 3, 31)), (d(2026, 4, 30), d(2026, 4, 30)));
        // 15 Dec 2025 -> Thu 15 Jan 2026.
        assert_eq!(
            due(&fr(), d(2025, 12, 15)),
            (d(2026, 1, 15), d(2026, 1, 15))
        );
    }

    #[test]
    fn received_late_evening_utc_counts_from_next_paris_day() {
        // 23:30 UTC on Mon 9 Mar 2026 is 00:30 CET on Tue 10 Mar: due Fri 10 Apr.
        let dl = fr().dsar_deadline(at("2026-03-09T23:30:00Z"));
        assert_eq!(dl.unshifted_date, d(2026, 4, 10));
        assert_eq!(dl.due_date, d(2026, 4, 10));
        assert_eq!(dl.due_time, at("2026-04-10T21:59:59.999999Z"));
        // An hour earlier it is still 9 Mar in Paris: due Thu 9 Apr.
        assert_eq!(
            fr().dsar_deadline(at("2026-03-09T22:30:00Z")).due_date,
            d(2026, 4, 9)
        );
    }

    #[test]
    fn saturday_and_sunday_move_to_monday() {
        // Sat 14 Mar 2026 and Sun 15 Mar 2026 -> Mon 16 Mar.
        assert_eq!(due(&fr(), d(2026, 2, 14)), (d(2026, 3, 14), d(2026, 3, 16)));
        assert_eq!(due(&fr(), d(2026, 2, 15)), (d(2026, 3, 15), d(2026, 3, 16)));
    }

    #[test]
    fn french_holidays_move_the_deadline() {
        // Tue 14 Jul 2026 -> Wed 15 Jul.
        assert_eq!(due(&fr(), d(2026, 6, 14)), (d(2026, 7, 14), d(2026, 7, 15)));
        // Easter Monday 6 Apr 2026 -> Tue 7 Apr.
        assert_eq!(due(&fr(), d(2026, 3, 6)), (d(2026, 4, 6), d(2026, 4, 7)));
        // Thu 1 May 2025 -> Fri 2 May.
        assert_eq!(due(&fr(), d(2025, 4, 1)), (d(2025, 5, 1), d(2025, 5, 2)));
        // Ascension Thu 14 May 2026 -> Fri 15 May (a "pont" is still a working day).
        assert_eq!(due(&fr(), d(2026, 4, 14)), (d(2026, 5, 14), d(2026, 5, 15)));
    }

    #[test]
    fn holiday_followed_by_weekend_is_one_chain() {
        // Fri 1 May 2026, Sat 2, Sun 3 -> Mon 4 May.
        assert_eq!(due(&fr(), d(2026, 4, 1)), (d(2026, 5, 1), d(2026, 5, 4)));
        // Fri 8 May 2026, Sat 9, Sun 10 -> Mon 11 May.
        assert_eq!(due(&fr(), d(2026, 4, 8)), (d(2026, 5, 8), d(2026, 5, 11)));
    }

    #[test]
    fn luxembourg_holidays_move_the_deadline() {
        // National Day Tue 23 Jun 2026 -> Wed 24 Jun; a working day in France.
        assert_eq!(due(&lu(), d(2026, 5, 23)), (d(2026, 6, 23), d(2026, 6, 24)));
        assert_eq!(due(&fr(), d(2026, 5, 23)), (d(2026, 6, 23), d(2026, 6, 23)));
        // Europe Day Fri 9 May 2025, then the weekend -> Mon 12 May; France works that Friday.
        assert_eq!(due(&lu(), d(2025, 4, 9)), (d(2025, 5, 9), d(2025, 5, 12)));
        assert_eq!(due(&fr(), d(2025, 4, 9)), (d(2025, 5, 9), d(2025, 5, 9)));
        // Victory Day Thu 8 May 2025 is a holiday in France only.
        assert_eq!(due(&lu(), d(2025, 4, 8)), (d(2025, 5, 8), d(2025, 5, 8)));
        assert_eq!(due(&fr(), d(2025, 4, 8)), (d(2025, 5, 8), d(2025, 5, 9)));
        // St Stephen's Day Fri 26 Dec 2025, then the weekend -> Mon 29 Dec.
        assert_eq!(
            due(&lu(), d(2025, 11, 26)),
            (d(2025, 12, 26), d(2025, 12, 29))
        );
        assert_eq!(
            due(&fr(), d(2025, 11, 26)),
            (d(2025, 12, 26), d(2025, 12, 26))
        );
    }

    #[test]
    fn luxembourg_deadline_ends_in_luxembourg_time() {
        let dl = lu().dsar_deadline(at("2026-05-23T21:30:00Z")); // 23:30 CEST
        assert_eq!(dl.due_date, d(2026, 6, 24));
        assert_eq!(dl.due_time, at("2026-06-24T21:59:59.999999Z"));
    }

    #[test]
    fn institution_closures_extend_the_chain() {
        let cal = LegalCalendar::from_config(&LegalTimeConfig {
            extra_holidays: (28..=31)
                .map(|day| d(2026, 12, day))
                .chain([d(2026, 12, 24)])
                .collect(),
            ..LegalTimeConfig::default()
        })
        .expect("valid");
        // Thu 24 Dec (closed), 25 (Christmas), 26-27 (weekend), 28-31 (closed),
        // 1 Jan (New Year), 2-3 Jan (weekend) -> Mon 4 Jan 2027.
        assert_eq!(due(&cal, d(2026, 11, 24)), (d(2026, 12, 24), d(2027, 1, 4)));
        assert_eq!(
            due(&fr(), d(2026, 11, 24)),
            (d(2026, 12, 24), d(2026, 12, 24))
        );
    }

    #[test]
    fn removed_holiday_is_a_working_day() {
        // Whit Monday 25 May 2026 worked as the "journée de solidarité".
        let cal = LegalCalendar::from_config(&LegalTimeConfig {
            removed_holidays: vec![d(2026, 5, 25)],
            ..LegalTimeConfig::default()
        })
        .expect("valid");
        assert_eq!(due(&fr(), d(2026, 4, 25)), (d(2026, 5, 25), d(2026, 5, 26)));
        assert_eq!(due(&cal, d(2026, 4, 25)), (d(2026, 5, 25), d(2026, 5, 25)));
    }

    #[test]
    fn extension_by_two_months_runs_from_receipt() {
        let received = at("2026-01-31T09:00:00Z");
        let plus_two = fr().dsar_extended_deadline(received, 2).expect("allowed");
        // 31 Jan + 3 months = Thu 30 Apr 2026 (not 28 Feb + 2 months = 28 Apr).
        assert_eq!(plus_two.unshifted_date, d(2026, 4, 30));
        assert_eq!(plus_two.due_date, d(2026, 4, 30));
        assert_eq!(plus_two.due_time, at("2026-04-30T21:59:59.999999Z"));
        let plus_one = fr().dsar_extended_deadline(received, 1).expect("allowed");
        assert_eq!(plus_one.due_date, d(2026, 3, 31));
    }

    #[test]
    fn extended_deadline_is_shifted_at_its_end() {
        // 14 Mar 2026 + 3 months = Sun 14 Jun -> Mon 15 Jun.
        let dl = fr()
            .dsar_extended_deadline(at("2026-03-14T09:00:00Z"), 2)
            .expect("allowed");
        assert_eq!(
            (dl.unshifted_date, dl.due_date),
            (d(2026, 6, 14), d(2026, 6, 15))
        );
        assert!(dl.was_shifted());
    }

    #[test]
    fn extension_of_zero_or_three_months_is_refused() {
        let received = at("2026-01-31T09:00:00Z");
        assert_eq!(
            fr().dsar_extended_deadline(received, 3),
            Err(LegalTimeError::InvalidExtension(3))
        );
        assert_eq!(
            fr().dsar_extended_deadline(received, 0),
            Err(LegalTimeError::InvalidExtension(0))
        );
        assert_eq!(
            LegalTimeError::InvalidExtension(3).to_string(),
            "a deadline extension is 1 or 2 further months, got 3"
        );
    }

    #[test]
    fn time_left_and_overdue() {
        let deadline = at("2026-03-31T22:30:00Z");
        assert_eq!(
            time_left(deadline, at("2026-03-31T22:29:00Z")),
            Duration::minutes(1)
        );
        assert_eq!(
            time_left(deadline, at("2026-03-31T22:31:00Z")),
            Duration::minutes(-1)
        );
        assert_eq!(
            TimeLeft::between(deadline, at("2026-03-31T22:30:00Z")),
            TimeLeft::Remaining(Duration::zero())
        );
        assert!(!is_overdue(deadline, deadline));
        let late = TimeLeft::between(deadline, at("2026-04-01T00:00:00Z"));
        assert_eq!(late, TimeLeft::Overdue(Duration::minutes(90)));
        assert!(late.is_overdue());
        assert_eq!(late.signed(), Duration::minutes(-90));
    }

    #[test]
    fn breach_notification_at_71_59_and_72_01() {
        // Aware 23:30 CET on Sat 28 Mar 2026, the night before clocks spring forward.
        let aware = at("2026-03-28T22:30:00Z");
        let due = breach_authority_deadline(aware);
        let sent_early = aware + Duration::hours(71) + Duration::minutes(59);
        let sent_late = aware + Duration::hours(72) + Duration::minutes(1);
        assert_eq!(
            TimeLeft::between(due, sent_early),
            TimeLeft::Remaining(Duration::minutes(1))
        );
        assert!(!is_overdue(due, sent_early));
        assert_eq!(
            TimeLeft::between(due, sent_late),
            TimeLeft::Overdue(Duration::minutes(1))
        );
        assert!(is_overdue(due, sent_late));
    }

    #[test]
    fn deadline_helpers_use_due_time() {
        let dl = fr().dsar_deadline(at("2026-02-10T14:00:00Z"));
        assert!(!dl.is_overdue(at("2026-03-10T22:59:59.999999Z")));
        assert!(dl.is_overdue(at("2026-03-10T23:00:00Z")));
        assert_eq!(
            dl.time_left(at("2026-03-10T21:59:59.999999Z")),
            TimeLeft::Remaining(Duration::hours(1))
        );
    }
}
