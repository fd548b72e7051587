//! What the unit tests share.

use custodia_core::{ApiError, validate::Validator};

/// The fields an INVALID_ARGUMENT names, in order; panics on any other error.
pub(crate) fn fields(e: ApiError) -> Vec<String> {
    match e {
        ApiError::InvalidArgument(v) => v.into_iter().map(|f| f.field).collect(),
        other => panic!("not INVALID_ARGUMENT: {other:?}"),
    }
}

/// The fields `v` holds violations of, in order (none when it has none).
pub(crate) fn violations(v: &mut Validator) -> Vec<String> {
    v.finish().err().map(fields).unwrap_or_default()
}
