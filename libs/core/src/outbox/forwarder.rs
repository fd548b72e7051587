//! Ships outbox batches to audit-log. Delivery is at-least-once from here and
//! exactly-once in the log, because `AppendEvents` is idempotent by event id: a
//! crash between delivery and acknowledgement only causes a harmless re-send.

use std::time::Duration;

use super::{AccessEvent, OutboxStore};

/// Where forwarded events go (audit-log's `AppendEvents` in production).
pub trait EventSink: Send + Sync + 'static {
    /// Appends `events` durably or fails as a whole.
    fn append(&self, events: Vec<AccessEvent>) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Moves events from one service's outbox to a sink, in batches, with backoff.
#[derive(Debug)]
pub struct Forwarder<S, K> {
    store: S,
    sink: K,
    batch_size: usize,
}

/// Backoff after a failed delivery: doubling from `MIN_BACKOFF` up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most events of one outbox row sent in one call. Rows hold at most 1,000
/// events (`store::MAX_BUNDLE`), so a row always goes out whole: the subjects
/// of one call (up to 1,000 of them) become one entry in the log.
const MAX_ROW_CHUNK: usize = 10_000;
/// Poll interval when idle, in case a wake-up was missed (e.g. another replica wrote).
const IDLE_POLL: Duration = Duration::from_secs(1);

impl<S: OutboxStore, K: EventSink> Forwarder<S, K> {
    /// A forwarder sending at most `batch_size` events per call.
    pub fn new(store: S, sink: K, batch_size: usize) -> Self {
        Self {
            store,
            sink,
            batch_size: batch_size.max(1),
        }
    }

    /// Delivers one batch; returns how many events were delivered (0 = nothing pending).
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let batch = self.store.peek(self.batch_size).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let delivered = batch.len();
        // Events stored together share a position, and positions come in order.
        let mut ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        let mut events = batch.into_iter().map(|(_, e)| e).peekable();
        // `peek` returns whole rows of at most a batch of events, or one row
        // alone that holds more: the events of one call about many subjects
        // (a batch check), which go out together so the log stores them as one
        // compact entry (see `grpc_sink::to_wire`); beyond `MAX_ROW_CHUNK` in
        // several calls. A failure half-way re-sends the first ones later,
        // which the log ignores by id.
        let chunk_size = self.batch_size.max(MAX_ROW_CHUNK);
        while events.peek().is_some() {
            let chunk: Vec<_> = events.by_ref().take(chunk_size).collect();
            if let Err(e) = self.sink.append(chunk).await {
                // Best effort: the count is informational, the events stay queued either way.
                let _ = self.store.record_attempt(&ids).await;
                return Err(e);
            }
        }
        self.store.ack(&ids).await?;
        Ok(delivered)
    }

    /// Delivers until the outbox is empty; stops at the first failure.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            match self.run_once().await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Runs forever (the server aborts the task at shutdown; nothing is lost because
    /// events leave the outbox only once acknowledged).
    pub async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.drain().await {
                Ok(_) => {
                    backoff = MIN_BACKOFF;
                    tokio::select! {
                        _ = self.store.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "audit-log delivery failed; events stay queued");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
