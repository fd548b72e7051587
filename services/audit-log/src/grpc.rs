//! `custodia.audit.v1.AuditLogService`: thin handlers that validate, call the log
//! and encode. Reads of personal data (events by subject, "who saw my data",
//! shredding) are themselves access events in this service's outbox.

use std::{
    collections::{BTreeMap, VecDeque},
    pin::Pin,
    sync::Arc,
};

use custodia_core::{
    ApiError,
    auth::CallContext,
    erasure_ledger::{ErasedIn, LedgerEntry},
    fields::optional_time,
    idempotency::{self, MAX_REQUEST_ID, RequestKey},
    json_struct::{struct_from_json_text, struct_to_json_text},
    outbox::{AccessEvent, OutboxStore, Outcome},
    pagination,
    server::ServiceContext,
    storage::{from_micros, to_micros},
    subject::SubjectId,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    audit::v1::{self as pb, audit_log_service_server::AuditLogService},
    common::v1::{Actor, PublicKey, SubjectRef},
};
use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::{
    entry::SubjectFields,
    log::AuditLog,
    merkle::ProofError,
    store::{EventFilter, NewEvent, StoredEntry, StoredHead},
};

/// Largest batch `AppendEvents` accepts.
pub const MAX_BATCH: usize = 5_000;
/// Most subjects of one access to several at once (a BatchCheckConsent's maximum).
pub const MAX_SUBJECTS_PER_EVENT: usize = 10_000;
/// Most subjects of one AppendEvents call, over all its events.
pub const MAX_SUBJECTS_PER_CALL: usize = 50_000;

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct Api {
    ctx: ServiceContext,
    log: Arc<AuditLog>,
}

fn timestamp(us: i64) -> prost_types::Timestamp {
    let t = from_micros(us);
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn micros_of(t: &prost_types::Timestamp) -> Option<i64> {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32).map(to_micros)
}

fn outcome_text(o: i32) -> Option<&'static str> {
    match pb::AccessOutcome::try_from(o).ok()? {
        pb::AccessOutcome::Ok => Some("ok"),
        pb::AccessOutcome::Denied => Some("denied"),
        pb::AccessOutcome::Error => Some("error"),
        pb::AccessOutcome::Unspecified => None,
    }
}

fn outcome_enum(text: &str) -> i32 {
    let outcome = match text {
        "ok" => pb::AccessOutcome::Ok,
        "denied" => pb::AccessOutcome::Denied,
        "error" => pb::AccessOutcome::Error,
        _ => pb::AccessOutcome::Unspecified,
    };
    outcome as i32
}

fn head_to_proto(h: &StoredHead) -> pb::SignedTreeHead {
    let ts_ms = (h.timestamp_us / 1000).max(0) as u64;
    pb::SignedTreeHead {
        tree_size: h.tree_size as i64,
        root_hash: h.root.to_vec(),
        timestamp: Some(timestamp(h.timestamp_us)),
        signed_payload: crate::signer::sth_message(h.tree_size, ts_ms, &h.root),
        signature: h.signature.clone(),
        key_id: h.key_id.clone(),
        signature_algorithm: "Ed25519".into(),
    }
}

fn event_to_proto(e: &StoredEntry, leaf_hash: Option<Vec<u8>>) -> pb::AccessEvent {
    let x = &e.entry;
    let detail = e
        .subject
        .as_ref()
        .map(|s| s.detail.as_str())
        .unwrap_or(&x.detail);
    pb::AccessEvent {
        event_id: x.event_id.clone(),
        event_time: Some(timestamp(x.time_us)),
        actor: Some(Actor {
            principal: x.actor.clone(),
            user: String::new(),
        }),
        service: x.service.clone(),
        method: x.method.clone(),
        action: x.action.clone(),
        subject: e.subject.as_ref().map(|s| SubjectRef {
            r#type: s.subject_type.clone(),
            value: String::new(),
        }),
        subject_hash: e
            .subject
            .as_ref()
            .and_then(|s| hex::decode(&s.subject_hash).ok())
            .unwrap_or_default(),
        resource: x.resource.clone(),
        purpose: x.purpose.clone(),
        outcome: outcome_enum(&x.outcome),
        status_code: x.status_code,
        trace_id: x.trace_id.clone(),
        details: struct_from_json_text(detail),
        sequence: x.seq as i64,
        append_time: None,
        leaf_hash: leaf_hash.unwrap_or_default(),
        shredded: e.shredded,
        subjects: e
            .members
            .iter()
            .map(|m| match m {
                Some(s) => pb::AccessedSubject {
                    r#type: s.subject_type.clone(),
                    subject_hash: hex::decode(&s.subject_hash).unwrap_or_default(),
                    shredded: false,
                },
                None => pb::AccessedSubject {
                    shredded: true,
                    ..Default::default()
                },
            })
            .collect(),
    }
}

fn proof_error(e: ProofError) -> ApiError {
    match e {
        ProofError::SizeBeyondTree { .. } => ApiError::precondition(
            "TREE_TOO_SMALL",
            format!("{e}; the log is not that large yet"),
        ),
        other => ApiError::invalid("tree_size", other.to_string()),
    }
}

impl Api {
    /// Handlers over `log`.
    pub fn new(ctx: ServiceContext, log: Arc<AuditLog>) -> Self {
        Self { ctx, log }
    }

    /// Keyed hashes of `refs`; `field` names the request field in errors.
    fn hashes(&self, refs: &[SubjectRef], field: &str) -> Result<Vec<(String, String)>, ApiError> {
        if refs.is_empty() {
            return Err(ApiError::invalid(
                field,
                "at least one subject identifier is required",
            ));
        }
        // One person's identifiers: a handful. (100,001 of them made one
        // ListSubjectAccesses run 9 s and write as many access events.)
        const MAX_SUBJECT_IDENTIFIERS: usize = 100;
        let mut v = Validator::new();
        v.max_items(field, refs.len(), MAX_SUBJECT_IDENTIFIERS);
        v.finish()?;
        refs.iter()
            .enumerate()
            .map(|(i, r)| {
                let id = SubjectId::parse(&r.r#type, &r.value, &format!("{field}[{i}]"))?;
                Ok((id.kind().to_string(), self.ctx.subjects.hash(&id)))
            })
            .collect()
    }

    /// Records this service's own access to a subject's entries (A-1 applies to the log too).
    async fn record(
        &self,
        call: &CallContext,
        method: &str,
        subject: Option<&(String, String)>,
        resource: &str,
    ) -> Result<(), ApiError> {
        let event = self.event(call, method, subject, resource);
        self.ctx
            .outbox
            .enqueue(&event)
            .await
            .map_err(ApiError::internal)
    }

    /// The access event of a call of this service.
    fn event(
        &self,
        call: &CallContext,
        method: &str,
        subject: Option<&(String, String)>,
        resource: &str,
    ) -> AccessEvent {
        let mut event = AccessEvent::new(
            self.ctx.clock.now(),
            call.principal.name(),
            "custodia.audit.v1.AuditLogService",
            method,
            Outcome::Ok,
        );
        event.trace_id = call.trace_id.clone();
        event.resource = resource.to_string();
        if let Some((kind, hash)) = subject {
            event.subject_type = Some(kind.clone());
            event.subject_hash = Some(hash.clone());
        }
        event
    }

    fn new_event(&self, i: usize, e: pb::AccessEvent, v: &mut Validator) -> Option<NewEvent> {
        let f = |name: &str| format!("events[{i}].{name}");
        v.required(&f("event_id"), &e.event_id, 128);
        let principal = e
            .actor
            .as_ref()
            .map(|a| a.principal.clone())
            .unwrap_or_default();
        v.required(&f("actor.principal"), &principal, MAX_ID);
        v.required(&f("service"), &e.service, MAX_ID);
        v.required(&f("method"), &e.method, MAX_ID);
        v.max_len(&f("action"), &e.action, 64);
        v.max_len(&f("resource"), &e.resource, MAX_TEXT);
        v.max_len(&f("purpose"), &e.purpose, MAX_ID);
        v.max_len(&f("trace_id"), &e.trace_id, 64);
        let time_us = match e.event_time.as_ref().and_then(micros_of) {
            Some(t) => t,
            None => {
                v.add(f("event_time"), "is required");
                0
            }
        };
        let outcome = outcome_text(e.outcome);
        if outcome.is_none() {
            v.add(f("outcome"), "must be OK, DENIED or ERROR");
        }
        let detail = e
            .details
            .as_ref()
            .map(struct_to_json_text)
            .unwrap_or_default();
        if detail.len() > MAX_TEXT {
            v.add(
                f("details"),
                format!("is {} bytes as JSON; the limit is {MAX_TEXT}", detail.len()),
            );
        }
        let subject = match (&e.subject, e.subject_hash.is_empty()) {
            (None, true) => None,
            (None, false) => {
                v.add(f("subject.type"), "is required with subject_hash");
                None
            }
            (Some(s), false) => {
                if e.subject_hash.len() != 32 {
                    v.add(f("subject_hash"), "must be 32 bytes (HMAC-SHA256)");
                }
                v.required(&f("subject.type"), &s.r#type, 64);
                Some(SubjectFields {
                    subject_type: s.r#type.clone(),
                    subject_hash: hex::encode(&e.subject_hash),
                    detail: String::new(),
                })
            }
            (Some(s), true) => match SubjectId::parse(&s.r#type, &s.value, &f("subject")) {
                Ok(id) => Some(SubjectFields {
                    subject_type: id.kind().to_string(),
                    subject_hash: self.ctx.subjects.hash(&id),
                    detail: String::new(),
                }),
                Err(ApiError::InvalidArgument(list)) => {
                    for x in list {
                        v.add(x.field, x.description);
                    }
                    None
                }
                Err(_) => None,
            },
        };
        if e.subjects.len() > MAX_SUBJECTS_PER_EVENT {
            v.add(
                f("subjects"),
                format!("at most {MAX_SUBJECTS_PER_EVENT} subjects per event"),
            );
        }
        if !e.subjects.is_empty() && subject.is_some() {
            v.add(f("subjects"), "give either subject or subjects, not both");
        }
        let mut members = Vec::with_capacity(e.subjects.len());
        for (j, s) in e.subjects.iter().enumerate() {
            if s.subject_hash.len() != 32 {
                v.add(
                    f(&format!("subjects[{j}].subject_hash")),
                    "must be 32 bytes (HMAC-SHA256)",
                );
            }
            v.required(&f(&format!("subjects[{j}].type")), &s.r#type, 64);
            members.push(SubjectFields {
                subject_type: s.r#type.clone(),
                subject_hash: hex::encode(&s.subject_hash),
                detail: String::new(),
            });
        }
        let action = if e.action.is_empty() {
            custodia_core::outbox::action_of(&e.method).to_string()
        } else {
            e.action
        };
        Some(NewEvent {
            event_id: e.event_id,
            time_us,
            actor: principal,
            service: e.service,
            method: e.method,
            action,
            resource: e.resource,
            purpose: e.purpose,
            outcome: outcome.unwrap_or_default().to_string(),
            status_code: e.status_code,
            trace_id: e.trace_id,
            detail,
            subject,
            members,
        })
    }

    async fn event_filter(
        &self,
        r: &pb::ListEventsRequest,
    ) -> Result<(EventFilter, Option<(String, String)>), ApiError> {
        let mut v = Validator::new();
        for (field, value) in [
            ("actor", &r.actor),
            ("action", &r.action),
            ("resource", &r.resource),
            ("service", &r.service),
        ] {
            v.max_len(field, value, MAX_TEXT);
        }
        v.finish()?;
        let subject = match &r.subject {
            Some(s) => Some(self.hashes(std::slice::from_ref(s), "subject")?.remove(0)),
            None => None,
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let outcome = match r.outcome {
            0 => None,
            o => Some(
                outcome_text(o)
                    .ok_or_else(|| ApiError::invalid("outcome", "unknown outcome"))?
                    .to_string(),
            ),
        };
        Ok((
            EventFilter {
                subject_hash: subject.as_ref().map(|(_, h)| h.clone()),
                actor: non_empty(&r.actor),
                method: None,
                action: non_empty(&r.action),
                resource: non_empty(&r.resource),
                service: non_empty(&r.service),
                outcome,
                from_us: r.start_time.as_ref().and_then(micros_of),
                to_us: r.end_time.as_ref().and_then(micros_of),
            },
            subject,
        ))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

/// State of one `WatchEvents` stream: pages through the log, then waits for it to grow.
struct Watch {
    shutdown: watch::Receiver<bool>,
    log: Arc<AuditLog>,
    sizes: watch::Receiver<u64>,
    filter: EventFilter,
    after: Option<u64>,
    buffer: VecDeque<StoredEntry>,
    failed: bool,
}

impl Watch {
    async fn next(mut self) -> Option<(Result<pb::WatchEventsResponse, Status>, Self)> {
        loop {
            if self.failed || *self.shutdown.borrow() {
                return None;
            }
            if let Some(e) = self.buffer.pop_front() {
                let event = event_to_proto(&e, None);
                return Some((Ok(pb::WatchEventsResponse { event: Some(event) }), self));
            }
            // Mark the current size seen before reading, so an append racing the read
            // still wakes us below.
            self.sizes.borrow_and_update();
            match self.log.store().list(&self.filter, self.after, 500).await {
                Ok(batch) if !batch.is_empty() => {
                    self.after = batch.last().map(|e| e.entry.seq);
                    self.buffer.extend(batch);
                }
                Ok(_) => {
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        changed = self.sizes.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                        _ = shutdown.changed() => return None,
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Some((Err(ApiError::internal(e).into()), self));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AuditLogService for Api {
    type WatchEventsStream = EventStream;

    async fn append_events(
        &self,
        request: Request<pb::AppendEventsRequest>,
    ) -> Result<Response<pb::AppendEventsResponse>, Status> {
        let r = request.into_inner();
        if r.events.is_empty() {
            return Err(ApiError::invalid("events", "at least one event is required").into());
        }
        if r.events.len() > MAX_BATCH {
            return Err(ApiError::invalid(
                "events",
                format!("at most {MAX_BATCH} events per call"),
            )
            .into());
        }
        let subjects: usize = r.events.iter().map(|e| e.subjects.len()).sum();
        if subjects > MAX_SUBJECTS_PER_CALL {
            return Err(ApiError::invalid(
                "events",
                format!("at most {MAX_SUBJECTS_PER_CALL} subjects per call, over all events"),
            )
            .into());
        }
        let mut v = Validator::new();
        let events: Vec<NewEvent> = r
            .events
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| self.new_event(i, e, &mut v))
            .collect();
        v.finish()?;
        let seqs = self.log.append(&events).await.map_err(ApiError::internal)?;
        Ok(Response::new(pb::AppendEventsResponse {
            results: events
                .iter()
                .zip(seqs)
                .map(|(e, (seq, duplicate))| pb::AppendResult {
                    event_id: e.event_id.clone(),
                    sequence: seq as i64,
                    duplicate,
                })
                .collect(),
        }))
    }

    async fn get_signed_tree_head(
        &self,
        request: Request<pb::GetSignedTreeHeadRequest>,
    ) -> Result<Response<pb::GetSignedTreeHeadResponse>, Status> {
        let size = request.into_inner().tree_size;
        if size < 0 {
            return Err(ApiError::invalid("tree_size", "must not be negative").into());
        }
        let store = self.log.store();
        let head = if size == 0 {
            store.latest_head().await.map_err(ApiError::internal)?
        } else {
            store
                .head_at(size as u64)
                .await
                .map_err(ApiError::internal)?
        };
        let head = head.ok_or_else(|| ApiError::not_found("signed tree head", size.to_string()))?;
        Ok(Response::new(pb::GetSignedTreeHeadResponse {
            head: Some(head_to_proto(&head)),
        }))
    }

    async fn list_signed_tree_heads(
        &self,
        request: Request<pb::ListSignedTreeHeadsRequest>,
    ) -> Result<Response<pb::ListSignedTreeHeadsResponse>, Status> {
        let r = request.into_inner();
        let size = pagination::page_size(r.page_size)?;
        let filter = format!("min={}", r.min_tree_size);
        let after: Option<u64> = pagination::decode(&r.page_token, &filter)?;
        let heads = self
            .log
            .store()
            .heads_page(r.min_tree_size.max(0) as u64, after, size + 1)
            .await
            .map_err(ApiError::internal)?;
        let next =
            (heads.len() > size).then(|| pagination::encode(&heads[size - 1].tree_size, &filter));
        Ok(Response::new(pb::ListSignedTreeHeadsResponse {
            heads: heads.iter().take(size).map(head_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::GetInclusionProofResponse>, Status> {
        let r = request.into_inner();
        if r.sequence < 0 {
            return Err(ApiError::invalid("sequence", "must not be negative").into());
        }
        if r.tree_size < 0 {
            return Err(ApiError::invalid("tree_size", "must not be negative").into());
        }
        let latest = self
            .log
            .store()
            .latest_head()
            .await
            .map_err(ApiError::internal)?;
        let size = match r.tree_size {
            0 => latest.as_ref().map_or(0, |h| h.tree_size),
            n => n as u64,
        };
        if r.sequence as u64 >= size {
            return Err(ApiError::invalid(
                "sequence",
                format!("must be below the tree size {size} (is the entry signed yet?)"),
            )
            .into());
        }
        let (leaf, hashes) = self
            .log
            .inclusion_proof(r.sequence as u64, size)
            .await
            .map_err(ApiError::internal)?
            .map_err(proof_error)?;
        let head = match latest {
            Some(h) if h.tree_size == size => Some(h),
            _ => self
                .log
                .store()
                .head_at(size)
                .await
                .map_err(ApiError::internal)?,
        };
        Ok(Response::new(pb::GetInclusionProofResponse {
            leaf_index: r.sequence,
            tree_size: size as i64,
            leaf_hash: leaf.to_vec(),
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            head: head.as_ref().map(head_to_proto),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        let r = request.into_inner();
        if r.first_tree_size <= 0 {
            return Err(ApiError::invalid("first_tree_size", "must be at least 1").into());
        }
        if r.second_tree_size < r.first_tree_size {
            return Err(
                ApiError::invalid("second_tree_size", "must not be below first_tree_size").into(),
            );
        }
        let hashes = self
            .log
            .consistency_proof(r.first_tree_size as u64, r.second_tree_size as u64)
            .await
            .map_err(ApiError::internal)?
            .map_err(proof_error)?;
        Ok(Response::new(pb::GetConsistencyProofResponse {
            first_tree_size: r.first_tree_size,
            second_tree_size: r.second_tree_size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn list_leaves(
        &self,
        request: Request<pb::ListLeavesRequest>,
    ) -> Result<Response<pb::ListLeavesResponse>, Status> {
        let r = request.into_inner();
        if r.start_sequence < 0 {
            return Err(ApiError::invalid("start_sequence", "must not be negative").into());
        }
        let size = pagination::page_size(r.page_size)?;
        let filter = format!("start={}", r.start_sequence);
        let start =
            pagination::decode::<u64>(&r.page_token, &filter)?.unwrap_or(r.start_sequence as u64);
        let rows = self
            .log
            .store()
            .raw_entries(start, size + 1)
            .await
            .map_err(ApiError::internal)?;
        let next = (rows.len() > size).then(|| pagination::encode(&rows[size].seq, &filter));
        Ok(Response::new(pb::ListLeavesResponse {
            leaves: rows
                .into_iter()
                .take(size)
                .map(|raw| pb::Leaf {
                    sequence: raw.seq as i64,
                    leaf_data: raw.entry,
                })
                .collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let size = pagination::page_size(r.page_size)?;
        let (filter, subject) = self.event_filter(&r).await?;
        let fingerprint = format!("{filter:?}");
        let after: Option<u64> = pagination::decode(&r.page_token, &fingerprint)?;
        self.ctx
            .quota
            .take(call.principal.name(), usize::from(subject.is_some()))?;
        let mut entries = self
            .log
            .store()
            .list(&filter, after, size + 1)
            .await
            .map_err(ApiError::internal)?;
        let next = (entries.len() > size)
            .then(|| pagination::encode(&entries[size - 1].entry.seq, &fingerprint));
        entries.truncate(size);
        self.record(&call, "ListEvents", subject.as_ref(), "")
            .await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: entries.iter().map(|e| event_to_proto(e, None)).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        if r.start_sequence.is_some_and(|s| s < 0) {
            return Err(ApiError::invalid("start_sequence", "must not be negative").into());
        }
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let filter = EventFilter {
            actor: non_empty(&r.actor),
            service: non_empty(&r.service),
            action: non_empty(&r.action),
            ..Default::default()
        };
        let after: Option<u64> = match r.start_sequence {
            Some(0) => None,
            Some(s) => Some(s as u64 - 1),
            None => {
                let size = self.log.store().size().await.map_err(ApiError::internal)?;
                size.checked_sub(1)
            }
        };
        self.record(&call, "WatchEvents", None, "").await?;
        let state = Watch {
            shutdown: self.ctx.shutdown.clone(),
            sizes: self.log.subscribe_size(),
            log: self.log.clone(),
            filter,
            after,
            buffer: VecDeque::new(),
            failed: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            state,
            Watch::next,
        ))))
    }

    async fn list_subject_accesses(
        &self,
        request: Request<pb::ListSubjectAccessesRequest>,
    ) -> Result<Response<pb::ListSubjectAccessesResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let subjects = self.hashes(&r.subject_identifiers, "subject_identifiers")?;
        let size = pagination::page_size(r.page_size)?;
        let from_us = r.start_time.as_ref().and_then(micros_of);
        let to_us = r.end_time.as_ref().and_then(micros_of);
        let fingerprint = format!("{subjects:?}{from_us:?}{to_us:?}");
        let offset: usize = pagination::decode(&r.page_token, &fingerprint)?.unwrap_or(0);
        self.ctx.quota.take(call.principal.name(), subjects.len())?;

        // (actor, service, action, purpose) -> (first, last, count)
        let mut summary: BTreeMap<(String, String, String, String), (i64, i64, i64)> =
            BTreeMap::new();
        for (_, hash) in &subjects {
            let filter = EventFilter {
                subject_hash: Some(hash.clone()),
                from_us,
                to_us,
                ..Default::default()
            };
            let mut after = None;
            loop {
                let page = self
                    .log
                    .store()
                    .list(&filter, after, 1000)
                    .await
                    .map_err(ApiError::internal)?;
                for e in &page {
                    let x = &e.entry;
                    let slot = summary
                        .entry((
                            x.actor.clone(),
                            x.service.clone(),
                            x.action.clone(),
                            x.purpose.clone(),
                        ))
                        .or_insert((x.time_us, x.time_us, 0));
                    slot.0 = slot.0.min(x.time_us);
                    slot.1 = slot.1.max(x.time_us);
                    slot.2 += 1;
                }
                match page.last() {
                    Some(last) if page.len() == 1000 => after = Some(last.entry.seq),
                    _ => break,
                }
            }
        }
        for subject in &subjects {
            self.record(&call, "ListSubjectAccesses", Some(subject), "")
                .await?;
        }
        let total = summary.len();
        let accesses: Vec<_> = summary
            .into_iter()
            .skip(offset)
            .take(size)
            .map(
                |((actor, service, action, purpose), (first, last, count))| pb::SubjectAccess {
                    actor: Some(Actor {
                        principal: actor,
                        user: String::new(),
                    }),
                    service,
                    action,
                    purpose,
                    first_access_time: Some(timestamp(first)),
                    last_access_time: Some(timestamp(last)),
                    access_count: count,
                },
            )
            .collect();
        let next =
            (offset + size < total).then(|| pagination::encode(&(offset + size), &fingerprint));
        Ok(Response::new(pb::ListSubjectAccessesResponse {
            accesses,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_signing_keys(
        &self,
        request: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        let r = request.into_inner();
        let size = pagination::page_size_or(r.page_size, 100)?;
        let from: usize = pagination::decode(&r.page_token, "signing-keys")?.unwrap_or(0);
        // Every key this log's replicas opened it with (this process's included):
        // heads signed before a rotation stay checkable. No retire_time: while a
        // rotation rolls out, replicas on the old key keep signing with it.
        let all = self
            .log
            .store()
            .signing_keys()
            .await
            .map_err(ApiError::internal)?;
        let keys: Vec<_> = all
            .iter()
            .skip(from)
            .take(size)
            .map(|(key_id, public_key, first_used_us)| PublicKey {
                key_id: key_id.clone(),
                algorithm: "Ed25519".into(),
                public_key: public_key.clone(),
                public_key_pem: String::new(),
                create_time: Some(timestamp(*first_used_us)),
                retire_time: None,
            })
            .collect();
        let next = from + keys.len();
        Ok(Response::new(pb::ListSigningKeysResponse {
            keys,
            next_page_token: if next < all.len() {
                pagination::encode(&next, "signing-keys")
            } else {
                String::new()
            },
        }))
    }

    async fn prune_subject_index(
        &self,
        request: Request<pb::PruneSubjectIndexRequest>,
    ) -> Result<Response<pb::PruneSubjectIndexResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let now = self.ctx.clock.now();
        let mut v = Validator::new();
        if r.cutoff_time.is_none() {
            v.add("cutoff_time", "is required");
        }
        let cutoff = optional_time(&mut v, "cutoff_time", r.cutoff_time.as_ref(), Some(now));
        v.finish()?;
        let cutoff_us = to_micros(cutoff.unwrap_or(now));
        let pruned = self.log.store().prune_index(cutoff_us, r.dry_run).await?;
        let mut event = self.event(&call, "PruneSubjectIndex", None, "");
        event.action = if r.dry_run { "read" } else { "delete" }.into();
        event.detail = serde_json::json!({
            "cutoff_time": from_micros(cutoff_us).to_rfc3339(),
            "matched": pruned.matched,
            "removed": pruned.removed,
            "first_indexed_seq": pruned.first_indexed_seq,
        })
        .to_string();
        self.ctx
            .outbox
            .enqueue_durable(&event)
            .await
            .map_err(ApiError::internal)?;
        Ok(Response::new(pb::PruneSubjectIndexResponse {
            matched_entry_count: pruned.matched,
            removed_entry_count: pruned.removed,
            first_indexed_seq: pruned.first_indexed_seq,
        }))
    }

    async fn shred_subject(
        &self,
        request: Request<pb::ShredSubjectRequest>,
    ) -> Result<Response<pb::ShredSubjectResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let key = RequestKey::of(&call, "ShredSubject", &r.request_id, &r);
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.finish()?;
        let subjects = self.hashes(&r.subject_identifiers, "subject_identifiers")?;
        let now = self.ctx.clock.now();
        let mut keys = 0;
        let mut affected = 0;
        // The record names the request, not the subject: naming the subject would
        // give it a fresh key and index entry right after the erasure.
        // A change: its event is flushed before the shred, whatever read_event_sync says.
        let event = self.event(&call, "ShredSubject", None, &r.dsar_request);
        self.ctx
            .outbox
            .enqueue_durable(&event)
            .await
            .map_err(ApiError::internal)?;
        // A retry answers what the first call did (a second shred finds nothing).
        if let Some(first) = idempotency::begin(&self.ctx.db, key.as_ref(), to_micros(now)).await? {
            return Ok(Response::new(first));
        }
        let shredded = async {
            for subject in &subjects {
                let n = self
                    .log
                    .store()
                    .shred(&subject.1, to_micros(now))
                    .await
                    .map_err(ApiError::internal)?;
                affected += n as i64;
                keys += 1;
            }
            self.ctx
                .erasures
                .append(&LedgerEntry {
                    time: now,
                    service: ErasedIn::AuditLog,
                    subject_hashes: subjects.iter().map(|s| s.1.clone()).collect(),
                    dsar_request: r.dsar_request.clone(),
                })
                .await
                .map_err(ApiError::internal)?;
            self.ctx.db.scrub_log().await;
            Ok::<_, ApiError>(())
        }
        .await;
        if let Err(e) = shredded {
            idempotency::abandon(&self.ctx.db, key.as_ref()).await;
            return Err(e.into());
        }
        let response = pb::ShredSubjectResponse {
            shredded_key_count: keys,
            affected_event_count: affected,
            shred_time: Some(timestamp(to_micros(now))),
        };
        let response = idempotency::finish(&self.ctx.db, key.as_ref(), response).await?;
        Ok(Response::new(response))
    }
}
