//! Opaque page tokens (AIP-158): base64url JSON carrying the position and a
//! fingerprint of the filter, so a token cannot be replayed with another filter.

use base64::Engine;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Page size used when a request sets `page_size = 0`.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page served; larger requests are clamped (AIP-158).
pub const MAX_PAGE_SIZE: usize = 1000;

/// Effective page size for a requested `page_size`; negative is INVALID_ARGUMENT.
pub fn page_size(requested: i32) -> Result<usize, ApiError> {
    page_size_or(requested, DEFAULT_PAGE_SIZE)
}

/// Like [`page_size`], for a listing whose proto promises another default.
pub fn page_size_or(requested: i32, default: usize) -> Result<usize, ApiError> {
    match requested {
        n if n < 0 => Err(ApiError::invalid("page_size", "must not be negative")),
        0 => Ok(default),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<P> {
    p: P,
    f: String,
}

fn fingerprint(filter: &str) -> String {
    hex::encode(&Sha256::digest(filter.as_bytes())[..8])
}

/// Encodes `position` for a listing whose filter is described by `filter`.
pub fn encode<P: Serialize>(position: &P, filter: &str) -> String {
    let json = serde_json::to_vec(&Envelope {
        p: position,
        f: fingerprint(filter),
    })
    .expect("page positions serialise");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a `page_token`; empty means the first page (`None`).
pub fn decode<P: DeserializeOwned>(token: &str, filter: &str) -> Result<Option<P>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::invalid("page_token", "is not a token returned by this listing");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let envelope: Envelope<P> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if envelope.f != fingerprint(filter) {
        return Err(ApiError::invalid(
            "page_token",
            "was issued for a different filter; start again without a token",
        ));
    }
    Ok(Some(envelope.p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_filter_binding() {
        let t = encode(&(42i64, "x".to_string()), "status=open");
        let back: Option<(i64, String)> = decode(&t, "status=open").unwrap();
        assert_eq!(back, Some((42, "x".into())));
        assert!(decode::<(i64, String)>(&t, "status=closed").is_err());
        assert!(decode::<(i64, String)>("garbage!", "status=open").is_err());
        assert_eq!(decode::<i64>("", "").unwrap(), None);
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
