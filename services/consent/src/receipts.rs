//! Receipts over the API: the receipt a RecordConsent or WithdrawConsent
//! issues, GetReceipt and ListReceiptKeys. How a receipt is built and signed is
//! in [`crate::receipt`].

use std::sync::{Arc, atomic::Ordering};

use custodia_core::{
    ApiError,
    auth::CallContext,
    pagination,
    storage::{from_micros, to_micros},
    subject::SubjectId,
};
use custodia_proto::{
    common::v1::{PublicKey, SubjectRef},
    consent::v1::{self as pb, ConsentEvent, ConsentState, Evidence},
};

use crate::{api::Api, receipt, register, store::NewRecord};

/// Adds the receipt key to the keys ListReceiptKeys hands out before its first
/// receipt of this process (`now_us`), so that receipts stay verifiable after
/// the key is rotated.
async fn store_receipt_key(api: &Api, now_us: i64) -> Result<(), ApiError> {
    if !api.receipt_key_stored.load(Ordering::Acquire) {
        api.store
            .add_receipt_key(
                api.receipts.key_id(),
                api.receipts.public_key().as_bytes(),
                now_us,
            )
            .await?;
        api.receipt_key_stored.store(true, Ordering::Release);
    }
    Ok(())
}

/// How a receipt names a person: the identifier's type and its keyed hash (the
/// one events and the access log hold), never the identifier itself, so the
/// stored receipts are no less pseudonymous than the events. Whoever holds an
/// identifier can ask custodia (the key's holder) whether a receipt names it.
fn pseudonym(api: &Api, id: &SubjectId) -> SubjectRef {
    SubjectRef {
        r#type: id.kind().to_string(),
        value: format!("{}{}", receipt::HASHED, api.ctx.subjects.hash(id)),
    }
}

/// Issues the receipt for `records` and links each event to it.
pub(crate) async fn issue(
    api: &Api,
    subject: &SubjectId,
    guardian: Option<&pb::GuardianConsent>,
    evidence: &Evidence,
    records: &mut [NewRecord],
) -> Result<pb::ConsentReceipt, ApiError> {
    store_receipt_key(api, to_micros(api.ctx.clock.now())).await?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut purposes = Vec::new();
    for r in records.iter() {
        // The direct-marketing objection names no registered purpose.
        let p = match api.cache.purpose(&r.purpose_id) {
            Ok(cached) => cached.purpose,
            Err(_) => Arc::new(
                api.store
                    .purpose(&r.purpose_id)
                    .await?
                    .map(|s| s.purpose)
                    .unwrap_or_default(),
            ),
        };
        purposes.push(p);
    }
    let lines = records
        .iter()
        .zip(&purposes)
        .map(|(r, p)| receipt::Line {
            name: r.event.purpose.clone(),
            purpose: p,
            state: ConsentState::try_from(r.event.state).unwrap_or_default(),
            expires: r.expire_us.map(|us| from_micros(us).to_rfc3339()),
        })
        .collect();
    let facts = receipt::Facts {
        id: id.clone(),
        jurisdiction: api.ctx.calendar.jurisdiction().country(),
        consent_time: evidence.collect_time.unwrap_or_default(),
        channel: evidence.channel,
        subject: pseudonym(api, subject),
        language: evidence.language.clone(),
        notice: evidence.notice.clone(),
        events: records.iter().map(|r| r.event.name.clone()).collect(),
        // Validated by the caller (records::validate_guardian).
        guardian: guardian
            .and_then(|g| g.guardian.as_ref())
            .and_then(|g| SubjectId::parse(&g.r#type, &g.value, "guardian.guardian").ok())
            .map(|g| pseudonym(api, &g)),
        lines,
    };
    let issued = receipt::issue(&api.ctx.config, &api.receipts, facts);
    for r in records.iter_mut() {
        r.event.receipt = receipt::name(&id);
    }
    Ok(issued)
}

/// The receipt the first event links to: `issued` when this call's write went
/// in, else (an idempotent replay) the first call's, as stored.
pub(crate) async fn answered(
    api: &Api,
    events: &[ConsentEvent],
    issued: Option<pb::ConsentReceipt>,
) -> Result<Option<pb::ConsentReceipt>, ApiError> {
    let Some(name) = events.first().map(|e| e.receipt.as_str()) else {
        return Ok(None);
    };
    if let Some(issued) = issued.filter(|r| r.name == name) {
        return Ok(Some(issued));
    }
    match receipt::id_of(name) {
        None => Ok(None),
        Some(id) => api.store.receipt(id).await,
    }
}

/// The receipt id of a GetReceipt `name`.
fn receipt_id(name: &str) -> Result<&str, ApiError> {
    receipt::id_of(name).ok_or_else(|| ApiError::invalid("name", "must be `receipts/{receipt}`"))
}

/// GetReceipt.
pub(crate) async fn get(
    api: &Api,
    call: &CallContext,
    r: pb::GetReceiptRequest,
) -> Result<pb::GetReceiptResponse, ApiError> {
    let name = r.name;
    let id = receipt_id(&name)?;
    let receipt = api
        .store
        .receipt(id)
        .await?
        .ok_or_else(|| ApiError::not_found("receipt", name.clone()).in_field("name"))?;
    let mut access = api.access(call, "GetReceipt", None, "");
    access.resource = name;
    api.record_access(&access).await?;
    Ok(pb::GetReceiptResponse {
        receipt: Some(receipt),
    })
}

/// Every key that signed receipts, as ListReceiptKeys lists them: the key this
/// process signs with (`current`) first until it has signed (then the store
/// has it: its create_time is its first receipt), then the `stored` ones,
/// newest first.
///
/// No retire_time: while a rotation rolls out, replicas still on the old key
/// keep signing with it after the new key's first receipt, and no replica
/// knows when the last one stopped.
fn key_list(current: (&str, &[u8]), stored: &[(String, Vec<u8>, i64)]) -> Vec<PublicKey> {
    let key = |key_id: &str, public_key: &[u8], first_used_us: Option<i64>| PublicKey {
        key_id: key_id.to_string(),
        algorithm: "Ed25519".into(),
        public_key: public_key.to_vec(),
        create_time: first_used_us.map(|us| register::timestamp(from_micros(us))),
        ..Default::default()
    };
    let unsigned =
        (!stored.iter().any(|(id, ..)| id == current.0)).then(|| key(current.0, current.1, None));
    unsigned
        .into_iter()
        .chain(
            stored
                .iter()
                .map(|(id, public_key, first_used_us)| key(id, public_key, Some(*first_used_us))),
        )
        .collect()
}

/// ListReceiptKeys.
pub(crate) async fn list_keys(
    api: &Api,
    r: pb::ListReceiptKeysRequest,
) -> Result<pb::ListReceiptKeysResponse, ApiError> {
    let size = pagination::page_size_or(r.page_size, 100)?;
    let from: usize = pagination::decode(&r.page_token, "receipt-keys")?.unwrap_or(0);
    let stored = api.store.receipt_keys().await?;
    let public_key = api.receipts.public_key();
    let all = key_list(
        (api.receipts.key_id(), public_key.as_bytes().as_slice()),
        &stored,
    );
    let keys: Vec<_> = all.iter().skip(from).take(size).cloned().collect();
    let next = from + keys.len();
    Ok(pb::ListReceiptKeysResponse {
        keys,
        next_page_token: if next < all.len() {
            pagination::encode(&next, "receipt-keys")
        } else {
            String::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_names() {
        assert_eq!(receipt_id("receipts/abc123").unwrap(), "abc123");
        assert!(receipt_id("receipts/").is_err());
        assert!(receipt_id("abc123").is_err());
    }

    #[test]
    fn the_current_key_comes_first_until_it_has_signed() {
        let stored = vec![("old".to_string(), vec![1], 5_000_000)];
        let keys = key_list(("new", &[2]), &stored);
        let ids: Vec<_> = keys.iter().map(|k| k.key_id.as_str()).collect();
        assert_eq!(ids, ["new", "old"]);
        assert_eq!(keys[0].create_time, None);
        assert_eq!(keys[1].create_time.map(|t| t.seconds), Some(5));
        assert_eq!(keys[1].algorithm, "Ed25519");
        let keys = key_list(("old", &[1]), &stored);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].public_key, [1]);
    }
}
