//! The state every use case of the breach service shares, and the steps they
//! all take: parse a breach name, load a breach, run a change of it in the
//! store's transaction, build and record access events, write a SYSTEM
//! timeline entry. The use cases are in [`crate::breaches`],
//! [`crate::assessments`], [`crate::team`], [`crate::timeline`],
//! [`crate::notifications`], [`crate::closing`] and [`crate::report`];
//! [`crate::grpc`] maps the RPCs onto them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    access::{self, call_event},
    auth::CallContext,
    fields::resource_id,
    idempotency::{MAX_REQUEST_ID, RequestKey},
    legal_time::Clock,
    outbox::{AccessEvent, SqlOutbox},
    proto_time::timestamp,
    storage::to_micros,
    validate::Validator,
};
use custodia_proto::breach::v1::{self as pb, TimelineEntryKind};

use crate::{
    model::{self, actor},
    store::{BreachStore, Stored, Write},
};

/// The gRPC service name recorded in access events.
pub const SERVICE_NAME: &str = "custodia.breach.v1.BreachService";

/// The breach service: the register and the clock.
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) store: BreachStore,
    outbox: SqlOutbox,
    pub(crate) clock: Arc<dyn Clock>,
}

/// The id in `breaches/{id}`, or a violation of `field`.
pub(crate) fn breach_id(field: &str, name: &str) -> Result<String, ApiError> {
    resource_id(
        field,
        name,
        "breaches/",
        "breach",
        "breaches/{breach}",
        |id| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        },
    )
}

/// The first checks of a change of a breach: the breach's id (its name in
/// `name_field`), then the idempotency key's length in the returned
/// validator, which the change goes on filling.
pub(crate) fn named_change(
    name_field: &str,
    name: &str,
    request_id: &str,
) -> Result<(String, Validator), ApiError> {
    let id = breach_id(name_field, name)?;
    let mut v = Validator::new();
    v.max_len("request_id", request_id, MAX_REQUEST_ID);
    Ok((id, v))
}

/// A message field the request must carry, or INVALID_ARGUMENT on `field`.
pub(crate) fn required<'a, T>(value: &'a Option<T>, field: &str) -> Result<&'a T, ApiError> {
    value
        .as_ref()
        .ok_or_else(|| ApiError::invalid(field, "is required"))
}

/// `breaches/{id}`.
pub(crate) fn resource(id: &str) -> String {
    format!("breaches/{id}")
}

/// A SYSTEM timeline entry by `principal` at `now`.
pub(crate) fn system_entry(now: DateTime<Utc>, principal: &str, text: String) -> pb::TimelineEntry {
    pb::TimelineEntry {
        kind: TimelineEntryKind::System as i32,
        occur_time: Some(timestamp(now)),
        description: text,
        author: Some(actor(principal)),
        ..Default::default()
    }
}

/// `write`, then the SYSTEM timeline entry that says what it did.
pub(crate) fn and_entry(
    write: Write,
    now: DateTime<Utc>,
    principal: &str,
    text: String,
) -> Vec<Write> {
    vec![
        write,
        Write::Timeline(Box::new(system_entry(now, principal, text))),
    ]
}

/// The instant the unit tests of this crate's validations run at.
#[cfg(test)]
pub(crate) fn test_now() -> DateTime<Utc> {
    "2026-03-28T22:30:00Z".parse().unwrap()
}

/// `t` as the timeline and reports write it (seconds, `Z`).
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
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

    /// The access event of `call` to `method` on `resource` (AssessRisk,
    /// AssignTeam, CloseBreach change the record: their action is `update`).
    pub(crate) fn event(&self, call: &CallContext, method: &str, resource: String) -> AccessEvent {
        call_event(self.clock.now(), call, SERVICE_NAME, method, resource)
    }

    /// Records a read before the response leaves.
    pub(crate) async fn record_read(
        &self,
        call: &CallContext,
        method: &str,
        resource: String,
    ) -> Result<(), ApiError> {
        access::record_read(&self.outbox, &self.event(call, method, resource)).await
    }

    /// Breach `id`, or NOT_FOUND.
    pub(crate) async fn load(&self, id: &str) -> Result<Stored, ApiError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found("breach", resource(id)))
    }

    /// Breach `id` as the API shows it now.
    pub(crate) async fn current(&self, id: &str) -> Result<pb::Breach, ApiError> {
        let b = self.load(id).await?;
        Ok(model::to_proto(&b, self.clock.now()))
    }

    /// Runs a change of breach `id` and returns the breach after it.
    pub(crate) async fn change<F>(
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
        self.current(id).await
    }
}
