//! Values between the database, JSON and protobuf: rows read for export
//! (`google.protobuf.Struct`), times in their common shapes, and the values a
//! correction or an anonymisation binds.

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use prost_types::{Struct, Timestamp, Value, value::Kind};
use serde_json::Value as Json;
use sqlx::{
    Row,
    any::{AnyRow, AnyTypeInfoKind},
};

use crate::{
    config::{FixedValue, TimeUnit},
    db::{Bind, ColKind, Column, TimeStorage},
};

/// Largest text value a correction may bind.
const MAX_VALUE_BYTES: usize = 64 * 1024;
/// 2^53: larger integers are exported as decimal strings.
const MAX_SAFE_INT: i64 = 1 << 53;

pub(crate) fn json_to_value(v: Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) if !(-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&i) => {
                Kind::StringValue(i.to_string())
            }
            Some(i) => Kind::NumberValue(i as f64),
            None => match n.as_u64() {
                Some(u) => Kind::StringValue(u.to_string()),
                None => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            },
        },
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The value of column `i` of a SQLite row, by its storage class.
pub(crate) fn sqlite_json(row: &AnyRow, i: usize) -> Result<Json, sqlx::Error> {
    use sqlx::{TypeInfo, ValueRef};
    let raw = row.try_get_raw(i)?;
    if raw.is_null() || raw.type_info().is_null() {
        return Ok(Json::Null);
    }
    let kind = raw.type_info().kind();
    Ok(match kind {
        AnyTypeInfoKind::Bool => Json::Bool(row.try_get(i)?),
        AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
            Json::from(row.try_get::<i64, _>(i)?)
        }
        AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => {
            serde_json::Number::from_f64(row.try_get::<f64, _>(i)?).map_or(Json::Null, Json::Number)
        }
        AnyTypeInfoKind::Text => Json::String(row.try_get(i)?),
        AnyTypeInfoKind::Blob => Json::String(
            base64::engine::general_purpose::STANDARD.encode(row.try_get::<Vec<u8>, _>(i)?),
        ),
        AnyTypeInfoKind::Null => Json::Null,
    })
}

pub(crate) fn text_of(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// A time read from a record field.
pub(crate) fn parse_time(v: &Json, storage: TimeStorage) -> Option<DateTime<Utc>> {
    match v {
        Json::Number(n) => {
            let i = n.as_i64()?;
            match storage {
                TimeStorage::Unix(TimeUnit::Milliseconds) => DateTime::from_timestamp_millis(i),
                _ => DateTime::from_timestamp(i, 0),
            }
        }
        Json::String(s) => parse_text_time(s),
        _ => None,
    }
}

pub(crate) fn parse_text_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.to_utc());
        }
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn fixed_bind(v: &FixedValue) -> Bind {
    match v {
        FixedValue::Bool(b) => Bind::Bool(*b),
        FixedValue::Int(i) => Bind::Int(*i),
        FixedValue::Float(f) => Bind::Float(*f),
        FixedValue::Text(s) => Bind::Text(s.clone()),
    }
}

/// A correction's value for `column`, or why it does not fit.
pub(crate) fn correction_bind(column: &Column, value: Option<&Value>) -> Result<Bind, String> {
    let scalar = "must be a string, number, boolean or null";
    match value.and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(Bind::Null),
        Some(Kind::BoolValue(b)) => match column.kind {
            ColKind::Bool | ColKind::Integer | ColKind::Other => Ok(Bind::Bool(*b)),
            _ => Err(format!("field `{}` does not take a boolean", column.name)),
        },
        Some(Kind::NumberValue(n)) => match column.kind {
            ColKind::Integer if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(Bind::Int(*n as i64)),
            ColKind::Integer => Err(format!("field `{}` takes an integer", column.name)),
            ColKind::Float | ColKind::Other => Ok(Bind::Float(*n)),
            _ => Err(format!("field `{}` does not take a number", column.name)),
        },
        Some(Kind::StringValue(s)) => {
            if s.len() > MAX_VALUE_BYTES {
                return Err(format!("the value is longer than {MAX_VALUE_BYTES} bytes"));
            }
            match column.kind {
                ColKind::Integer => s
                    .trim()
                    .parse::<i64>()
                    .map(Bind::Int)
                    .map_err(|_| format!("field `{}` takes an integer", column.name)),
                ColKind::Float => s
                    .trim()
                    .parse::<f64>()
                    .map(Bind::Float)
                    .map_err(|_| format!("field `{}` takes a number", column.name)),
                ColKind::Bool => Err(format!("field `{}` takes a boolean", column.name)),
                ColKind::Timestamp => parse_text_time(s)
                    .map(|t| Bind::Text(t.to_rfc3339()))
                    .ok_or_else(|| format!("field `{}` takes an RFC 3339 date-time", column.name)),
                ColKind::Text | ColKind::Other => Ok(Bind::Text(s.clone())),
            }
        }
        Some(_) => Err(scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_common_shapes() {
        for s in [
            "2024-01-02T03:04:05Z",
            "2024-01-02 03:04:05",
            "2024-01-02T03:04:05.250+00:00",
            "2024-01-02 03:04:05+00",
        ] {
            assert_eq!(
                parse_text_time(s).unwrap().timestamp(),
                1_704_164_645,
                "{s}"
            );
        }
        assert!(parse_text_time("2024-01-02").is_some());
        assert!(parse_text_time("yesterday").is_none());
    }

    #[test]
    fn big_integers_become_strings() {
        let v = json_to_value(Json::from(9_007_199_254_740_993i64));
        assert_eq!(v.kind, Some(Kind::StringValue("9007199254740993".into())));
        let v = json_to_value(Json::from(42));
        assert_eq!(v.kind, Some(Kind::NumberValue(42.0)));
    }

    fn column(kind: ColKind) -> Column {
        Column {
            name: "c".into(),
            kind,
            pg_type: String::new(),
        }
    }

    fn value(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    #[test]
    fn corrections_fit_their_column() {
        let int = column(ColKind::Integer);
        assert!(matches!(
            correction_bind(&int, Some(&value(Kind::NumberValue(3.0)))),
            Ok(Bind::Int(3))
        ));
        assert!(matches!(
            correction_bind(&int, Some(&value(Kind::StringValue(" 7 ".into())))),
            Ok(Bind::Int(7))
        ));
        assert!(correction_bind(&int, Some(&value(Kind::NumberValue(3.5)))).is_err());
        assert!(matches!(correction_bind(&int, None), Ok(Bind::Null)));
        let text = column(ColKind::Text);
        assert!(correction_bind(&text, Some(&value(Kind::BoolValue(true)))).is_err());
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(correction_bind(&text, Some(&value(Kind::StringValue(long)))).is_err());
        let time = column(ColKind::Timestamp);
        assert!(matches!(
            correction_bind(&time, Some(&value(Kind::StringValue("2024-01-02".into())))),
            Ok(Bind::Text(t)) if t == "2024-01-02T00:00:00+00:00"
        ));
        let list = value(Kind::ListValue(prost_types::ListValue::default()));
        assert!(correction_bind(&text, Some(&list)).is_err());
    }

    #[test]
    fn text_of_a_field() {
        assert_eq!(text_of(&Json::from("a")), "a");
        assert_eq!(text_of(&Json::Null), "");
        assert_eq!(text_of(&Json::from(12)), "12");
    }

    #[test]
    fn times_by_storage() {
        let secs = parse_time(
            &Json::from(1_704_164_645),
            TimeStorage::Unix(TimeUnit::Seconds),
        );
        let millis = parse_time(
            &Json::from(1_704_164_645_000i64),
            TimeStorage::Unix(TimeUnit::Milliseconds),
        );
        assert_eq!(secs, millis);
        assert!(secs.is_some());
        assert_eq!(parse_time(&Json::Bool(true), TimeStorage::Text), None);
    }
}
