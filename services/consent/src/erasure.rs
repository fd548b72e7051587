//! EraseSubject: dsar's erasure of a subject's consent records (D-7, D-9). The
//! store's side is `store/erasure.rs`.

use custodia_core::{
    ApiError,
    auth::CallContext,
    idempotency::{self, MAX_REQUEST_ID, RequestKey},
    storage::to_micros,
    validate::Validator,
};
use custodia_proto::consent::v1 as pb;

use crate::api::Api;

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
        let (erased, receipts) = api.store.erase(&hashes).await?;
        for hash in &hashes {
            api.cache.forget(hash);
        }
        api.ctx
            .outbox
            .enqueue_durable(&access)
            .await
            .map_err(ApiError::internal)?;
        Ok::<_, ApiError>(pb::EraseSubjectResponse {
            erased_event_count: erased,
            erased_receipt_count: receipts,
            retained: Vec::new(),
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
}
