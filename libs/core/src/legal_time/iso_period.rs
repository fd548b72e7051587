//! ISO 8601 calendar periods (`P3Y`, `P13M`, `P1Y6M`, `P2W`, `PT12H`) as used for
//! retention periods, re-consent intervals and cookie lifetimes. Months and years
//! are calendar units added per Regulation 1182/71 (same date, or the last day of
//! the month), which is why these are not fixed durations.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Duration, Utc};

use super::period::add_months;

/// A period in calendar units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CalendarPeriod {
    /// Years (12 months each).
    pub years: u32,
    /// Months.
    pub months: u32,
    /// Weeks (7 days each).
    pub weeks: u32,
    /// Days.
    pub days: u32,
    /// Hours.
    pub hours: u32,
    /// Minutes.
    pub minutes: u32,
    /// Seconds.
    pub seconds: u32,
}

/// Why a text is not an ISO 8601 period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an ISO 8601 period such as P3Y, P13M, P1Y6M, P30D or PT12H")]
pub struct PeriodError(pub String);

impl CalendarPeriod {
    /// Whether every component is zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// `t` plus this period: months and years first (calendar rule), then days and time.
    pub fn after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years.saturating_mul(12).saturating_add(self.months);
        let date = add_months(t.date_naive(), months);
        let moved = date.and_time(t.time()).and_utc();
        let rest = Duration::days(i64::from(self.weeks) * 7 + i64::from(self.days))
            + Duration::hours(i64::from(self.hours))
            + Duration::minutes(i64::from(self.minutes))
            + Duration::seconds(i64::from(self.seconds));
        moved
            .checked_add_signed(rest)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

impl FromStr for CalendarPeriod {
    type Err = PeriodError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PeriodError(s.to_string());
        let body = s.strip_prefix('P').ok_or_else(err)?;
        let (date_part, time_part) = match body.split_once('T') {
            Some((d, t)) if !t.is_empty() => (d, Some(t)),
            Some(_) => return Err(err()),
            None => (body, None),
        };
        let mut p = CalendarPeriod::default();
        let mut seen_any = false;
        let mut parse = |part: &str, units: &[char]| -> Result<(), PeriodError> {
            let mut number = String::new();
            let mut next_unit = 0;
            for c in part.chars() {
                if c.is_ascii_digit() {
                    number.push(c);
                    continue;
                }
                let at = units[next_unit..]
                    .iter()
                    .position(|u| *u == c)
                    .ok_or_else(err)?
                    + next_unit;
                let n: u32 = number.parse().map_err(|_| err())?;
                number.clear();
                next_unit = at + 1;
                seen_any = true;
                let slot = match (units.len(), c) {
                    (4, 'Y') => &mut p.years,
                    (4, 'M') => &mut p.months,
                    (4, 'W') => &mut p.weeks,
                    (4, 'D') => &mut p.days,
                    (3, 'H') => &mut p.hours,
                    (3, 'M') => &mut p.minutes,
                    (3, 'S') => &mut p.seconds,
                    _ => return Err(err()),
                };
                *slot = n;
            }
            if number.is_empty() {
                Ok(())
            } else {
                Err(err())
            }
        };
        parse(date_part, &['Y', 'M', 'W', 'D'])?;
        if let Some(t) = time_part {
            parse(t, &['H', 'M', 'S'])?;
        }
        if !seen_any {
            return Err(err());
        }
        Ok(p)
    }
}

impl fmt::Display for CalendarPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("P")?;
        for (n, u) in [
            (self.years, 'Y'),
            (self.months, 'M'),
            (self.weeks, 'W'),
            (self.days, 'D'),
        ] {
            if n > 0 {
                write!(f, "{n}{u}")?;
            }
        }
        if self.hours + self.minutes + self.seconds > 0 {
            f.write_str("T")?;
            for (n, u) in [(self.hours, 'H'), (self.minutes, 'M'), (self.seconds, 'S')] {
                if n > 0 {
                    write!(f, "{n}{u}")?;
                }
            }
        }
        if self.is_zero() {
            f.write_str("0D")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> CalendarPeriod {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_register_periods() {
        assert_eq!(p("P3Y").years, 3);
        assert_eq!(p("P13M").months, 13);
        assert_eq!((p("P1Y6M").years, p("P1Y6M").months), (1, 6));
        assert_eq!(p("P2W").weeks, 2);
        assert_eq!(p("PT12H").hours, 12);
        assert_eq!(p("P1DT2H30M").minutes, 30);
        assert_eq!(p("P1Y6M").to_string(), "P1Y6M");
        for bad in [
            "", "P", "3Y", "PT", "P1M1Y", "P1.5Y", "P-1Y", "P1X", "P1", "P1YT",
        ] {
            assert!(bad.parse::<CalendarPeriod>().is_err(), "{bad}");
        }
    }

    #[test]
    fn adds_calendar_months() {
        let t: DateTime<Utc> = "2026-01-31T10:00:00Z".parse().unwrap();
        assert_eq!(p("P1M").after(t).to_rfc3339(), "2026-02-28T10:00:00+00:00");
        assert_eq!(p("P13M").after(t).to_rfc3339(), "2027-02-28T10:00:00+00:00");
        let leap: DateTime<Utc> = "2024-02-29T00:00:00Z".parse().unwrap();
        assert_eq!(
            p("P1Y").after(leap).to_rfc3339(),
            "2025-02-28T00:00:00+00:00"
        );
        assert_eq!(
            p("P1DT1H").after(t).to_rfc3339(),
            "2026-02-01T11:00:00+00:00"
        );
    }
}
