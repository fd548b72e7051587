//! The lifecycle of a request (see [`crate::state`] for the machine):
//! VerifyIdentity, StartProcessing, ExtendDeadline, RejectRequest,
//! CancelRequest and CompleteRequest. Each validates the request in a pure
//! `validate_*` function (unit-tested below), then decides on the current
//! record inside the store's transaction.

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::{enum_value, optional_time},
    idempotency::RequestKey,
    proto_time::{instant, timestamp},
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    connector::v1::Capability,
    dsar::v1::{
        self as pb, ActionResult, ExportState, IdentityVerificationMethod,
        IdentityVerificationOutcome, RejectionReason, RequestState, RequestType, SourceTaskState,
    },
};

use crate::{
    api::Api,
    model::{self, action, named_change},
    state::{OPEN, refuse, require},
    store::{Changes, ExportRow, Loaded},
};

/// The connector operation a request type fans out, if any.
pub fn operation_for(kind: RequestType) -> Option<Capability> {
    match kind {
        RequestType::Access | RequestType::Portability => Some(Capability::Export),
        RequestType::Erasure => Some(Capability::Erase),
        RequestType::Restriction => Some(Capability::Restrict),
        RequestType::Rectification => Some(Capability::Rectify),
        RequestType::Objection => Some(Capability::Object),
        _ => None,
    }
}

/// Whether a request type produces an export package.
pub fn exports(kind: RequestType) -> bool {
    matches!(kind, RequestType::Access | RequestType::Portability)
}

/// A VerifyIdentity that passed validation.
#[derive(Debug)]
pub(crate) struct ValidVerify {
    pub id: String,
    pub method: IdentityVerificationMethod,
    pub outcome: IdentityVerificationOutcome,
    pub check: pb::IdentityVerification,
}

/// Checks a VerifyIdentity.
pub(crate) fn validate_verify(r: &pb::VerifyIdentityRequest) -> Result<ValidVerify, ApiError> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    let (method, outcome) = match &r.verification {
        None => {
            v.add("verification", "is required");
            (None, None)
        }
        Some(x) => {
            let m = enum_value(
                &mut v,
                "verification.method",
                x.method,
                IdentityVerificationMethod::Unspecified,
                "AUTHENTICATED_ACCOUNT, CONTACT_CONFIRMATION, IDENTITY_DOCUMENT, IN_PERSON, \
                 KNOWN_INFORMATION, OTHER",
            );
            let o = enum_value(
                &mut v,
                "verification.outcome",
                x.outcome,
                IdentityVerificationOutcome::Unspecified,
                "PENDING, VERIFIED, FAILED",
            );
            if m == Some(IdentityVerificationMethod::Other) {
                v.required("verification.description", &x.description, MAX_TEXT);
            } else {
                v.max_len("verification.description", &x.description, MAX_TEXT);
            }
            (m, o)
        }
    };
    v.finish()?;
    Ok(ValidVerify {
        id: id.unwrap_or_default(),
        method: method.unwrap_or_default(),
        outcome: outcome.unwrap_or_default(),
        check: r.verification.clone().unwrap_or_default(),
    })
}

/// Checks a StartProcessing: the request's id.
pub(crate) fn validate_start(r: &pb::StartProcessingRequest) -> Result<String, ApiError> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    v.finish()?;
    Ok(id.unwrap_or_default())
}

/// Checks an ExtendDeadline at `now`: the request's id and when the subject
/// was told.
pub(crate) fn validate_extend(
    r: &pb::ExtendDeadlineRequest,
    now: DateTime<Utc>,
) -> Result<(String, DateTime<Utc>), ApiError> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    if !(1..=2).contains(&r.months) {
        v.add(
            "months",
            "must be 1 or 2 (Art. 12(3): at most two further months)",
        );
    }
    v.required("reasons", &r.reasons, MAX_TEXT);
    let told = match r.subject_notify_time.as_ref() {
        None => {
            v.add(
                "subject_notify_time",
                "is required: the subject must be told of the extension (Art. 12(3))",
            );
            None
        }
        Some(t) => optional_time(&mut v, "subject_notify_time", Some(t), Some(now)),
    };
    v.max_len("subject_notify_channel", &r.subject_notify_channel, MAX_ID);
    v.finish()?;
    Ok((id.unwrap_or_default(), told.unwrap_or(now)))
}

/// Checks a RejectRequest: the request's id and the reason.
pub(crate) fn validate_reject(
    r: &pb::RejectRequestRequest,
) -> Result<(String, RejectionReason), ApiError> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    let reason = enum_value(
        &mut v,
        "reason",
        r.reason,
        RejectionReason::Unspecified,
        "MANIFESTLY_UNFOUNDED, EXCESSIVE, IDENTITY_NOT_VERIFIED, OTHER",
    );
    if reason == Some(RejectionReason::Other) {
        v.required("explanation", &r.explanation, MAX_TEXT);
    } else {
        v.max_len("explanation", &r.explanation, MAX_TEXT);
    }
    v.finish()?;
    Ok((id.unwrap_or_default(), reason.unwrap_or_default()))
}

/// Checks a CancelRequest: the request's id.
pub(crate) fn validate_cancel(r: &pb::CancelRequestRequest) -> Result<String, ApiError> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    v.max_len("reason", &r.reason, MAX_TEXT);
    v.finish()?;
    Ok(id.unwrap_or_default())
}

/// Checks a CompleteRequest at `now`: the request's id and when the answer was sent.
pub(crate) fn validate_complete(
    r: &pb::CompleteRequestRequest,
    now: DateTime<Utc>,
) -> Result<(String, DateTime<Utc>), ApiError> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    v.max_len("response_summary", &r.response_summary, MAX_TEXT);
    let sent = optional_time(&mut v, "response_time", r.response_time.as_ref(), Some(now));
    v.finish()?;
    Ok((id.unwrap_or_default(), sent.unwrap_or(now)))
}

/// The name of an enum value without its type's prefix (`VERIFIED`).
fn short(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_string()
}

/// The fan-out of a request whose processing starts: a task per enabled
/// source that takes part (UNSUPPORTED where it lacks the operation), and an
/// export package for access and portability. Returns the names asked.
fn fan_out(
    l: &Loaded,
    sources: &[pb::DataSource],
    register: &Register,
    now: DateTime<Utc>,
) -> (Changes, Vec<String>, Vec<String>) {
    let kind = l.record.r#type();
    let mut changes = Changes::default();
    let mut names = Vec::new();
    let mut recipients = std::collections::BTreeSet::new();
    if let Some(op) = operation_for(kind) {
        for s in sources {
            if s.state() == pb::DataSourceState::Disabled {
                continue;
            }
            let mut op = op;
            let mut supported = s.capabilities.contains(&(op as i32));
            if op == Capability::Object && !s.builtin {
                // Only custodia's consent records take an objection; a source
                // holding data of an objected purpose restricts it pending the
                // objection's verification (Art. 18(1)(d)); the others are not
                // concerned.
                let concerned = s.purposes.iter().any(|p| l.record.purposes.contains(p));
                if !concerned {
                    continue;
                }
                op = Capability::Restrict;
                supported = s.capabilities.contains(&(op as i32));
            }
            if s.builtin && !supported {
                // custodia's own records only take part where they can.
                continue;
            }
            names.push(s.name.clone());
            recipients.extend(s.recipients.iter().cloned());
            for p in &s.purposes {
                recipients.extend(register.get(p).into_iter().flatten().cloned());
            }
            changes.tasks.push(pb::SourceTask {
                data_source: s.name.clone(),
                operation: op as i32,
                state: if supported {
                    SourceTaskState::Pending
                } else {
                    SourceTaskState::Unsupported
                } as i32,
                next_attempt_time: Some(timestamp(now)),
                ..Default::default()
            });
        }
    }
    if exports(kind) {
        changes.export = Some(ExportRow {
            package: pb::ExportPackage {
                name: format!("{}/export", model::request_name(&l.id)),
                state: ExportState::Building as i32,
                ..Default::default()
            },
            path: String::new(),
        });
    }
    let recipients = if tells_recipients(kind) {
        recipients.into_iter().collect()
    } else {
        Vec::new()
    };
    (changes, names, recipients)
}

/// The register of processing as dsar needs it: each purpose's recipients, by
/// purpose name (`purposes/{purpose}`).
pub(crate) type Register = std::collections::HashMap<String, Vec<String>>;

/// Whether the recipients of the subject's data must be told of a request of
/// this type (Art. 19).
pub fn tells_recipients(kind: RequestType) -> bool {
    matches!(
        kind,
        RequestType::Rectification | RequestType::Erasure | RequestType::Restriction
    )
}

/// Why request `l` cannot be completed yet, if it cannot: sources still open,
/// or an export package that is not READY.
fn completion_blocked(l: &Loaded) -> Result<(), ApiError> {
    let open: Vec<String> = l
        .tasks
        .iter()
        .filter(|t| !model::task_settled(t))
        .map(|t| {
            format!(
                "{} ({})",
                t.data_source,
                short(t.state().as_str_name(), "SOURCE_TASK_STATE_")
            )
        })
        .collect();
    if !open.is_empty() {
        return Err(refuse(
            l,
            "SOURCES_PENDING",
            format!(
                "these sources have neither answered nor been marked as handled by \
                 hand: {}",
                open.join(", ")
            ),
        ));
    }
    let unnotified: Vec<&str> = l
        .record
        .recipients_to_notify
        .iter()
        .filter(|r| !l.notifications.iter().any(|n| &n.recipient == *r))
        .map(String::as_str)
        .collect();
    if !unnotified.is_empty() {
        return Err(refuse(
            l,
            "RECIPIENTS_NOT_NOTIFIED",
            format!(
                "these recipients of the subject's data have not been told (Art. 19): {}; \
                 record a recipient notification for each (NOTIFIED, or IMPOSSIBLE / \
                 DISPROPORTIONATE_EFFORT with the reason)",
                unnotified.join(", ")
            ),
        ));
    }
    let undestroyed: Vec<String> = l
        .record
        .special_category_findings
        .iter()
        .filter(|f| !f.destroyed)
        .map(|f| format!("{} {}", f.data_source, f.category))
        .collect();
    if !undestroyed.is_empty() {
        return Err(refuse(
            l,
            "SPECIAL_CATEGORIES_NOT_DESTROYED",
            format!(
                "special-category data the register does not allow was found and its \
                 destruction is not recorded (R-4): {}; record it with RecordDestruction",
                undestroyed.join(", ")
            ),
        ));
    }
    if l.record.r#type() == RequestType::AutomatedDecision && l.record.human_review.is_none() {
        return Err(refuse(
            l,
            "HUMAN_REVIEW_MISSING",
            "an automated decision must be reviewed by a person before the request is \
             answered (Art. 22(3)): record the review (RecordHumanReview) first",
        ));
    }
    if exports(l.record.r#type()) {
        let state = l
            .export
            .as_ref()
            .map(|e| e.package.state())
            .unwrap_or_default();
        if !matches!(state, ExportState::Ready | ExportState::Expired) {
            return Err(refuse(
                l,
                "EXPORT_NOT_READY",
                format!(
                    "its export package is {}; it must be READY first",
                    short(state.as_str_name(), "EXPORT_STATE_")
                ),
            ));
        }
    }
    Ok(())
}

/// One action of `principal` at `now` that succeeded.
fn done(now: DateTime<Utc>, principal: &str, what: &str, text: String) -> Changes {
    Changes {
        actions: vec![action(
            now,
            principal,
            what,
            ActionResult::Succeeded,
            text,
            "",
        )],
        ..Default::default()
    }
}

impl Api {
    /// VerifyIdentity: records an identity check; VERIFIED unlocks processing.
    pub(crate) async fn verify(
        &self,
        call: &CallContext,
        r: pb::VerifyIdentityRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "VerifyIdentity", &r.request_id, &r);
        let now = self.clock.now();
        let ValidVerify {
            id,
            method,
            outcome,
            mut check,
        } = validate_verify(&r)?;
        let principal = call.principal.name().to_string();
        check.verify_time = Some(timestamp(now));
        check.verifier = Some(model::actor(&principal));
        self.change(call, "VerifyIdentity", &id, key.as_ref(), move |l| {
            require(
                l,
                &[RequestState::Received, RequestState::IdentityVerification],
                "record an identity check",
            )?;
            l.record.state = RequestState::IdentityVerification as i32;
            l.record.identity_verification = Some(check);
            Ok(Changes {
                actions: vec![action(
                    now,
                    &principal,
                    "identity_checked",
                    if outcome == IdentityVerificationOutcome::Failed {
                        ActionResult::Failed
                    } else {
                        ActionResult::Succeeded
                    },
                    format!(
                        "Identity check by {}: {}",
                        short(method.as_str_name(), "IDENTITY_VERIFICATION_METHOD_"),
                        short(outcome.as_str_name(), "IDENTITY_VERIFICATION_OUTCOME_")
                    ),
                    "",
                )],
                ..Default::default()
            })
        })
        .await
    }

    /// StartProcessing: a verified request goes IN_PROGRESS and fans out.
    pub(crate) async fn start(
        &self,
        call: &CallContext,
        r: pb::StartProcessingRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "StartProcessing", &r.request_id, &r);
        let now = self.clock.now();
        let id = validate_start(&r)?;
        let sources = self.all_sources().await?;
        let register = self.register_recipients(&sources).await?;
        let principal = call.principal.name().to_string();
        let out = self
            .change(call, "StartProcessing", &id, key.as_ref(), move |l| {
                require(l, &[RequestState::IdentityVerification], "start processing")?;
                let verified = l
                    .record
                    .identity_verification
                    .as_ref()
                    .is_some_and(|c| c.outcome() == IdentityVerificationOutcome::Verified);
                if !verified {
                    return Err(refuse(
                        l,
                        "IDENTITY_NOT_VERIFIED",
                        "no data is processed before the requester's identity is VERIFIED (D-4)",
                    ));
                }
                l.record.state = RequestState::InProgress as i32;
                let (mut changes, names, recipients) = fan_out(l, &sources, &register, now);
                changes.actions.push(action(
                    now,
                    &principal,
                    "processing_started",
                    ActionResult::Succeeded,
                    if names.is_empty() {
                        "Processing started; no data source is asked for this type of request"
                            .to_string()
                    } else {
                        format!("Processing started; sources asked: {}", names.join(", "))
                    },
                    "",
                ));
                if !recipients.is_empty() {
                    changes.actions.push(action(
                        now,
                        &principal,
                        "recipients_derived",
                        ActionResult::Succeeded,
                        format!(
                            "Recipients to tell (Art. 19), from the sources and the register: {}",
                            recipients.join(", ")
                        ),
                        "",
                    ));
                }
                l.record.recipients_to_notify = recipients;
                if l.record.r#type() == RequestType::AutomatedDecision {
                    changes.actions.push(action(
                        now,
                        &principal,
                        "human_review_opened",
                        ActionResult::Succeeded,
                        "A person with authority to change the decision must review it, \
                         hearing the subject's point of view (Art. 22(3)); record the \
                         review before answering"
                            .to_string(),
                        "",
                    ));
                }
                Ok(changes)
            })
            .await?;
        self.wake.notify_one();
        Ok(out)
    }

    /// ExtendDeadline: once, before the original deadline (Art. 12(3)).
    pub(crate) async fn extend(
        &self,
        call: &CallContext,
        r: pb::ExtendDeadlineRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "ExtendDeadline", &r.request_id, &r);
        let now = self.clock.now();
        let (id, told) = validate_extend(&r, now)?;
        let principal = call.principal.name().to_string();
        let calendar = self.calendar.clone();
        self.change(call, "ExtendDeadline", &id, key.as_ref(), move |l| {
            require(l, OPEN, "be extended")?;
            if l.record.extended {
                return Err(refuse(
                    l,
                    "ALREADY_EXTENDED",
                    "its deadline was already extended; an extension is allowed once",
                ));
            }
            let original = l
                .record
                .original_due_time
                .as_ref()
                .and_then(instant)
                .unwrap_or(now);
            if now > original || told > original {
                return Err(refuse(
                    l,
                    "EXTENSION_TOO_LATE",
                    format!(
                        "the original deadline {} has passed: an extension and the subject's \
                         notice of it must come before it (Art. 12(3))",
                        original.to_rfc3339()
                    ),
                ));
            }
            let received = l
                .record
                .receive_time
                .as_ref()
                .and_then(instant)
                .unwrap_or(now);
            let deadline = calendar
                .dsar_extended_deadline(received, r.months as u32)
                .map_err(|e| ApiError::invalid("months", e.to_string()))?;
            l.record.extended = true;
            l.record.due_time = Some(timestamp(deadline.due_time));
            l.record.extension = Some(pb::DeadlineExtension {
                months: r.months,
                reasons: r.reasons.clone(),
                subject_notify_time: Some(timestamp(told)),
                subject_notify_channel: r.subject_notify_channel.clone(),
                extend_time: Some(timestamp(now)),
                actor: Some(model::actor(&principal)),
            });
            Ok(done(
                now,
                &principal,
                "deadline_extended",
                format!(
                    "Deadline extended by {} month(s) to {}; subject told on {}: {}",
                    r.months,
                    deadline.due_date,
                    told.to_rfc3339(),
                    r.reasons
                ),
            ))
        })
        .await
    }

    /// RejectRequest: an open request is refused, with the reason.
    pub(crate) async fn reject(
        &self,
        call: &CallContext,
        r: pb::RejectRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "RejectRequest", &r.request_id, &r);
        let now = self.clock.now();
        let (id, reason) = validate_reject(&r)?;
        let principal = call.principal.name().to_string();
        self.change(call, "RejectRequest", &id, key.as_ref(), move |l| {
            require(l, OPEN, "be rejected")?;
            l.record.state = RequestState::Rejected as i32;
            l.record.rejection = Some(pb::Rejection {
                reason: reason as i32,
                explanation: r.explanation.clone(),
                reject_time: Some(timestamp(now)),
                actor: Some(model::actor(&principal)),
            });
            Ok(done(
                now,
                &principal,
                "rejected",
                format!(
                    "Rejected ({}): {}",
                    short(reason.as_str_name(), "REJECTION_REASON_"),
                    r.explanation
                ),
            ))
        })
        .await
    }

    /// CancelRequest: an open request is withdrawn.
    pub(crate) async fn cancel(
        &self,
        call: &CallContext,
        r: pb::CancelRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "CancelRequest", &r.request_id, &r);
        let now = self.clock.now();
        let id = validate_cancel(&r)?;
        let principal = call.principal.name().to_string();
        self.change(call, "CancelRequest", &id, key.as_ref(), move |l| {
            require(l, OPEN, "be cancelled")?;
            l.record.state = RequestState::Cancelled as i32;
            l.record.cancellation = Some(pb::Cancellation {
                reason: r.reason.clone(),
                cancel_time: Some(timestamp(now)),
                actor: Some(model::actor(&principal)),
            });
            Ok(done(
                now,
                &principal,
                "cancelled",
                format!("Cancelled: {}", r.reason),
            ))
        })
        .await
    }

    /// CompleteRequest: every source settled and the export READY first.
    pub(crate) async fn complete(
        &self,
        call: &CallContext,
        r: pb::CompleteRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "CompleteRequest", &r.request_id, &r);
        let now = self.clock.now();
        let (id, sent) = validate_complete(&r, now)?;
        let principal = call.principal.name().to_string();
        self.change(call, "CompleteRequest", &id, key.as_ref(), move |l| {
            require(l, &[RequestState::InProgress], "be completed")?;
            completion_blocked(l)?;
            l.record.state = RequestState::Completed as i32;
            l.record.completion = Some(pb::Completion {
                response_summary: r.response_summary.clone(),
                response_time: Some(timestamp(sent)),
                actor: Some(model::actor(&principal)),
            });
            Ok(done(
                now,
                &principal,
                "completed",
                format!(
                    "Response sent on {}: {}",
                    sent.to_rfc3339(),
                    r.response_summary
                ),
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::fields::violated_fields;

    use super::*;

    use crate::api::test_now as now;

    const NAME: &str = "requests/0190abc";

    #[test]
    fn verification_needs_a_method_an_outcome_and_words_for_other() {
        let mut r = pb::VerifyIdentityRequest {
            name: NAME.into(),
            verification: Some(pb::IdentityVerification {
                method: IdentityVerificationMethod::Other as i32,
                outcome: IdentityVerificationOutcome::Verified as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_verify(&r)),
            ["verification.description"]
        );
        r.verification.as_mut().unwrap().description = "video call".into();
        let valid = validate_verify(&r).unwrap();
        assert_eq!(valid.id, "0190abc");
        assert_eq!(valid.outcome, IdentityVerificationOutcome::Verified);
        r.name = "nope".into();
        r.verification = None;
        assert_eq!(
            violated_fields(&validate_verify(&r)),
            ["name", "verification"]
        );
    }

    #[test]
    fn extensions_are_one_or_two_months_told_to_the_subject() {
        let mut r = pb::ExtendDeadlineRequest {
            name: NAME.into(),
            months: 3,
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_extend(&r, now())),
            ["months", "reasons", "subject_notify_time"]
        );
        r.months = 2;
        r.reasons = "complex".into();
        r.subject_notify_time = Some(timestamp(now()));
        assert_eq!(
            validate_extend(&r, now()).unwrap(),
            ("0190abc".into(), now())
        );
        r.subject_notify_time = Some(timestamp(now() + chrono::Duration::hours(1)));
        assert_eq!(
            violated_fields(&validate_extend(&r, now())),
            ["subject_notify_time"]
        );
    }

    #[test]
    fn rejections_for_other_reasons_explain() {
        let mut r = pb::RejectRequestRequest {
            name: NAME.into(),
            reason: RejectionReason::Other as i32,
            ..Default::default()
        };
        assert_eq!(violated_fields(&validate_reject(&r)), ["explanation"]);
        r.reason = RejectionReason::Excessive as i32;
        assert_eq!(
            validate_reject(&r).unwrap(),
            ("0190abc".into(), RejectionReason::Excessive)
        );
    }

    #[test]
    fn names_and_request_ids_are_checked_by_every_change() {
        let long = "x".repeat(custodia_core::idempotency::MAX_REQUEST_ID + 1);
        let start = pb::StartProcessingRequest {
            name: String::new(),
            request_id: long.clone(),
        };
        assert_eq!(
            violated_fields(&validate_start(&start)),
            ["name", "request_id"]
        );
        let cancel = pb::CancelRequestRequest {
            name: NAME.into(),
            request_id: long,
            ..Default::default()
        };
        assert_eq!(violated_fields(&validate_cancel(&cancel)), ["request_id"]);
        let complete = pb::CompleteRequestRequest {
            name: NAME.into(),
            response_time: Some(timestamp(now() + chrono::Duration::days(1))),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_complete(&complete, now())),
            ["response_time"]
        );
    }

    #[test]
    fn only_access_and_portability_export() {
        assert!(exports(RequestType::Access) && exports(RequestType::Portability));
        assert!(!exports(RequestType::Erasure));
        assert_eq!(
            operation_for(RequestType::Objection),
            Some(Capability::Object)
        );
        assert_eq!(operation_for(RequestType::AutomatedDecision), None);
        assert_eq!(operation_for(RequestType::Erasure), Some(Capability::Erase));
        assert!(tells_recipients(RequestType::Restriction));
        assert!(!tells_recipients(RequestType::Access));
    }
}
