//! Instants in the three forms a scenario meets: RFC 3339 text, `DateTime`, and
//! the protobuf timestamps of requests and answers.

use chrono::{DateTime, Utc};

/// The instant `rfc3339` names; panics on bad text.
pub fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().expect("timestamp")
}

/// `t` as a protobuf timestamp.
pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The instant of an answer's timestamp field; panics when it is unset.
pub fn time_of(t: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let t = t.as_ref().expect("timestamp set");
    DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("valid")
}
