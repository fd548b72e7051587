//! Checks of request fields that recur across services, each adding its
//! violations to a [`Validator`] so a caller hears of every bad field at once:
//! enum values, optional timestamps, page sizes, resource names, and the
//! errors of a parser (a resource name, a subject identifier) folded into the
//! same list.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::{echo::echo, error::ApiError, proto_time::instant, validate::Validator};

/// Page size of a listing that names none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page of a listing; a larger `page_size` is cut to it.
pub const MAX_PAGE_SIZE: usize = 500;

/// The page size a listing asked for: [`DEFAULT_PAGE_SIZE`] for 0, at most
/// [`MAX_PAGE_SIZE`], a violation of `page_size` when negative.
pub fn page_size(v: &mut Validator, requested: i32) -> usize {
    match requested {
        n if n < 0 => {
            v.add("page_size", "must not be negative");
            0
        }
        0 => DEFAULT_PAGE_SIZE,
        n => (n as usize).min(MAX_PAGE_SIZE),
    }
}

/// The `{id}` of resource name `name` (`{prefix}{id}`, e.g. `requests/` and
/// an id) when `valid(id)`; else INVALID_ARGUMENT on `field`: "is required"
/// for an empty name, or that it is not a `what` name of the form `pattern`
/// (`requests/{request}`).
pub fn resource_id(
    field: &str,
    name: &str,
    prefix: &str,
    what: &str,
    pattern: &str,
    valid: impl Fn(&str) -> bool,
) -> Result<String, ApiError> {
    let id = name.strip_prefix(prefix).unwrap_or_default();
    if !valid(id) {
        return Err(ApiError::invalid(
            field,
            if name.is_empty() {
                "is required".to_string()
            } else {
                format!("`{}` is not a {what} name (`{pattern}`)", echo(name))
            },
        ));
    }
    Ok(id.to_string())
}

/// The fields an INVALID_ARGUMENT names, in order; none for any other
/// result. What a test of a validation looks at.
pub fn violated_fields<T>(r: &Result<T, ApiError>) -> Vec<&str> {
    match r {
        Err(ApiError::InvalidArgument(list)) => list.iter().map(|f| f.field.as_str()).collect(),
        _ => Vec::new(),
    }
}

/// The value of enum field `field`, or a violation listing the accepted
/// `names` when `value` is unknown or `unspecified`.
pub fn enum_value<E>(
    v: &mut Validator,
    field: &str,
    value: i32,
    unspecified: E,
    names: &str,
) -> Option<E>
where
    E: TryFrom<i32> + PartialEq,
{
    match E::try_from(value) {
        Ok(e) if e != unspecified => Some(e),
        _ => {
            v.add(field, format!("must be one of {names}"));
            None
        }
    }
}

/// An optional timestamp field: `None` when unset; a violation when invalid
/// or (with `not_after`) later than it.
pub fn optional_time(
    v: &mut Validator,
    field: &str,
    t: Option<&Timestamp>,
    not_after: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let t = t?;
    match instant(t) {
        None => {
            v.add(field, "is not a valid timestamp");
            None
        }
        Some(at) if not_after.is_some_and(|now| at > now) => {
            v.add(field, "must not be in the future");
            None
        }
        Some(at) => Some(at),
    }
}

/// The value of a parser's result, or its violations moved into `v` (another
/// error is recorded as a violation of `request`).
pub fn absorb<T>(v: &mut Validator, r: Result<T, ApiError>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(ApiError::InvalidArgument(list)) => {
            for f in list {
                v.add(f.field, f.description);
            }
            None
        }
        Err(e) => {
            v.add("request", e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        let mut v = Validator::new();
        assert_eq!(page_size(&mut v, 0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(&mut v, 7), 7);
        assert_eq!(page_size(&mut v, 100_000), MAX_PAGE_SIZE);
        assert!(v.is_ok());
        page_size(&mut v, -1);
        assert_eq!(violated_fields(&v.finish()), ["page_size"]);
    }

    #[test]
    fn resource_names_say_what_they_should_look_like() {
        let parse = |name| {
            resource_id("name", name, "things/", "thing", "things/{thing}", |id| {
                !id.is_empty() && id.chars().all(|c| c.is_ascii_lowercase())
            })
        };
        assert_eq!(parse("things/abc").unwrap(), "abc");
        let message = |r: Result<String, ApiError>| match r {
            Err(ApiError::InvalidArgument(list)) => list[0].description.clone(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(message(parse("")), "is required");
        assert_eq!(
            message(parse("things/ABC")),
            "`things/ABC` is not a thing name (`things/{thing}`)"
        );
        assert_eq!(violated_fields(&parse("other/abc")), ["name"]);
        assert!(violated_fields(&parse("things/abc")).is_empty());
    }

    fn fields(v: &mut Validator) -> Vec<(String, String)> {
        match v.finish() {
            Ok(()) => Vec::new(),
            Err(ApiError::InvalidArgument(list)) => {
                list.into_iter().map(|f| (f.field, f.description)).collect()
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[derive(Debug, PartialEq)]
    enum Colour {
        Unspecified,
        Red,
    }

    impl TryFrom<i32> for Colour {
        type Error = ();
        fn try_from(n: i32) -> Result<Self, ()> {
            match n {
                0 => Ok(Colour::Unspecified),
                1 => Ok(Colour::Red),
                _ => Err(()),
            }
        }
    }

    #[test]
    fn enum_values_refuse_unspecified_and_unknown() {
        let mut v = Validator::new();
        assert_eq!(
            enum_value(&mut v, "a", 1, Colour::Unspecified, "RED"),
            Some(Colour::Red)
        );
        assert_eq!(enum_value(&mut v, "b", 0, Colour::Unspecified, "RED"), None);
        assert_eq!(enum_value(&mut v, "c", 7, Colour::Unspecified, "RED"), None);
        let want = |f: &str| (f.to_string(), "must be one of RED".to_string());
        assert_eq!(fields(&mut v), vec![want("b"), want("c")]);
    }

    #[test]
    fn optional_times_are_checked_only_when_set() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let at = |seconds, nanos| Timestamp { seconds, nanos };
        let mut v = Validator::new();
        assert_eq!(optional_time(&mut v, "unset", None, Some(now)), None);
        assert_eq!(
            optional_time(&mut v, "past", Some(&at(1_600_000_000, 0)), Some(now)),
            DateTime::from_timestamp(1_600_000_000, 0)
        );
        assert_eq!(
            optional_time(&mut v, "later", Some(&at(1_800_000_000, 0)), None),
            DateTime::from_timestamp(1_800_000_000, 0)
        );
        optional_time(&mut v, "future", Some(&at(1_800_000_000, 0)), Some(now));
        optional_time(&mut v, "bad", Some(&at(0, -5)), None);
        assert_eq!(
            fields(&mut v),
            vec![
                ("future".into(), "must not be in the future".into()),
                ("bad".into(), "is not a valid timestamp".into()),
            ]
        );
    }

    #[test]
    fn absorb_keeps_every_violation_of_a_parser() {
        let mut v = Validator::new();
        assert_eq!(absorb(&mut v, Ok::<_, ApiError>(3)), Some(3));
        let parsed: Result<u8, _> = Err(ApiError::invalid("name", "is required"));
        assert_eq!(absorb(&mut v, parsed), None);
        let other: Result<u8, _> = Err(ApiError::not_found("request", "requests/x"));
        assert_eq!(absorb(&mut v, other), None);
        let got = fields(&mut v);
        assert_eq!(got[0], ("name".into(), "is required".into()));
        assert_eq!(got[1].0, "request");
    }
}
