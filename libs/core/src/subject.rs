//! Subject identifiers: typed (`email`, `student_number`, `moodle_user`,
//! `crm_contact`, `browser`, ...), normalised, and pseudonymised as a keyed hash
//! (HMAC-SHA256) wherever a service only needs to match them (Art. 25, 32).

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::{error::ApiError, validate::MAX_ID};

/// Identifier types custodia knows how to normalise; others are accepted as given
/// (trimmed) if they match `[a-z][a-z0-9_]*`.
pub const KNOWN_TYPES: &[&str] = &[
    "email",
    "student_number",
    "moodle_user",
    "crm_contact",
    "browser",
    "phone",
    "staff_number",
];

/// A validated, normalised subject identifier.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubjectId {
    kind: String,
    value: String,
}

impl std::fmt::Debug for SubjectId {
    // The value is personal data: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectId({}:<redacted>)", self.kind)
    }
}

impl SubjectId {
    /// Validates and normalises `(type, value)`; `field` names the request field in errors.
    pub fn parse(kind: &str, value: &str, field: &str) -> Result<Self, ApiError> {
        let kind = kind.trim();
        if kind.is_empty() {
            return Err(ApiError::invalid(format!("{field}.type"), "is required"));
        }
        if kind.len() > 64
            || !kind.starts_with(|c: char| c.is_ascii_lowercase())
            || !kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(ApiError::invalid(
                format!("{field}.type"),
                "must match [a-z][a-z0-9_]* (e.g. email, student_number)",
            ));
        }
        let value = normalise(kind, value);
        if value.is_empty() {
            return Err(ApiError::invalid(format!("{field}.value"), "is required"));
        }
        if value.len() > MAX_ID || value.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                format!("{field}.value"),
                format!("must be at most {MAX_ID} bytes without control characters"),
            ));
        }
        if kind == "email" && !looks_like_email(&value) {
            return Err(ApiError::invalid(
                format!("{field}.value"),
                "is not an email address",
            ));
        }
        Ok(Self {
            kind: kind.to_string(),
            value,
        })
    }

    /// The identifier type, e.g. `email`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The normalised value (personal data).
    pub fn value(&self) -> &str {
        &self.value
    }
}

fn normalise(kind: &str, value: &str) -> String {
    let value = value.trim();
    match kind {
        "email" => value.to_lowercase(),
        "student_number" | "staff_number" => value.to_uppercase(),
        "phone" => value
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '+')
            .collect(),
        _ => value.to_string(),
    }
}

fn looks_like_email(v: &str) -> bool {
    match v.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') && !domain.contains('@') && !v.contains(' ')
        }
        None => false,
    }
}

/// Computes the keyed hash of subject identifiers; every service uses the same key so
/// the hashes match across services and in the audit log.
#[derive(Clone)]
pub struct SubjectHasher {
    /// The MAC with the key already absorbed: cloning it per hash saves the two
    /// SHA-256 blocks of key set-up (half the work for a short identifier).
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for SubjectHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectHasher(<key redacted>)")
    }
}

impl SubjectHasher {
    /// A hasher with `key` (any length; 32 random bytes recommended).
    pub fn new(key: SecretString) -> Self {
        let keyed = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
            .expect("HMAC accepts any key length");
        Self { keyed }
    }

    /// Hex HMAC-SHA256 over `type \0 normalised value`.
    pub fn hash(&self, subject: &SubjectId) -> String {
        let mut mac = self.keyed.clone();
        mac.update(subject.kind.as_bytes());
        mac.update(&[0]);
        mac.update(subject.value.as_bytes());
        let mut out = [0u8; 64];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut out)
            .expect("64 hex digits for 32 bytes");
        String::from_utf8(out.to_vec()).expect("hex is ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> SubjectHasher {
        SubjectHasher::new("k".to_string().into())
    }

    #[test]
    fn normalised_identifiers_hash_alike() {
        let a = SubjectId::parse("email", "  Alice@Example.EDU ", "subject").unwrap();
        let b = SubjectId::parse("email", "alice@example.edu", "subject").unwrap();
        assert_eq!(hasher().hash(&a), hasher().hash(&b));
        let s = SubjectId::parse("student_number", "ab123", "subject").unwrap();
        assert_eq!(s.value(), "AB123");
    }

    #[test]
    fn type_is_part_of_the_hash_and_key_matters() {
        let a = SubjectId::parse("crm_contact", "42", "s").unwrap();
        let b = SubjectId::parse("moodle_user", "42", "s").unwrap();
        assert_ne!(hasher().hash(&a), hasher().hash(&b));
        let other = SubjectHasher::new("other".to_string().into());
        assert_ne!(hasher().hash(&a), other.hash(&a));
    }

    #[test]
    fn bad_identifiers_name_the_field() {
        let e = SubjectId::parse("email", "not-an-email", "subjects[1]").unwrap_err();
        assert!(e.to_string().contains("subjects[1].value"), "{e}");
        let e = SubjectId::parse("", "x", "subject").unwrap_err();
        assert!(e.to_string().contains("subject.type"), "{e}");
        let e = SubjectId::parse("Email", "x", "subject").unwrap_err();
        assert!(e.to_string().contains("subject.type"), "{e}");
        let e = SubjectId::parse("browser", "   ", "subject").unwrap_err();
        assert!(e.to_string().contains("subject.value"), "{e}");
    }

    #[test]
    fn debug_hides_the_value() {
        let a = SubjectId::parse("email", "alice@example.edu", "s").unwrap();
        assert!(!format!("{a:?}").contains("alice"));
    }
}
