//! What every use case of the service works with: the [`Api`] state, the
//! subjects of a call hashed, and the access events it records.

use std::sync::{Arc, atomic::AtomicBool};

use custodia_core::{
    ApiError,
    auth::CallContext,
    outbox::{AccessEvent, OutboxStore, Outcome},
    server::ServiceContext,
    signing::Ed25519Key,
    subject::SubjectId,
    validate::Validator,
};
use custodia_proto::common::v1::SubjectRef;
use tokio::sync::Notify;

use crate::{cache::CheckCache, register::purpose_name, store::ConsentStore};

/// Service name in access events.
const SERVICE: &str = "custodia.consent.v1.ConsentService";

/// Most identifiers of one person in a call (ListConsentEvents,
/// ListSubjectConsents, EraseSubject): a person has a handful.
pub const MAX_SUBJECT_IDENTIFIERS: usize = 100;
/// Most purposes one notice covers or one change stream filters on: a whole
/// register of processing.
pub const MAX_PURPOSE_FILTER: usize = 1000;

/// The service: its context, store, check cache and receipt key. The gRPC
/// handlers (`grpc.rs`) hand each request to a use case of the resource's
/// module, which takes this.
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) ctx: ServiceContext,
    pub(crate) store: ConsentStore,
    /// Woken after every committed write (see [`crate::watch`]).
    pub(crate) changed: Arc<Notify>,
    pub(crate) receipts: Ed25519Key,
    /// Whether `receipts` is known to be in the store's receipt keys.
    pub(crate) receipt_key_stored: Arc<AtomicBool>,
    /// What checks read, kept in memory (see [`crate::cache`]).
    pub(crate) cache: Arc<CheckCache>,
}

impl Api {
    /// The service over `store`.
    pub fn new(
        ctx: ServiceContext,
        store: ConsentStore,
        receipts: Ed25519Key,
        cache: Arc<CheckCache>,
    ) -> Self {
        Self {
            ctx,
            store,
            changed: Arc::new(Notify::new()),
            receipts,
            receipt_key_stored: Arc::default(),
            cache,
        }
    }

    /// The receipt signing key.
    pub fn receipt_key(&self) -> &Ed25519Key {
        &self.receipts
    }

    /// Wakes change streams after a committed write.
    pub fn notify_changed(&self) {
        self.changed.notify_waiters();
    }

    /// The service context.
    pub fn ctx(&self) -> &ServiceContext {
        &self.ctx
    }

    /// The store.
    pub fn store(&self) -> &ConsentStore {
        &self.store
    }

    /// A subject of the request (`field`), validated, with its keyed hash.
    pub(crate) fn subject(
        &self,
        r: Option<&SubjectRef>,
        field: &str,
    ) -> Result<(SubjectId, String), ApiError> {
        let r = r.ok_or_else(|| ApiError::invalid(field, "is required"))?;
        let id = SubjectId::parse(&r.r#type, &r.value, field)?;
        let hash = self.ctx.subjects.hash(&id);
        Ok((id, hash))
    }

    /// Validated identifiers of one person (`subject_identifiers`) with their
    /// hashes.
    pub fn subjects(&self, refs: &[SubjectRef]) -> Result<Vec<(SubjectId, String)>, ApiError> {
        validate_identifier_count(refs.len())?;
        refs.iter()
            .enumerate()
            .map(|(i, r)| self.subject(Some(r), &format!("subject_identifiers[{i}]")))
            .collect()
    }

    /// The access event of a call to `method` (about `subject` and `purpose`,
    /// when given).
    pub(crate) fn access(
        &self,
        call: &CallContext,
        method: &str,
        subject: Option<(&SubjectId, &str)>,
        purpose: &str,
    ) -> AccessEvent {
        let mut e = AccessEvent::new(
            self.ctx.clock.now(),
            call.principal.name(),
            SERVICE,
            method,
            Outcome::Ok,
        );
        e.trace_id = call.trace_id.clone();
        if let Some((id, hash)) = subject {
            e.subject_type = Some(id.kind().to_string());
            e.subject_hash = Some(hash.to_string());
        }
        if !purpose.is_empty() {
            e.purpose = Some(purpose.to_string());
            e.resource = purpose_name(purpose);
        }
        e
    }

    /// Enqueues `access` in the outbox (written before the call answers).
    pub(crate) async fn record_access(&self, access: &AccessEvent) -> Result<(), ApiError> {
        self.ctx
            .outbox
            .enqueue(access)
            .await
            .map_err(ApiError::internal)
    }
}

/// A subject as the API returns it: only the type leaves the service, the value
/// is stored as a keyed hash.
pub(crate) fn subject_out(id: &SubjectId) -> SubjectRef {
    SubjectRef {
        r#type: id.kind().to_string(),
        value: String::new(),
    }
}

/// `subject_identifiers` must name between 1 and [`MAX_SUBJECT_IDENTIFIERS`].
pub(crate) fn validate_identifier_count(n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(
            "subject_identifiers",
            "at least one identifier is required",
        ));
    }
    let mut v = Validator::new();
    v.max_items("subject_identifiers", n, MAX_SUBJECT_IDENTIFIERS);
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fields;

    #[test]
    fn one_to_a_hundred_identifiers() {
        assert!(validate_identifier_count(0).is_err());
        assert!(validate_identifier_count(1).is_ok());
        assert!(validate_identifier_count(MAX_SUBJECT_IDENTIFIERS).is_ok());
        let too_many = validate_identifier_count(MAX_SUBJECT_IDENTIFIERS + 1);
        assert_eq!(fields(too_many.unwrap_err()), ["subject_identifiers"]);
    }
}
