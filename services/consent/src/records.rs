//! Consent records over the API: RecordConsent (grants and refusals),
//! WithdrawConsent and RecordObjection, and how the API shows a subject's
//! state. The rules a decision must meet are in [`crate::rules`], the
//! evidence's in [`crate::evidence`]; the store's side is
//! `store/group_commit.rs`.

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    idempotency::{MAX_REQUEST_ID, RequestKey},
    outbox::AccessEvent,
    storage::{from_micros, to_micros},
    subject::SubjectId,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::SubjectRef,
    consent::v1::{self as pb, ConsentEvent, ConsentState, Decision, Evidence, Purpose},
};

use crate::{
    api::{Api, subject_out},
    checks::cached_purpose,
    evidence::check_evidence,
    receipt, receipts,
    register::{checked_purpose_id, purpose_name, timestamp},
    rules::{AgeRules, decision_allowed, expiry},
};

pub use crate::store::{DIRECT_MARKETING, NewRecord, Receipt, WriteJob, WriteResult};

/// Most purposes one withdrawal or objection names, as RecordConsent's decisions.
const MAX_PURPOSES: usize = 100;

/// A subject's state for one purpose, as the API shows it, from its latest event.
pub fn subject_consent(
    event: &ConsentEvent,
    decision_us: i64,
    expire_us: Option<i64>,
    reconfirmation_required: bool,
) -> pb::SubjectConsent {
    pb::SubjectConsent {
        subject: event.subject.clone(),
        purpose: event.purpose.clone(),
        state: event.state,
        decision_time: Some(timestamp(from_micros(decision_us))),
        expire_time: expire_us.map(|us| timestamp(from_micros(us))),
        notice: event
            .evidence
            .as_ref()
            .map(|e| e.notice.clone())
            .unwrap_or_default(),
        reconfirmation_required,
        consent_event: event.name.clone(),
        guardian: event.guardian.clone(),
    }
}

// ---------------------------------------------------------------- validation

/// The guardian of a RecordConsentRequest, as stored (its identifier validated,
/// its value not kept).
fn validate_guardian(
    g: Option<&pb::GuardianConsent>,
    v: &mut Validator,
) -> Result<Option<pb::GuardianConsent>, ApiError> {
    let Some(g) = g else {
        return Ok(None);
    };
    let gid = SubjectId::parse(
        g.guardian
            .as_ref()
            .map(|s| s.r#type.as_str())
            .unwrap_or_default(),
        g.guardian
            .as_ref()
            .map(|s| s.value.as_str())
            .unwrap_or_default(),
        "guardian.guardian",
    )?;
    v.max_len("guardian.relationship", &g.relationship, MAX_ID);
    v.max_len("guardian.verification", &g.verification, MAX_TEXT);
    Ok(Some(pb::GuardianConsent {
        guardian: Some(subject_out(&gid)),
        relationship: g.relationship.clone(),
        verification: g.verification.clone(),
    }))
}

/// The decisions of a RecordConsentRequest: (index, purpose name, decision),
/// each purpose decided once.
fn validate_decisions(
    decisions: &[pb::PurposeDecision],
    v: &mut Validator,
) -> Vec<(usize, String, Decision)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, d) in decisions.iter().enumerate() {
        let decision = Decision::try_from(d.decision).unwrap_or_default();
        if decision == Decision::Unspecified {
            v.add(
                format!("decisions[{i}].decision"),
                "must be GRANTED or DENIED",
            );
        }
        if let Some(id) = checked_purpose_id(v, &d.purpose, &format!("decisions[{i}].purpose")) {
            if !seen.insert(id) {
                v.add(
                    format!("decisions[{i}].purpose"),
                    "is decided twice in this call",
                );
            }
            out.push((i, d.purpose.clone(), decision));
        }
    }
    out
}

/// The purposes a withdrawal or objection names (ids), and its other limits.
fn validate_targets(
    purposes: &[String],
    all_purposes: bool,
    direct_marketing: bool,
    request_id: &str,
    reason: &str,
    v: &mut Validator,
) -> Vec<String> {
    v.max_len("request_id", request_id, MAX_REQUEST_ID);
    v.max_len("reason", reason, MAX_TEXT);
    if purposes.is_empty() && !all_purposes && !direct_marketing {
        v.add(
            "purposes",
            "name the purposes (or set all_purposes / direct_marketing)",
        );
    }
    let mut ids = Vec::new();
    v.max_items("purposes", purposes.len(), MAX_PURPOSES);
    for (i, p) in purposes.iter().enumerate().take(MAX_PURPOSES) {
        if let Some(id) = checked_purpose_id(v, p, &format!("purposes[{i}]")) {
            ids.push(id.to_string());
        }
    }
    ids
}

/// Validates `e` (see [`check_evidence`]) and checks that the notice it names
/// was published; returns it as stored and when it was collected (µs).
async fn stored_evidence(
    api: &Api,
    call: &CallContext,
    e: Option<Evidence>,
    v: &mut Validator,
) -> Result<(Evidence, i64), ApiError> {
    let Some(mut e) = e else {
        v.add(
            "evidence",
            "is required (Art. 7(1): the controller must be able to demonstrate consent)",
        );
        return Ok((Evidence::default(), 0));
    };
    let now_us = to_micros(api.ctx.clock.now());
    let (collect_us, shown) = check_evidence(&mut e, call.principal.name(), now_us, v);
    if let Some((name, id, version)) = shown {
        // A published version never changes, so once seen it is known.
        if !api.cache.knows_notice(name) {
            if api.store.notice(id, Some(version)).await?.is_none() {
                return Err(
                    ApiError::not_found("notice", name.to_string()).in_field("evidence.notice")
                );
            }
            api.cache.remember_notice(name);
        }
    }
    Ok((e, collect_us))
}

// ---------------------------------------------------------------- use cases

fn new_event(
    api: &Api,
    subject: &SubjectId,
    purpose_id: &str,
    state: ConsentState,
    evidence: &Evidence,
    request_id: &str,
) -> ConsentEvent {
    ConsentEvent {
        name: format!("consentEvents/{}", uuid::Uuid::now_v7().simple()),
        subject: Some(subject_out(subject)),
        purpose: purpose_name(purpose_id),
        state: state as i32,
        evidence: Some(evidence.clone()),
        record_time: Some(timestamp(api.ctx.clock.now())),
        request_id: request_id.to_string(),
        ..Default::default()
    }
}

/// Writes `records` with their receipt and access event (see
/// [`crate::store::ConsentStore::record`]), then drops the subject `hash` from the
/// check cache, wakes the outbox and the change streams.
async fn persist(
    api: &Api,
    key: Option<&RequestKey>,
    records: &[NewRecord],
    receipt: Option<(&str, &str, Vec<u8>)>,
    access: &AccessEvent,
    now: DateTime<Utc>,
    hash: &str,
) -> Result<Vec<ConsentEvent>, ApiError> {
    let events = api
        .store
        .record(key, records, receipt, access, to_micros(now))
        .await?;
    api.cache.forget(hash);
    api.ctx.outbox.wake();
    api.notify_changed();
    Ok(events)
}

/// `refusal`, unless the call retries one that was recorded (an earlier call
/// with its `request_id` stored events): then that call's answer, as the
/// idempotency of RecordConsent promises, even if the register changed since
/// (a purpose retired, a notice superseded). The replayed answer holds the
/// subject's data, so it is recorded as an access, like any replay.
async fn refused_unless_replayed(
    api: &Api,
    call: &CallContext,
    key: Option<&RequestKey>,
    subject: (&SubjectId, &str),
    refusal: ApiError,
) -> Result<pb::RecordConsentResponse, ApiError> {
    let Some(key) = key else {
        return Err(refusal);
    };
    match api.store.replay_of(key).await? {
        Some(events) if !events.is_empty() => {
            let purpose = events[0].purpose.clone();
            let mut access = api.access(call, "RecordConsent", Some(subject), &purpose);
            access.detail = serde_json::json!({ "replay": true }).to_string();
            api.record_access(&access).await?;
            let receipt = receipts::answered(api, &events, None).await?;
            Ok(pb::RecordConsentResponse { events, receipt })
        }
        _ => Err(refusal),
    }
}

/// Whether the subject gave this consent themselves, through a channel they
/// operate: a web banner or form, a link in an email, or a paper form they
/// signed with its scan attached. A CRM import, staff or any other channel
/// relays a choice the subject may never have made again.
fn collected_from_subject(e: &Evidence) -> bool {
    use pb::ConsentChannel as C;
    match C::try_from(e.channel).unwrap_or_default() {
        C::WebBanner | C::WebForm | C::EmailLink => true,
        C::Paper => e.proof.is_some(),
        _ => false,
    }
}

/// Refuses grants for a subject erased while they had objected to or withdrawn
/// from the purposes (or objected to direct marketing, for a direct-marketing
/// purpose), unless the subject gives this consent themselves (see
/// `store/erasure.rs`): an erased objector must not be re-imported.
async fn not_suppressed(
    api: &Api,
    hash: &str,
    evidence: &Evidence,
    granted: &[String],
    direct_marketing: bool,
) -> Result<(), ApiError> {
    if granted.is_empty() || collected_from_subject(evidence) {
        return Ok(());
    }
    let mut asked: Vec<&str> = granted.iter().map(String::as_str).collect();
    if direct_marketing {
        asked.push(DIRECT_MARKETING);
    }
    let suppressed = api.store.suppressed(hash, &asked).await?;
    if suppressed.is_empty() {
        return Ok(());
    }
    Err(ApiError::precondition(
        "SUBJECT_SUPPRESSED",
        format!(
            "the subject was erased while objecting to or having withdrawn from {}: only a \
             fresh consent the subject gives through a web banner, web form, email link or a \
             signed paper form (evidence.proof) can grant it again",
            suppressed
                .iter()
                .map(|p| if p == DIRECT_MARKETING {
                    "direct marketing".to_string()
                } else {
                    purpose_name(p)
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// RecordConsent.
pub(crate) async fn record(
    api: &Api,
    call: &CallContext,
    r: pb::RecordConsentRequest,
) -> Result<pb::RecordConsentResponse, ApiError> {
    let key = RequestKey::of(call, "RecordConsent", &r.request_id, &r);
    let mut v = Validator::new();
    let (subject, hash) = api.subject(r.subject.as_ref(), "subject")?;
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
    if r.decisions.is_empty() {
        v.add("decisions", "at least one decision is required");
    }
    if r.decisions.len() > 100 {
        v.add("decisions", "at most 100 decisions per call");
    }
    let guardian = validate_guardian(r.guardian.as_ref(), &mut v)?;
    let (evidence, collect_us) = stored_evidence(api, call, r.evidence.clone(), &mut v).await?;
    let decisions = validate_decisions(&r.decisions, &mut v);
    v.finish()?;
    let now = api.ctx.clock.now();
    let ages = AgeRules {
        jurisdiction: api.ctx.calendar.jurisdiction().country(),
        configured: &api.ctx.config.consent.digital_consent_ages,
    };
    let mut records = Vec::new();
    // Purposes granted (and whether a direct-marketing one is among them).
    let mut granted_ids: Vec<String> = Vec::new();
    let mut grants_direct_marketing = false;
    for (i, name, decision) in decisions {
        let (pid, cached) = cached_purpose(api, &name, &format!("decisions[{i}].purpose")).await?;
        let purpose = cached.purpose.clone();
        let granted = decision == Decision::Granted;
        let allowed = decision_allowed(
            i, granted, &pid, &cached, &evidence, collect_us, &r, now, &ages,
        );
        if let Err(refusal) = allowed {
            return refused_unless_replayed(api, call, key.as_ref(), (&subject, &hash), refusal)
                .await;
        }
        if granted {
            granted_ids.push(pid.clone());
            grants_direct_marketing |= purpose.direct_marketing;
        }
        let expire_us = if granted {
            expiry(&purpose, collect_us)
        } else {
            None
        };
        let state = if granted {
            ConsentState::Granted
        } else {
            ConsentState::Denied
        };
        let mut event = new_event(api, &subject, &pid, state, &evidence, &r.request_id);
        event.guardian = guardian.clone();
        event.age = r.age.clone();
        event.expire_time = expire_us.map(|us| timestamp(from_micros(us)));
        records.push(NewRecord {
            subject_hash: hash.clone(),
            purpose_id: pid,
            event,
            decision_us: collect_us,
            expire_us,
        });
    }
    if let Err(refusal) =
        not_suppressed(api, &hash, &evidence, &granted_ids, grants_direct_marketing).await
    {
        return refused_unless_replayed(api, call, key.as_ref(), (&subject, &hash), refusal).await;
    }
    let receipt =
        receipts::issue(api, &subject, r.guardian.as_ref(), &evidence, &mut records).await?;
    let purposes: Vec<_> = records.iter().map(|r| r.purpose_id.as_str()).collect();
    let mut access = api.access(
        call,
        "RecordConsent",
        Some((&subject, &hash)),
        purposes.first().copied().unwrap_or_default(),
    );
    access.detail = serde_json::json!({ "purposes": purposes }).to_string();
    let id = receipt::id_of(&receipt.name)
        .unwrap_or_default()
        .to_string();
    let body = prost::Message::encode_to_vec(&receipt);
    let receipt_row = Some((id.as_str(), hash.as_str(), body));
    let events = persist(
        api,
        key.as_ref(),
        &records,
        receipt_row,
        &access,
        now,
        &hash,
    )
    .await?;
    let receipt = receipts::answered(api, &events, Some(receipt)).await?;
    Ok(pb::RecordConsentResponse { events, receipt })
}

/// WithdrawConsent.
pub(crate) async fn withdraw(
    api: &Api,
    call: &CallContext,
    r: pb::WithdrawConsentRequest,
) -> Result<pb::WithdrawConsentResponse, ApiError> {
    let key = RequestKey::of(call, "WithdrawConsent", &r.request_id, &r);
    let change = Change {
        method: "WithdrawConsent",
        subject: r.subject.as_ref(),
        purposes: &r.purposes,
        all_purposes: r.all_purposes,
        direct_marketing: false,
        evidence: r.evidence,
        reason: &r.reason,
        request_id: &r.request_id,
        state: ConsentState::Withdrawn,
    };
    let (events, receipt) = withdraw_or_object(api, call, key.as_ref(), change).await?;
    Ok(pb::WithdrawConsentResponse { events, receipt })
}

/// RecordObjection.
pub(crate) async fn object(
    api: &Api,
    call: &CallContext,
    r: pb::RecordObjectionRequest,
) -> Result<pb::RecordObjectionResponse, ApiError> {
    let key = RequestKey::of(call, "RecordObjection", &r.request_id, &r);
    let change = Change {
        method: "RecordObjection",
        subject: r.subject.as_ref(),
        purposes: &r.purposes,
        all_purposes: false,
        direct_marketing: r.direct_marketing,
        evidence: r.evidence,
        reason: &r.grounds,
        request_id: &r.request_id,
        state: ConsentState::Objected,
    };
    let (events, _) = withdraw_or_object(api, call, key.as_ref(), change).await?;
    Ok(pb::RecordObjectionResponse { events })
}

/// What a WithdrawConsent or RecordObjection asks: `state` set on purposes.
struct Change<'a> {
    method: &'static str,
    subject: Option<&'a SubjectRef>,
    purposes: &'a [String],
    all_purposes: bool,
    direct_marketing: bool,
    evidence: Option<Evidence>,
    reason: &'a str,
    request_id: &'a str,
    state: ConsentState,
}

/// WithdrawConsent and RecordObjection share this: set `state` on purposes.
async fn withdraw_or_object(
    api: &Api,
    call: &CallContext,
    key: Option<&RequestKey>,
    change: Change<'_>,
) -> Result<(Vec<ConsentEvent>, Option<pb::ConsentReceipt>), ApiError> {
    let Change {
        method,
        subject,
        purposes,
        all_purposes,
        direct_marketing,
        evidence,
        reason,
        request_id,
        state,
    } = change;
    let mut v = Validator::new();
    let (subject, hash) = api.subject(subject, "subject")?;
    let mut ids = validate_targets(
        purposes,
        all_purposes,
        direct_marketing,
        request_id,
        reason,
        &mut v,
    );
    let (evidence, collect_us) = stored_evidence(api, call, evidence, &mut v).await?;
    v.finish()?;
    let necessary = |p: &Purpose| p.category == pb::PurposeCategory::StrictlyNecessary as i32;
    for (i, p) in purposes.iter().enumerate() {
        let (pid, cached) = cached_purpose(api, p, &format!("purposes[{i}]")).await?;
        if necessary(&cached.purpose) {
            return Err(ApiError::invalid(
                format!("purposes[{i}]"),
                format!(
                    "purposes/{pid} is strictly necessary (K-1): it cannot be withdrawn from or objected to"
                ),
            ));
        }
    }
    if all_purposes {
        for s in api
            .store
            .subject_states(std::slice::from_ref(&hash))
            .await?
        {
            if s.0 == DIRECT_MARKETING || ids.contains(&s.0) {
                continue;
            }
            // Every purpose the subject decided on, but the necessary ones.
            let keep = match cached_purpose(api, &purpose_name(&s.0), "all_purposes").await {
                Ok((_, cached)) => !necessary(&cached.purpose),
                Err(ApiError::NotFound { .. }) => true,
                Err(e) => return Err(e),
            };
            if keep {
                ids.push(s.0);
            }
        }
    }
    if direct_marketing {
        ids.push(DIRECT_MARKETING.to_string());
    }
    let now = api.ctx.clock.now();
    let mut records: Vec<_> = ids
        .iter()
        .map(|pid| {
            let mut event = new_event(api, &subject, pid, state, &evidence, request_id);
            event.reason = reason.to_string();
            if pid == DIRECT_MARKETING {
                event.purpose = "purposes/-".into();
            }
            NewRecord {
                subject_hash: hash.clone(),
                purpose_id: pid.clone(),
                event,
                decision_us: collect_us,
                expire_us: None,
            }
        })
        .collect();
    let access = api.access(
        call,
        method,
        Some((&subject, &hash)),
        ids.first().map(String::as_str).unwrap_or_default(),
    );
    // Withdrawals get a receipt (the subject's proof of withdrawing); objections do not.
    let issued = if state == ConsentState::Withdrawn && !records.is_empty() {
        Some(receipts::issue(api, &subject, None, &evidence, &mut records).await?)
    } else {
        None
    };
    let receipt = issued.as_ref().map(|r| {
        let id = receipt::id_of(&r.name).unwrap_or_default().to_string();
        (id, prost::Message::encode_to_vec(r))
    });
    let receipt_row = receipt
        .as_ref()
        .map(|(id, body)| (id.as_str(), hash.as_str(), body.clone()));
    let events = persist(api, key, &records, receipt_row, &access, now, &hash).await?;
    let receipt = receipts::answered(api, &events, issued).await?;
    Ok((events, receipt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::violations;

    #[test]
    fn decisions_name_each_purpose_once() {
        let d = |purpose: &str, decision: Decision| pb::PurposeDecision {
            purpose: purpose.into(),
            decision: decision as i32,
        };
        let mut v = Validator::new();
        let decisions = validate_decisions(
            &[
                d("purposes/newsletter", Decision::Granted),
                d("purposes/newsletter", Decision::Denied),
                d("newsletter", Decision::Granted),
                d("purposes/analytics", Decision::Unspecified),
            ],
            &mut v,
        );
        assert_eq!(
            violations(&mut v),
            [
                "decisions[1].purpose",
                "decisions[2].purpose",
                "decisions[3].decision"
            ]
        );
        let purposes: Vec<_> = decisions.iter().map(|d| (d.0, d.1.as_str())).collect();
        assert_eq!(
            purposes,
            [
                (0, "purposes/newsletter"),
                (1, "purposes/newsletter"),
                (3, "purposes/analytics")
            ]
        );
    }

    #[test]
    fn a_withdrawal_names_its_purposes() {
        let mut v = Validator::new();
        assert!(validate_targets(&[], false, false, "", "", &mut v).is_empty());
        assert_eq!(violations(&mut v), ["purposes"]);
        let mut v = Validator::new();
        assert!(validate_targets(&[], true, false, "", "", &mut v).is_empty());
        assert!(violations(&mut v).is_empty());
        let mut v = Validator::new();
        let ids = validate_targets(
            &["purposes/newsletter".into(), "analytics".into()],
            false,
            false,
            "",
            "",
            &mut v,
        );
        assert_eq!(ids, ["newsletter"]);
        assert_eq!(violations(&mut v), ["purposes[1]"]);
    }

    #[test]
    fn a_guardian_is_stored_without_its_value() {
        let mut v = Validator::new();
        assert_eq!(validate_guardian(None, &mut v).unwrap(), None);
        let g = pb::GuardianConsent {
            guardian: Some(SubjectRef {
                r#type: "email".into(),
                value: "parent@example.org".into(),
            }),
            relationship: "mother".into(),
            verification: String::new(),
        };
        let stored = validate_guardian(Some(&g), &mut v).unwrap().unwrap();
        assert_eq!(
            stored.guardian,
            Some(SubjectRef {
                r#type: "email".into(),
                value: String::new()
            })
        );
        assert_eq!(stored.relationship, "mother");
        let bad = pb::GuardianConsent::default();
        assert!(validate_guardian(Some(&bad), &mut v).is_err());
    }
}
