//! Errors of the legal-time module.

use chrono::NaiveDate;

/// Why a legal-time configuration or computation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegalTimeError {
    /// The jurisdiction code has no built-in holiday calendar.
    #[error("jurisdiction {0:?} is not supported (supported: FR, FR-57 for Alsace-Moselle, LU)")]
    UnknownJurisdiction(String),
    /// The timezone is not an IANA timezone name.
    #[error("timezone {0:?} is not an IANA timezone name (e.g. Europe/Paris)")]
    UnknownTimezone(String),
    /// The same date is both added and removed as a holiday.
    #[error("{0} is in both extra_holidays and removed_holidays")]
    ConflictingHoliday(NaiveDate),
    /// A removed holiday is not a built-in public holiday of the jurisdiction.
    #[error("removed_holidays: {date} is not a public holiday in {jurisdiction}")]
    NotAHoliday {
        /// The date that was listed.
        date: NaiveDate,
        /// The configured jurisdiction code.
        jurisdiction: String,
    },
    /// A DSAR extension must be one or two further months (GDPR Art 12(3)).
    #[error("a deadline extension is 1 or 2 further months, got {0}")]
    InvalidExtension(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable_error<E: std::error::Error + Send + Sync + 'static>() {}
    fn shareable<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_and_calendar_cross_threads() {
        // Services propagate the error with `?` into anyhow and share the calendar in an Arc.
        shareable_error::<LegalTimeError>();
        shareable::<crate::legal_time::LegalCalendar>();
        shareable::<crate::legal_time::ManualClock>();
    }

    #[test]
    fn messages_name_the_value() {
        let date = NaiveDate::from_ymd_opt(2026, 5, 25).expect("date");
        assert_eq!(
            LegalTimeError::ConflictingHoliday(date).to_string(),
            "2026-05-25 is in both extra_holidays and removed_holidays"
        );
        assert_eq!(
            LegalTimeError::NotAHoliday {
                date: date.succ_opt().expect("date"),
                jurisdiction: "LU".into()
            }
            .to_string(),
            "removed_holidays: 2026-05-26 is not a public holiday in LU"
        );
    }
}
