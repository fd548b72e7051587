//! WatchConsentChanges: a resumable stream of consent changes (C-3, C-9), so a CRM
//! or newsletter sender learns of a withdrawal without polling us.
//!
//! Change numbers are gap-free and in commit order, so "everything after cursor
//! N" never skips a change that commits late. New changes are found by polling
//! the change table every 250 ms (and at once after a local write), which also
//! covers writes made on other replicas; idle streams get a heartbeat every 30 s.

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Duration};

use custodia_core::{
    ApiError, auth::CallContext, pagination, storage::to_micros, validate::Validator,
};
use custodia_proto::consent::v1::{
    ConsentEvent, WatchConsentChangesRequest, WatchConsentChangesResponse,
};
use futures::Stream;
use tokio::{sync::Notify, time::Instant};
use tonic::Status;

use crate::{
    api::{Api, MAX_PURPOSE_FILTER},
    records::subject_consent,
    register::{from_timestamp, purpose_id},
    store::ConsentStore,
};

/// Poll interval for changes made elsewhere.
const POLL: Duration = Duration::from_millis(250);
/// Heartbeat interval on an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Fingerprint binding cursors to this stream kind.
const CURSOR_KIND: &str = "consent-changes";

/// A change stream as returned to tonic.
pub type ChangeStream =
    Pin<Box<dyn Stream<Item = Result<WatchConsentChangesResponse, Status>> + Send>>;

/// Encodes change number `seq` as a cursor.
pub fn cursor(seq: i64) -> String {
    pagination::encode(&seq, CURSOR_KIND)
}

/// Decodes a cursor; INVALID_ARGUMENT naming `cursor` when it is not one of ours.
pub fn parse_cursor(text: &str) -> Result<Option<i64>, ApiError> {
    pagination::decode(text, CURSOR_KIND)
        .map_err(|_| ApiError::invalid("cursor", "is not a cursor returned by WatchConsentChanges"))
}

/// The purposes a stream is filtered on (`purposes/{id}` names), as ids.
fn purpose_filter(purposes: &[String]) -> Result<Vec<String>, ApiError> {
    let mut v = Validator::new();
    v.max_items("purposes", purposes.len(), MAX_PURPOSE_FILTER);
    v.finish()?;
    let mut ids = Vec::new();
    for (i, p) in purposes.iter().enumerate() {
        ids.push(purpose_id(p, &format!("purposes[{i}]"))?.to_string());
    }
    Ok(ids)
}

/// WatchConsentChanges: the stream from the cursor, from the first change at or
/// after `start_time`, or from now.
pub(crate) async fn watch_consent_changes(
    api: &Api,
    call: &CallContext,
    r: WatchConsentChangesRequest,
) -> Result<ChangeStream, ApiError> {
    let purposes = purpose_filter(&r.purposes)?;
    let after = match parse_cursor(&r.cursor)? {
        Some(seq) => seq,
        None => match &r.start_time {
            // Replay from a time: every change recorded at or after it.
            Some(t) => {
                let from = to_micros(from_timestamp(t));
                api.store
                    .first_change_at_or_after(from)
                    .await?
                    .map_or(i64::MAX, |seq| seq - 1)
                    .min(api.store.last_change().await?)
            }
            None => api.store.last_change().await?,
        },
    };
    api.record_access(&api.access(call, "WatchConsentChanges", None, ""))
        .await?;
    Ok(stream(
        api.ctx.shutdown.clone(),
        api.store.clone(),
        api.changed.clone(),
        after,
        purposes,
    ))
}

struct Watch {
    shutdown: tokio::sync::watch::Receiver<bool>,
    store: ConsentStore,
    changed: Arc<Notify>,
    after: i64,
    purposes: Vec<String>,
    buffer: VecDeque<(i64, i64, Option<i64>, ConsentEvent)>,
    last_sent: Instant,
    failed: bool,
}

fn change(
    seq: i64,
    decision_us: i64,
    expire_us: Option<i64>,
    event: ConsentEvent,
) -> WatchConsentChangesResponse {
    let state = subject_consent(&event, decision_us, expire_us, false);
    WatchConsentChangesResponse {
        cursor: cursor(seq),
        event: Some(event),
        consent: Some(state),
    }
}

impl Watch {
    async fn next(mut self) -> Option<(Result<WatchConsentChangesResponse, Status>, Self)> {
        loop {
            if self.failed || *self.shutdown.borrow() {
                return None;
            }
            if let Some((seq, decision_us, expire_us, event)) = self.buffer.pop_front() {
                self.last_sent = Instant::now();
                return Some((Ok(change(seq, decision_us, expire_us, event)), self));
            }
            // Register interest before reading, so a write racing the read wakes us.
            let changed = self.changed.clone();
            let notified = changed.notified();
            match self.store.changes(self.after, &self.purposes, 500).await {
                Ok(batch) if !batch.is_empty() => {
                    self.after = batch.last().map_or(self.after, |c| c.0);
                    self.buffer.extend(batch);
                }
                Ok(_) => {
                    if self.last_sent.elapsed() >= HEARTBEAT {
                        self.last_sent = Instant::now();
                        let beat = WatchConsentChangesResponse {
                            cursor: cursor(self.after),
                            event: None,
                            consent: None,
                        };
                        return Some((Ok(beat), self));
                    }
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Some((Err(e.into()), self));
                }
            }
        }
    }
}

/// The stream of changes after `after` for `purposes` (all when empty).
pub fn stream(
    shutdown: tokio::sync::watch::Receiver<bool>,
    store: ConsentStore,
    changed: Arc<Notify>,
    after: i64,
    purposes: Vec<String>,
) -> ChangeStream {
    let state = Watch {
        shutdown,
        store,
        changed,
        after,
        purposes,
        buffer: VecDeque::new(),
        last_sent: Instant::now(),
        failed: false,
    };
    Box::pin(futures::stream::unfold(state, Watch::next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor(&cursor(42)).unwrap(), Some(42));
        assert_eq!(parse_cursor("").unwrap(), None);
        assert!(parse_cursor("not-a-cursor").is_err());
    }

    #[test]
    fn filters_are_purpose_names() {
        assert_eq!(
            purpose_filter(&["purposes/newsletter".into()]).unwrap(),
            ["newsletter"]
        );
        let Err(ApiError::InvalidArgument(v)) =
            purpose_filter(&["purposes/newsletter".into(), "analytics".into()])
        else {
            panic!("a bare id accepted");
        };
        assert_eq!(v[0].field, "purposes[1]");
        let all = vec!["purposes/a".to_string(); MAX_PURPOSE_FILTER + 1];
        assert!(purpose_filter(&all).is_err());
    }
}
