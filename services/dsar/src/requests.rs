//! SubmitRequest, GetRequest and ListRequests: a data-subject request enters
//! the register with its legal deadline, and is read back one by one or in
//! pages. Validation is pure ([`validate_submit`], [`validate_list`]) and
//! unit-tested below; the handlers only add the clock, the store and the
//! access events.

use chrono::{DateTime, NaiveDate, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::{absorb, enum_value, optional_time, page_size},
    idempotency::{MAX_REQUEST_ID, RequestKey},
    legal_time::Deadline,
    pagination,
    proto_time::{micros_of, timestamp},
    storage::to_micros,
    subject::{SubjectHasher, SubjectId},
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::{Contact, SubjectRef},
    connector::v1::Correction,
    dsar::v1::{
        self as pb, ActionResult, RequestChannel, RequestState, RequestType, Requester,
        RequesterRole,
    },
};

use crate::{
    api::Api,
    model::{self, action, check_purpose},
    store::{Changes, Done, RequestFilter},
};

/// Longest request details accepted.
const MAX_DETAILS: usize = 16 * 1024;
/// Most subject identifiers per request.
const MAX_IDENTIFIERS: usize = 20;
/// Most corrections, purposes or categories of a request.
const MAX_LIST: usize = 100;
/// Most states a ListRequests filter names (each at most once makes six).
const MAX_STATES: usize = 10;

/// The request types, as a violation lists them.
pub(crate) const TYPES: &str = "ACCESS, RECTIFICATION, ERASURE, RESTRICTION, PORTABILITY, \
    OBJECTION, AUTOMATED_DECISION";

/// A SubmitRequest that passed validation.
#[derive(Debug)]
pub(crate) struct ValidSubmit {
    /// The request as the caller sent it.
    pub input: pb::Request,
    /// Its type.
    pub kind: RequestType,
    /// The subject's identifiers, normalised, without repeats.
    pub identifiers: Vec<SubjectRef>,
    /// Their keyed hashes, in the same order (what listings filter on).
    pub hashes: Vec<String>,
    /// When it was received (`receive_time`, else now).
    pub received: DateTime<Utc>,
}

/// Checks a SubmitRequest at `now`, collecting every bad field.
pub(crate) fn validate_submit(
    r: &pb::SubmitRequestRequest,
    subjects: &SubjectHasher,
    now: DateTime<Utc>,
) -> Result<ValidSubmit, ApiError> {
    let mut v = Validator::new();
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
    let Some(req) = &r.request else {
        return Err(ApiError::invalid("request", "is required"));
    };
    let kind = enum_value(
        &mut v,
        "request.type",
        req.r#type,
        RequestType::Unspecified,
        TYPES,
    );
    let (identifiers, hashes) = check_identifiers(&mut v, &req.subject_identifiers, subjects);
    check_requester(&mut v, req.requester.as_ref());
    if req.channel != 0 {
        enum_value(
            &mut v,
            "request.channel",
            req.channel,
            RequestChannel::Unspecified,
            "WEB_FORM, EMAIL, POST, IN_PERSON, PHONE, INSTITUTIONAL_SYSTEM, OTHER",
        );
    }
    v.max_len("request.details", &req.details, MAX_DETAILS);
    check_corrections(&mut v, kind, &req.corrections);
    if req.purposes.len() > MAX_LIST {
        v.add("request.purposes", "has more than 100 entries");
    }
    for (i, p) in req.purposes.iter().enumerate().take(MAX_LIST) {
        check_purpose(&mut v, &format!("request.purposes[{i}]"), p);
    }
    if req.categories.len() > MAX_LIST {
        v.add("request.categories", "has more than 100 entries");
    }
    for (i, c) in req.categories.iter().enumerate().take(MAX_LIST) {
        v.required(&format!("request.categories[{i}]"), c, 128);
    }
    let received = optional_time(
        &mut v,
        "request.receive_time",
        req.receive_time.as_ref(),
        Some(now),
    );
    v.finish()?;
    Ok(ValidSubmit {
        input: req.clone(),
        kind: kind.unwrap_or_default(),
        identifiers,
        hashes,
        received: received.unwrap_or(now),
    })
}

/// The subject's identifiers, normalised, and their hashes; a repeat (by
/// hash, so `Ada@x.org` repeats `ada@x.org`) is a violation.
fn check_identifiers(
    v: &mut Validator,
    list: &[SubjectRef],
    subjects: &SubjectHasher,
) -> (Vec<SubjectRef>, Vec<String>) {
    let mut identifiers = Vec::new();
    let mut hashes = Vec::new();
    if list.is_empty() {
        v.add(
            "request.subject_identifiers",
            "is required (at least one identifier of the subject)",
        );
    } else if list.len() > MAX_IDENTIFIERS {
        v.add(
            "request.subject_identifiers",
            format!("has more than {MAX_IDENTIFIERS} entries"),
        );
    }
    for (i, s) in list.iter().enumerate().take(MAX_IDENTIFIERS) {
        let field = format!("request.subject_identifiers[{i}]");
        if let Some(id) = absorb(v, SubjectId::parse(&s.r#type, &s.value, &field)) {
            let hash = subjects.hash(&id);
            if hashes.contains(&hash) {
                v.add(field, "repeats an earlier identifier");
                continue;
            }
            hashes.push(hash);
            identifiers.push(SubjectRef {
                r#type: id.kind().to_string(),
                value: id.value().to_string(),
            });
        }
    }
    (identifiers, hashes)
}

/// Who asks: the subject, or a representative who says on what authority.
fn check_requester(v: &mut Validator, requester: Option<&Requester>) {
    let Some(q) = requester else {
        v.add("request.requester", "is required");
        return;
    };
    let role = enum_value(
        v,
        "request.requester.role",
        q.role,
        RequesterRole::Unspecified,
        "SUBJECT, REPRESENTATIVE",
    );
    if role == Some(RequesterRole::Representative) {
        v.required(
            "request.requester.authority_basis",
            &q.authority_basis,
            MAX_TEXT,
        );
    } else {
        v.max_len(
            "request.requester.authority_basis",
            &q.authority_basis,
            MAX_TEXT,
        );
    }
    v.max_len(
        "request.requester.authority_evidence",
        &q.authority_evidence,
        MAX_TEXT,
    );
    if let Some(c) = &q.contact {
        check_contact(v, "request.requester.contact", c);
    }
}

fn check_contact(v: &mut Validator, field: &str, c: &Contact) {
    v.max_len(&format!("{field}.display_name"), &c.display_name, MAX_ID);
    v.max_len(&format!("{field}.email"), &c.email, MAX_ID);
    if !c.email.is_empty() && !c.email.contains('@') {
        v.add(format!("{field}.email"), "is not an email address");
    }
    v.max_len(&format!("{field}.phone"), &c.phone, 64);
    v.max_len(
        &format!("{field}.postal_address"),
        &c.postal_address,
        MAX_TEXT,
    );
}

/// Corrections come with a RECTIFICATION request, and only with one.
fn check_corrections(v: &mut Validator, kind: Option<RequestType>, list: &[Correction]) {
    if kind == Some(RequestType::Rectification) && list.is_empty() {
        v.add(
            "request.corrections",
            "is required for a RECTIFICATION request (what to correct)",
        );
    } else if kind.is_some() && kind != Some(RequestType::Rectification) && !list.is_empty() {
        v.add(
            "request.corrections",
            "is only accepted for a RECTIFICATION request",
        );
    }
    if list.len() > MAX_LIST {
        v.add("request.corrections", "has more than 100 entries");
    }
    for (i, c) in list.iter().enumerate().take(MAX_LIST) {
        v.required(
            &format!("request.corrections[{i}].category"),
            &c.category,
            128,
        );
        v.required(&format!("request.corrections[{i}].field"), &c.field, 128);
        v.max_len(
            &format!("request.corrections[{i}].record_id"),
            &c.record_id,
            MAX_ID,
        );
    }
}

impl ValidSubmit {
    /// The new request `id`, RECEIVED at `now`, due at `deadline`.
    fn record(&self, id: &str, deadline: &Deadline, now: DateTime<Utc>) -> pb::Request {
        let input = self.input.clone();
        pb::Request {
            name: model::request_name(id),
            r#type: self.kind as i32,
            state: RequestState::Received as i32,
            subject_identifiers: self.identifiers.clone(),
            requester: input.requester,
            channel: input.channel,
            details: input.details,
            corrections: input.corrections,
            purposes: input.purposes,
            categories: input.categories,
            receive_time: Some(timestamp(self.received)),
            due_time: Some(timestamp(deadline.due_time)),
            original_due_time: Some(timestamp(deadline.due_time)),
            create_time: Some(timestamp(now)),
            update_time: Some(timestamp(now)),
            ..Default::default()
        }
    }

    /// The first action: what was received when, and when the answer is due.
    fn submitted(
        &self,
        principal: &str,
        received_on: NaiveDate,
        deadline: &Deadline,
        now: DateTime<Utc>,
    ) -> pb::ActionEntry {
        let shifted = if deadline.was_shifted() {
            format!(
                " ({} is not a working day, so the deadline moves to the next one)",
                deadline.unshifted_date
            )
        } else {
            String::new()
        };
        action(
            now,
            principal,
            "submitted",
            ActionResult::Succeeded,
            format!(
                "{} request received on {received_on}; the answer is due on {}{shifted}",
                self.kind.as_str_name().trim_start_matches("REQUEST_TYPE_"),
                deadline.due_date
            ),
            "",
        )
    }
}

/// A ListRequests that passed validation: the filter, the page size, and the
/// fingerprint its page tokens are bound to.
#[derive(Debug)]
pub(crate) struct ValidList {
    pub filter: RequestFilter,
    pub size: usize,
    pub fingerprint: String,
}

/// Checks a ListRequests at `now` (the instant `overdue` is judged at).
pub(crate) fn validate_list(
    r: &pb::ListRequestsRequest,
    subjects: &SubjectHasher,
    now: DateTime<Utc>,
) -> Result<ValidList, ApiError> {
    let mut v = Validator::new();
    let size = page_size(&mut v, r.page_size);
    let mut states = Vec::new();
    v.max_items("states", r.states.len(), MAX_STATES);
    for (i, s) in r.states.iter().enumerate().take(MAX_STATES) {
        if let Some(s) = enum_value(
            &mut v,
            &format!("states[{i}]"),
            *s,
            RequestState::Unspecified,
            "RECEIVED, IDENTITY_VERIFICATION, IN_PROGRESS, COMPLETED, REJECTED, CANCELLED",
        ) {
            states.push(s);
        }
    }
    let kind = match r.r#type {
        0 => None,
        t => enum_value(&mut v, "type", t, RequestType::Unspecified, TYPES).map(|t| t as i32),
    };
    let before = optional_time(&mut v, "due_before_time", r.due_before_time.as_ref(), None);
    let subject_hash = r.subject.as_ref().and_then(|s| {
        absorb(&mut v, SubjectId::parse(&s.r#type, &s.value, "subject"))
            .map(|id| subjects.hash(&id))
    });
    v.finish()?;
    let filter = RequestFilter {
        states,
        kind,
        overdue_at_us: r.overdue.then(|| to_micros(now)),
        due_before_us: before.map(to_micros),
        subject_hash,
        ..Default::default()
    };
    let fingerprint = format!(
        "states={:?};type={:?};before={:?};overdue={};subject={:?}",
        filter.states, filter.kind, filter.due_before_us, r.overdue, filter.subject_hash
    );
    Ok(ValidList {
        filter,
        size,
        fingerprint,
    })
}

/// Where a listing of requests (soonest due first) goes on after `l`.
pub(crate) fn list_position(l: &crate::store::Loaded) -> (i64, String) {
    let due = l
        .record
        .due_time
        .as_ref()
        .map(micros_of)
        .unwrap_or_default();
    (due, l.id.clone())
}

impl Api {
    /// SubmitRequest: a new request, RECEIVED, with its legal deadline.
    pub(crate) async fn submit(
        &self,
        call: &CallContext,
        r: pb::SubmitRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "SubmitRequest", &r.request_id, &r);
        let now = self.clock.now();
        let valid = validate_submit(&r, &self.subjects, now)?;
        let deadline = self.calendar.dsar_deadline(valid.received);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let record = valid.record(&id, &deadline, now);
        let changes = Changes {
            actions: vec![valid.submitted(
                call.principal.name(),
                self.calendar.local_date(valid.received),
                &deadline,
                now,
            )],
            ..Default::default()
        };
        let event = self.event(
            call,
            "SubmitRequest",
            record.name.clone(),
            record.subject_identifiers.first(),
        );
        let done = self
            .store
            .create(
                &record,
                &valid.hashes,
                key.as_ref(),
                changes,
                &event,
                to_micros(now),
            )
            .await?;
        let id = match done {
            Done::Applied => id,
            Done::Replayed(earlier) => model::request_id_of(&earlier).to_string(),
        };
        self.current(&id).await
    }

    /// GetRequest.
    pub(crate) async fn get(
        &self,
        call: &CallContext,
        r: pb::GetRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let id = model::parse_request_name("name", &r.name)?;
        let l = self.load(&id).await?;
        self.record_read(self.event(
            call,
            "GetRequest",
            model::request_name(&id),
            l.record.subject_identifiers.first(),
        ))
        .await?;
        Ok(model::to_proto(&l, self.clock.now()))
    }

    /// ListRequests: soonest due first.
    pub(crate) async fn list(
        &self,
        call: &CallContext,
        r: pb::ListRequestsRequest,
    ) -> Result<pb::ListRequestsResponse, ApiError> {
        let now = self.clock.now();
        let ValidList {
            filter,
            size,
            fingerprint,
        } = validate_list(&r, &self.subjects, now)?;
        let after: Option<(i64, String)> = pagination::decode(&r.page_token, &fingerprint)?;
        let mut found = self.store.list(&filter, after, size + 1).await?;
        let next = (found.len() > size)
            .then(|| pagination::encode(&list_position(&found[size - 1]), &fingerprint));
        found.truncate(size);
        self.record_read(self.event(call, "ListRequests", String::new(), r.subject.as_ref()))
            .await?;
        Ok(pb::ListRequestsResponse {
            requests: found.iter().map(|l| model::to_proto(l, now)).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::fields::violated_fields;

    use super::*;

    use crate::api::test_now as now;

    fn hasher() -> SubjectHasher {
        SubjectHasher::new("test key".to_string().into())
    }

    fn email(value: &str) -> SubjectRef {
        SubjectRef {
            r#type: "email".into(),
            value: value.into(),
        }
    }

    fn access_request() -> pb::Request {
        pb::Request {
            r#type: RequestType::Access as i32,
            subject_identifiers: vec![email("ada@example.org")],
            requester: Some(Requester {
                role: RequesterRole::Subject as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn submit(request: pb::Request) -> Result<ValidSubmit, ApiError> {
        validate_submit(
            &pb::SubmitRequestRequest {
                request: Some(request),
                request_id: String::new(),
            },
            &hasher(),
            now(),
        )
    }

    #[test]
    fn a_minimal_access_request_is_received_now() {
        let valid = submit(access_request()).unwrap();
        assert_eq!(valid.kind, RequestType::Access);
        assert_eq!(valid.received, now());
        assert_eq!(valid.identifiers, vec![email("ada@example.org")]);
        assert_eq!(valid.hashes.len(), 1);
    }

    #[test]
    fn every_bad_field_is_named_in_order() {
        let mut r = access_request();
        r.r#type = 0;
        r.subject_identifiers = vec![email("ada@example.org"), email("ADA@example.org")];
        r.requester = Some(Requester {
            role: RequesterRole::Representative as i32,
            ..Default::default()
        });
        r.corrections = vec![Correction::default()];
        r.purposes = vec!["marketing".into()];
        r.receive_time = Some(timestamp(now() + chrono::Duration::days(1)));
        assert_eq!(
            violated_fields(&submit(r)),
            [
                "request.type",
                "request.subject_identifiers[1]",
                "request.requester.authority_basis",
                "request.corrections[0].category",
                "request.corrections[0].field",
                "request.purposes[0]",
                "request.receive_time",
            ]
        );
    }

    #[test]
    fn corrections_belong_to_rectification_only() {
        let mut r = access_request();
        r.r#type = RequestType::Rectification as i32;
        assert_eq!(violated_fields(&submit(r.clone())), ["request.corrections"]);
        r.r#type = RequestType::Erasure as i32;
        r.corrections = vec![Correction {
            category: "contact".into(),
            field: "email".into(),
            ..Default::default()
        }];
        assert_eq!(violated_fields(&submit(r.clone())), ["request.corrections"]);
        r.r#type = RequestType::Rectification as i32;
        assert!(submit(r).is_ok());
    }

    #[test]
    fn a_missing_request_is_the_only_violation() {
        let r = pb::SubmitRequestRequest {
            request: None,
            request_id: "x".repeat(MAX_REQUEST_ID + 1),
        };
        assert_eq!(
            violated_fields(&validate_submit(&r, &hasher(), now())),
            ["request"]
        );
    }

    #[test]
    fn listings_bind_their_tokens_to_the_filter() {
        let r = pb::ListRequestsRequest {
            states: vec![RequestState::Received as i32],
            overdue: true,
            ..Default::default()
        };
        let valid = validate_list(&r, &hasher(), now()).unwrap();
        assert_eq!(valid.size, 50);
        assert_eq!(valid.filter.overdue_at_us, Some(to_micros(now())));
        let other = validate_list(&pb::ListRequestsRequest::default(), &hasher(), now()).unwrap();
        assert_ne!(valid.fingerprint, other.fingerprint);
        let bad = pb::ListRequestsRequest {
            page_size: -1,
            states: vec![0, 99],
            r#type: 42,
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_list(&bad, &hasher(), now())),
            ["page_size", "states[0]", "states[1]", "type"]
        );
    }
}
