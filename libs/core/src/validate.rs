//! Request validation that collects every bad field before answering, so a caller
//! fixes its request in one round trip.

use crate::error::{ApiError, FieldViolation};

/// Default upper bound for free-text fields, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Upper bound for identifiers and names, in bytes.
pub const MAX_ID: usize = 256;
/// Most paths of an update mask: more than any updatable message has fields.
pub const MAX_MASK_PATHS: usize = 100;

/// Accumulates field violations; [`Validator::finish`] turns them into an error.
#[derive(Debug, Default)]
pub struct Validator {
    violations: Vec<FieldViolation>,
}

impl Validator {
    /// A validator with no violations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// `value` must be non-empty (after trimming) and at most `max` bytes.
    pub fn required(&mut self, field: &str, value: &str, max: usize) -> &mut Self {
        if value.trim().is_empty() {
            self.add(field, "is required");
        } else {
            self.max_len(field, value, max);
        }
        self
    }

    /// `value` may be empty but must be at most `max` bytes and free of control characters.
    pub fn max_len(&mut self, field: &str, value: &str, max: usize) -> &mut Self {
        if value.len() > max {
            self.add(
                field,
                format!("is {} bytes; the limit is {max}", value.len()),
            );
        } else if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
        {
            self.add(field, "contains control characters");
        }
        self
    }

    /// `len`, the number of entries of the repeated field `field`, must be at most
    /// `max`; returns whether it is. (Callers check the entries of a list with
    /// `.take(max)`: 100,000 entries of a list refused anyway would each cost a
    /// check and perhaps a violation.)
    pub fn max_items(&mut self, field: &str, len: usize, max: usize) -> bool {
        let ok = len <= max;
        if !ok {
            self.add(field, format!("has {len} entries; the limit is {max}"));
        }
        ok
    }

    /// Records `description` against `field` when `ok` is false.
    pub fn check(&mut self, ok: bool, field: &str, description: &str) -> &mut Self {
        if !ok {
            self.add(field, description);
        }
        self
    }

    /// Whether nothing has been recorded yet.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// `Ok(())` when every check passed, else INVALID_ARGUMENT listing each field.
    pub fn finish(&mut self) -> Result<(), ApiError> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(std::mem::take(
                &mut self.violations,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_violation() {
        let mut v = Validator::new();
        v.required("subject.value", "  ", MAX_ID)
            .required("purpose", &"x".repeat(MAX_ID + 1), MAX_ID)
            .max_len("details", "bell\u{7}", MAX_TEXT)
            .required("ok", "fine", MAX_ID);
        match v.finish() {
            Err(ApiError::InvalidArgument(list)) => {
                let fields: Vec<_> = list.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(fields, ["subject.value", "purpose", "details"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(v.finish().is_ok(), "finish drains the list");
    }

    #[test]
    fn max_items_allows_the_maximum_and_names_the_field_beyond_it() {
        let mut v = Validator::new();
        assert!(v.max_items("purposes", 0, 100));
        assert!(v.max_items("purposes", 100, 100));
        assert!(v.is_ok(), "up to the maximum is fine");
        assert!(!v.max_items("subject_identifiers", 100_001, 100));
        match v.finish() {
            Err(ApiError::InvalidArgument(list)) => {
                assert_eq!(list.len(), 1);
                assert_eq!(list[0].field, "subject_identifiers");
                assert_eq!(list[0].description, "has 100001 entries; the limit is 100");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
