//! `custodia.breach.v1.BreachService`: handlers that validate the request,
//! let [`crate::state`] decide on the current record inside the store's
//! transaction, and encode the result. Every read and change of a breach is
//! an access event: reads are enqueued before responding, changes in the
//! transaction of the change.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    echo::echo,
    idempotency::{MAX_REQUEST_ID, RequestKey},
    legal_time::{Clock, breach_authority_deadline, retention_until},
    outbox::{AccessEvent, OutboxStore, Outcome, SqlOutbox},
    pagination,
    storage::{from_micros, to_micros},
    validate::{MAX_ID, MAX_MASK_PATHS, MAX_TEXT, Validator},
};
use custodia_proto::{
    breach::v1::{
        self as pb, CommunicationChannel, NotificationPhase, RiskLevel, TeamRole,
        TimelineEntryKind, WaiverGround, breach_service_server::BreachService,
    },
    common::v1::{Document, ExportFormat},
};
use tonic::{Request, Response, Status};

use crate::{
    model::{self, actor, optional_time, timestamp},
    report, risk,
    state::{self, RETENTION_YEARS, State},
    store::{BreachFilter, BreachStore, Done, Stored, Write},
};

/// The gRPC service name recorded in access events.
pub const SERVICE_NAME: &str = "custodia.breach.v1.BreachService";
/// Longest message to subjects accepted.
const MAX_MESSAGE: usize = 16 * 1024;

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct Api {
    store: BreachStore,
    outbox: SqlOutbox,
    clock: Arc<dyn Clock>,
}

type Reply<T> = Result<Response<T>, Status>;

/// The id in `breaches/{id}`, or a violation of `field`.
fn breach_id(field: &str, name: &str) -> Result<String, ApiError> {
    let id = name.strip_prefix("breaches/").unwrap_or_default();
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::invalid(
            field,
            if name.is_empty() {
                "is required".to_string()
            } else {
                format!(
                    "`{}` is not a breach name (`breaches/{{breach}}`)",
                    echo(name)
                )
            },
        ));
    }
    Ok(id.to_string())
}

fn resource(id: &str) -> String {
    format!("breaches/{id}")
}

fn enum_value<E>(
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

fn system_entry(now: DateTime<Utc>, principal: &str, text: String) -> pb::TimelineEntry {
    pb::TimelineEntry {
        kind: TimelineEntryKind::System as i32,
        occur_time: Some(timestamp(to_micros(now))),
        description: text,
        author: Some(actor(principal)),
        ..Default::default()
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Api {
    /// Handlers over the register in `store`.
    pub fn new(store: BreachStore, outbox: SqlOutbox, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            outbox,
            clock,
        }
    }

    fn event(&self, call: &CallContext, method: &str, resource: String) -> AccessEvent {
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
            // AssessRisk, AssignTeam, CloseBreach change the record.
            event.action = "update".into();
        }
        event
    }

    /// Records a read before the response leaves.
    async fn record_read(
        &self,
        call: &CallContext,
        method: &str,
        resource: String,
    ) -> Result<(), ApiError> {
        self.outbox
            .enqueue(&self.event(call, method, resource))
            .await
            .map_err(ApiError::internal)
    }

    async fn load(&self, id: &str) -> Result<Stored, ApiError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found("breach", resource(id)))
    }

    /// Runs a change of breach `id` and returns the breach after it.
    async fn change<F>(
        &self,
        call: &CallContext,
        method: &str,
        id: &str,
        key: Option<&RequestKey>,
        now: DateTime<Utc>,
        decide: F,
    ) -> Result<pb::Breach, ApiError>
    where
        F: FnOnce(&Stored) -> Result<Vec<Write>, ApiError>,
    {
        let event = self.event(call, method, resource(id));
        self.store
            .change(id, key, &event, to_micros(now), decide)
            .await?;
        let b = self.load(id).await?;
        Ok(model::to_proto(&b, self.clock.now()))
    }

    async fn report(
        &self,
        call: &CallContext,
        r: pb::ReportBreachRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "ReportBreach", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(breach) = r.breach else {
            return Err(ApiError::invalid("breach", "is required"));
        };
        let aware = model::validate_record(&mut v, "breach", &breach, now);
        v.finish()?;
        let aware = aware.ok_or_else(|| ApiError::invalid("breach.detect_time", "is required"))?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let deadline = breach_authority_deadline(aware);
        let principal = call.principal.name();
        let first = system_entry(
            now,
            principal,
            format!(
                "Breach reported by {principal}; institution aware at {}, authority deadline {}",
                rfc3339(aware),
                rfc3339(deadline)
            ),
        );
        let done = self
            .store
            .create(
                &id,
                &model::input_fields(&breach),
                principal,
                to_micros(aware),
                to_micros(deadline),
                first,
                key.as_ref(),
                &self.event(call, "ReportBreach", resource(&id)),
                to_micros(now),
            )
            .await?;
        let id = match done {
            Done::Applied(_) => id,
            Done::Replayed(earlier) => breach_id("name", &earlier)?,
        };
        let b = self.load(&id).await?;
        Ok(model::to_proto(&b, self.clock.now()))
    }

    async fn update(
        &self,
        call: &CallContext,
        r: pb::UpdateBreachRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "UpdateBreach", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(update) = r.breach else {
            return Err(ApiError::invalid("breach", "is required"));
        };
        let id = breach_id("breach.name", &update.name)?;
        match &r.update_mask {
            None => v.add("update_mask", "is required"),
            Some(m) if m.paths.is_empty() => v.add("update_mask.paths", "must name a field"),
            Some(m) if !v.max_items("update_mask.paths", m.paths.len(), MAX_MASK_PATHS) => {}
            Some(m) => {
                for (i, p) in m.paths.iter().enumerate() {
                    if !model::UPDATABLE.contains(&p.as_str()) {
                        v.add(
                            format!("update_mask.paths[{i}]"),
                            format!(
                                "`{}` cannot be updated; allowed: {}",
                                echo(p),
                                model::UPDATABLE.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        v.finish()?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let principal = call.principal.name().to_string();
        self.change(call, "UpdateBreach", &id, key.as_ref(), now, move |b| {
            state::require_open(b, "be updated")?;
            let etag = format!("\"{}\"", b.version);
            if !update.etag.is_empty() && update.etag != etag {
                return Err(ApiError::precondition(
                    "ETAG_MISMATCH",
                    format!(
                        "breach `breaches/{}` is {} and changed since etag {} (now {etag}); \
                         read it again",
                        b.id,
                        b.state.as_str(),
                        echo(&update.etag)
                    ),
                ));
            }
            let mut merged = b.record.clone();
            for p in &paths {
                model::copy_field(&mut merged, &update, p);
            }
            let mut v = Validator::new();
            let aware = model::validate_record(&mut v, "breach", &merged, now);
            v.finish()?;
            let aware =
                aware.ok_or_else(|| ApiError::invalid("breach.detect_time", "is required"))?;
            let aware_us = to_micros(aware);
            let deadline_us = to_micros(breach_authority_deadline(aware));
            let mut writes = vec![Write::Record(Box::new(merged), aware_us, deadline_us)];
            if aware_us != b.awareness_us {
                writes.push(Write::Timeline(Box::new(system_entry(
                    now,
                    &principal,
                    format!(
                        "Awareness time corrected from {} to {}; authority deadline now {}",
                        rfc3339(from_micros(b.awareness_us)),
                        rfc3339(aware),
                        rfc3339(from_micros(deadline_us))
                    ),
                ))));
            }
            writes.push(Write::Timeline(Box::new(system_entry(
                now,
                &principal,
                format!("Record updated: {}", paths.join(", ")),
            ))));
            Ok(writes)
        })
        .await
    }

    async fn assess(
        &self,
        call: &CallContext,
        r: pb::AssessRiskRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "AssessRisk", &r.request_id, &r);
        let now = self.clock.now();
        let mut v = Validator::new();
        let id = breach_id("name", &r.name);
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(a) = r.assessment else {
            return Err(ApiError::invalid("assessment", "is required"));
        };
        risk::validate(a.inputs.as_ref(), "assessment.inputs", &mut v);
        let overridden = if a.override_risk_level == 0 {
            None
        } else {
            enum_value(
                &mut v,
                "assessment.override_risk_level",
                a.override_risk_level,
                RiskLevel::Unspecified,
                "NO_RISK, RISK, HIGH_RISK",
            )
        };
        if a.override_risk_level != 0 {
            v.required(
                "assessment.override_justification",
                &a.override_justification,
                MAX_TEXT,
            );
        } else if !a.override_justification.is_empty() {
            v.add(
                "assessment.override_justification",
                "is only recorded with override_risk_level",
            );
        }
        v.max_len("assessment.notes", &a.notes, MAX_TEXT);
        let id = match id {
            Ok(id) => id,
            Err(ApiError::InvalidArgument(list)) => {
                for f in list {
                    v.add(f.field, f.description);
                }
                String::new()
            }
            Err(e) => return Err(e),
        };
        v.finish()?;
        let inputs = a.inputs.unwrap_or_default();
        let (score, severity, computed) = risk::assess(&inputs);
        let level = overridden.unwrap_or(computed);
        let principal = call.principal.name().to_string();
        let assessment = pb::RiskAssessment {
            inputs: Some(inputs),
            severity_score: score,
            severity: severity as i32,
            computed_risk_level: computed as i32,
            override_risk_level: a.override_risk_level,
            override_justification: a.override_justification,
            risk_level: level as i32,
            notes: a.notes,
            assess_time: Some(timestamp(to_micros(now))),
            assessor: Some(actor(&principal)),
        };
        let text = format!(
            "Risk assessed (ENISA): SE = {score}, severity {:?}, computed {}{}",
            severity,
            state::risk_name(computed),
            match overridden {
                Some(o) => format!(", overridden to {}", state::risk_name(o)),
                None => String::new(),
            }
        );
        self.change(call, "AssessRisk", &id, key.as_ref(), now, move |b| {
            state::require_open(b, "be assessed")?;
            Ok(vec![
                Write::Assessment(Box::new(assessment)),
                Write::Timeline(Box::new(system_entry(now, &principal, text))),
            ])
        })
        .await
    }

    async fn assign(
        &self,
        call: &CallContext,
        r: pb::AssignTeamRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "AssignTeam", &r.request_id, &r);
        let now = self.clock.now();
        let id = breach_id("name", &r.name)?;
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        if r.members.len() > 100 {
            v.add("members", "has more than 100 entries");
        }
        for (i, m) in r.members.iter().enumerate().take(100) {
            let f = |n: &str| format!("members[{i}].{n}");
            enum_value(
                &mut v,
                &f("role"),
                m.role,
                TeamRole::Unspecified,
                "DPO, IT, LEGAL, COMMUNICATIONS, MANAGEMENT, OTHER",
            );
            match &m.contact {
                None => v.add(f("contact"), "is required"),
                Some(c) => {
                    if c.display_name.trim().is_empty() && c.email.trim().is_empty() {
                        v.add(f("contact.display_name"), "is required (or an email)");
                    }
                    model::validate_contact(&mut v, &f("contact"), c);
                }
            }
            v.max_len(&f("principal"), &m.principal, MAX_ID);
        }
        v.finish()?;
        let principal = call.principal.name().to_string();
        let summary = r
            .members
            .iter()
            .map(|m| {
                let c = m.contact.clone().unwrap_or_default();
                format!(
                    "{}: {}",
                    m.role().as_str_name().trim_start_matches("TEAM_ROLE_"),
                    if c.display_name.is_empty() {
                        c.email
                    } else {
                        c.display_name
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let members = r.members;
        self.change(call, "AssignTeam", &id, key.as_ref(), now, move |b| {
            state::require_open(b, "change its team")?;
            Ok(vec![
                Write::Team(members),
                Write::Timeline(Box::new(system_entry(
                    now,
                    &principal,
                    format!("Response team set: {summary}"),
                ))),
            ])
        })
        .await
    }

    async fn add_entry(
        &self,
        call: &CallContext,
        r: pb::AddTimelineEntryRequest,
    ) -> Result<pb::TimelineEntry, ApiError> {
        let key = RequestKey::of(call, "AddTimelineEntry", &r.request_id, &r);
        let now = self.clock.now();
        let id = breach_id("parent", &r.parent)?;
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(e) = r.entry else {
            return Err(ApiError::invalid("entry", "is required"));
        };
        match TimelineEntryKind::try_from(e.kind) {
            Ok(TimelineEntryKind::Unspecified) | Err(_) => v.add(
                "entry.kind",
                "must be CONTAINMENT, EVIDENCE_PRESERVED, FINDING, REMEDIATION or NOTE",
            ),
            Ok(TimelineEntryKind::System) => {
                v.add("entry.kind", "SYSTEM entries are written by custodia only")
            }
            Ok(_) => {}
        }
        v.required("entry.description", &e.description, MAX_TEXT);
        let occur = optional_time(&mut v, "entry.occur_time", e.occur_time.as_ref(), Some(now));
        if e.evidence.len() > 50 {
            v.add("entry.evidence", "has more than 50 entries");
        }
        for (i, x) in e.evidence.iter().enumerate().take(50) {
            let f = |n: &str| format!("entry.evidence[{i}].{n}");
            if x.description.trim().is_empty() && x.location.trim().is_empty() {
                v.add(f("description"), "is required (or a location)");
            }
            v.max_len(&f("description"), &x.description, MAX_TEXT);
            v.max_len(&f("location"), &x.location, MAX_TEXT);
            let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
            if !x.sha256.is_empty() && (x.sha256.len() != 64 || !x.sha256.chars().all(hex)) {
                v.add(f("sha256"), "must be 64 lowercase hex digits");
            }
        }
        v.finish()?;
        let entry = pb::TimelineEntry {
            name: String::new(),
            kind: e.kind,
            occur_time: Some(timestamp(to_micros(occur.unwrap_or(now)))),
            description: e.description,
            evidence: e.evidence,
            author: Some(actor(call.principal.name())),
            create_time: None,
        };
        let event = self.event(call, "AddTimelineEntry", resource(&id));
        let done = self
            .store
            .change(&id, key.as_ref(), &event, to_micros(now), move |b| {
                state::require_open(b, "have its timeline extended")?;
                Ok(vec![Write::Timeline(Box::new(entry))])
            })
            .await?;
        let name = match done {
            Done::Applied(mut names) => names.pop().unwrap_or_default(),
            Done::Replayed(name) => name,
        };
        let seq: i64 = name
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad entry name {name:?}")))?;
        self.store
            .timeline_entry(&id, seq)
            .await?
            .ok_or_else(|| ApiError::not_found("timeline entry", name))
    }

    async fn record_notification(
        &self,
        call: &CallContext,
        r: pb::RecordAuthorityNotificationRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "RecordAuthorityNotification", &r.request_id, &r);
        let now = self.clock.now();
        let id = breach_id("name", &r.name)?;
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(n) = r.notification else {
            return Err(ApiError::invalid("notification", "is required"));
        };
        let phase = enum_value(
            &mut v,
            "notification.phase",
            n.phase,
            NotificationPhase::Unspecified,
            "INITIAL, FOLLOW_UP, FINAL",
        );
        v.required("notification.authority", &n.authority, MAX_ID);
        let send = optional_time(
            &mut v,
            "notification.send_time",
            n.send_time.as_ref(),
            Some(now),
        );
        v.max_len(
            "notification.authority_reference",
            &n.authority_reference,
            MAX_ID,
        );
        v.max_len("notification.method", &n.method, MAX_ID);
        v.max_len("notification.summary", &n.summary, MAX_TEXT);
        v.max_len("notification.delay_reasons", &n.delay_reasons, MAX_TEXT);
        v.finish()?;
        let phase = phase.unwrap_or_default();
        let send = send.unwrap_or(now);
        let principal = call.principal.name().to_string();
        let notification = pb::AuthorityNotification {
            send_time: Some(timestamp(to_micros(send))),
            actor: Some(actor(&principal)),
            ..n
        };
        self.change(
            call,
            "RecordAuthorityNotification",
            &id,
            key.as_ref(),
            now,
            move |b| {
                if send < from_micros(b.awareness_us) {
                    return Err(ApiError::invalid(
                        "notification.send_time",
                        format!(
                            "must not be before the awareness time {}",
                            rfc3339(from_micros(b.awareness_us))
                        ),
                    ));
                }
                state::check_notification(b, phase, send, &notification.delay_reasons)?;
                let text = format!(
                    "{} notification to {} sent at {}{}",
                    phase
                        .as_str_name()
                        .trim_start_matches("NOTIFICATION_PHASE_"),
                    notification.authority,
                    rfc3339(send),
                    if send > from_micros(b.deadline_us) && phase == NotificationPhase::Initial {
                        " (after the 72-hour deadline, with reasons for the delay)"
                    } else {
                        ""
                    }
                );
                Ok(vec![
                    Write::Notification(Box::new(notification), to_micros(send)),
                    Write::Timeline(Box::new(system_entry(now, &principal, text))),
                ])
            },
        )
        .await
    }

    async fn record_communication(
        &self,
        call: &CallContext,
        r: pb::RecordSubjectCommunicationRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "RecordSubjectCommunication", &r.request_id, &r);
        let now = self.clock.now();
        let id = breach_id("name", &r.name)?;
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(c) = r.communication else {
            return Err(ApiError::invalid("communication", "is required"));
        };
        let channel = enum_value(
            &mut v,
            "communication.channel",
            c.channel,
            CommunicationChannel::Unspecified,
            "EMAIL, LETTER, SMS, PHONE, PORTAL, PUBLIC, OTHER",
        );
        let send = optional_time(
            &mut v,
            "communication.send_time",
            c.send_time.as_ref(),
            Some(now),
        );
        if c.reached_count < 0 {
            v.add("communication.reached_count", "must not be negative");
        }
        v.required("communication.message", &c.message, MAX_MESSAGE);
        v.max_len("communication.language", &c.language, 35);
        v.finish()?;
        let send = send.unwrap_or(now);
        let principal = call.principal.name().to_string();
        let text = format!(
            "Subjects told by {} at {} ({} reached)",
            channel
                .unwrap_or_default()
                .as_str_name()
                .trim_start_matches("COMMUNICATION_CHANNEL_"),
            rfc3339(send),
            c.reached_count
        );
        let communication = pb::SubjectCommunication {
            send_time: Some(timestamp(to_micros(send))),
            actor: Some(actor(&principal)),
            ..c
        };
        self.change(
            call,
            "RecordSubjectCommunication",
            &id,
            key.as_ref(),
            now,
            move |b| {
                state::require_open(b, "record a subject communication")?;
                Ok(vec![
                    Write::Communication(Box::new(communication)),
                    Write::Timeline(Box::new(system_entry(now, &principal, text))),
                ])
            },
        )
        .await
    }

    async fn record_waiver(
        &self,
        call: &CallContext,
        r: pb::RecordCommunicationWaiverRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "RecordCommunicationWaiver", &r.request_id, &r);
        let now = self.clock.now();
        let id = breach_id("name", &r.name)?;
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let Some(w) = r.waiver else {
            return Err(ApiError::invalid("waiver", "is required"));
        };
        let ground = enum_value(
            &mut v,
            "waiver.ground",
            w.ground,
            WaiverGround::Unspecified,
            "DATA_UNINTELLIGIBLE, SUBSEQUENT_MEASURES, DISPROPORTIONATE_EFFORT",
        );
        v.required("waiver.justification", &w.justification, MAX_TEXT);
        v.finish()?;
        let ground = ground.unwrap_or_default();
        let principal = call.principal.name().to_string();
        let waiver = pb::CommunicationWaiver {
            ground: ground as i32,
            justification: w.justification,
            waive_time: Some(timestamp(to_micros(now))),
            actor: Some(actor(&principal)),
        };
        let text = format!(
            "Communication to subjects waived: {} (Art. 34(3))",
            ground.as_str_name().trim_start_matches("WAIVER_GROUND_")
        );
        self.change(
            call,
            "RecordCommunicationWaiver",
            &id,
            key.as_ref(),
            now,
            move |b| {
                state::check_waiver(b, ground)?;
                Ok(vec![
                    Write::Waiver(Box::new(waiver)),
                    Write::Timeline(Box::new(system_entry(now, &principal, text))),
                ])
            },
        )
        .await
    }

    async fn close(
        &self,
        call: &CallContext,
        r: pb::CloseBreachRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "CloseBreach", &r.request_id, &r);
        let now = self.clock.now();
        let id = breach_id("name", &r.name)?;
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.required("lessons_learned", &r.lessons_learned, MAX_TEXT);
        v.finish()?;
        let principal = call.principal.name().to_string();
        let retain = retention_until(now, RETENTION_YEARS);
        let lessons = r.lessons_learned;
        self.change(call, "CloseBreach", &id, key.as_ref(), now, move |b| {
            state::check_close(b)?;
            Ok(vec![
                Write::Timeline(Box::new(system_entry(
                    now,
                    &principal,
                    format!("Breach closed; kept until {}", rfc3339(retain)),
                ))),
                Write::Close {
                    lessons,
                    close_us: to_micros(now),
                    retain_until_us: to_micros(retain),
                },
            ])
        })
        .await
    }

    async fn delete(&self, call: &CallContext, r: pb::DeleteBreachRequest) -> Result<(), ApiError> {
        let key = RequestKey::of(call, "DeleteBreach", &r.request_id, &r);
        let now = self.clock.now();
        let id = breach_id("name", &r.name)?;
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.finish()?;
        let event = self.event(call, "DeleteBreach", resource(&id));
        self.store
            .change(&id, key.as_ref(), &event, to_micros(now), move |b| {
                state::check_delete(b, now)?;
                Ok(vec![Write::Delete])
            })
            .await?;
        Ok(())
    }

    async fn list(
        &self,
        call: &CallContext,
        r: pb::ListBreachesRequest,
    ) -> Result<pb::ListBreachesResponse, ApiError> {
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
        let state = match r.state {
            0 => None,
            s => enum_value(
                &mut v,
                "state",
                s,
                pb::BreachState::Unspecified,
                "OPEN, CLOSED",
            )
            .map(|s| match s {
                pb::BreachState::Closed => State::Closed,
                _ => State::Open,
            }),
        };
        let risk_level = match r.risk_level {
            0 => None,
            l => enum_value(
                &mut v,
                "risk_level",
                l,
                RiskLevel::Unspecified,
                "NO_RISK, RISK, HIGH_RISK",
            ),
        };
        let before = optional_time(
            &mut v,
            "deadline_before_time",
            r.deadline_before_time.as_ref(),
            None,
        );
        v.finish()?;
        let filter = BreachFilter {
            state,
            deadline_before_us: before.map(to_micros),
            overdue_at_us: r.overdue.then(|| to_micros(now)),
            risk_level,
        };
        let fingerprint = format!(
            "state={:?};before={:?};overdue={};risk={:?}",
            filter.state, filter.deadline_before_us, r.overdue, filter.risk_level
        );
        let after: Option<(i64, String)> = pagination::decode(&r.page_token, &fingerprint)?;
        let mut found = self.store.list(&filter, after, size + 1).await?;
        let next = (found.len() > size).then(|| {
            let last = &found[size - 1];
            pagination::encode(&(last.deadline_us, last.id.clone()), &fingerprint)
        });
        found.truncate(size);
        self.record_read(call, "ListBreaches", String::new())
            .await?;
        Ok(pb::ListBreachesResponse {
            breaches: found.iter().map(|b| model::to_proto(b, now)).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    async fn list_timeline(
        &self,
        call: &CallContext,
        r: pb::ListTimelineEntriesRequest,
    ) -> Result<pb::ListTimelineEntriesResponse, ApiError> {
        let id = breach_id("parent", &r.parent)?;
        let size = pagination::page_size_or(r.page_size, 100)?;
        let after: i64 = pagination::decode(&r.page_token, &r.parent)?.unwrap_or(0);
        self.load(&id).await?;
        let mut entries = self.store.timeline(&id, after, size + 1).await?;
        let next =
            (entries.len() > size).then(|| pagination::encode(&entries[size - 1].0, &r.parent));
        entries.truncate(size);
        self.record_read(call, "ListTimelineEntries", resource(&id))
            .await?;
        Ok(pb::ListTimelineEntriesResponse {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    async fn generate_report(
        &self,
        call: &CallContext,
        r: pb::GenerateAuthorityReportRequest,
    ) -> Result<Document, ApiError> {
        let now = self.clock.now();
        let id = breach_id("name", &r.name)?;
        let markdown = match ExportFormat::try_from(r.format) {
            Ok(ExportFormat::Unspecified | ExportFormat::Json) => false,
            Ok(ExportFormat::Markdown) => true,
            _ => return Err(ApiError::invalid("format", "must be JSON or MARKDOWN")),
        };
        let language = report::Language::parse(&r.language).ok_or_else(|| {
            ApiError::invalid("language", "reports are available in `en` and `fr`")
        })?;
        let b = self.load(&id).await?;
        let document = if markdown {
            Document {
                content_type: "text/markdown; charset=utf-8".into(),
                filename: format!("breach-{id}-art33.md"),
                content: report::markdown(&b, now, language).into_bytes(),
            }
        } else {
            Document {
                content_type: "application/json".into(),
                filename: format!("breach-{id}-art33.json"),
                content: serde_json::to_vec_pretty(&report::json(&b, now))
                    .map_err(ApiError::internal)?,
            }
        };
        self.record_read(call, "GenerateAuthorityReport", resource(&id))
            .await?;
        Ok(document)
    }
}

#[tonic::async_trait]
impl BreachService for Api {
    async fn report_breach(
        &self,
        request: Request<pb::ReportBreachRequest>,
    ) -> Reply<pb::ReportBreachResponse> {
        let call = CallContext::of(&request)?.clone();
        let breach = Api::report(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::ReportBreachResponse {
            breach: Some(breach),
        }))
    }

    async fn get_breach(
        &self,
        request: Request<pb::GetBreachRequest>,
    ) -> Reply<pb::GetBreachResponse> {
        let call = CallContext::of(&request)?.clone();
        let id = breach_id("name", &request.get_ref().name)?;
        let b = self.load(&id).await?;
        self.record_read(&call, "GetBreach", resource(&id)).await?;
        Ok(Response::new(pb::GetBreachResponse {
            breach: Some(model::to_proto(&b, self.clock.now())),
        }))
    }

    async fn list_breaches(
        &self,
        request: Request<pb::ListBreachesRequest>,
    ) -> Reply<pb::ListBreachesResponse> {
        let call = CallContext::of(&request)?.clone();
        Ok(Response::new(
            Api::list(self, &call, request.into_inner()).await?,
        ))
    }

    async fn update_breach(
        &self,
        request: Request<pb::UpdateBreachRequest>,
    ) -> Reply<pb::UpdateBreachResponse> {
        let call = CallContext::of(&request)?.clone();
        let breach = Api::update(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::UpdateBreachResponse {
            breach: Some(breach),
        }))
    }

    async fn assess_risk(
        &self,
        request: Request<pb::AssessRiskRequest>,
    ) -> Reply<pb::AssessRiskResponse> {
        let call = CallContext::of(&request)?.clone();
        let breach = Api::assess(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::AssessRiskResponse {
            breach: Some(breach),
        }))
    }

    async fn assign_team(
        &self,
        request: Request<pb::AssignTeamRequest>,
    ) -> Reply<pb::AssignTeamResponse> {
        let call = CallContext::of(&request)?.clone();
        let breach = Api::assign(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::AssignTeamResponse {
            breach: Some(breach),
        }))
    }

    async fn add_timeline_entry(
        &self,
        request: Request<pb::AddTimelineEntryRequest>,
    ) -> Reply<pb::AddTimelineEntryResponse> {
        let call = CallContext::of(&request)?.clone();
        let entry = Api::add_entry(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::AddTimelineEntryResponse {
            entry: Some(entry),
        }))
    }

    async fn list_timeline_entries(
        &self,
        request: Request<pb::ListTimelineEntriesRequest>,
    ) -> Reply<pb::ListTimelineEntriesResponse> {
        let call = CallContext::of(&request)?.clone();
        Ok(Response::new(
            Api::list_timeline(self, &call, request.into_inner()).await?,
        ))
    }

    async fn record_authority_notification(
        &self,
        request: Request<pb::RecordAuthorityNotificationRequest>,
    ) -> Reply<pb::RecordAuthorityNotificationResponse> {
        let call = CallContext::of(&request)?.clone();
        let breach = Api::record_notification(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::RecordAuthorityNotificationResponse {
            breach: Some(breach),
        }))
    }

    async fn generate_authority_report(
        &self,
        request: Request<pb::GenerateAuthorityReportRequest>,
    ) -> Reply<pb::GenerateAuthorityReportResponse> {
        let call = CallContext::of(&request)?.clone();
        let document = Api::generate_report(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::GenerateAuthorityReportResponse {
            document: Some(document),
        }))
    }

    async fn record_subject_communication(
        &self,
        request: Request<pb::RecordSubjectCommunicationRequest>,
    ) -> Reply<pb::RecordSubjectCommunicationResponse> {
        let call = CallContext::of(&request)?.clone();
        let breach = Api::record_communication(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::RecordSubjectCommunicationResponse {
            breach: Some(breach),
        }))
    }

    async fn record_communication_waiver(
        &self,
        request: Request<pb::RecordCommunicationWaiverRequest>,
    ) -> Reply<pb::RecordCommunicationWaiverResponse> {
        let call = CallContext::of(&request)?.clone();
        let breach = Api::record_waiver(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::RecordCommunicationWaiverResponse {
            breach: Some(breach),
        }))
    }

    async fn close_breach(
        &self,
        request: Request<pb::CloseBreachRequest>,
    ) -> Reply<pb::CloseBreachResponse> {
        let call = CallContext::of(&request)?.clone();
        let breach = Api::close(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::CloseBreachResponse {
            breach: Some(breach),
        }))
    }

    async fn delete_breach(
        &self,
        request: Request<pb::DeleteBreachRequest>,
    ) -> Reply<pb::DeleteBreachResponse> {
        let call = CallContext::of(&request)?.clone();
        Api::delete(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::DeleteBreachResponse {}))
    }
}
