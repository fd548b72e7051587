//! The state every use case of the dsar service shares, and the steps they
//! all take: load a request, run a change of it in the store's transaction,
//! build and record access events. The use cases are in [`crate::requests`],
//! [`crate::lifecycle`], [`crate::source_tasks`], [`crate::recipients`], [`crate::review`],
//! [`crate::download`], [`crate::register`], [`crate::sources`] and
//! [`crate::retention`]; [`crate::grpc`] maps the RPCs onto them.

use std::sync::Arc;

use custodia_core::{
    ApiError, Config,
    access::{self, call_event, name_subject},
    auth::CallContext,
    idempotency::RequestKey,
    legal_time::{Clock, LegalCalendar},
    outbox::{AccessEvent, SqlOutbox},
    storage::to_micros,
    subject::SubjectHasher,
};
use custodia_proto::{common::v1::SubjectRef, dsar::v1 as pb};
use tokio::sync::Notify;

use crate::{
    model,
    store::{Changes, DsarStore, Loaded},
};

/// The gRPC service name recorded in access events.
pub const SERVICE_NAME: &str = "custodia.dsar.v1.DsarService";

/// The dsar service: its store, clock, calendar and the endpoints it fans out to.
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

/// The instant the unit tests of this crate's validations run at.
#[cfg(test)]
pub(crate) fn test_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap()
}

impl Api {
    /// The access event of `call` to `method` on `resource`, naming `subject`.
    pub(crate) fn event(
        &self,
        call: &CallContext,
        method: &str,
        resource: String,
        subject: Option<&SubjectRef>,
    ) -> AccessEvent {
        let mut event = call_event(self.clock.now(), call, SERVICE_NAME, method, resource);
        name_subject(&mut event, &self.subjects, subject);
        event
    }

    /// Records a read before the response leaves.
    pub(crate) async fn record_read(&self, event: AccessEvent) -> Result<(), ApiError> {
        access::record_read(&self.outbox, &event).await
    }

    /// Request `id`, or NOT_FOUND.
    pub(crate) async fn load(&self, id: &str) -> Result<Loaded, ApiError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found("request", model::request_name(id)))
    }

    /// Request `id` as the API shows it now.
    pub(crate) async fn current(&self, id: &str) -> Result<pb::Request, ApiError> {
        let l = self.load(id).await?;
        Ok(model::to_proto(&l, self.clock.now()))
    }

    /// Runs a change of request `id` (`decide` sees the current request inside
    /// the store's transaction) and returns the request after it.
    pub(crate) async fn change<F>(
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
        self.current(id).await
    }
}
