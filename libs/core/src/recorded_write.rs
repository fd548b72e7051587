//! The write transaction of a change that is idempotent and recorded: it
//! claims the caller's idempotency key first ([`crate::idempotency::claim`]),
//! and its access events are enqueued in it, so the change, the key and the
//! events commit together or not at all. A refused change (an error before
//! [`RecordedWrite::commit`]) rolls back and leaves nothing behind.

use sqlx::AnyConnection;

use crate::{
    error::ApiError,
    idempotency::{self, Claim, RequestKey},
    outbox::{AccessEvent, SqlOutbox, enqueue_in},
    storage::{Db, WriteTx},
};

use crate::access::replay_of;

/// An open write transaction whose access events commit with it. Derefs to
/// the connection: use `&mut *w` as an executor.
#[derive(Debug)]
pub struct RecordedWrite<'a> {
    tx: WriteTx,
    outbox: &'a SqlOutbox,
}

/// What [`RecordedWrite::claim`] found.
#[derive(Debug)]
pub enum Claimed<'a> {
    /// The key is new (or there is none): write, then commit.
    Fresh(RecordedWrite<'a>),
    /// A retry of an earlier call with the same key and body: the resource
    /// that call wrote. Write nothing; [`RecordedWrite::replay`] records it.
    Replay(RecordedWrite<'a>, String),
}

impl<'a> Claimed<'a> {
    /// The write of a fresh claim. A replay instead is recorded, `event` (when
    /// given) on the resource `resource_of(earlier)` names, and what the first
    /// call wrote is returned as the error side: the caller answers with it.
    pub async fn write_or_replay(
        self,
        event: Option<&AccessEvent>,
        resource_of: impl FnOnce(&str) -> String,
    ) -> Result<Result<RecordedWrite<'a>, String>, ApiError> {
        match self {
            Claimed::Fresh(w) => Ok(Ok(w)),
            Claimed::Replay(w, earlier) => {
                if let Some(event) = event {
                    w.replay(event, resource_of(&earlier), &earlier).await?;
                }
                Ok(Err(earlier))
            }
        }
    }
}

impl<'a> RecordedWrite<'a> {
    /// A write without an idempotency key (a background task's).
    pub async fn begin(db: &Db, outbox: &'a SqlOutbox) -> Result<Self, ApiError> {
        Ok(Self {
            tx: db.begin_write().await?,
            outbox,
        })
    }

    /// A write that first claims `key` for `resource` (see [`idempotency`]).
    pub async fn claim(
        db: &Db,
        outbox: &'a SqlOutbox,
        key: Option<&RequestKey>,
        resource: &str,
        now_us: i64,
    ) -> Result<Claimed<'a>, ApiError> {
        let mut w = Self::begin(db, outbox).await?;
        Ok(
            match idempotency::claim(&mut w.tx, key, resource, now_us).await? {
                Claim::Fresh => Claimed::Fresh(w),
                Claim::Replay(earlier) => Claimed::Replay(w, earlier.resource),
            },
        )
    }

    /// Enqueues `events`, commits, and wakes the outbox's forwarder.
    pub async fn commit(mut self, events: &[&AccessEvent]) -> Result<(), ApiError> {
        for event in events {
            enqueue_in(&mut self.tx, event)
                .await
                .map_err(ApiError::internal)?;
        }
        self.tx.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// Records a replay, `event` on `resource` naming what the first call
    /// wrote (`earlier`), and commits (the claim wrote nothing else).
    pub async fn replay(
        self,
        event: &AccessEvent,
        resource: String,
        earlier: &str,
    ) -> Result<(), ApiError> {
        self.commit(&[&replay_of(event, resource, earlier)]).await
    }
}

impl std::ops::Deref for RecordedWrite<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for RecordedWrite<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}
