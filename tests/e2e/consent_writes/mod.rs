//! Consent writes committed in groups, on both backends: a group of jobs written
//! together (replays inside the group and from earlier groups, the same subject and
//! purpose twice, empty writes, a failing job failing alone), and many concurrent
//! RecordConsent / WithdrawConsent calls through the API ending in the state of the
//! last write per subject and purpose, with gap-free change numbers.

mod concurrent;
mod groups;
mod index;
mod migration;

use custodia_proto::consent::v1::ConsentEvent;
use custodia_tests::{
    consent_job as job, consent_job_with_body as job_with_body, consent_record as record,
};

/// The names of `events`, in order.
fn names(events: &[ConsentEvent]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}
