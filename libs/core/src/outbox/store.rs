use std::sync::Arc;

use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;

use super::AccessEvent;
use crate::storage::{Db, to_micros};

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

/// [`OutboxStore`] over a service's [`Db`] (SQLite or Postgres).
#[derive(Debug, Clone)]
pub struct SqlOutbox {
    db: Db,
    notify: Arc<Notify>,
}

impl SqlOutbox {
    /// The outbox in `db` (migrated by [`Db::migrate`]).
    pub fn new(db: Db) -> Self {
        Self {
            db,
            notify: Arc::new(Notify::new()),
        }
    }

    /// Wakes the forwarder after a transaction that called [`enqueue_in`] committed.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// The database this outbox lives in.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl OutboxStore for SqlOutbox {
    async fn enqueue(&self, event: &AccessEvent) -> anyhow::Result<()> {
        let mut conn = self.db.pool().acquire().await?;
        enqueue_in(&mut conn, event).await?;
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
                placeholders(chunk.len())
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
                placeholders(chunk.len())
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
