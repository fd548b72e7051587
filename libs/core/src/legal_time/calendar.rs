//! The configured legal calendar: jurisdiction, timezone, working days.

use std::collections::BTreeSet;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{Jurisdiction, LegalTimeError};

/// Legal-time settings (`[legal]` in config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegalTimeConfig {
    /// Jurisdiction whose public holidays apply: "FR" (default), "FR-57"
    /// (Alsace-Moselle: also Good Friday and 26 December) or "LU".
    pub jurisdiction: String,
    /// IANA timezone of the institution; defaults to the jurisdiction's capital.
    pub timezone: Option<String>,
    /// Further non-working days (institution closures), as YYYY-MM-DD.
    pub extra_holidays: Vec<NaiveDate>,
    /// Built-in public holidays the institution works on, as YYYY-MM-DD.
    pub removed_holidays: Vec<NaiveDate>,
}

impl Default for LegalTimeConfig {
    fn default() -> Self {
        Self {
            jurisdiction: Jurisdiction::Fr.code().to_owned(),
            timezone: None,
            extra_holidays: Vec::new(),
            removed_holidays: Vec::new(),
        }
    }
}

/// A validated calendar: which days are working days, and where local days begin and end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalCalendar {
    jurisdiction: Jurisdiction,
    timezone: Tz,
    extra: BTreeSet<NaiveDate>,
    removed: BTreeSet<NaiveDate>,
}

impl LegalCalendar {
    /// Validates `cfg`: the jurisdiction and timezone must be known, and every removed
    /// holiday must be a built-in one not also listed as extra.
    pub fn from_config(cfg: &LegalTimeConfig) -> Result<Self, LegalTimeError> {
        let jurisdiction: Jurisdiction = cfg.jurisdiction.parse()?;
        let timezone = match &cfg.timezone {
            None => jurisdiction.default_timezone(),
            Some(name) => name
                .parse()
                .map_err(|_| LegalTimeError::UnknownTimezone(name.clone()))?,
        };
        let extra: BTreeSet<_> = cfg.extra_holidays.iter().copied().collect();
        let removed: BTreeSet<_> = cfg.removed_holidays.iter().copied().collect();
        if let Some(&date) = extra.intersection(&removed).next() {
            return Err(LegalTimeError::ConflictingHoliday(date));
        }
        if let Some(&date) = removed
            .iter()
            .find(|&&d| !jurisdiction.is_public_holiday(d))
        {
            return Err(LegalTimeError::NotAHoliday {
                date,
                jurisdiction: jurisdiction.code().to_owned(),
            });
        }
        Ok(Self {
            jurisdiction,
            timezone,
            extra,
            removed,
        })
    }

    /// The built-in calendar of `jurisdiction` in its default timezone.
    pub fn for_jurisdiction(jurisdiction: Jurisdiction) -> Self {
        Self {
            jurisdiction,
            timezone: jurisdiction.default_timezone(),
            extra: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }

    /// The jurisdiction whose public holidays apply.
    pub fn jurisdiction(&self) -> Jurisdiction {
        self.jurisdiction
    }

    /// The timezone in which days begin and end.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// Whether `date` is a public holiday or closure, after config changes (weekends aside).
    pub fn is_holiday(&self, date: NaiveDate) -> bool {
        self.extra.contains(&date)
            || (self.jurisdiction.is_public_holiday(date) && !self.removed.contains(&date))
    }

    /// Whether `date` is neither a Saturday, a Sunday nor a holiday.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        !matches!(date.weekday(), Weekday::Sat | Weekday::Sun) && !self.is_holiday(date)
    }

    /// `date` if it is a working day, else the first working day after it (Reg 1182/71 Art 3(4)).
    pub fn next_working_day_on_or_after(&self, date: NaiveDate) -> NaiveDate {
        // Terminates: closures are finite and every week has working days.
        let mut day = date;
        while !self.is_working_day(day) {
            match day.succ_opt() {
                Some(next) => day = next,
                None => break,
            }
        }
        day
    }

    /// The holidays and closures of `year` after config changes, in date order.
    pub fn holidays(&self, year: i32) -> Vec<NaiveDate> {
        let mut days: BTreeSet<_> = self
            .jurisdiction
            .public_holidays(year)
            .into_iter()
            .filter(|d| !self.removed.contains(d))
            .collect();
        days.extend(self.extra.iter().filter(|d| d.year() == year));
        days.into_iter().collect()
    }

    /// The local date of `instant` in the calendar's timezone.
    pub fn local_date(&self, instant: DateTime<Utc>) -> NaiveDate {
        instant.with_timezone(&self.timezone).date_naive()
    }

    /// The last instant of local day `date`: one microsecond before the next local
    /// day starts (microseconds, so the value survives Postgres and protobuf unchanged).
    pub fn end_of_local_day(&self, date: NaiveDate) -> DateTime<Utc> {
        match date.succ_opt() {
            Some(next) => {
                let start = self.start_of_local_day(next);
                start
                    .checked_sub_signed(Duration::microseconds(1))
                    .unwrap_or(start)
            }
            None => DateTime::<Utc>::MAX_UTC,
        }
    }

    /// The first instant of local day `date`, even when local midnight is skipped or repeated.
    pub fn start_of_local_day(&self, date: NaiveDate) -> DateTime<Utc> {
        let midnight = date.and_time(chrono::NaiveTime::MIN);
        match self.timezone.from_local_datetime(&midnight) {
            LocalResult::Single(t) => t.to_utc(),
            // Clocks went back over midnight: the day starts at its first midnight.
            LocalResult::Ambiguous(first, _) => first.to_utc(),
            // Clocks jumped over midnight: the day starts when the gap ends.
            LocalResult::None => self.end_of_gap(midnight),
        }
    }

    /// The UTC instant at which the first valid local time after `invalid` occurs.
    fn end_of_gap(&self, invalid: NaiveDateTime) -> DateTime<Utc> {
        let valid = |secs: i64| {
            let t = invalid.checked_add_signed(Duration::seconds(secs))?;
            self.timezone.from_local_datetime(&t).earliest()
        };
        // Gaps last at most a day (Pacific/Apia skipped 30 Dec 2011) and end on a
        // whole second: find a valid hour, then the first valid second by bisection.
        let Some(mut hi) = (1..=48).map(|h| h * 3600).find(|&s| valid(s).is_some()) else {
            return DateTime::<Utc>::MAX_UTC;
        };
        let mut lo = 0;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if valid(mid).is_some() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        valid(hi).map_or(DateTime::<Utc>::MAX_UTC, |t| t.to_utc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("valid date")
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    fn calendar(jurisdiction: &str, timezone: Option<&str>) -> LegalCalendar {
        LegalCalendar::from_config(&LegalTimeConfig {
            jurisdiction: jurisdiction.into(),
            timezone: timezone.map(Into::into),
            ..LegalTimeConfig::default()
        })
        .expect("valid config")
    }

    #[test]
    fn default_config_is_france_in_paris() {
        let cal = LegalCalendar::from_config(&LegalTimeConfig::default()).expect("valid");
        assert_eq!(cal.jurisdiction(), Jurisdiction::Fr);
        assert_eq!(cal.timezone(), chrono_tz::Europe::Paris);
        assert_eq!(cal, LegalCalendar::for_jurisdiction(Jurisdiction::Fr));
    }

    #[test]
    fn luxembourg_defaults_to_luxembourg_time() {
        assert_eq!(
            calendar("LU", None).timezone(),
            chrono_tz::Europe::Luxembourg
        );
        assert_eq!(
            calendar("LU", Some("Europe/Paris")).timezone(),
            chrono_tz::Europe::Paris
        );
    }

    #[test]
    fn unknown_jurisdiction_is_named() {
        let cfg = LegalTimeConfig {
            jurisdiction: "DE".into(),
            ..LegalTimeConfig::default()
        };
        let err = LegalCalendar::from_config(&cfg).expect_err("DE is not built in");
        assert_eq!(err, LegalTimeError::UnknownJurisdiction("DE".into()));
        assert_eq!(
            err.to_string(),
            r#"jurisdiction "DE" is not supported (supported: FR, FR-57 for Alsace-Moselle, LU)"#
        );
    }

    #[test]
    fn unknown_timezone_is_named() {
        let cfg = LegalTimeConfig {
            timezone: Some("Europe/Pariss".into()),
            ..LegalTimeConfig::default()
        };
        let err = LegalCalendar::from_config(&cfg).expect_err("typo");
        assert_eq!(err, LegalTimeError::UnknownTimezone("Europe/Pariss".into()));
        assert_eq!(
            err.to_string(),
            r#"timezone "Europe/Pariss" is not an IANA timezone name (e.g. Europe/Paris)"#
        );
    }

    #[test]
    fn removed_holiday_must_be_a_holiday() {
        let cfg = LegalTimeConfig {
            removed_holidays: vec![d(2026, 5, 9)], // Europe Day is LU only
            ..LegalTimeConfig::default()
        };
        assert_eq!(
            LegalCalendar::from_config(&cfg),
            Err(LegalTimeError::NotAHoliday {
                date: d(2026, 5, 9),
                jurisdiction: "FR".into()
            })
        );
    }

    #[test]
    fn holiday_both_added_and_removed_is_refused() {
        let cfg = LegalTimeConfig {
            extra_holidays: vec![d(2026, 5, 25)],
            removed_holidays: vec![d(2026, 5, 25)],
            ..LegalTimeConfig::default()
        };
        assert_eq!(
            LegalCalendar::from_config(&cfg),
            Err(LegalTimeError::ConflictingHoliday(d(2026, 5, 25)))
        );
    }

    #[test]
    fn weekends_and_holidays_are_not_working_days() {
        let fr = calendar("FR", None);
        assert!(fr.is_working_day(d(2026, 7, 13))); // Monday
        assert!(!fr.is_working_day(d(2026, 7, 14))); // Tuesday, Fête nationale
        assert!(!fr.is_working_day(d(2026, 7, 11))); // Saturday
        assert!(!fr.is_working_day(d(2026, 7, 12))); // Sunday
        let lu = calendar("LU", None);
        assert!(lu.is_working_day(d(2026, 7, 14)));
        assert!(!lu.is_working_day(d(2026, 6, 23)));
    }

    #[test]
    fn next_working_day_skips_a_chain() {
        let fr = calendar("FR", None);
        // Fri 1 May 2026 (holiday), Sat 2, Sun 3 -> Mon 4 May.
        assert_eq!(
            fr.next_working_day_on_or_after(d(2026, 5, 1)),
            d(2026, 5, 4)
        );
        assert_eq!(
            fr.next_working_day_on_or_after(d(2026, 5, 4)),
            d(2026, 5, 4)
        );
    }

    #[test]
    fn extra_and_removed_holidays_apply() {
        let cfg = LegalTimeConfig {
            extra_holidays: vec![d(2026, 12, 24), d(2026, 12, 31)],
            removed_holidays: vec![d(2026, 5, 25)], // Whit Monday worked
            ..LegalTimeConfig::default()
        };
        let cal = LegalCalendar::from_config(&cfg).expect("valid");
        assert!(!cal.is_working_day(d(2026, 12, 24)));
        assert!(cal.is_working_day(d(2026, 5, 25)));
        let holidays = cal.holidays(2026);
        assert!(holidays.contains(&d(2026, 12, 24)) && holidays.contains(&d(2026, 12, 31)));
        assert!(!holidays.contains(&d(2026, 5, 25)));
        assert_eq!(holidays.len(), 12);
    }

    #[test]
    fn config_deserialises_with_defaults_and_rejects_unknown_keys() {
        use serde::de::value::{Error, MapDeserializer, StrDeserializer};
        let lu: LegalTimeConfig = LegalTimeConfig::deserialize(MapDeserializer::<_, Error>::new(
            [("jurisdiction", "LU")].into_iter(),
        ))
        .expect("deserialises");
        assert_eq!(lu.jurisdiction, "LU");
        assert_eq!(lu.timezone, None);
        assert!(lu.extra_holidays.is_empty() && lu.removed_holidays.is_empty());
        let unknown = LegalTimeConfig::deserialize(MapDeserializer::<_, Error>::new(
            [("jurisdicton", "LU")].into_iter(),
        ));
        assert!(unknown.is_err());
        let date =
            NaiveDate::deserialize(StrDeserializer::<Error>::new("2026-12-24")).expect("date");
        assert_eq!(date, d(2026, 12, 24));
    }

    #[test]
    fn local_date_of_late_evening_utc_is_next_day_in_paris() {
        let fr = calendar("FR", None);
        assert_eq!(fr.local_date(at("2026-03-09T23:30:00Z")), d(2026, 3, 10));
        assert_eq!(fr.local_date(at("2026-03-09T22:59:59Z")), d(2026, 3, 9));
        assert_eq!(fr.local_date(at("2026-06-09T22:00:00Z")), d(2026, 6, 10));
    }

    #[test]
    fn end_of_day_in_winter_and_summer() {
        let fr = calendar("FR", None);
        assert_eq!(
            fr.end_of_local_day(d(2026, 2, 10)),
            at("2026-02-10T22:59:59.999999Z")
        );
        assert_eq!(
            fr.end_of_local_day(d(2026, 7, 10)),
            at("2026-07-10T21:59:59.999999Z")
        );
    }

    #[test]
    fn end_of_day_on_dst_change_days() {
        let fr = calendar("FR", None);
        // Sat 28 Mar 2026 ends at midnight CET, before the change at 02:00.
        assert_eq!(
            fr.end_of_local_day(d(2026, 3, 28)),
            at("2026-03-28T22:59:59.999999Z")
        );
        // Sun 29 Mar (23 hours) ends at midnight CEST.
        assert_eq!(
            fr.end_of_local_day(d(2026, 3, 29)),
            at("2026-03-29T21:59:59.999999Z")
        );
        // Sun 25 Oct (25 hours) ends at midnight CET.
        assert_eq!(
            fr.end_of_local_day(d(2026, 10, 25)),
            at("2026-10-25T22:59:59.999999Z")
        );
    }

    #[test]
    fn end_of_day_when_local_midnight_is_skipped() {
        // Brazil began DST at 00:00 on 4 Nov 2018: 00:00 -03 became 01:00 -02.
        let sp = calendar("FR", Some("America/Sao_Paulo"));
        assert_eq!(
            sp.start_of_local_day(d(2018, 11, 4)),
            at("2018-11-04T03:00:00Z")
        );
        assert_eq!(
            sp.end_of_local_day(d(2018, 11, 3)),
            at("2018-11-04T02:59:59.999999Z")
        );
        // Samoa skipped Fri 30 Dec 2011 entirely: 29 Dec ends when 31 Dec begins.
        let apia = calendar("FR", Some("Pacific/Apia"));
        assert_eq!(
            apia.end_of_local_day(d(2011, 12, 29)),
            at("2011-12-30T09:59:59.999999Z")
        );
    }

    #[test]
    fn gap_ends_on_the_exact_second() {
        let paris = calendar("FR", None);
        // 29 Mar 2026: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        for (h, m, sec) in [(2, 0, 0), (2, 17, 31), (2, 59, 59)] {
            let invalid = d(2026, 3, 29).and_hms_opt(h, m, sec).expect("time");
            assert_eq!(paris.end_of_gap(invalid), at("2026-03-29T01:00:00Z"));
        }
        // Lord Howe moves by 30 minutes: 2 Oct 2022 02:00 +10:30 became 02:30 +11.
        let lord_howe = calendar("FR", Some("Australia/Lord_Howe"));
        let invalid = d(2022, 10, 2).and_hms_opt(2, 10, 0).expect("time");
        assert_eq!(lord_howe.end_of_gap(invalid), at("2022-10-01T15:30:00Z"));
    }

    #[test]
    fn end_of_day_when_local_midnight_repeats() {
        // Cuba ends DST at 01:00 CDT -> 00:00 CST: 1 Nov 2026 00:00 occurs twice.
        let havana = calendar("FR", Some("America/Havana"));
        assert_eq!(
            havana.end_of_local_day(d(2026, 10, 31)),
            at("2026-11-01T03:59:59.999999Z")
        );
    }

    #[test]
    fn end_of_last_representable_day_saturates() {
        let fr = calendar("FR", None);
        assert_eq!(
            fr.end_of_local_day(NaiveDate::MAX),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            fr.next_working_day_on_or_after(NaiveDate::MAX),
            NaiveDate::MAX
        );
    }
}
