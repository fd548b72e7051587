//! Checks over the API: CheckConsent and BatchCheckConsent, answered from the
//! check cache (see [`crate::cache`]) and decided by [`crate::decision`].

use custodia_core::{
    ApiError,
    auth::CallContext,
    outbox::{EventBatch, OutboxStore},
    storage::{from_micros, to_micros},
    subject::SubjectId,
};
use custodia_proto::{
    common::v1::SubjectRef,
    consent::v1::{self as pb, CheckResult},
};

use crate::{
    api::{Api, subject_out},
    cache::{CachedPurpose, CachedState},
    decision::{self, StateRow},
    register::{purpose_id, purpose_name, timestamp},
};

/// Most subjects of one BatchCheckConsent.
const MAX_BATCH_SUBJECTS: usize = 10_000;

/// CheckConsent: may we, for this subject and purpose, now?
pub(crate) async fn check_consent(
    api: &Api,
    call: &CallContext,
    r: pb::CheckConsentRequest,
) -> Result<pb::CheckConsentResponse, ApiError> {
    let result = check(api, call, r.subject.as_ref(), &r.purpose, "CheckConsent").await?;
    Ok(pb::CheckConsentResponse {
        result: Some(result),
    })
}

/// A BatchCheckConsent names between 1 and [`MAX_BATCH_SUBJECTS`] subjects.
fn validate_batch(subjects: usize) -> Result<(), ApiError> {
    if subjects == 0 || subjects > MAX_BATCH_SUBJECTS {
        return Err(ApiError::invalid(
            "subjects",
            "give between 1 and 10,000 subjects",
        ));
    }
    Ok(())
}

/// BatchCheckConsent.
pub(crate) async fn batch_check_consent(
    api: &Api,
    call: &CallContext,
    r: pb::BatchCheckConsentRequest,
) -> Result<pb::BatchCheckConsentResponse, ApiError> {
    validate_batch(r.subjects.len())?;
    let subjects = batch_subjects(api, &r.subjects)?;
    let results = check_many(api, call, &subjects, &r.purpose, "BatchCheckConsent").await?;
    Ok(pb::BatchCheckConsentResponse { results })
}

/// One subject checked for one purpose.
async fn check(
    api: &Api,
    call: &CallContext,
    subject: Option<&SubjectRef>,
    purpose: &str,
    method: &str,
) -> Result<CheckResult, ApiError> {
    let subject = api.subject(subject, "subject")?;
    let mut results =
        check_many(api, call, std::slice::from_ref(&subject), purpose, method).await?;
    Ok(results.pop().expect("one result per subject"))
}

/// The subjects of a BatchCheckConsent, validated (`subjects[i]` named on error).
fn batch_subjects(api: &Api, refs: &[SubjectRef]) -> Result<Vec<(SubjectId, String)>, ApiError> {
    crate::par::map(refs, |i, r| api.subject(Some(r), &format!("subjects[{i}]")))
        .into_iter()
        .collect()
}

/// Checks one purpose for several subjects: states from the cache or one query
/// for the misses, and one access event per subject, all written in one
/// transaction before the answer. Each subject counts against the caller's
/// quota of access events.
async fn check_many(
    api: &Api,
    call: &CallContext,
    subjects: &[(SubjectId, String)],
    purpose: &str,
    method: &str,
) -> Result<Vec<CheckResult>, ApiError> {
    let (pid, cached) = cached_purpose(api, purpose, "purpose").await?;
    api.ctx.quota.take(call.principal.name(), subjects.len())?;
    let now = api.ctx.clock.now();
    let now_us = to_micros(now);
    let material = cached.material_at(now_us);

    let mut states: Vec<Option<CachedState>> = vec![None; subjects.len()];
    let mut misses = Vec::new();
    let key = api.cache.purpose_key(&pid);
    let cached_states = crate::par::map(subjects, |_, (_, hash)| api.cache.state(hash, &key));
    for (i, state) in cached_states.into_iter().enumerate() {
        match state {
            Ok(state) => states[i] = Some(state),
            Err(ticket) => misses.push((i, ticket)),
        }
    }
    if !misses.is_empty() {
        let hashes: Vec<&str> = misses
            .iter()
            .map(|(i, _)| subjects[*i].1.as_str())
            .collect();
        let found = api.store.states_together(&hashes, &pid).await?;
        for (i, ticket) in misses {
            let hash = &subjects[i].1;
            let state = found.get(hash).cloned().unwrap_or_default();
            api.cache.fill(ticket, hash, &pid, state.clone());
            states[i] = Some(state);
        }
    }

    // One event per subject, all of one call: stored together.
    let mut access = EventBatch::new(api.access(call, method, None, &pid));
    for (id, hash) in subjects {
        access.push(id.kind(), hash);
    }
    // The events are written while the answer is built, and the answer waits
    // for them: polled once, the enqueue has queued them and, when no other
    // group is being written, handed them to a writer task.
    let mut written = std::pin::pin!(api.ctx.outbox.enqueue_batch(access));
    let early = futures::poll!(written.as_mut());

    let p = &cached.purpose;
    let purpose = purpose_name(&pid);
    let check_time = timestamp(now);
    let results = crate::par::map(subjects, |i, (id, _)| {
        let (row, objected_dm) = states[i]
            .as_ref()
            .map_or((None, false), |(r, o)| (r.as_ref(), *o));
        let verdict = decision::decide(p, row, objected_dm, material, now_us);
        CheckResult {
            subject: Some(subject_out(id)),
            purpose: purpose.clone(),
            allowed: verdict.allowed,
            reason: verdict.reason as i32,
            lawful_basis: p.lawful_basis,
            expire_time: row
                .filter(|_| verdict.allowed)
                .and_then(|r: &StateRow| r.expire_us)
                .map(|us| timestamp(from_micros(us))),
            consent_event: String::new(),
            check_time: Some(check_time),
        }
    });
    match early {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => written.await,
    }
    .map_err(ApiError::internal)?;
    Ok(results)
}

/// The purpose named `name` (request field `field`), from the cache when fresh.
pub(crate) async fn cached_purpose(
    api: &Api,
    name: &str,
    field: &str,
) -> Result<(String, CachedPurpose), ApiError> {
    let id = purpose_id(name, field)?.to_string();
    match api.cache.purpose(&id) {
        Ok(cached) => Ok((id, cached)),
        Err(ticket) => {
            let stored =
                api.store.purpose(&id).await?.ok_or_else(|| {
                    ApiError::not_found("purpose", purpose_name(&id)).in_field(field)
                })?;
            let material = api.store.material_notices(&id).await?;
            let cached = CachedPurpose::new(stored.purpose, material);
            api.cache.fill_purpose(ticket, &id, cached.clone());
            Ok((id, cached))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fields;

    #[test]
    fn a_batch_has_one_to_ten_thousand_subjects() {
        assert!(validate_batch(0).is_err());
        assert!(validate_batch(1).is_ok());
        assert!(validate_batch(MAX_BATCH_SUBJECTS).is_ok());
        let too_many = validate_batch(MAX_BATCH_SUBJECTS + 1);
        assert_eq!(fields(too_many.unwrap_err()), ["subjects"]);
    }
}
