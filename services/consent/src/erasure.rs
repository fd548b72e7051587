//! EraseSubject: dsar's erasure of a subject's consent records (D-7, D-9). The
//! store's side is `store/erasure.rs`.

use custodia_core::{
    ApiError,
    auth::CallContext,
    erasure_ledger::{ErasedIn, LedgerEntry},
    fields::optional_time,
    idempotency::{self, MAX_REQUEST_ID, RequestKey},
    storage::{from_micros, to_micros},
    validate::Validator,
};
use custodia_proto::{
    common::v1::RetainedData,
    consent::v1::{self as pb, ConsentState},
};

use crate::{
    api::Api,
    register::timestamp,
    store::{DIRECT_MARKETING, Suppression, ground_of},
};

/// An EraseSubjectRequest's own checks (the identifiers are checked as they are
/// hashed).
fn validate(r: &pb::EraseSubjectRequest) -> Result<(), ApiError> {
    let mut v = Validator::new();
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
    v.finish()
}

/// EraseSubject.
pub(crate) async fn erase_subject(
    api: &Api,
    call: &CallContext,
    r: pb::EraseSubjectRequest,
) -> Result<pb::EraseSubjectResponse, ApiError> {
    let key = RequestKey::of(call, "EraseSubject", &r.request_id, &r);
    validate(&r)?;
    let ids = api.subjects(&r.subject_identifiers)?;
    let hashes: Vec<String> = ids.iter().map(|(_, h)| h.clone()).collect();
    let now_us = to_micros(api.ctx.clock.now());
    // The record names the request, not the person erased.
    let mut access = api.access(call, "EraseSubject", None, "");
    access.resource = r.dsar_request.clone();
    // A retry answers what the first call erased (a second erasure finds nothing).
    if let Some(first) = idempotency::begin(&api.ctx.db, key.as_ref(), now_us).await? {
        access.detail = serde_json::json!({ "replay": true }).to_string();
        api.record_access(&access).await?;
        return Ok(first);
    }
    let erased = async {
        let erasure = api.store.erase(&hashes, now_us).await?;
        for hash in &hashes {
            api.cache.forget(hash);
        }
        // In the ledger before the answer: a backup restored later gets it
        // applied again (`custodia erasures replay`).
        api.ctx
            .erasures
            .append(&LedgerEntry {
                time: api.ctx.clock.now(),
                service: ErasedIn::Consent,
                subject_hashes: hashes.clone(),
                dsar_request: r.dsar_request.clone(),
            })
            .await
            .map_err(ApiError::internal)?;
        api.ctx.db.scrub_log().await;
        api.ctx
            .outbox
            .enqueue_durable(&access)
            .await
            .map_err(ApiError::internal)?;
        Ok::<_, ApiError>(pb::EraseSubjectResponse {
            erased_event_count: erasure.events,
            erased_receipt_count: erasure.receipts,
            retained: retained(&erasure.kept),
        })
    }
    .await;
    match erased {
        Ok(response) => idempotency::finish(&api.ctx.db, key.as_ref(), response).await,
        Err(e) => {
            idempotency::abandon(&api.ctx.db, key.as_ref()).await;
            Err(e)
        }
    }
}

/// ApplyRecordsRetention: the retention of consent's own records, see
/// [`crate::store::ConsentStore::purge_closed_trails`].
pub(crate) async fn apply_records_retention(
    api: &Api,
    call: &CallContext,
    r: pb::ApplyRecordsRetentionRequest,
) -> Result<pb::ApplyRecordsRetentionResponse, ApiError> {
    let key = RequestKey::of(call, "ApplyRecordsRetention", &r.request_id, &r);
    let now = api.ctx.clock.now();
    let mut v = Validator::new();
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
    let cutoff = optional_time(&mut v, "cutoff_time", r.cutoff_time.as_ref(), Some(now));
    if r.cutoff_time.is_none() {
        v.add("cutoff_time", "is required");
    }
    v.finish()?;
    let cutoff_us = to_micros(cutoff.unwrap_or(now));
    let mut access = api.access(call, "ApplyRecordsRetention", None, "");
    access.action = if r.dry_run { "read" } else { "delete" }.into();
    if let Some(first) = idempotency::begin(&api.ctx.db, key.as_ref(), to_micros(now)).await? {
        access.detail = serde_json::json!({ "replay": true }).to_string();
        api.record_access(&access).await?;
        return Ok(first);
    }
    let purged = async {
        let p = api.store.purge_closed_trails(cutoff_us, r.dry_run).await?;
        if !r.dry_run && p.states > 0 {
            api.cache.forget_all();
            api.ctx.db.scrub_log().await;
        }
        access.detail = serde_json::json!({
            "cutoff_time": from_micros(cutoff_us).to_rfc3339(),
            "states": p.states,
            "events": p.events,
            "receipts": p.receipts,
            "suppressions": p.suppressions,
        })
        .to_string();
        api.ctx
            .outbox
            .enqueue_durable(&access)
            .await
            .map_err(ApiError::internal)?;
        Ok::<_, ApiError>(pb::ApplyRecordsRetentionResponse {
            state_count: p.states,
            event_count: p.events,
            receipt_count: p.receipts,
            suppression_count: p.suppressions,
            deleted: !r.dry_run,
        })
    }
    .await;
    match purged {
        Ok(response) => idempotency::finish(&api.ctx.db, key.as_ref(), response).await,
        Err(e) => {
            idempotency::abandon(&api.ctx.db, key.as_ref()).await;
            Err(e)
        }
    }
}

/// Years a withdrawal is kept after an erasure: the limitation period of a claim
/// that data was processed without consent (France: Code civil, art. 2224).
pub const WITHDRAWAL_PROOF_YEARS: i64 = 5;

/// What an erasure kept, as the response's `retained` (D-7): one entry for the
/// objections, one for the withdrawals, each naming the purposes.
pub(crate) fn retained(kept: &[Suppression]) -> Vec<RetainedData> {
    let mut out = Vec::new();
    for state in [ConsentState::Objected, ConsentState::Withdrawn] {
        let of: Vec<&Suppression> = kept.iter().filter(|s| s.state == state).collect();
        if of.is_empty() {
            continue;
        }
        let mut purposes: Vec<&str> = of.iter().map(|s| s.purpose_id.as_str()).collect();
        purposes.sort_unstable();
        purposes.dedup();
        let purposes = purposes
            .iter()
            .map(|p| {
                if *p == DIRECT_MARKETING {
                    "direct marketing"
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let ground = ground_of(state);
        let entry = match state {
            ConsentState::Objected => RetainedData {
                category: "consent_objections".into(),
                description: format!(
                    "{} objection(s) ({purposes}): purpose, date and channel only, under a keyed \
                     hash of your identifiers",
                    of.len()
                ),
                legal_reference: "GDPR Art. 21(3), Art. 17(3)(b)".into(),
                reason: "Your objection must keep being honoured after your data is erased: \
                         without this entry you could be contacted again."
                    .into(),
                retain_until_time: None,
                ..Default::default()
            },
            _ => {
                let last_us = of.iter().map(|s| s.decision_us).max().unwrap_or_default();
                let until = from_micros(last_us)
                    .checked_add_months(chrono::Months::new(12 * WITHDRAWAL_PROOF_YEARS as u32));
                RetainedData {
                    category: "consent_withdrawals".into(),
                    description: format!(
                        "{} withdrawal(s) of consent ({purposes}): purpose, date and channel \
                         only, under a keyed hash of your identifiers",
                        of.len()
                    ),
                    legal_reference: "GDPR Art. 7(3), Art. 17(3)(e)".into(),
                    reason: "Proof that your consent was withdrawn, and when, is kept for the \
                             limitation period of a claim, and so that your choice keeps \
                             being honoured."
                        .into(),
                    retain_until_time: until.map(timestamp),
                    ..Default::default()
                }
            }
        };
        out.push(RetainedData {
            record_count: of.len() as i64,
            ground: ground as i32,
            ..entry
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded() {
        let mut r = pb::EraseSubjectRequest::default();
        assert!(validate(&r).is_ok());
        r.request_id = "x".repeat(MAX_REQUEST_ID + 1);
        assert!(validate(&r).is_err());
    }

    #[test]
    fn retained_names_what_was_kept_and_why() {
        let kept = |pid: &str, state| Suppression {
            subject_hash: "h".into(),
            purpose_id: pid.into(),
            state,
            decision_us: 1_700_000_000_000_000,
            ground: ground_of(state),
        };
        assert!(retained(&[]).is_empty());
        let out = retained(&[
            kept(DIRECT_MARKETING, ConsentState::Objected),
            kept("newsletter", ConsentState::Withdrawn),
            kept("alumni", ConsentState::Withdrawn),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].category, "consent_objections");
        assert_eq!(out[0].record_count, 1);
        assert!(out[0].description.contains("direct marketing"));
        assert_eq!(
            out[0].ground,
            custodia_proto::common::v1::RetentionGround::LegalObligation as i32
        );
        assert!(out[0].retain_until_time.is_none());
        assert_eq!(out[1].category, "consent_withdrawals");
        assert_eq!(out[1].record_count, 2);
        assert!(out[1].description.contains("alumni, newsletter"));
        assert_eq!(
            out[1].retain_until_time.map(|t| t.seconds),
            Some(1_700_000_000 + 1827 * 86_400)
        );
    }
}
