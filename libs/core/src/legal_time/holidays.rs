//! Built-in public holidays per jurisdiction, computed for any year.
//!
//! Today's law is applied to every year, except LU Europe Day (a holiday since 2019);
//! deadlines are computed for recent and future dates, not historical ones.

use std::{fmt, str::FromStr};

use chrono::{Datelike, Days, NaiveDate};
use chrono_tz::Tz;

use super::LegalTimeError;

/// A jurisdiction with a built-in public-holiday calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Jurisdiction {
    /// France métropolitaine (Code du travail L3133-1).
    Fr,
    /// Alsace-Moselle (Bas-Rhin, Haut-Rhin, Moselle; `FR-57`, also `FR-67` or
    /// `FR-68` in config): France's holidays plus Good Friday and St Stephen's Day
    /// (Code du travail L3134-13).
    FrAlsaceMoselle,
    /// Luxembourg (Code du travail L-232-2).
    Lu,
}

/// Holidays on a fixed date: (month, day, first year observed).
type Fixed = (u32, u32, i32);

const FR_FIXED: &[Fixed] = &[
    (1, 1, i32::MIN),   // Jour de l'an
    (5, 1, i32::MIN),   // Fête du travail
    (5, 8, i32::MIN),   // Victoire 1945
    (7, 14, i32::MIN),  // Fête nationale
    (8, 15, i32::MIN),  // Assomption
    (11, 1, i32::MIN),  // Toussaint
    (11, 11, i32::MIN), // Armistice
    (12, 25, i32::MIN), // Noël
];

const LU_FIXED: &[Fixed] = &[
    (1, 1, i32::MIN),   // New Year's Day
    (5, 1, i32::MIN),   // Labour Day
    (5, 9, 2019),       // Europe Day, a public holiday since 2019
    (6, 23, i32::MIN),  // National Day
    (8, 15, i32::MIN),  // Assumption
    (11, 1, i32::MIN),  // All Saints' Day
    (12, 25, i32::MIN), // Christmas
    (12, 26, i32::MIN), // St Stephen's Day
];

/// Days after Easter Sunday: Easter Monday, Ascension, Whit Monday (same in FR and LU).
const EASTER_OFFSETS: &[u64] = &[1, 39, 50];

impl Jurisdiction {
    /// All supported jurisdictions.
    pub const ALL: [Jurisdiction; 3] = [
        Jurisdiction::Fr,
        Jurisdiction::FrAlsaceMoselle,
        Jurisdiction::Lu,
    ];

    /// The code used in config: ISO 3166-1 alpha-2 ("FR", "LU"), or ISO 3166-2
    /// for a region with holidays of its own ("FR-57").
    pub fn code(self) -> &'static str {
        match self {
            Jurisdiction::Fr => "FR",
            Jurisdiction::FrAlsaceMoselle => "FR-57",
            Jurisdiction::Lu => "LU",
        }
    }

    /// The country (ISO 3166-1 alpha-2): whose laws apply beyond the calendar
    /// (the digital age of consent, the phone numbering plan).
    pub fn country(self) -> &'static str {
        match self {
            Jurisdiction::Fr | Jurisdiction::FrAlsaceMoselle => "FR",
            Jurisdiction::Lu => "LU",
        }
    }

    /// The timezone used when config names none.
    pub fn default_timezone(self) -> Tz {
        match self {
            Jurisdiction::Fr | Jurisdiction::FrAlsaceMoselle => chrono_tz::Europe::Paris,
            Jurisdiction::Lu => chrono_tz::Europe::Luxembourg,
        }
    }

    /// Whether `date` is a built-in public holiday (weekends aside).
    ///
    /// Moveable feasts are only known for years 1583..=9999 (the Gregorian computus).
    pub fn is_public_holiday(self, date: NaiveDate) -> bool {
        let (fixed, local): (&[Fixed], &[Fixed]) = match self {
            Jurisdiction::Fr => (FR_FIXED, &[]),
            // St Stephen's Day.
            Jurisdiction::FrAlsaceMoselle => (FR_FIXED, &[(12, 26, i32::MIN)]),
            Jurisdiction::Lu => (LU_FIXED, &[]),
        };
        let on_fixed = fixed
            .iter()
            .chain(local)
            .any(|&(m, d, since)| date.month() == m && date.day() == d && date.year() >= since);
        let good_friday = self == Jurisdiction::FrAlsaceMoselle;
        on_fixed
            || easter_sunday(date.year()).is_some_and(|easter| {
                EASTER_OFFSETS
                    .iter()
                    .any(|&n| easter.checked_add_days(Days::new(n)) == Some(date))
                    || (good_friday && easter.checked_sub_days(Days::new(2)) == Some(date))
            })
    }

    /// The built-in public holidays of `year`, in date order.
    pub fn public_holidays(self, year: i32) -> Vec<NaiveDate> {
        let Some(first) = NaiveDate::from_ymd_opt(year, 1, 1) else {
            return Vec::new();
        };
        first
            .iter_days()
            .take_while(|d| d.year() == year)
            .filter(|&d| self.is_public_holiday(d))
            .collect()
    }
}

impl FromStr for Jurisdiction {
    type Err = LegalTimeError;

    /// Parses a code case-insensitively ("FR", "lu", "FR-57"; "FR-67" and
    /// "FR-68" are Alsace-Moselle too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if ["FR-67", "FR-68"].iter().any(|c| c.eq_ignore_ascii_case(s)) {
            return Ok(Jurisdiction::FrAlsaceMoselle);
        }
        Self::ALL
            .into_iter()
            .find(|j| j.code().eq_ignore_ascii_case(s))
            .ok_or_else(|| LegalTimeError::UnknownJurisdiction(s.to_owned()))
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Easter Sunday of `year` (Gregorian), or `None` outside 1583..=9999.
pub fn easter_sunday(year: i32) -> Option<NaiveDate> {
    let computus::Date { year, month, day } = computus::gregorian(year).ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("valid date")
    }

    #[test]
    fn easter_known_years() {
        assert_eq!(easter_sunday(2024), Some(d(2024, 3, 31)));
        assert_eq!(easter_sunday(2025), Some(d(2025, 4, 20)));
        assert_eq!(easter_sunday(2026), Some(d(2026, 4, 5)));
        assert_eq!(easter_sunday(2027), Some(d(2027, 3, 28)));
    }

    #[test]
    fn easter_outside_gregorian_computus_is_none() {
        assert_eq!(easter_sunday(1582), None);
        assert_eq!(easter_sunday(10_000), None);
    }

    #[test]
    fn france_2026_holidays() {
        assert_eq!(
            Jurisdiction::Fr.public_holidays(2026),
            vec![
                d(2026, 1, 1),
                d(2026, 4, 6),  // Easter Monday
                d(2026, 5, 1),  // Labour Day
                d(2026, 5, 8),  // Victory 1945
                d(2026, 5, 14), // Ascension
                d(2026, 5, 25), // Whit Monday
                d(2026, 7, 14),
                d(2026, 8, 15),
                d(2026, 11, 1),
                d(2026, 11, 11),
                d(2026, 12, 25),
            ]
        );
    }

    #[test]
    fn luxembourg_2026_holidays() {
        assert_eq!(
            Jurisdiction::Lu.public_holidays(2026),
            vec![
                d(2026, 1, 1),
                d(2026, 4, 6),  // Easter Monday
                d(2026, 5, 1),  // Labour Day
                d(2026, 5, 9),  // Europe Day
                d(2026, 5, 14), // Ascension
                d(2026, 5, 25), // Whit Monday
                d(2026, 6, 23), // National Day
                d(2026, 8, 15),
                d(2026, 11, 1),
                d(2026, 12, 25),
                d(2026, 12, 26),
            ]
        );
    }

    #[test]
    fn alsace_moselle_adds_good_friday_and_st_stephen() {
        let mut expected = Jurisdiction::Fr.public_holidays(2026);
        expected.push(d(2026, 4, 3)); // Good Friday (Easter 5 April)
        expected.push(d(2026, 12, 26));
        expected.sort();
        assert_eq!(
            Jurisdiction::FrAlsaceMoselle.public_holidays(2026),
            expected
        );
        for code in ["FR-57", "fr-67", "FR-68"] {
            assert_eq!(code.parse(), Ok(Jurisdiction::FrAlsaceMoselle), "{code}");
        }
        assert_eq!(Jurisdiction::FrAlsaceMoselle.country(), "FR");
        assert!(!Jurisdiction::Fr.is_public_holiday(d(2026, 4, 3)));
        assert!("FR-75".parse::<Jurisdiction>().is_err());
    }

    #[test]
    fn luxembourg_europe_day_only_since_2019() {
        assert!(!Jurisdiction::Lu.is_public_holiday(d(2018, 5, 9)));
        assert!(Jurisdiction::Lu.is_public_holiday(d(2019, 5, 9)));
        assert!(!Jurisdiction::Fr.is_public_holiday(d(2019, 5, 9)));
    }

    #[test]
    fn moveable_feasts_follow_easter() {
        // Easter 2024 = 31 Mar: Monday 1 Apr, Ascension 9 May, Whit Monday 20 May.
        for j in Jurisdiction::ALL {
            assert!(j.is_public_holiday(d(2024, 4, 1)));
            assert!(j.is_public_holiday(d(2024, 5, 9)));
            assert!(j.is_public_holiday(d(2024, 5, 20)));
            assert!(!j.is_public_holiday(d(2024, 3, 31)));
            assert!(!j.is_public_holiday(d(2024, 5, 19)));
        }
    }

    #[test]
    fn parses_codes_case_insensitively() {
        assert_eq!("FR".parse(), Ok(Jurisdiction::Fr));
        assert_eq!("lu".parse(), Ok(Jurisdiction::Lu));
        assert_eq!(
            "DE".parse::<Jurisdiction>(),
            Err(LegalTimeError::UnknownJurisdiction("DE".into()))
        );
    }

    #[test]
    fn default_timezones() {
        assert_eq!(
            Jurisdiction::Fr.default_timezone(),
            chrono_tz::Europe::Paris
        );
        assert_eq!(
            Jurisdiction::Lu.default_timezone(),
            chrono_tz::Europe::Luxembourg
        );
    }
}
