//! The access event of a call to a service that records its own calls (dsar,
//! breach): who called which method on which resource, about which subject,
//! and how a retry replayed by its idempotency key is told apart.

use chrono::{DateTime, Utc};
use custodia_proto::common::v1::SubjectRef;

use crate::{
    auth::CallContext,
    error::ApiError,
    outbox::{AccessEvent, OutboxStore, Outcome, SqlOutbox},
    subject::{SubjectHasher, SubjectId},
};

/// The event of `call` to `method` of `service` on `resource`, at `now`, OK.
///
/// A method whose name has no verb [`crate::outbox::action_of`] knows
/// (AssessRisk, VerifyIdentity, CloseBreach) changes the record it names, so
/// its action is `update` rather than `other`.
pub fn call_event(
    now: DateTime<Utc>,
    call: &CallContext,
    service: &str,
    method: &str,
    resource: String,
) -> AccessEvent {
    let mut event = AccessEvent::new(now, call.principal.name(), service, method, Outcome::Ok);
    event.trace_id = call.trace_id.clone();
    event.resource = resource;
    if event.action == "other" {
        event.action = "update".into();
    }
    event
}

/// Names `subject` in `event` by its type and keyed hash, when it parses
/// (an event never carries the identifier itself).
pub fn name_subject(event: &mut AccessEvent, hasher: &SubjectHasher, subject: Option<&SubjectRef>) {
    if let Some(s) = subject
        && let Ok(id) = SubjectId::parse(&s.r#type, &s.value, "subject")
    {
        event.subject_type = Some(id.kind().to_string());
        event.subject_hash = Some(hasher.hash(&id));
    }
}

/// The event of a retry that an idempotency key answered with the first
/// call's result: on `resource`, naming what the first call wrote (`earlier`).
pub fn replay_of(event: &AccessEvent, resource: String, earlier: &str) -> AccessEvent {
    let mut event = event.clone();
    event.resource = resource;
    event.detail = serde_json::json!({ "replay_of": earlier }).to_string();
    event
}

/// Enqueues the event of a read before the response leaves: a read that
/// cannot be recorded is not answered.
pub async fn record_read(outbox: &SqlOutbox, event: &AccessEvent) -> Result<(), ApiError> {
    outbox.enqueue(event).await.map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::Principal;

    fn call() -> CallContext {
        CallContext {
            principal: Arc::new(Principal::new("crm", ["*"])),
            trace_id: "trace".into(),
        }
    }

    #[test]
    fn events_name_caller_trace_and_resource_and_unknown_verbs_update() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let e = call_event(now, &call(), "svc", "AssessRisk", "breaches/1".into());
        assert_eq!(
            (e.actor.as_str(), e.service.as_str(), e.method.as_str()),
            ("crm", "svc", "AssessRisk")
        );
        assert_eq!(
            (e.trace_id.as_str(), e.resource.as_str()),
            ("trace", "breaches/1")
        );
        assert_eq!(e.action, "update");
        assert_eq!(
            call_event(now, &call(), "svc", "GetBreach", String::new()).action,
            "read"
        );
    }

    #[test]
    fn replays_name_the_first_calls_resource() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let e = call_event(now, &call(), "svc", "AddTimelineEntry", "breaches/1".into());
        let r = replay_of(&e, "breaches/1".into(), "breaches/1/timelineEntries/2");
        assert_eq!(r.resource, "breaches/1");
        assert_eq!(r.detail, r#"{"replay_of":"breaches/1/timelineEntries/2"}"#);
        assert_eq!(r.event_id, e.event_id, "the same call's event");
    }

    #[test]
    fn subjects_are_named_by_hash_only() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let hasher = SubjectHasher::new("k".to_string().into());
        let mut e = call_event(now, &call(), "svc", "GetRequest", String::new());
        let subject = SubjectRef {
            r#type: "email".into(),
            value: "Ada@Example.org".into(),
        };
        name_subject(&mut e, &hasher, Some(&subject));
        assert_eq!(e.subject_type.as_deref(), Some("email"));
        let hash = e.subject_hash.clone().unwrap();
        assert!(!hash.contains("Ada") && !hash.contains("example"));
        let mut bad = call_event(now, &call(), "svc", "GetRequest", String::new());
        let nonsense = SubjectRef {
            r#type: "email".into(),
            value: "not an email".into(),
        };
        name_subject(&mut bad, &hasher, Some(&nonsense));
        assert_eq!(bad.subject_hash, None);
    }
}
