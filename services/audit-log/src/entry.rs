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
//!
//! An access to many subjects in one call (a batch check of 10,000 students) is
//! one entry of version 2 whose `members` seal each subject's type and keyed
//! hash under that subject's own key ([`seal_member`]), so erasing one of them
//! works as for a single entry, at a fraction of the bytes of one entry per
//! subject (no repeated clear fields, no nonce stored: it is derived from the
//! entry's event id and the member's position). Its details, shared by every
//! subject, are about the call and kept in clear.

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Entry format version written today for an access to one subject (or none).
pub const ENTRY_VERSION: u8 = 1;
/// Entry format version of an access to several subjects (with `members`).
pub const BATCH_ENTRY_VERSION: u8 = 2;

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
    /// The subjects of an access to several at once, each sealed under its own
    /// key; empty (and absent from the bytes) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<SealedMember>,
}

/// One subject of a batch entry: its type and keyed hash, sealed under its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMember {
    /// Which subject key.
    #[serde(rename = "k")]
    pub key_id: String,
    /// Ciphertext with tag, base64, of `type \0 hash` (the hash's 32 bytes).
    #[serde(rename = "c")]
    pub ciphertext: String,
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

/// The nonce of member `index` of the entry `event_id`: unique per (entry,
/// position), as event ids are unique in the log, so never reused with a key.
fn member_nonce(event_id: &str, index: usize) -> [u8; 12] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"custodia-audit-member-nonce\0")
        .chain_update(event_id.as_bytes())
        .chain_update((index as u64).to_be_bytes())
        .finalize();
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&digest[..12]);
    nonce
}

/// The associated data of member `index` of entry `event_id`: binds the
/// ciphertext to its entry and place.
fn member_aad(event_id: &str, index: usize) -> Vec<u8> {
    let mut aad = event_id.as_bytes().to_vec();
    aad.push(b'#');
    aad.extend_from_slice(index.to_string().as_bytes());
    aad
}

/// Seals member `index` (type and keyed hash) of the batch entry `event_id`
/// under its subject's `key`.
pub fn seal_member(
    key: &[u8; 32],
    key_id: &str,
    event_id: &str,
    index: usize,
    subject_type: &str,
    subject_hash: &str,
) -> SealedMember {
    let cipher = ChaCha20Poly1305::new(key.into());
    let mut plaintext = subject_type.as_bytes().to_vec();
    plaintext.push(0);
    match hex::decode(subject_hash) {
        Ok(raw) if raw.len() == 32 => plaintext.extend_from_slice(&raw),
        // Not a hash of ours (only tests send such): kept as given.
        _ => plaintext.extend_from_slice(subject_hash.as_bytes()),
    }
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&member_nonce(event_id, index)),
            Payload {
                msg: &plaintext,
                aad: &member_aad(event_id, index),
            },
        )
        .expect("encryption of an in-memory buffer cannot fail");
    SealedMember {
        key_id: key_id.to_string(),
        ciphertext: STANDARD.encode(ciphertext),
    }
}

/// Opens member `index` of entry `event_id`; `None` if the key does not fit or
/// the data was altered.
pub fn open_member(
    key: &[u8],
    event_id: &str,
    index: usize,
    member: &SealedMember,
) -> Option<SubjectFields> {
    let cipher = ChaCha20Poly1305::new_from_slice(key).ok()?;
    let ciphertext = STANDARD.decode(&member.ciphertext).ok()?;
    let plaintext = cipher
        .decrypt(
            Nonce::from_slice(&member_nonce(event_id, index)),
            Payload {
                msg: &ciphertext,
                aad: &member_aad(event_id, index),
            },
        )
        .ok()?;
    let split = plaintext.iter().position(|b| *b == 0)?;
    let (kind, hash) = (&plaintext[..split], &plaintext[split + 1..]);
    let subject_hash = if hash.len() == 32 {
        hex::encode(hash)
    } else {
        String::from_utf8(hash.to_vec()).ok()?
    };
    Some(SubjectFields {
        subject_type: String::from_utf8(kind.to_vec()).ok()?,
        subject_hash,
        detail: String::new(),
    })
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
    fn members_seal_and_open_bound_to_entry_and_place() {
        let key = new_key();
        let hash = "ab".repeat(32);
        let m = seal_member(&key, "k1", "event-1", 3, "email", &hash);
        let opened = open_member(&key, "event-1", 3, &m).unwrap();
        assert_eq!(
            (opened.subject_type.as_str(), opened.subject_hash.as_str()),
            ("email", hash.as_str())
        );
        assert_eq!(
            open_member(&key, "event-1", 4, &m),
            None,
            "bound to its place"
        );
        assert_eq!(
            open_member(&key, "event-2", 3, &m),
            None,
            "bound to its entry"
        );
        assert_eq!(open_member(&new_key(), "event-1", 3, &m), None);
        // Compact: well under a fifth of a single entry's ~600 bytes of JSON.
        assert!(serde_json::to_vec(&m).unwrap().len() < 120, "{m:?}");
    }

    #[test]
    fn single_entries_keep_their_bytes() {
        // An entry without members serialises exactly as before the field existed.
        let e = Entry {
            v: ENTRY_VERSION,
            event_id: "e".into(),
            ..Default::default()
        };
        assert!(!String::from_utf8(e.to_bytes()).unwrap().contains("members"));
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
            members: vec![seal_member(
                &new_key(),
                "k",
                "e",
                0,
                "email",
                &"cd".repeat(32),
            )],
        };
        assert_eq!(Entry::from_bytes(&e.to_bytes()).unwrap(), e);
    }
}
