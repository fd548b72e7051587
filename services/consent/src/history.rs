//! What was recorded, read back: ListConsentEvents (a subject's trail),
//! ListSubjectConsents (a subject's current states) and ListReconsentDue (the
//! grants of a purpose to ask again).

use custodia_core::{
    ApiError, auth::CallContext, pagination, storage::to_micros, subject::SubjectId,
};
use custodia_proto::consent::v1::{self as pb, ConsentState, SubjectConsent};

use crate::{
    api::Api,
    records::subject_consent,
    register::{self, purpose_id, purpose_name},
    store::DIRECT_MARKETING,
};

/// The optional `purposes/{id}` filter of a list request (`field`), as an id.
fn purpose_filter(name: &str, field: &str) -> Result<Option<String>, ApiError> {
    match name {
        "" => Ok(None),
        p => Ok(Some(purpose_id(p, field)?.to_string())),
    }
}

/// ListConsentEvents.
pub(crate) async fn list_events(
    api: &Api,
    call: &CallContext,
    r: pb::ListConsentEventsRequest,
) -> Result<pb::ListConsentEventsResponse, ApiError> {
    let size = pagination::page_size(r.page_size)?;
    let ids = api.subjects(&r.subject_identifiers)?;
    let purpose = purpose_filter(&r.purpose, "purpose")?;
    let hashes: Vec<String> = ids.iter().map(|(_, h)| h.clone()).collect();
    let fingerprint = format!("{hashes:?}{purpose:?}");
    let after: Option<i64> = pagination::decode(&r.page_token, &fingerprint)?;
    api.ctx.quota.take(call.principal.name(), ids.len())?;
    let mut events = api
        .store
        .events(&hashes, purpose.as_deref(), after, size + 1)
        .await?;
    let next = (events.len() > size).then(|| pagination::encode(&events[size - 1].0, &fingerprint));
    events.truncate(size);
    for (id, hash) in &ids {
        let mut access = api.access(call, "ListConsentEvents", None, "");
        access.subject_type = Some(id.kind().to_string());
        access.subject_hash = Some(hash.clone());
        api.record_access(&access).await?;
    }
    Ok(pb::ListConsentEventsResponse {
        events: events.into_iter().map(|(_, e)| e).collect(),
        next_page_token: next.unwrap_or_default(),
    })
}

/// ListSubjectConsents.
pub(crate) async fn list_subject_consents(
    api: &Api,
    call: &CallContext,
    r: pb::ListSubjectConsentsRequest,
) -> Result<pb::ListSubjectConsentsResponse, ApiError> {
    let size = pagination::page_size_or(r.page_size, 100)?;
    // A token is only good for the subjects it was issued for (their keyed
    // hashes, not the identifiers, are fingerprinted in it). It holds the
    // position (identifier index, purpose id) of the last state returned, so
    // a state written between pages shifts nothing.
    let ids = api.subjects(&r.subject_identifiers)?;
    let filter = ids
        .iter()
        .map(|(_, hash)| hash.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let after: Option<(usize, String)> = pagination::decode(&r.page_token, &filter)?;
    api.ctx.quota.take(call.principal.name(), ids.len())?;
    let mut rest = subject_consents(api, call, &ids)
        .await?
        .into_iter()
        .filter(|(position, _)| after.as_ref().is_none_or(|a| position > a))
        .peekable();
    let mut consents = Vec::new();
    let mut last = None;
    while consents.len() < size {
        let Some((position, consent)) = rest.next() else {
            break;
        };
        consents.push(consent);
        last = Some(position);
    }
    let more = rest.peek().is_some();
    Ok(pb::ListSubjectConsentsResponse {
        consents,
        next_page_token: match last {
            Some(position) if more => pagination::encode(&position, &filter),
            _ => String::new(),
        },
    })
}

/// The current state per purpose of the subjects `ids` (from [`Api::subjects`]),
/// each with its position (the identifier's index, the purpose id), in that
/// order.
async fn subject_consents(
    api: &Api,
    call: &CallContext,
    ids: &[(SubjectId, String)],
) -> Result<Vec<((usize, String), SubjectConsent)>, ApiError> {
    let now_us = to_micros(api.ctx.clock.now());
    let mut out = Vec::new();
    for (index, (_, hash)) in ids.iter().enumerate() {
        states_of(api, hash, index, now_us, &mut out).await?;
    }
    for (id, hash) in ids {
        api.record_access(&api.access(call, "ListSubjectConsents", Some((id, hash)), ""))
            .await?;
    }
    Ok(out)
}

/// The states of subject `hash` (identifier `index`), appended to `out`.
async fn states_of(
    api: &Api,
    hash: &str,
    index: usize,
    now_us: i64,
    out: &mut Vec<((usize, String), SubjectConsent)>,
) -> Result<(), ApiError> {
    for (pid, decision_us, expire_us, event) in
        api.store.subject_states(&[hash.to_string()]).await?
    {
        let material = if pid == DIRECT_MARKETING {
            None
        } else {
            api.store.material_notice_us(&pid, now_us).await?
        };
        let reconfirm = event.state == ConsentState::Granted as i32
            && material.is_some_and(|m| m > decision_us);
        out.push((
            (index, pid),
            subject_consent(&event, decision_us, expire_us, reconfirm),
        ));
    }
    Ok(())
}

/// A ListReconsentDueRequest's own checks: the purpose id, the expiry bound
/// (µs) and the page size (1,000 unless given, at most 10,000).
fn validate_reconsent_due(
    r: &pb::ListReconsentDueRequest,
) -> Result<(String, i64, usize), ApiError> {
    let pid = purpose_id(&r.purpose, "purpose")?.to_string();
    let before = r
        .expire_before_time
        .as_ref()
        .map(|t| to_micros(register::from_timestamp(t)))
        .ok_or_else(|| ApiError::invalid("expire_before_time", "is required"))?;
    let size = match r.page_size {
        n if n < 0 => return Err(ApiError::invalid("page_size", "must not be negative")),
        0 => 1000,
        n => (n as usize).min(10_000),
    };
    Ok((pid, before, size))
}

/// ListReconsentDue.
pub(crate) async fn list_reconsent_due(
    api: &Api,
    call: &CallContext,
    r: pb::ListReconsentDueRequest,
) -> Result<pb::ListReconsentDueResponse, ApiError> {
    let (pid, before, size) = validate_reconsent_due(&r)?;
    if api.store.purpose(&pid).await?.is_none() {
        return Err(ApiError::not_found("purpose", purpose_name(&pid)).in_field("purpose"));
    }
    let now_us = to_micros(api.ctx.clock.now());
    let material = if r.include_reconfirmation_required {
        api.store.material_notice_us(&pid, now_us).await?
    } else {
        None
    };
    let fingerprint = format!("{pid}{before}{material:?}");
    let after: Option<(i64, String)> = pagination::decode(&r.page_token, &fingerprint)?;
    let mut rows = api
        .store
        .reconsent_due(&pid, before, material, after, size + 1)
        .await?;
    let next = (rows.len() > size).then(|| {
        let (exp, hash, _, _) = &rows[size - 1];
        pagination::encode(&(*exp, hash.clone()), &fingerprint)
    });
    rows.truncate(size);
    let mut access = api.access(call, "ListReconsentDue", None, "");
    access.resource = purpose_name(&pid);
    access.purpose = Some(pid.clone());
    api.record_access(&access).await?;
    let consents = rows
        .into_iter()
        .map(|(exp, _, decision_us, event)| {
            let expire_us = (exp != i64::MAX).then_some(exp);
            let reconfirm = material.is_some_and(|m| m > decision_us);
            subject_consent(&event, decision_us, expire_us, reconfirm)
        })
        .collect();
    Ok(pb::ListReconsentDueResponse {
        consents,
        next_page_token: next.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fields;

    #[test]
    fn purpose_filters_are_optional_names() {
        assert_eq!(purpose_filter("", "purpose").unwrap(), None);
        assert_eq!(
            purpose_filter("purposes/newsletter", "purpose").unwrap(),
            Some("newsletter".to_string())
        );
        assert_eq!(
            fields(purpose_filter("newsletter", "purpose").unwrap_err())[0],
            "purpose"
        );
    }

    #[test]
    fn reconsent_due_pages() {
        let r = |page_size: i32| pb::ListReconsentDueRequest {
            purpose: "purposes/newsletter".into(),
            expire_before_time: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            page_size,
            ..Default::default()
        };
        assert_eq!(
            validate_reconsent_due(&r(0)).unwrap(),
            ("newsletter".to_string(), 10_000_000, 1000)
        );
        assert_eq!(validate_reconsent_due(&r(50_000)).unwrap().2, 10_000);
        assert_eq!(
            fields(validate_reconsent_due(&r(-1)).unwrap_err())[0],
            "page_size"
        );
        let mut no_time = r(0);
        no_time.expire_before_time = None;
        assert_eq!(
            fields(validate_reconsent_due(&no_time).unwrap_err())[0],
            "expire_before_time"
        );
    }
}
