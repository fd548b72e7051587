use std::sync::Arc;

use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;

use super::AccessEvent;
use crate::{
    config::ReadEventSync,
    group_commit::GroupCommit,
    storage::{Backend, Db, insert_rows, placeholders, to_micros},
};

/// The outbox of one service's database.
pub trait OutboxStore: Send + Sync + 'static {
    /// Enqueues `event` on its own (reads, denials); idempotent by event id.
    fn enqueue(&self, event: &AccessEvent) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Oldest `limit` pending events with their queue position.
    fn peek(
        &self,
        limit: usize,
    ) -> impl Future<Output = anyhow::Result<Vec<(i64, AccessEvent)>>> + Send;
    /// Removes delivered events by queue position.
    fn ack(&self, ids: &[i64]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Counts a failed delivery attempt on these positions.
    fn record_attempt(&self, ids: &[i64]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Number of events not yet delivered.
    fn pending(&self) -> impl Future<Output = anyhow::Result<i64>> + Send;
    /// Resolves when something has been enqueued since the last wake-up.
    fn notified(&self) -> impl Future<Output = ()> + Send;
}

/// Enqueues `event` inside the caller's transaction, so it commits or rolls back
/// with the data change it describes.
pub async fn enqueue_in(conn: &mut AnyConnection, event: &AccessEvent) -> anyhow::Result<()> {
    let payload = serde_json::to_string(event)?;
    sqlx::query(
        "INSERT INTO access_event_outbox (event_id, payload, enqueued_us) VALUES ($1, $2, $3) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id.to_string())
    .bind(payload)
    .bind(to_micros(chrono::Utc::now()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Enqueues `events` inside the caller's transaction, like [`enqueue_in`], with
/// a few multi-row INSERTs instead of one statement per event.
pub async fn enqueue_all_in(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[AccessEvent],
) -> anyhow::Result<()> {
    let enqueued_us = to_micros(chrono::Utc::now());
    let rows = events
        .iter()
        .map(|e| Ok((e.event_id.to_string(), serde_json::to_string(e)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    insert_rows(
        conn,
        backend,
        (
            "INSERT INTO access_event_outbox (event_id, payload, enqueued_us)",
            "ON CONFLICT (event_id) DO NOTHING",
        ),
        3,
        INSERT_CHUNK,
        &rows,
        |q, (id, payload)| q.bind(id.clone()).bind(payload.clone()).bind(enqueued_us),
    )
    .await?;
    Ok(())
}

/// Inserts `events` in one transaction (idempotent by event id); `relaxed` commits
/// without waiting for the disk flush (see [`ReadEventSync`]).
async fn insert_group(db: &Db, events: &[AccessEvent], relaxed: bool) -> anyhow::Result<Vec<()>> {
    match (db.backend(), relaxed) {
        (Backend::Sqlite, true) => {
            // `synchronous` is per connection: set for this transaction only, and a
            // connection left in an unknown state is closed, never reused.
            let _turn = db.write_turn().await;
            let mut conn = db.pool().acquire().await?;
            let written = async {
                // Two statements per round trip to SQLite's worker thread.
                sqlx::raw_sql("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE")
                    .execute(&mut *conn)
                    .await?;
                enqueue_all_in(&mut conn, db.backend(), events).await?;
                sqlx::raw_sql("COMMIT; PRAGMA synchronous = FULL")
                    .execute(&mut *conn)
                    .await?;
                anyhow::Ok(())
            }
            .await;
            if written.is_err() {
                let _ = conn.close().await;
            }
            written?;
        }
        (backend, relaxed) => {
            let mut tx = db.begin_write().await?;
            if relaxed {
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
            }
            enqueue_all_in(&mut tx, backend, events).await?;
            tx.commit().await?;
        }
    }
    Ok(vec![(); events.len()])
}

/// [`OutboxStore`] over a service's [`Db`] (SQLite or Postgres).
#[derive(Debug, Clone)]
pub struct SqlOutbox {
    db: Db,
    notify: Arc<Notify>,
    /// Events enqueued on their own (reads) are written in groups: a read-heavy
    /// service pays one transaction per group of concurrent calls, not per call.
    alone: Arc<GroupCommit<AccessEvent, ()>>,
}

/// Most events in one group insert.
const MAX_GROUP: usize = 2_000;
/// Rows per multi-row INSERT (3 parameters each).
const INSERT_CHUNK: usize = 300;

impl SqlOutbox {
    /// The outbox in `db` (migrated by [`Db::migrate`]); events enqueued on their
    /// own are flushed to disk before [`OutboxStore::enqueue`] returns.
    pub fn new(db: Db) -> Self {
        Self::with_read_sync(db, ReadEventSync::Full)
    }

    /// Like [`Self::new`], committing events enqueued on their own (reads) as `sync`
    /// says.
    pub fn with_read_sync(db: Db, sync: ReadEventSync) -> Self {
        let writer = db.clone();
        let relaxed = sync == ReadEventSync::Relaxed;
        let alone = GroupCommit::new(MAX_GROUP, move |events: Vec<AccessEvent>| {
            let db = writer.clone();
            async move { insert_group(&db, &events, relaxed).await }
        });
        Self {
            db,
            notify: Arc::new(Notify::new()),
            alone: Arc::new(alone),
        }
    }

    /// Wakes the forwarder after a transaction that called [`enqueue_in`] committed.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Enqueues the event of a change made outside this database's transactions (an
    /// erasure, a shred) in a fully durable transaction of its own, whatever
    /// `read_event_sync` says.
    pub async fn enqueue_durable(&self, event: &AccessEvent) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write().await?;
        enqueue_in(&mut tx, event).await?;
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Enqueues several events on their own (a batch read), in one transaction.
    pub async fn enqueue_all(&self, events: Vec<AccessEvent>) -> anyhow::Result<()> {
        self.alone.submit(events).await?;
        self.wake();
        Ok(())
    }

    /// The database this outbox lives in.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

impl OutboxStore for SqlOutbox {
    async fn enqueue(&self, event: &AccessEvent) -> anyhow::Result<()> {
        self.alone.submit(vec![event.clone()]).await?;
        self.wake();
        Ok(())
    }

    async fn peek(&self, limit: usize) -> anyhow::Result<Vec<(i64, AccessEvent)>> {
        let rows = sqlx::query("SELECT id, payload FROM access_event_outbox ORDER BY id LIMIT $1")
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.into_iter()
            .map(|row| {
                let id: i64 = row.try_get(0)?;
                let payload: String = row.try_get(1)?;
                Ok((id, serde_json::from_str(&payload)?))
            })
            .collect()
    }

    async fn ack(&self, ids: &[i64]) -> anyhow::Result<()> {
        for chunk in ids.chunks(500) {
            let sql = format!(
                "DELETE FROM access_event_outbox WHERE id IN ({})",
                placeholders(self.db.backend(), 1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(self.db.pool()).await?;
        }
        Ok(())
    }

    async fn record_attempt(&self, ids: &[i64]) -> anyhow::Result<()> {
        for chunk in ids.chunks(500) {
            let sql = format!(
                "UPDATE access_event_outbox SET attempts = attempts + 1 WHERE id IN ({})",
                placeholders(self.db.backend(), 1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(self.db.pool()).await?;
        }
        Ok(())
    }

    async fn pending(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM access_event_outbox")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn notified(&self) {
        self.notify.notified().await
    }
}
