//! `custodia.dsar.v1.DsarService`: handlers that validate the request, let
//! [`crate::state`] decide on the current record inside the store's
//! transaction, and encode the result. Every read and change of a request is
//! an access event: reads are enqueued before responding, changes in the
//! transaction of the change. Data sources and retention runs have their
//! handlers in [`crate::sources`] and [`crate::retention`].

use std::{pin::Pin, sync::Arc};

use custodia_core::{
    ApiError, Config,
    auth::CallContext,
    echo::echo,
    idempotency::RequestKey,
    legal_time::{Clock, LegalCalendar},
    outbox::{AccessEvent, OutboxStore, Outcome, SqlOutbox},
    pagination,
    storage::to_micros,
    subject::{SubjectHasher, SubjectId},
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::{Document, ExportFormat, SubjectRef},
    connector::v1::Capability,
    dsar::v1::{
        self as pb, ActionResult, ExportState, IdentityVerificationMethod,
        IdentityVerificationOutcome, RecipientNotificationOutcome, RejectionReason, RequestChannel,
        RequestState, RequestType, RequesterRole, SourceTaskState,
        dsar_service_server::DsarService,
    },
};
use futures::Stream;
use tokio::{io::AsyncReadExt, sync::Notify};
use tonic::{Request, Response, Status};

use crate::{
    model::{self, action, optional_time, ts},
    register,
    state::{OPEN, refuse, require},
    store::{Changes, Done, DsarStore, ExportRow, Loaded, RequestFilter},
};

/// The gRPC service name recorded in access events.
pub const SERVICE_NAME: &str = "custodia.dsar.v1.DsarService";
/// Longest idempotency key accepted.
pub use custodia_core::idempotency::MAX_REQUEST_ID;
/// Longest request details accepted.
const MAX_DETAILS: usize = 16 * 1024;
/// Most subject identifiers per request.
const MAX_IDENTIFIERS: usize = 20;
/// Most corrections, purposes or categories of a request.
const MAX_LIST: usize = 100;
/// Most states a ListRequests filter names (each at most once makes six).
const MAX_STATES: usize = 10;
/// Size of one GetExport chunk.
const CHUNK: usize = 1024 * 1024;

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) store: DsarStore,
    pub(crate) outbox: SqlOutbox,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) calendar: Arc<LegalCalendar>,
    pub(crate) subjects: SubjectHasher,
    pub(crate) config: Arc<Config>,
    /// custodia's consent service (`dsar.consent_endpoint`).
    pub(crate) consent_endpoint: String,
    /// custodia's audit-log service (`dsar.audit_endpoint`).
    pub(crate) audit_endpoint: String,
    /// How channels to connectors and custodia's services are made (TLS).
    pub(crate) outbound: custodia_core::outbound::Outbound,
    pub(crate) custodia_token: Option<secrecy::SecretString>,
    pub(crate) wake: Arc<Notify>,
}

type Reply<T> = Result<Response<T>, Status>;

/// Moves the violations of `e` into `v`, so every bad field is reported at once.
pub(crate) fn merge<T>(v: &mut Validator, r: Result<T, ApiError>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(ApiError::InvalidArgument(list)) => {
            for f in list {
                v.add(f.field, f.description);
            }
            None
        }
        Err(e) => {
            v.add("request", e.to_string());
            None
        }
    }
}

pub(crate) fn enum_value<E>(
    v: &mut Validator,
    field: &str,
    value: i32,
    unspecified: E,
    names: &str,
) -> Option<E>
where
    E: TryFrom<i32> + PartialEq,
{
    match E::try_from(value) {
        Ok(e) if e != unspecified => Some(e),
        _ => {
            v.add(field, format!("must be one of {names}"));
            None
        }
    }
}

const TYPES: &str = "ACCESS, RECTIFICATION, ERASURE, RESTRICTION, PORTABILITY, OBJECTION, \
    AUTOMATED_DECISION";

/// Validates `purposes/{purpose}`.
pub(crate) fn check_purpose(v: &mut Validator, field: &str, p: &str) {
    let id = p.strip_prefix("purposes/").unwrap_or_default();
    if id.is_empty()
        || id.len() > 63
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        v.add(
            field,
            format!(
                "`{}` is not a purpose name (`purposes/{{purpose}}`)",
                echo(p)
            ),
        );
    }
}

/// The connector operation a request type fans out, if any.
pub fn operation_for(kind: RequestType) -> Option<Capability> {
    match kind {
        RequestType::Access | RequestType::Portability => Some(Capability::Export),
        RequestType::Erasure => Some(Capability::Erase),
        RequestType::Restriction => Some(Capability::Restrict),
        RequestType::Rectification => Some(Capability::Rectify),
        _ => None,
    }
}

/// Whether a request type produces an export package.
pub fn exports(kind: RequestType) -> bool {
    matches!(kind, RequestType::Access | RequestType::Portability)
}

fn validate_contact(v: &mut Validator, field: &str, c: &custodia_proto::common::v1::Contact) {
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

impl Api {
    pub(crate) fn event(
        &self,
        call: &CallContext,
        method: &str,
        resource: String,
        subject: Option<&SubjectRef>,
    ) -> AccessEvent {
        let mut event = AccessEvent::new(
            self.clock.now(),
            call.principal.name(),
            SERVICE_NAME,
            method,
            Outcome::Ok,
        );
        event.trace_id = call.trace_id.clone();
        event.resource = resource;
        if event.action == "other" {
            event.action = "update".into();
        }
        self.set_subject(&mut event, subject);
        event
    }

    pub(crate) fn set_subject(&self, event: &mut AccessEvent, subject: Option<&SubjectRef>) {
        if let Some(s) = subject
            && let Ok(id) = SubjectId::parse(&s.r#type, &s.value, "subject")
        {
            event.subject_type = Some(id.kind().to_string());
            event.subject_hash = Some(self.subjects.hash(&id));
        }
    }

    /// Records a read before the response leaves.
    pub(crate) async fn record_read(&self, event: AccessEvent) -> Result<(), ApiError> {
        self.outbox
            .enqueue(&event)
            .await
            .map_err(ApiError::internal)
    }

    pub(crate) async fn load(&self, id: &str) -> Result<Loaded, ApiError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found("request", model::request_name(id)))
    }

    /// Runs a change of request `id` and returns the request after it.
    async fn change<F>(
        &self,
        call: &CallContext,
        method: &str,
        id: &str,
        key: Option<&RequestKey>,
        decide: F,
    ) -> Result<pb::Request, ApiError>
    where
        F: FnOnce(&mut Loaded) -> Result<Changes, ApiError>,
    {
        // The subject is known only once loaded; the event names it when it can.
        let subject = self
            .store
            .get(id)
            .await?
            .and_then(|l| l.record.subject_identifiers.first().cloned());
        let event = self.event(call, method, model::request_name(id), subject.as_ref());
        let now = self.clock.now();
        self.store
            .change(id, key, Some(&event), to_micros(now), decide)
            .await?;
        let l = self.load(id).await?;
        Ok(model::to_proto(&l, self.clock.now()))
    }

    async fn submit(
        &self,
        call: &CallContext,
        r: pb::SubmitRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "SubmitRequest", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(req) = r.request else {
            return Err(ApiError::invalid("request", "is required"));
        };
        let kind = enum_value(
            &mut v,
            "request.type",
            req.r#type,
            RequestType::Unspecified,
            TYPES,
        );
        let mut identifiers = Vec::new();
        let mut hashes = Vec::new();
        if req.subject_identifiers.is_empty() {
            v.add(
                "request.subject_identifiers",
                "is required (at least one identifier of the subject)",
            );
        } else if req.subject_identifiers.len() > MAX_IDENTIFIERS {
            v.add(
                "request.subject_identifiers",
                format!("has more than {MAX_IDENTIFIERS} entries"),
            );
        }
        for (i, s) in req
            .subject_identifiers
            .iter()
            .enumerate()
            .take(MAX_IDENTIFIERS)
        {
            let field = format!("request.subject_identifiers[{i}]");
            if let Some(id) = merge(&mut v, SubjectId::parse(&s.r#type, &s.value, &field)) {
                let hash = self.subjects.hash(&id);
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
        match &req.requester {
            None => v.add("request.requester", "is required"),
            Some(q) => {
                let role = enum_value(
                    &mut v,
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
                    validate_contact(&mut v, "request.requester.contact", c);
                }
            }
        }
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
        if kind == Some(RequestType::Rectification) && req.corrections.is_empty() {
            v.add(
                "request.corrections",
                "is required for a RECTIFICATION request (what to correct)",
            );
        } else if kind.is_some()
            && kind != Some(RequestType::Rectification)
            && !req.corrections.is_empty()
        {
            v.add(
                "request.corrections",
                "is only accepted for a RECTIFICATION request",
            );
        }
        if req.corrections.len() > MAX_LIST {
            v.add("request.corrections", "has more than 100 entries");
        }
        for (i, c) in req.corrections.iter().enumerate().take(MAX_LIST) {
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
        let kind = kind.unwrap_or_default();
        let received = received.unwrap_or(now);
        let deadline = self.calendar.dsar_deadline(received);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let name = model::request_name(&id);
        let record = pb::Request {
            name: name.clone(),
            r#type: kind as i32,
            state: RequestState::Received as i32,
            subject_identifiers: identifiers,
            requester: req.requester,
            channel: req.channel,
            details: req.details,
            corrections: req.corrections,
            purposes: req.purposes,
            categories: req.categories,
            receive_time: Some(ts(received)),
            due_time: Some(ts(deadline.due_time)),
            original_due_time: Some(ts(deadline.due_time)),
            create_time: Some(ts(now)),
            update_time: Some(ts(now)),
            ..Default::default()
        };
        let principal = call.principal.name();
        let shifted = if deadline.was_shifted() {
            format!(
                " ({} is not a working day, so the deadline moves to the next one)",
                deadline.unshifted_date
            )
        } else {
            String::new()
        };
        let changes = Changes {
            actions: vec![action(
                now,
                principal,
                "submitted",
                ActionResult::Succeeded,
                format!(
                    "{} request received on {}; the answer is due on {}{shifted}",
                    kind.as_str_name().trim_start_matches("REQUEST_TYPE_"),
                    self.calendar.local_date(received),
                    deadline.due_date
                ),
                "",
            )],
            ..Default::default()
        };
        let event = self.event(
            call,
            "SubmitRequest",
            name.clone(),
            record.subject_identifiers.first(),
        );
        let done = self
            .store
            .create(
                &record,
                &hashes,
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
        let l = self.load(&id).await?;
        Ok(model::to_proto(&l, self.clock.now()))
    }

    async fn get(
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

    async fn list(
        &self,
        call: &CallContext,
        r: pb::ListRequestsRequest,
    ) -> Result<pb::ListRequestsResponse, ApiError> {
        let now = self.clock.now();
        let mut v = Validator::new();
        let size = match r.page_size {
            n if n < 0 => {
                v.add("page_size", "must not be negative");
                0
            }
            0 => 50,
            n => (n as usize).min(500),
        };
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
            merge(&mut v, SubjectId::parse(&s.r#type, &s.value, "subject"))
                .map(|id| self.subjects.hash(&id))
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
        let after: Option<(i64, String)> = pagination::decode(&r.page_token, &fingerprint)?;
        let mut found = self.store.list(&filter, after, size + 1).await?;
        let next = (found.len() > size).then(|| {
            let last = &found[size - 1];
            let due = last
                .record
                .due_time
                .as_ref()
                .map(model::micros_of)
                .unwrap_or_default();
            pagination::encode(&(due, last.id.clone()), &fingerprint)
        });
        found.truncate(size);
        self.record_read(self.event(call, "ListRequests", String::new(), r.subject.as_ref()))
            .await?;
        Ok(pb::ListRequestsResponse {
            requests: found.iter().map(|l| model::to_proto(l, now)).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    async fn verify(
        &self,
        call: &CallContext,
        r: pb::VerifyIdentityRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "VerifyIdentity", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
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
        let (id, method, outcome) = (
            id.unwrap_or_default(),
            method.unwrap_or_default(),
            outcome.unwrap_or_default(),
        );
        let principal = call.principal.name().to_string();
        let mut check = r.verification.unwrap_or_default();
        check.verify_time = Some(ts(now));
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
                        method
                            .as_str_name()
                            .trim_start_matches("IDENTITY_VERIFICATION_METHOD_"),
                        outcome
                            .as_str_name()
                            .trim_start_matches("IDENTITY_VERIFICATION_OUTCOME_")
                    ),
                    "",
                )],
                ..Default::default()
            })
        })
        .await
    }

    async fn start(
        &self,
        call: &CallContext,
        r: pb::StartProcessingRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "StartProcessing", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.finish()?;
        let id = id.unwrap_or_default();
        let sources = self.all_sources().await?;
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
                let kind = l.record.r#type();
                let mut changes = Changes::default();
                let mut names = Vec::new();
                if let Some(op) = operation_for(kind) {
                    for s in &sources {
                        if s.state() == pb::DataSourceState::Disabled {
                            continue;
                        }
                        let supported = s.capabilities.contains(&(op as i32));
                        if s.builtin && !supported {
                            // custodia's own records only take part where they can.
                            continue;
                        }
                        names.push(s.name.clone());
                        changes.tasks.push(pb::SourceTask {
                            data_source: s.name.clone(),
                            operation: op as i32,
                            state: if supported {
                                SourceTaskState::Pending
                            } else {
                                SourceTaskState::Unsupported
                            } as i32,
                            next_attempt_time: Some(ts(now)),
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
                Ok(changes)
            })
            .await?;
        self.wake.notify_one();
        Ok(out)
    }

    async fn extend(
        &self,
        call: &CallContext,
        r: pb::ExtendDeadlineRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "ExtendDeadline", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
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
        let (id, told) = (id.unwrap_or_default(), told.unwrap_or(now));
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
                .and_then(model::instant)
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
                .and_then(model::instant)
                .unwrap_or(now);
            let deadline = calendar
                .dsar_extended_deadline(received, r.months as u32)
                .map_err(|e| ApiError::invalid("months", e.to_string()))?;
            l.record.extended = true;
            l.record.due_time = Some(ts(deadline.due_time));
            l.record.extension = Some(pb::DeadlineExtension {
                months: r.months,
                reasons: r.reasons.clone(),
                subject_notify_time: Some(ts(told)),
                subject_notify_channel: r.subject_notify_channel.clone(),
                extend_time: Some(ts(now)),
                actor: Some(model::actor(&principal)),
            });
            Ok(Changes {
                actions: vec![action(
                    now,
                    &principal,
                    "deadline_extended",
                    ActionResult::Succeeded,
                    format!(
                        "Deadline extended by {} month(s) to {}; subject told on {}: {}",
                        r.months,
                        deadline.due_date,
                        told.to_rfc3339(),
                        r.reasons
                    ),
                    "",
                )],
                ..Default::default()
            })
        })
        .await
    }

    async fn reject(
        &self,
        call: &CallContext,
        r: pb::RejectRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "RejectRequest", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
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
        let (id, reason) = (id.unwrap_or_default(), reason.unwrap_or_default());
        let principal = call.principal.name().to_string();
        self.change(call, "RejectRequest", &id, key.as_ref(), move |l| {
            require(l, OPEN, "be rejected")?;
            l.record.state = RequestState::Rejected as i32;
            l.record.rejection = Some(pb::Rejection {
                reason: reason as i32,
                explanation: r.explanation.clone(),
                reject_time: Some(ts(now)),
                actor: Some(model::actor(&principal)),
            });
            Ok(Changes {
                actions: vec![action(
                    now,
                    &principal,
                    "rejected",
                    ActionResult::Succeeded,
                    format!(
                        "Rejected ({}): {}",
                        reason.as_str_name().trim_start_matches("REJECTION_REASON_"),
                        r.explanation
                    ),
                    "",
                )],
                ..Default::default()
            })
        })
        .await
    }

    async fn cancel(
        &self,
        call: &CallContext,
        r: pb::CancelRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "CancelRequest", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.max_len("reason", &r.reason, MAX_TEXT);
        v.finish()?;
        let id = id.unwrap_or_default();
        let principal = call.principal.name().to_string();
        self.change(call, "CancelRequest", &id, key.as_ref(), move |l| {
            require(l, OPEN, "be cancelled")?;
            l.record.state = RequestState::Cancelled as i32;
            l.record.cancellation = Some(pb::Cancellation {
                reason: r.reason.clone(),
                cancel_time: Some(ts(now)),
                actor: Some(model::actor(&principal)),
            });
            Ok(Changes {
                actions: vec![action(
                    now,
                    &principal,
                    "cancelled",
                    ActionResult::Succeeded,
                    format!("Cancelled: {}", r.reason),
                    "",
                )],
                ..Default::default()
            })
        })
        .await
    }

    async fn complete(
        &self,
        call: &CallContext,
        r: pb::CompleteRequestRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "CompleteRequest", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.max_len("response_summary", &r.response_summary, MAX_TEXT);
        let sent = optional_time(&mut v, "response_time", r.response_time.as_ref(), Some(now));
        v.finish()?;
        let (id, sent) = (id.unwrap_or_default(), sent.unwrap_or(now));
        let principal = call.principal.name().to_string();
        self.change(call, "CompleteRequest", &id, key.as_ref(), move |l| {
            require(l, &[RequestState::InProgress], "be completed")?;
            let open: Vec<String> = l
                .tasks
                .iter()
                .filter(|t| !model::task_settled(t))
                .map(|t| {
                    format!(
                        "{} ({})",
                        t.data_source,
                        t.state()
                            .as_str_name()
                            .trim_start_matches("SOURCE_TASK_STATE_")
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
                            state.as_str_name().trim_start_matches("EXPORT_STATE_")
                        ),
                    ));
                }
            }
            l.record.state = RequestState::Completed as i32;
            l.record.completion = Some(pb::Completion {
                response_summary: r.response_summary.clone(),
                response_time: Some(ts(sent)),
                actor: Some(model::actor(&principal)),
            });
            Ok(Changes {
                actions: vec![action(
                    now,
                    &principal,
                    "completed",
                    ActionResult::Succeeded,
                    format!(
                        "Response sent on {}: {}",
                        sent.to_rfc3339(),
                        r.response_summary
                    ),
                    "",
                )],
                ..Default::default()
            })
        })
        .await
    }

    async fn mark_manual(
        &self,
        call: &CallContext,
        r: pb::MarkSourceHandledManuallyRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "MarkSourceHandledManually", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        let source = merge(
            &mut v,
            model::parse_source_name("data_source", &r.data_source),
        );
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.required("reason", &r.reason, MAX_TEXT);
        v.max_len("description", &r.description, MAX_TEXT);
        model::validate_counts(&mut v, "affected", &r.affected);
        model::validate_retained(&mut v, "retained", &r.retained);
        v.finish()?;
        let (id, source) = (id.unwrap_or_default(), source.unwrap_or_default());
        let principal = call.principal.name().to_string();
        self.change(
            call,
            "MarkSourceHandledManually",
            &id,
            key.as_ref(),
            move |l| {
                require(
                    l,
                    &[RequestState::InProgress],
                    "have a source handled by hand",
                )?;
                let Some(task) = l.task(&source).cloned() else {
                    return Err(ApiError::not_found(
                        "source task",
                        format!("{}/{}", model::request_name(&l.id), r.data_source),
                    ));
                };
                if model::task_settled(&task) {
                    return Err(refuse(
                        l,
                        "TASK_SETTLED",
                        format!(
                            "its task for {} is already {}",
                            r.data_source,
                            task.state()
                                .as_str_name()
                                .trim_start_matches("SOURCE_TASK_STATE_")
                        ),
                    ));
                }
                let mut task = task;
                task.state = SourceTaskState::HandledManually as i32;
                task.next_attempt_time = None;
                task.affected = r.affected.clone();
                task.retained = r.retained.clone();
                task.complete_time = Some(ts(now));
                task.manual_handling = Some(pb::ManualHandling {
                    reason: r.reason.clone(),
                    description: r.description.clone(),
                    handle_time: Some(ts(now)),
                    actor: Some(model::actor(&principal)),
                });
                Ok(Changes {
                    tasks: vec![task],
                    actions: vec![action(
                        now,
                        &principal,
                        "source_handled_manually",
                        ActionResult::Succeeded,
                        format!("Handled by hand: {}. {}", r.reason, r.description),
                        &r.data_source,
                    )],
                    ..Default::default()
                })
            },
        )
        .await
    }

    async fn retry(
        &self,
        call: &CallContext,
        r: pb::RetrySourceRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "RetrySource", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        let source = merge(
            &mut v,
            model::parse_source_name("data_source", &r.data_source),
        );
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.finish()?;
        let (id, source) = (id.unwrap_or_default(), source.unwrap_or_default());
        let principal = call.principal.name().to_string();
        let out = self
            .change(call, "RetrySource", &id, key.as_ref(), move |l| {
                require(l, &[RequestState::InProgress], "retry a source")?;
                let Some(mut task) = l.task(&source).cloned() else {
                    return Err(ApiError::not_found(
                        "source task",
                        format!("{}/{}", model::request_name(&l.id), r.data_source),
                    ));
                };
                if !matches!(
                    task.state(),
                    SourceTaskState::Failed | SourceTaskState::Unsupported
                ) {
                    return Err(refuse(
                        l,
                        "TASK_NOT_FAILED",
                        format!(
                            "its task for {} is {}; only a FAILED or UNSUPPORTED task is retried",
                            r.data_source,
                            task.state()
                                .as_str_name()
                                .trim_start_matches("SOURCE_TASK_STATE_")
                        ),
                    ));
                }
                task.state = SourceTaskState::Pending as i32;
                task.next_attempt_time = Some(ts(now));
                Ok(Changes {
                    tasks: vec![task],
                    actions: vec![action(
                        now,
                        &principal,
                        "source_retry_requested",
                        ActionResult::Succeeded,
                        "Retry asked for now",
                        &r.data_source,
                    )],
                    ..Default::default()
                })
            })
            .await?;
        self.wake.notify_one();
        Ok(out)
    }

    async fn notify_recipient(
        &self,
        call: &CallContext,
        r: pb::RecordRecipientNotificationRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "RecordRecipientNotification", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = merge(&mut v, model::parse_request_name("name", &r.name));
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(mut n) = r.notification else {
            v.add("notification", "is required");
            v.finish()?;
            unreachable!("finish fails with a violation");
        };
        v.required("notification.recipient", &n.recipient, MAX_ID);
        let outcome = enum_value(
            &mut v,
            "notification.outcome",
            n.outcome,
            RecipientNotificationOutcome::Unspecified,
            "NOTIFIED, IMPOSSIBLE, DISPROPORTIONATE_EFFORT",
        );
        if matches!(
            outcome,
            Some(
                RecipientNotificationOutcome::Impossible
                    | RecipientNotificationOutcome::DisproportionateEffort
            )
        ) {
            v.required("notification.details", &n.details, MAX_TEXT);
        } else {
            v.max_len("notification.details", &n.details, MAX_TEXT);
        }
        v.max_len("notification.method", &n.method, MAX_ID);
        let sent = optional_time(
            &mut v,
            "notification.notify_time",
            n.notify_time.as_ref(),
            Some(now),
        );
        v.finish()?;
        let (id, outcome) = (id.unwrap_or_default(), outcome.unwrap_or_default());
        let principal = call.principal.name().to_string();
        n.notify_time = Some(ts(sent.unwrap_or(now)));
        n.actor = Some(model::actor(&principal));
        self.change(call, "RecordRecipientNotification", &id, key.as_ref(), move |l| {
            require(
                l,
                &[RequestState::InProgress, RequestState::Completed],
                "record a recipient notification",
            )?;
            if !matches!(
                l.record.r#type(),
                RequestType::Rectification | RequestType::Erasure | RequestType::Restriction
            ) {
                return Err(refuse(
                    l,
                    "NOT_APPLICABLE",
                    "recipients are told of rectification, erasure or restriction only (Art. 19)",
                ));
            }
            let text = format!(
                "Recipient {}: {}{}",
                n.recipient,
                outcome
                    .as_str_name()
                    .trim_start_matches("RECIPIENT_NOTIFICATION_OUTCOME_"),
                if n.details.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", n.details)
                }
            );
            Ok(Changes {
                notifications: vec![n],
                actions: vec![action(
                    now,
                    &principal,
                    "recipient_notified",
                    ActionResult::Succeeded,
                    text,
                    "",
                )],
                ..Default::default()
            })
        })
        .await
    }

    async fn open_export(
        &self,
        call: &CallContext,
        r: pb::GetExportRequest,
    ) -> Result<(pb::ExportPackage, String), ApiError> {
        let now = self.clock.now();
        let Some(base) = r.name.strip_suffix("/export") else {
            return Err(ApiError::invalid(
                "name",
                if r.name.is_empty() {
                    "is required".to_string()
                } else {
                    format!(
                        "`{}` is not an export name (`requests/{{request}}/export`)",
                        echo(&r.name)
                    )
                },
            ));
        };
        let id = model::parse_request_name("name", base)?;
        let principal = call.principal.name().to_string();
        let l = self.load(&id).await?;
        let event = self.event(
            call,
            "GetExport",
            r.name.clone(),
            l.record.subject_identifiers.first(),
        );
        let mut found = None;
        self.store
            .change(&id, None, Some(&event), to_micros(now), |l| {
                let Some(e) = l.export.clone() else {
                    return Err(refuse(
                        l,
                        "EXPORT_NOT_READY",
                        "it has no export package (only access and portability requests do, \
                         once processing started)",
                    ));
                };
                if e.package.state() != ExportState::Ready {
                    return Err(refuse(
                        l,
                        "EXPORT_NOT_READY",
                        format!(
                            "its export package is {}",
                            e.package
                                .state()
                                .as_str_name()
                                .trim_start_matches("EXPORT_STATE_")
                        ),
                    ));
                }
                found = Some(e.clone());
                Ok(Changes {
                    actions: vec![action(
                        now,
                        &principal,
                        "export_downloaded",
                        ActionResult::Succeeded,
                        format!("Export package {} downloaded", e.package.filename),
                        "",
                    )],
                    ..Default::default()
                })
            })
            .await?;
        let e = found.ok_or_else(|| ApiError::internal(anyhow::anyhow!("export vanished")))?;
        Ok((e.package, e.path))
    }

    async fn export_register(
        &self,
        call: &CallContext,
        r: pb::ExportRegisterRequest,
    ) -> Result<Document, ApiError> {
        let now = self.clock.now();
        let mut v = Validator::new();
        let json = match ExportFormat::try_from(r.format) {
            Ok(ExportFormat::Unspecified | ExportFormat::Csv) => false,
            Ok(ExportFormat::Json) => true,
            _ => {
                v.add("format", "must be CSV or JSON");
                false
            }
        };
        let from = optional_time(&mut v, "start_time", r.start_time.as_ref(), None);
        let until = optional_time(&mut v, "end_time", r.end_time.as_ref(), None);
        if let (Some(a), Some(b)) = (from, until)
            && b <= a
        {
            v.add("end_time", "must be after start_time");
        }
        v.finish()?;
        let filter = RequestFilter {
            received_from_us: from.map(to_micros),
            received_before_us: until.map(to_micros),
            ..Default::default()
        };
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.list(&filter, after.take(), 500).await?;
            let done = page.len() < 500;
            if let Some(last) = page.last() {
                let due = last
                    .record
                    .due_time
                    .as_ref()
                    .map(model::micros_of)
                    .unwrap_or_default();
                after = Some((due, last.id.clone()));
            }
            all.extend(page.iter().map(|l| model::to_proto(l, now)));
            if done {
                break;
            }
        }
        all.sort_by(|a, b| {
            let key = |r: &pb::Request| r.receive_time.as_ref().map(model::micros_of);
            key(a).cmp(&key(b)).then(a.name.cmp(&b.name))
        });
        let date = self.calendar.local_date(now);
        let document = if json {
            Document {
                content_type: "application/json".into(),
                filename: format!("dsar-register-{date}.json"),
                content: serde_json::to_vec_pretty(&register::json(&all))
                    .map_err(ApiError::internal)?,
            }
        } else {
            Document {
                content_type: "text/csv".into(),
                filename: format!("dsar-register-{date}.csv"),
                content: register::csv(&all).into_bytes(),
            }
        };
        self.record_read(self.event(call, "ExportRegister", String::new(), None))
            .await?;
        Ok(document)
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::GetExportResponse, Status>> + Send>>;

/// Streams the zip at `path`, the package description first.
fn stream_file(package: pb::ExportPackage, path: String) -> ExportStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Err(ApiError::internal(e).into())).await;
                return;
            }
        };
        let mut first = Some(package);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::internal(e).into())).await;
                        return;
                    }
                }
            }
            buf.truncate(filled);
            if filled == 0 && first.is_none() {
                return;
            }
            let msg = pb::GetExportResponse {
                package: first.take(),
                chunk: buf,
            };
            if tx.send(Ok(msg)).await.is_err() || filled < CHUNK {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

macro_rules! unary {
    ($self:ident, $request:ident, $method:ident, $resp:ident, $field:ident) => {{
        let call = CallContext::of(&$request)?.clone();
        let out = Api::$method($self, &call, $request.into_inner()).await?;
        Ok(Response::new(pb::$resp { $field: Some(out) }))
    }};
}

#[tonic::async_trait]
impl DsarService for Api {
    async fn submit_request(
        &self,
        request: Request<pb::SubmitRequestRequest>,
    ) -> Reply<pb::SubmitRequestResponse> {
        unary!(self, request, submit, SubmitRequestResponse, request)
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Reply<pb::GetRequestResponse> {
        unary!(self, request, get, GetRequestResponse, request)
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Reply<pb::ListRequestsResponse> {
        let call = CallContext::of(&request)?.clone();
        Ok(Response::new(
            Api::list(self, &call, request.into_inner()).await?,
        ))
    }

    async fn verify_identity(
        &self,
        request: Request<pb::VerifyIdentityRequest>,
    ) -> Reply<pb::VerifyIdentityResponse> {
        unary!(self, request, verify, VerifyIdentityResponse, request)
    }

    async fn start_processing(
        &self,
        request: Request<pb::StartProcessingRequest>,
    ) -> Reply<pb::StartProcessingResponse> {
        unary!(self, request, start, StartProcessingResponse, request)
    }

    async fn extend_deadline(
        &self,
        request: Request<pb::ExtendDeadlineRequest>,
    ) -> Reply<pb::ExtendDeadlineResponse> {
        unary!(self, request, extend, ExtendDeadlineResponse, request)
    }

    async fn reject_request(
        &self,
        request: Request<pb::RejectRequestRequest>,
    ) -> Reply<pb::RejectRequestResponse> {
        unary!(self, request, reject, RejectRequestResponse, request)
    }

    async fn cancel_request(
        &self,
        request: Request<pb::CancelRequestRequest>,
    ) -> Reply<pb::CancelRequestResponse> {
        unary!(self, request, cancel, CancelRequestResponse, request)
    }

    async fn complete_request(
        &self,
        request: Request<pb::CompleteRequestRequest>,
    ) -> Reply<pb::CompleteRequestResponse> {
        unary!(self, request, complete, CompleteRequestResponse, request)
    }

    async fn mark_source_handled_manually(
        &self,
        request: Request<pb::MarkSourceHandledManuallyRequest>,
    ) -> Reply<pb::MarkSourceHandledManuallyResponse> {
        unary!(
            self,
            request,
            mark_manual,
            MarkSourceHandledManuallyResponse,
            request
        )
    }

    async fn retry_source(
        &self,
        request: Request<pb::RetrySourceRequest>,
    ) -> Reply<pb::RetrySourceResponse> {
        unary!(self, request, retry, RetrySourceResponse, request)
    }

    async fn record_recipient_notification(
        &self,
        request: Request<pb::RecordRecipientNotificationRequest>,
    ) -> Reply<pb::RecordRecipientNotificationResponse> {
        unary!(
            self,
            request,
            notify_recipient,
            RecordRecipientNotificationResponse,
            request
        )
    }

    async fn get_export(&self, request: Request<pb::GetExportRequest>) -> Reply<ExportStream> {
        let call = CallContext::of(&request)?.clone();
        let (package, path) = Api::open_export(self, &call, request.into_inner()).await?;
        Ok(Response::new(stream_file(package, path)))
    }

    async fn export_register(
        &self,
        request: Request<pb::ExportRegisterRequest>,
    ) -> Reply<pb::ExportRegisterResponse> {
        unary!(
            self,
            request,
            export_register,
            ExportRegisterResponse,
            document
        )
    }

    async fn register_data_source(
        &self,
        request: Request<pb::RegisterDataSourceRequest>,
    ) -> Reply<pb::RegisterDataSourceResponse> {
        unary!(
            self,
            request,
            register_source,
            RegisterDataSourceResponse,
            data_source
        )
    }

    async fn get_data_source(
        &self,
        request: Request<pb::GetDataSourceRequest>,
    ) -> Reply<pb::GetDataSourceResponse> {
        unary!(
            self,
            request,
            get_source,
            GetDataSourceResponse,
            data_source
        )
    }

    async fn list_data_sources(
        &self,
        request: Request<pb::ListDataSourcesRequest>,
    ) -> Reply<pb::ListDataSourcesResponse> {
        let call = CallContext::of(&request)?.clone();
        Ok(Response::new(
            Api::list_sources(self, &call, request.into_inner()).await?,
        ))
    }

    async fn update_data_source(
        &self,
        request: Request<pb::UpdateDataSourceRequest>,
    ) -> Reply<pb::UpdateDataSourceResponse> {
        unary!(
            self,
            request,
            update_source,
            UpdateDataSourceResponse,
            data_source
        )
    }

    async fn apply_retention(
        &self,
        request: Request<pb::ApplyRetentionRequest>,
    ) -> Reply<pb::ApplyRetentionResponse> {
        unary!(
            self,
            request,
            apply_retention_rpc,
            ApplyRetentionResponse,
            run
        )
    }

    async fn get_retention_run(
        &self,
        request: Request<pb::GetRetentionRunRequest>,
    ) -> Reply<pb::GetRetentionRunResponse> {
        unary!(self, request, get_run, GetRetentionRunResponse, run)
    }

    async fn list_retention_runs(
        &self,
        request: Request<pb::ListRetentionRunsRequest>,
    ) -> Reply<pb::ListRetentionRunsResponse> {
        let call = CallContext::of(&request)?.clone();
        Ok(Response::new(
            Api::list_runs(self, &call, request.into_inner()).await?,
        ))
    }
}
