//! The canonical log entry: the exact bytes hashed into the Merkle tree.
//!
//! Clear fields: sequence number, event id, time, actor (the calling system),
//! service, method, action, resource name, purpose, outcome, status code and
//! trace id (plus the details of events that concern no subject). Personal
//! fields — the subject's identifier type, keyed hash and the event's details —
//! are sealed with
//! ChaCha20-Poly1305 under a per-subject key named by a random `key_id`.
//! Shredding the key leaves the entry (and so the tree) intact while the sealed
//! part can no longer be opened or linked to the person.

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Entry format version written today.
pub const ENTRY_VERSION: u8 = 1;

/// One log entry as stored and hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version.
    pub v: u8,
    /// Position in the log (= Merkle leaf index); binds the entry to its place.
    pub seq: u64,
    /// Event id given by the sender (idempotency key).
    pub event_id: String,
    /// When the access happened, microseconds since the epoch.
    pub time_us: i64,
    /// Authenticated principal that made the access.
    pub actor: String,
    /// Service that served it.
    pub service: String,
    /// gRPC method, e.g. `CheckConsent`.
    pub method: String,
    /// What was done: `read`, `list`, `check`, `create`, `update`, `delete`, ...
    pub action: String,
    /// Resource name touched.
    pub resource: String,
    /// Purpose of the processing ("" when unknown).
    pub purpose: String,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    /// gRPC status code returned.
    pub status_code: i32,
    /// W3C trace id.
    pub trace_id: String,
    /// Details as JSON, in clear only for events that concern no subject.
    pub detail: String,
    /// The subject, sealed under its key; `None` when the access concerned no subject.
    pub sealed: Option<Sealed>,
}

/// Personal fields encrypted under one subject's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Which subject key (random; not derived from the person).
    pub key_id: String,
    /// 96-bit nonce, base64.
    pub nonce: String,
    /// Ciphertext with tag, base64.
    pub ciphertext: String,
}

/// The personal fields inside [`Sealed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectFields {
    /// Identifier type, e.g. `email`.
    pub subject_type: String,
    /// Keyed hash of the normalised identifier.
    pub subject_hash: String,
    /// The event's details as JSON ("" when none).
    pub detail: String,
}

impl Entry {
    /// The canonical bytes (what the tree hashes).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entries serialise")
    }

    /// Parses stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The fields of an entry that have query columns, borrowed from the entry's
/// bytes where no JSON escape forces a copy (what verification needs per row).
#[derive(Debug, Deserialize)]
pub struct EntryColumns<'a> {
    /// Position in the log.
    pub seq: u64,
    /// Event id.
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    /// Time, microseconds since the epoch.
    pub time_us: i64,
    /// Actor.
    #[serde(borrow)]
    pub actor: Cow<'a, str>,
    /// Service.
    #[serde(borrow)]
    pub service: Cow<'a, str>,
    /// Method.
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    /// Action.
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// Resource.
    #[serde(borrow)]
    pub resource: Cow<'a, str>,
    /// Purpose.
    #[serde(borrow)]
    pub purpose: Cow<'a, str>,
    /// Outcome.
    #[serde(borrow)]
    pub outcome: Cow<'a, str>,
}

impl<'a> EntryColumns<'a> {
    /// Parses the column fields of stored entry bytes.
    pub fn parse(bytes: &'a [u8]) -> anyhow::Result<Self> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// A fresh random 256-bit subject key.
pub fn new_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("operating system random source");
    key
}

/// Seals `fields` for the entry `event_id` under `key`.
pub fn seal(key: &[u8; 32], key_id: &str, event_id: &str, fields: &SubjectFields) -> Sealed {
    let cipher = ChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).expect("operating system random source");
    let plaintext = serde_json::to_vec(fields).expect("fields serialise");
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: event_id.as_bytes(),
            },
        )
        .expect("encryption of an in-memory buffer cannot fail");
    Sealed {
        key_id: key_id.to_string(),
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ciphertext),
    }
}

/// Opens `sealed` with `key`; `None` if the key does not fit or the data was altered.
pub fn open(key: &[u8], event_id: &str, sealed: &Sealed) -> Option<SubjectFields> {
    let cipher = ChaCha20Poly1305::new_from_slice(key).ok()?;
    let nonce = STANDARD.decode(&sealed.nonce).ok()?;
    if nonce.len() != 12 {
        return None;
    }
    let ciphertext = STANDARD.decode(&sealed.ciphertext).ok()?;
    let plaintext = cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad: event_id.as_bytes(),
            },
        )
        .ok()?;
    serde_json::from_slice(&plaintext).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> SubjectFields {
        SubjectFields {
            subject_type: "email".into(),
            subject_hash: "ab".repeat(32),
            detail: String::new(),
        }
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = new_key();
        let sealed = seal(&key, "k1", "event-1", &fields());
        assert_eq!(open(&key, "event-1", &sealed), Some(fields()));
        // Bound to its entry and its key.
        assert_eq!(open(&key, "event-2", &sealed), None);
        assert_eq!(open(&new_key(), "event-1", &sealed), None);
        // The ciphertext reveals nothing in clear.
        assert!(!serde_json::to_string(&sealed).unwrap().contains("email"));
    }

    #[test]
    fn entry_bytes_round_trip() {
        let e = Entry {
            v: ENTRY_VERSION,
            seq: 7,
            event_id: "e".into(),
            time_us: 1,
            actor: "crm".into(),
            service: "consent".into(),
            method: "CheckConsent".into(),
            action: "check".into(),
            resource: "purposes/newsletter".into(),
            purpose: "newsletter".into(),
            outcome: "ok".into(),
            status_code: 0,
            trace_id: "t".into(),
            detail: String::new(),
            sealed: Some(seal(&new_key(), "k", "e", &fields())),
        };
        assert_eq!(Entry::from_bytes(&e.to_bytes()).unwrap(), e);
    }
}
