//! Consent records: what the store keeps of each decision, and how the API
//! shows a subject's state.

use custodia_proto::consent::v1::ConsentEvent;

pub use crate::store::{DIRECT_MARKETING, NewRecord, Receipt, WriteJob, WriteResult};

/// A subject's state for one purpose, as the API shows it, from its latest event.
pub fn subject_consent(
    event: &ConsentEvent,
    decision_us: i64,
    expire_us: Option<i64>,
    reconfirmation_required: bool,
) -> custodia_proto::consent::v1::SubjectConsent {
    use crate::register::timestamp;
    use custodia_core::storage::from_micros;
    custodia_proto::consent::v1::SubjectConsent {
        subject: event.subject.clone(),
        purpose: event.purpose.clone(),
        state: event.state,
        decision_time: Some(timestamp(from_micros(decision_us))),
        expire_time: expire_us.map(|us| timestamp(from_micros(us))),
        notice: event
            .evidence
            .as_ref()
            .map(|e| e.notice.clone())
            .unwrap_or_default(),
        reconfirmation_required,
        consent_event: event.name.clone(),
        guardian: event.guardian.clone(),
    }
}
