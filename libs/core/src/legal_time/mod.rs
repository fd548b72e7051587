//! Legal time: every GDPR period computed in one place.
//!
//! - Periods in days, months and years follow Regulation (EEC, Euratom) No 1182/71
//!   Art 3: the day of the event is not counted (3(1)); a period in months ends with
//!   the last hour of the day with the same date in the last month, or of that
//!   month's last day when the date does not exist (3(2)(c)); when that last day is
//!   a Saturday, Sunday or public holiday the period ends with the last hour of the
//!   next working day (3(4)). Periods in hours are not shifted. See [`period`] and
//!   [`calendar`].
//! - Data-subject requests: one month from receipt, extendable by two further
//!   months (GDPR Art 12(3)); EDPB Guidelines 01/2022 on the right of access apply
//!   1182/71 to it, including the move to the next working day. See [`deadline`].
//! - Breaches: the supervisory authority is notified within 72 hours of awareness
//!   (GDPR Art 33(1)), 72 elapsed hours whatever the wall clock does.
//! - "Now" comes from a [`Clock`] so tests control time instead of sleeping.
//!
//! Public holidays are those of the jurisdiction where the controller acts (1182/71
//! Art 2(1)); FR and LU are built in, institutions add closures in config.

pub mod calendar;
pub mod clock;
pub mod deadline;
pub mod error;
pub mod holidays;
pub mod iso_period;
pub mod period;

pub use calendar::{LegalCalendar, LegalTimeConfig};
pub use clock::{Clock, ManualClock, SystemClock};
pub use deadline::{Deadline, TimeLeft, is_overdue, time_left};
pub use error::LegalTimeError;
pub use holidays::{Jurisdiction, easter_sunday};
pub use iso_period::{CalendarPeriod, PeriodError};
pub use period::{
    BREACH_NOTIFICATION_HOURS, DSAR_EXTENSION_MAX_MONTHS, DSAR_PERIOD_MONTHS, add_months,
    breach_authority_deadline, retention_until,
};
