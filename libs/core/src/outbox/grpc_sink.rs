//! Delivers access events to audit-log's `AppendEvents` over gRPC.

use custodia_proto::{
    audit::v1::{self as pb, audit_log_service_client::AuditLogServiceClient},
    common::v1::{Actor, SubjectRef},
};
use secrecy::{ExposeSecret, SecretString};
use tonic::{metadata::MetadataValue, transport::Channel};

use super::{AccessEvent, EventBatch, Outcome, forwarder::EventSink};
use crate::json_struct::struct_from_json_text;

/// An [`EventSink`] calling audit-log with a bearer token holding `audit.append`.
#[derive(Clone)]
pub struct GrpcSink {
    client: AuditLogServiceClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl std::fmt::Debug for GrpcSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcSink").finish_non_exhaustive()
    }
}

impl GrpcSink {
    /// A sink for `endpoint` (`http://host:port`); connects lazily, so audit-log may
    /// be down at start-up.
    pub fn new(
        outbound: &crate::outbound::Outbound,
        endpoint: &str,
        token: SecretString,
    ) -> anyhow::Result<Self> {
        let channel = outbound
            .endpoint(endpoint)?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .connect_lazy();
        let mut authorization: MetadataValue<_> =
            format!("Bearer {}", token.expose_secret()).parse()?;
        authorization.set_sensitive(true);
        Ok(Self {
            client: AuditLogServiceClient::new(channel),
            authorization,
        })
    }
}

/// The wire form of an access event.
pub fn to_proto(e: AccessEvent) -> pb::AccessEvent {
    let subject = e.subject_type.as_ref().map(|t| SubjectRef {
        r#type: t.clone(),
        value: String::new(),
    });
    pb::AccessEvent {
        event_id: e.event_id.to_string(),
        event_time: Some(prost_types::Timestamp {
            seconds: e.time.timestamp(),
            nanos: e.time.timestamp_subsec_nanos() as i32,
        }),
        actor: Some(Actor {
            principal: e.actor,
            user: String::new(),
        }),
        service: e.service,
        method: e.method,
        action: e.action,
        subject,
        subject_hash: e
            .subject_hash
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default(),
        resource: e.resource,
        purpose: e.purpose.unwrap_or_default(),
        outcome: match e.outcome {
            Outcome::Ok => pb::AccessOutcome::Ok,
            Outcome::Denied => pb::AccessOutcome::Denied,
            Outcome::Error => pb::AccessOutcome::Error,
        } as i32,
        status_code: e.status_code,
        trace_id: e.trace_id,
        details: struct_from_json_text(&e.detail),
        ..Default::default()
    }
}

/// The wire form of `events`: the events of one call that differ only in id and
/// subject (the subjects of a batch check) become one event listing the
/// subjects, which audit-log stores as one compact entry (each subject still
/// sealed under its own key); the others go one by one. The merged event takes
/// the first member's id, so a re-send of the same events is recognised.
pub fn to_wire(events: &[AccessEvent]) -> Vec<pb::AccessEvent> {
    let mut out = Vec::new();
    for batch in EventBatch::runs(events) {
        // Merged only when every member names its subject by a well-formed
        // hash: a member that does not goes alone, so nothing is lost or
        // attributed to an empty subject.
        let subjects: Option<Vec<pb::AccessedSubject>> = batch.subjects().and_then(|list| {
            list.into_iter()
                .map(|(kind, hash)| {
                    let subject_hash = hex::decode(hash).ok().filter(|h| h.len() == 32)?;
                    Some(pb::AccessedSubject {
                        r#type: kind.to_string(),
                        subject_hash,
                        shredded: false,
                    })
                })
                .collect()
        });
        match (batch.len() > 1, subjects, batch.first_id()) {
            (true, Some(subjects), Some(id)) => {
                let mut event = to_proto(AccessEvent {
                    event_id: id,
                    ..batch.shared().clone()
                });
                event.subjects = subjects;
                out.push(event);
            }
            _ => out.extend(batch.into_events().into_iter().map(to_proto)),
        }
    }
    out
}

impl EventSink for GrpcSink {
    async fn append(&self, events: Vec<AccessEvent>) -> anyhow::Result<()> {
        let events = to_wire(&events);
        let count = events.len();
        let mut request = tonic::Request::new(pb::AppendEventsRequest {
            events,
            request_id: String::new(),
        });
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        let response = self
            .client
            .clone()
            .append_events(request)
            .await
            .map_err(|s| anyhow::anyhow!("AppendEvents failed: {:?} {}", s.code(), s.message()))?
            .into_inner();
        anyhow::ensure!(
            response.results.len() == count,
            "AppendEvents acknowledged {} of {count} events",
            response.results.len()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(hashes: &[&str]) -> Vec<AccessEvent> {
        let shared = AccessEvent::new(
            chrono::Utc::now(),
            "crm",
            "custodia.consent.v1.ConsentService",
            "BatchCheckConsent",
            Outcome::Ok,
        );
        hashes
            .iter()
            .map(|h| AccessEvent {
                event_id: uuid::Uuid::now_v7(),
                subject_type: Some("email".into()),
                subject_hash: Some(h.to_string()),
                ..shared.clone()
            })
            .collect()
    }

    #[test]
    fn a_batch_of_well_formed_subjects_goes_as_one_event() {
        let (a, b) = ("aa".repeat(32), "bb".repeat(32));
        let events = checks(&[&a, &b]);
        let wire = to_wire(&events);
        assert_eq!(wire.len(), 1);
        assert_eq!(wire[0].event_id, events[0].event_id.to_string());
        assert_eq!(wire[0].subjects.len(), 2);
        assert_eq!(wire[0].subjects[1].subject_hash, vec![0xbb; 32]);
    }

    #[test]
    fn a_member_without_a_well_formed_hash_keeps_the_batch_apart() {
        let a = "aa".repeat(32);
        for odd in ["not hex", "abcd", ""] {
            let wire = to_wire(&checks(&[&a, odd]));
            assert_eq!(wire.len(), 2, "{odd:?}");
            assert!(wire.iter().all(|e| e.subjects.is_empty()));
        }
    }
}
