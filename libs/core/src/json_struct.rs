//! Conversions between JSON values and `google.protobuf.Struct`, for the
//! free-form `details` fields of the API.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::Value as Json;

/// A JSON object as a `Struct`; `None` for "" or anything that is not an object.
pub fn struct_from_json_text(text: &str) -> Option<Struct> {
    match serde_json::from_str::<Json>(text).ok()? {
        Json::Object(map) => Some(Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, value_from_json(v)))
                .collect(),
        }),
        _ => None,
    }
}

/// A `Struct` as compact JSON object text.
pub fn struct_to_json_text(s: &Struct) -> String {
    struct_to_json(s).to_string()
}

fn struct_to_json(s: &Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_from_json(v: Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(value_from_json).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, value_from_json(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let text = r#"{"a":1.5,"b":[true,null,"x"],"c":{"d":"e"}}"#;
        let s = struct_from_json_text(text).unwrap();
        assert_eq!(
            serde_json::from_str::<Json>(&struct_to_json_text(&s)).unwrap(),
            serde_json::from_str::<Json>(text).unwrap()
        );
        assert!(struct_from_json_text("").is_none());
        assert!(struct_from_json_text("[1]").is_none());
    }
}
