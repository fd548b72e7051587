//! Conversions between protobuf `Timestamp`s and the instants custodia stores
//! (chrono UTC times, microseconds since the epoch).
//!
//! Stored times have microsecond precision (see [`crate::storage::to_micros`]),
//! so a `Timestamp` made here is cut to the microsecond: what a response says
//! is what a later read of the stored record says.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::storage::from_micros;

/// The `Timestamp` of `us` microseconds since the epoch.
pub fn timestamp_micros(us: i64) -> Timestamp {
    let t = from_micros(us);
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The `Timestamp` of `t`, cut to the microsecond.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    timestamp_micros(t.timestamp_micros())
}

/// The instant of a `Timestamp`; `None` when its nanos or seconds are out of range.
pub fn instant(t: &Timestamp) -> Option<DateTime<Utc>> {
    if !(0..=999_999_999).contains(&t.nanos) {
        return None;
    }
    DateTime::from_timestamp(t.seconds, t.nanos as u32)
}

/// Microseconds since the epoch of a `Timestamp` (0 when out of range).
pub fn micros_of(t: &Timestamp) -> i64 {
    instant(t).map(|t| t.timestamp_micros()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_and_nanos_are_cut() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_000));
        assert_eq!(micros_of(&ts), 1_700_000_000_123_456);
        assert_eq!(timestamp_micros(micros_of(&ts)), ts);
        assert_eq!(instant(&ts), Some(t - chrono::Duration::nanoseconds(789)));
    }

    #[test]
    fn out_of_range_timestamps_have_no_instant() {
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(instant(&bad), None);
        assert_eq!(micros_of(&bad), 0);
        let far = Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(instant(&far), None);
    }
}
