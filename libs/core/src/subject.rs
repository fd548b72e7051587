//! Subject identifiers: typed (`email`, `student_number`, `moodle_user`,
//! `crm_contact`, `browser`, ...), normalised, and pseudonymised as a keyed hash
//! (HMAC-SHA256) wherever a service only needs to match them (Art. 25, 32).
//!
//! One person must be one subject however a caller spells the identifier, or an
//! erasure or access request for the real person misses the ghost. So every value
//! is, after trimming white space:
//!
//! - **refused** (INVALID_ARGUMENT naming `<field>.value`) when it holds an
//!   invisible character ([`crate::invisible`]): control characters, format
//!   characters such as the zero-width space/joiners, soft hyphen, BOM, the bidi
//!   embeddings, overrides, isolates and marks (U+202A-U+202E, U+2066-U+2069,
//!   U+200E/U+200F, U+061C), and every other default-ignorable code point. They
//!   are refused rather than dropped: a value that carries them was mangled on the
//!   way, and the caller should know;
//! - **NFKC** for `email`, `student_number` and `staff_number`: these are typed
//!   by people, and compatibility forms (fullwidth letters and digits from an
//!   IME, ligatures, superscripts) are the same address or number, never another
//!   one;
//! - **NFC** for every other type (`moodle_user`, `crm_contact`, `browser`, ...):
//!   they are keys of other systems, where a compatibility variant may be a
//!   different key, while canonically equivalent spellings (`é` as U+00E9 or as
//!   `e` + U+0301) are the same text;
//! - then per type: an `email` is `local@domain` with the local part lowercased
//!   (RFC 5321 lets a server tell case apart in it; none of the ones people use
//!   does, and a missed erasure costs more than merging two mailboxes that differ
//!   only by case) and the domain in IDNA ASCII form (UTS #46 with the STD3 rules
//!   and DNS lengths: `École.FR` is `xn--cole-9oa.fr`); address literals
//!   (`user@[192.0.2.1]`) and invalid domains are refused. `student_number` and
//!   `staff_number` are uppercased. A `phone` is parsed with libphonenumber's
//!   metadata (the `phonenumber` crate) and kept in E.164 (`+33612345678`): a
//!   national number (`06 12 34 56 78`) is read in the numbering plan of the
//!   institution's country ([`set_phone_region`], from `[legal] jurisdiction`),
//!   an international one (`+33 6 12 34 56 78`) in its own; a number that is
//!   not valid in its plan is refused.
//!
//! Parsing a normalised value gives it back unchanged.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;

use crate::{error::ApiError, invisible::first_invisible, validate::MAX_ID};

/// Most bytes of a value before normalisation: normalisation may shrink a value
/// (fullwidth forms are 3 bytes, their ASCII 1), but a value this long is refused
/// before any work is spent on it.
const MAX_RAW: usize = 4 * MAX_ID;

/// Identifier types custodia knows how to normalise; others are accepted in NFC
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
        let too_long = || {
            ApiError::invalid(
                format!("{field}.value"),
                format!("must be at most {MAX_ID} bytes without control characters"),
            )
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(ApiError::invalid(format!("{field}.value"), "is required"));
        }
        if value.len() > MAX_RAW {
            return Err(too_long());
        }
        if let Some(c) = first_invisible(value) {
            return Err(ApiError::invalid(
                format!("{field}.value"),
                format!(
                    "contains U+{:04X}, an invisible, bidirectional-control or control \
                     character; identifiers must not contain any",
                    c as u32
                ),
            ));
        }
        let value = normalise(kind, value)
            .map_err(|why| ApiError::invalid(format!("{field}.value"), why))?;
        // For the same reason as in `normalise`.
        let value = match value.trim() {
            trimmed if trimmed.len() == value.len() => value,
            trimmed => trimmed.to_string(),
        };
        if value.is_empty() {
            return Err(ApiError::invalid(format!("{field}.value"), "is required"));
        }
        if value.len() > MAX_ID {
            return Err(too_long());
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

/// The normal form of a trimmed `value` free of invisible characters, or why it
/// is not a valid identifier of type `kind`.
fn normalise(kind: &str, value: &str) -> Result<String, &'static str> {
    Ok(match kind {
        // Trimmed again after NFKC, which may turn a character into a space and a
        // combining mark (U+00B4 is ` ́`): the result is the same whichever
        // equivalent spelling came in.
        "email" => email(nfkc(value).trim())?,
        "student_number" | "staff_number" => nfkc(&nfkc(value).trim().to_uppercase()),
        "phone" => phone(value)?,
        _ => nfc(value),
    })
}

/// Where national phone numbers are read (`FR` unless the process sets it).
static PHONE_REGION: std::sync::RwLock<phonenumber::country::Id> =
    std::sync::RwLock::new(phonenumber::country::Id::FR);

/// Sets the country whose numbering plan national phone numbers are read in
/// (ISO 3166-1 alpha-2, e.g. `LU`); the server sets it from `[legal]
/// jurisdiction` at start. An unknown code is refused.
pub fn set_phone_region(country: &str) -> Result<(), String> {
    let id: phonenumber::country::Id = country
        .parse()
        .map_err(|_| format!("{country:?} is not a country with a phone numbering plan"))?;
    *PHONE_REGION.write().unwrap_or_else(|p| p.into_inner()) = id;
    Ok(())
}

/// `value` in E.164, or why it is not a phone number.
fn phone(value: &str) -> Result<String, &'static str> {
    let region = *PHONE_REGION.read().unwrap_or_else(|p| p.into_inner());
    let number = phonenumber::parse(Some(region), value)
        .map_err(|_| "is not a phone number (e.g. +33612345678, or 06 12 34 56 78 in France)")?;
    if !phonenumber::is_valid(&number) {
        return Err("is not a valid phone number in its country's numbering plan");
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

fn nfc(s: &str) -> String {
    if s.is_ascii() {
        s.to_string()
    } else {
        s.nfc().collect()
    }
}

fn nfkc(s: &str) -> String {
    if s.is_ascii() {
        s.to_string()
    } else {
        s.nfkc().collect()
    }
}

const NOT_AN_EMAIL: &str = "is not an email address";

/// `local@domain` from an NFKC `value`: local part lowercased, domain in IDNA
/// ASCII form.
fn email(value: &str) -> Result<String, &'static str> {
    // `value` is in NFKC already: a fullwidth `＠` is an `@`.
    let Some((local, domain)) = value.split_once('@') else {
        return Err(NOT_AN_EMAIL);
    };
    if local.is_empty() || domain.contains('@') || value.contains(char::is_whitespace) {
        return Err(NOT_AN_EMAIL);
    }
    // Lowercasing may leave a string that is not in NFKC (rarely); normalise again.
    let local = nfkc(&local.to_lowercase());
    // UTS #46 maps (case, width, NFC) and encodes each label as punycode; the STD3
    // rules keep to letters, digits and hyphens, and DNS lengths refuse empty labels.
    // ASCII capitals lowered first (UTS #46 maps them alike): a lowercase ASCII
    // domain takes idna's fast path, a third of the time of one with capitals.
    let domain: Cow<'_, str> = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(domain.to_ascii_lowercase())
    } else {
        Cow::Borrowed(domain)
    };
    let domain = Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Check,
            DnsLength::Verify,
        )
        .map_err(|_| "has a domain that is not a valid (internationalised) domain name")?;
    if !domain.contains('.') {
        return Err(NOT_AN_EMAIL);
    }
    let mut address = String::with_capacity(local.len() + 1 + domain.len());
    address.push_str(&local);
    address.push('@');
    address.push_str(&domain);
    Ok(address)
}

/// For a normalised phone number (E.164), the other ways other systems usually
/// store it, once spaces and punctuation are removed: in the national format
/// (`0612345678`) and with the `00` international prefix (`0033612345678`).
/// A connector matching stored values looks for these too.
pub fn phone_other_spellings(normalised: &str) -> Vec<String> {
    let Ok(number) = phonenumber::parse(None, normalised) else {
        return Vec::new();
    };
    let national: String = number
        .format()
        .mode(phonenumber::Mode::National)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let mut out = vec![national];
    if let Some(rest) = normalised.strip_prefix('+') {
        out.push(format!("00{rest}"));
    }
    out.retain(|s| !s.is_empty() && s != normalised);
    out
}

/// For a normalised email whose domain is internationalised (has an `xn--`
/// label), the same address with the domain in Unicode: how other systems
/// usually store what people typed, so a connector matching stored values must
/// look for this spelling too. `None` for any other value.
pub fn email_with_unicode_domain(normalised: &str) -> Option<String> {
    let (local, domain) = normalised.split_once('@')?;
    if !domain.split('.').any(|label| label.starts_with("xn--")) {
        return None;
    }
    match idna::domain_to_unicode(domain) {
        (unicode, Ok(())) => Some(format!("{local}@{unicode}")),
        (_, Err(_)) => None,
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
    fn phone_numbers_are_one_person_however_written() {
        let e164 = |v: &str| SubjectId::parse("phone", v, "subject").map(|s| s.value().to_string());
        for spelling in [
            "06 12 34 56 78",
            "+33 6 12 34 56 78",
            "0612345678",
            "+33 (0)6-12-34-56-78",
        ] {
            assert_eq!(e164(spelling).unwrap(), "+33612345678", "{spelling}");
        }
        assert_eq!(
            phone_other_spellings("+33612345678"),
            ["0612345678", "0033612345678"]
        );
        // A normalised value parses to itself; another country keeps its own plan.
        assert_eq!(e164("+33612345678").unwrap(), "+33612345678");
        assert_eq!(e164("+352 621 123 456").unwrap(), "+352621123456");
        for bad in ["12", "not a number", "+33 1"] {
            let e = SubjectId::parse("phone", bad, "subjects[0]").unwrap_err();
            assert!(e.to_string().contains("subjects[0].value"), "{bad}: {e}");
        }
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

    /// The one violation of `e`: (field, description).
    fn violation(e: ApiError) -> (String, String) {
        match e {
            ApiError::InvalidArgument(mut list) if list.len() == 1 => {
                let v = list.remove(0);
                (v.field, v.description)
            }
            other => panic!("expected one field violation, got {other:?}"),
        }
    }

    fn refused(kind: &str, value: &str) -> (String, String) {
        violation(SubjectId::parse(kind, value, "subject").unwrap_err())
    }

    #[test]
    fn zero_width_space_is_refused_naming_the_field() {
        let (field, why) = refused("email", "ali\u{200B}ce@example.edu");
        assert_eq!(field, "subject.value");
        assert!(why.contains("U+200B"), "{why}");
        assert!(!why.contains("ali"), "the value is not echoed: {why}");
        for c in ['\u{200C}', '\u{200D}', '\u{2060}'] {
            assert_eq!(
                refused("crm_contact", &format!("42{c}7")).0,
                "subject.value"
            );
        }
    }

    #[test]
    fn soft_hyphen_is_refused() {
        let (field, why) = refused("student_number", "AB\u{00AD}123");
        assert_eq!(field, "subject.value");
        assert!(why.contains("U+00AD"), "{why}");
    }

    #[test]
    fn byte_order_mark_is_refused_even_in_front() {
        // U+FEFF is not white space: trimming keeps it, so it is refused.
        assert_eq!(
            refused("email", "\u{FEFF}alice@example.edu").0,
            "subject.value"
        );
        assert_eq!(refused("moodle_user", "u\u{FEFF}1").0, "subject.value");
    }

    #[test]
    fn bidi_controls_are_refused() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            for kind in KNOWN_TYPES {
                let (field, _) = refused(kind, &format!("12{c}34@example.edu"));
                assert_eq!(field, "subject.value", "{kind} U+{:04X}", c as u32);
            }
        }
        // The probe's spoof: U+202E makes `alice@example.edu` display differently.
        assert_eq!(
            refused("email", "\u{202E}ude.elpmaxe@ecila").0,
            "subject.value"
        );
    }

    #[test]
    fn control_characters_are_refused_in_every_type() {
        for kind in KNOWN_TYPES.iter().chain(&["custom_id"]) {
            for c in ['\u{0}', '\u{7}', '\u{1B}', '\u{7F}', '\u{9F}'] {
                assert_eq!(
                    refused(kind, &format!("1{c}2@example.edu")).0,
                    "subject.value"
                );
            }
        }
    }

    #[test]
    fn combining_accent_is_the_same_subject_as_the_composed_letter() {
        let composed = SubjectId::parse("email", "\u{E9}lodie@example.fr", "s").unwrap();
        let decomposed = SubjectId::parse("email", "e\u{301}lodie@example.fr", "s").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(decomposed.value(), "\u{E9}lodie@example.fr");
        assert_eq!(hasher().hash(&composed), hasher().hash(&decomposed));
        // NFC for the keys of other systems too.
        let a = SubjectId::parse("crm_contact", "Ren\u{E9}", "s").unwrap();
        let b = SubjectId::parse("crm_contact", "Rene\u{301}", "s").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn email_domains_are_in_idna_ascii_form() {
        let unicode = SubjectId::parse("email", "\u{C9}l\u{E8}ve@\u{C9}cole.FR", "s").unwrap();
        let ascii = SubjectId::parse("email", "\u{E9}l\u{E8}ve@xn--cole-9oa.fr", "s").unwrap();
        assert_eq!(unicode.value(), "\u{E9}l\u{E8}ve@xn--cole-9oa.fr");
        assert_eq!(unicode, ascii);
        assert_eq!(hasher().hash(&unicode), hasher().hash(&ascii));
        // A decomposed accent in the domain is the same domain.
        let nfd = SubjectId::parse("email", "E\u{301}le\u{300}ve@E\u{301}cole.fr", "s").unwrap();
        assert_eq!(nfd, ascii);
    }

    #[test]
    fn the_unicode_spelling_of_an_idna_domain_is_known() {
        let id = SubjectId::parse("email", "\u{C9}l\u{E8}ve@\u{C9}cole.FR", "s").unwrap();
        assert_eq!(
            email_with_unicode_domain(id.value()).as_deref(),
            Some("\u{E9}l\u{E8}ve@\u{E9}cole.fr")
        );
        assert_eq!(email_with_unicode_domain("ada@example.edu"), None);
        assert_eq!(email_with_unicode_domain("not an email"), None);
    }

    #[test]
    fn invalid_domains_are_refused_naming_the_field() {
        for bad in [
            "a@-example.com",
            "a@exa_mple.com",
            "a@example..com",
            "a@xn--zz.com",
            "a@[192.0.2.1]",
            "a@example.com.",
            &format!("a@{}.com", "x".repeat(64)),
        ] {
            let (field, why) =
                violation(SubjectId::parse("email", bad, "subjects[3]").unwrap_err());
            assert_eq!(field, "subjects[3].value", "{bad}");
            assert!(!why.contains('@'), "the value is not echoed: {why}");
        }
    }

    #[test]
    fn compatibility_forms_of_people_typed_identifiers_fold() {
        // Fullwidth letters, digits and `＠` from an IME.
        let wide = SubjectId::parse("email", "\u{FF21}da@\u{FF25}xample.edu", "s").unwrap();
        assert_eq!(wide.value(), "ada@example.edu");
        let wide = SubjectId::parse("email", "ada\u{FF20}example.edu", "s").unwrap();
        assert_eq!(wide.value(), "ada@example.edu");
        let number = SubjectId::parse("student_number", "\u{FF41}\u{FF42}\u{FF11}23", "s").unwrap();
        assert_eq!(number.value(), "AB123");
        // Other systems' keys keep their compatibility characters.
        let key = SubjectId::parse("moodle_user", "\u{FB01}le", "s").unwrap();
        assert_eq!(key.value(), "\u{FB01}le");
    }

    #[test]
    fn debug_hides_the_value() {
        let a = SubjectId::parse("email", "alice@example.edu", "s").unwrap();
        assert!(!format!("{a:?}").contains("alice"));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use unicode_normalization::UnicodeNormalization;

        fn hasher() -> SubjectHasher {
            SubjectHasher::new("k".to_string().into())
        }

        /// Characters that make normalisation work: ASCII, accented letters in both
        /// forms, combining marks, fullwidth and other compatibility forms, cased
        /// letters with irregular mappings, a few scripts, spaces and punctuation.
        fn interesting_char() -> impl Strategy<Value = char> {
            prop_oneof![
                4 => proptest::char::range('a', 'z'),
                2 => proptest::char::range('A', 'Z'),
                2 => proptest::char::range('0', '9'),
                2 => proptest::char::range('\u{C0}', '\u{17F}'),
                2 => proptest::char::range('\u{300}', '\u{36F}'),
                1 => proptest::char::range('\u{FF01}', '\u{FF5E}'),
                1 => proptest::char::range('\u{370}', '\u{3FF}'),
                1 => proptest::char::range('\u{1E00}', '\u{1FFF}'),
                1 => proptest::char::range('\u{AC00}', '\u{AC40}'),
                1 => proptest::sample::select(vec![
                    '.', '-', '_', '+', ' ', '\u{A0}', '\u{B4}', '\u{130}', '\u{DF}', '\u{FB01}',
                    '\u{2126}', '\u{212B}', '\u{2460}', '\u{345}', '\u{3000}', '@',
                ]),
                1 => any::<char>(),
            ]
        }

        fn text(max: usize) -> impl Strategy<Value = String> {
            proptest::collection::vec(interesting_char(), 1..max)
                .prop_map(|cs| cs.into_iter().collect())
        }

        fn email_like() -> impl Strategy<Value = String> {
            (
                text(12),
                text(10),
                prop::sample::select(vec!["fr", "edu", "COM", "\u{E9}u"]),
            )
                .prop_map(|(local, host, tld)| format!("{local}@{host}.{tld}"))
        }

        fn kind() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "email",
                "student_number",
                "staff_number",
                "moodle_user",
                "crm_contact",
                "browser",
                "phone",
                "custom_id",
            ])
        }

        fn value_for(kind: &'static str) -> BoxedStrategy<String> {
            if kind == "email" {
                prop_oneof![email_like(), text(20)].boxed()
            } else {
                text(20).boxed()
            }
        }

        /// Values of `kind` that are mostly valid: letters (some accented, some
        /// decomposed) and digits.
        fn valid_value_for(kind: &'static str) -> BoxedStrategy<String> {
            let plain = || {
                proptest::collection::vec(
                    prop_oneof![
                        4 => proptest::char::range('a', 'z'),
                        2 => proptest::char::range('0', '9'),
                        1 => proptest::char::range('\u{E0}', '\u{F6}'),
                        1 => proptest::sample::select(vec!['\u{C9}', '\u{DF}', '\u{FF21}']),
                    ],
                    1..12,
                )
                .prop_map(|cs| cs.into_iter().collect::<String>())
            };
            match kind {
                "email" => (plain(), plain())
                    .prop_map(|(local, host)| format!("{local}@{host}.fr"))
                    .boxed(),
                "phone" => "\\+?[0-9]{4,12}".boxed(),
                _ => plain().boxed(),
            }
        }

        /// Invisible characters, each of the classes the probe used and beyond.
        fn invisible_char() -> impl Strategy<Value = char> {
            prop_oneof![
                proptest::sample::select(vec![
                    '\u{200B}',
                    '\u{200C}',
                    '\u{200D}',
                    '\u{2060}',
                    '\u{FEFF}',
                    '\u{AD}',
                    '\u{202A}',
                    '\u{202B}',
                    '\u{202C}',
                    '\u{202D}',
                    '\u{202E}',
                    '\u{2066}',
                    '\u{2067}',
                    '\u{2068}',
                    '\u{2069}',
                    '\u{200E}',
                    '\u{200F}',
                    '\u{61C}',
                    '\u{34F}',
                    '\u{FE0F}',
                    '\u{180E}',
                    '\u{2028}',
                    '\u{85}',
                    '\u{E0001}',
                ]),
                proptest::char::range('\u{0}', '\u{1F}'),
                proptest::char::range('\u{7F}', '\u{9F}'),
                proptest::char::range('\u{E0020}', '\u{E007F}'),
                proptest::char::range('\u{FE00}', '\u{FE0F}'),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Parsing a normalised value gives the same value.
            #[test]
            fn parse_is_idempotent((kind, value) in kind().prop_flat_map(|k| (Just(k), value_for(k)))) {
                if let Ok(once) = SubjectId::parse(kind, &value, "subject") {
                    let twice = SubjectId::parse(kind, once.value(), "subject");
                    let twice = twice.map_err(|e| e.to_string());
                    prop_assert_eq!(twice.as_ref().map(SubjectId::value), Ok(once.value()));
                }
            }

            /// An invisible character anywhere inside a valid identifier is refused,
            /// naming the field.
            #[test]
            fn an_inserted_invisible_character_is_refused(
                (kind, value) in kind().prop_flat_map(|k| (Just(k), valid_value_for(k))),
                c in invisible_char(),
                at in any::<prop::sample::Index>(),
            ) {
                let trimmed = value.trim();
                prop_assume!(SubjectId::parse(kind, trimmed, "subject").is_ok());
                let boundaries: Vec<usize> = trimmed
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([trimmed.len()])
                    // White space at either end is trimmed (U+2028, U+0085 and the
                    // C0 spaces are white space): inside only, for those.
                    .filter(|&i| !c.is_whitespace() || (i > 0 && i < trimmed.len()))
                    .collect();
                prop_assume!(!boundaries.is_empty());
                let i = boundaries[at.index(boundaries.len())];
                let spoofed = format!("{}{c}{}", &trimmed[..i], &trimmed[i..]);
                match SubjectId::parse(kind, &spoofed, "subject") {
                    Err(ApiError::InvalidArgument(list)) => {
                        prop_assert_eq!(list.len(), 1);
                        prop_assert_eq!(&list[0].field, "subject.value");
                    }
                    other => prop_assert!(false, "U+{:04X} accepted: {:?}", c as u32, other),
                }
            }

            /// Canonically equivalent spellings (NFD, NFC) are one subject; so are
            /// compatibility spellings (NFKD, NFKC) of people-typed identifiers.
            #[test]
            fn equivalent_spellings_hash_alike((kind, value) in kind().prop_flat_map(|k| (Just(k), value_for(k)))) {
                let nfc: String = value.nfc().collect();
                let nfd: String = value.nfd().collect();
                let a = SubjectId::parse(kind, &nfc, "subject");
                let b = SubjectId::parse(kind, &nfd, "subject");
                match (&a, &b) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(hasher().hash(a), hasher().hash(b)),
                    (Err(_), Err(_)) => {}
                    _ => prop_assert!(false, "NFC {:?} and NFD {:?} disagree", a, b),
                }
                if matches!(kind, "email" | "student_number" | "staff_number") {
                    let nfkd: String = value.nfkd().collect();
                    let c = SubjectId::parse(kind, &nfkd, "subject");
                    prop_assert_eq!(
                        a.as_ref().ok().map(|id| hasher().hash(id)),
                        c.as_ref().ok().map(|id| hasher().hash(id))
                    );
                }
            }
        }
    }
}
