use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;

use super::{
    AccessEvent, EventBatch,
    journal::{Journal, Row as OutboxRow},
};
use crate::{
    config::ReadEventSync,
    group_commit::GroupCommit,
    storage::{Backend, Db, Script, placeholders, to_micros},
};

/// The outbox of one service's database.
pub trait OutboxStore: Send + Sync + 'static {
    /// Enqueues `event` on its own (reads, denials); idempotent by event id.
    fn enqueue(&self, event: &AccessEvent) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Enqueues the events of one call on their own (a batch read), together.
    fn enqueue_batch(&self, batch: EventBatch) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The oldest pending events with their queue position: whole rows, at most
    /// `limit` events unless the oldest row alone holds more. Events stored
    /// together share a position.
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
/// a few multi-row INSERTs instead of one statement per event. Runs of events that
/// differ only in id and subject share rows (see [`EventBatch`]).
pub async fn enqueue_all_in(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[AccessEvent],
) -> anyhow::Result<()> {
    enqueue_batches_in(conn, backend, &EventBatch::runs(events)).await
}

/// Enqueues `batches` inside the caller's transaction.
async fn enqueue_batches_in(
    conn: &mut AnyConnection,
    backend: Backend,
    batches: &[EventBatch],
) -> anyhow::Result<()> {
    insert_outbox_rows(conn, backend, &rows_of(batches)?).await
}

/// Inserts rows from [`rows_of`]: one statement per [`INSERT_CHUNK`] rows.
async fn insert_outbox_rows(
    conn: &mut AnyConnection,
    backend: Backend,
    rows: &[(String, String, i64)],
) -> anyhow::Result<()> {
    let mut script = Script::new(backend);
    push_outbox_rows(&mut script, rows);
    script.execute(conn).await?;
    Ok(())
}

/// Appends the INSERTs of `events` to `script` (run inside the caller's
/// transaction, like [`enqueue_all_in`]).
pub fn enqueue_all_script(script: &mut Script, events: &[AccessEvent]) -> anyhow::Result<()> {
    push_outbox_rows(script, &outbox_rows(events)?);
    Ok(())
}

/// The outbox rows `(event_id, payload, event_count)` that [`enqueue_all_script`]
/// writes for `events`, for a caller that inserts them itself (one PostgreSQL
/// statement of its own, say); insert them idempotently by event id.
pub fn outbox_rows(events: &[AccessEvent]) -> anyhow::Result<Vec<(String, String, i64)>> {
    rows_of(&EventBatch::runs(events))
}

fn push_outbox_rows(script: &mut Script, rows: &[(String, String, i64)]) {
    let enqueued_us = to_micros(chrono::Utc::now());
    script.insert_rows(
        (
            "INSERT INTO access_event_outbox (event_id, payload, enqueued_us, event_count)",
            "ON CONFLICT (event_id) DO NOTHING",
        ),
        4,
        INSERT_CHUNK,
        rows,
        |b, (id, payload, count)| {
            b.bind(id.clone())
                .bind(payload.clone())
                .bind(enqueued_us)
                .bind(*count);
        },
    );
}

/// Most events one outbox row carries.
const MAX_BUNDLE: usize = 1_000;
/// How a bundle row's payload starts (a single event's starts with `{"event_id":`).
const BUNDLE_PREFIX: &str = "{\"bundle\":";

/// The payload of a row holding several events of one [`EventBatch`] (a
/// BatchCheckConsent of 10,000 subjects: 10 rows, not 10,000).
#[derive(Serialize, Deserialize)]
struct Bundled {
    bundle: EventBatch,
}

/// Most events in a row merged from journal records (see [`merge_rows`]): five
/// rows make a forwarder batch of the default 500.
const MAX_MERGED: i64 = 100;
/// How a merged row's payload starts.
const MERGED_PREFIX: &str = "{\"rows\":[";

/// The payload of a row merged from several rows' payloads, kept as they were.
#[derive(Deserialize)]
struct Merged<'a> {
    #[serde(borrow)]
    rows: Vec<&'a serde_json::value::RawValue>,
}

/// `rows` (moved from the read-event journal) as fewer outbox rows: runs of
/// consecutive rows of at most [`MAX_MERGED`] events in all become one row, known
/// by its first row's id, its payload `{"rows":[<payload>,...]}`. A row that
/// merges with none stays as it was. The result depends on `rows` alone, so rows
/// moved again (a crash before their journal segment was removed) merge the same
/// way and the insert, idempotent by id, stores them once.
fn merge_rows(rows: Vec<(String, String, i64)>) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    let mut run = Vec::new();
    let mut run_events = 0;
    for row in rows {
        if !run.is_empty() && run_events + row.2 > MAX_MERGED {
            out.push(merged(std::mem::take(&mut run)));
            run_events = 0;
        }
        run_events += row.2;
        run.push(row);
    }
    if !run.is_empty() {
        out.push(merged(run));
    }
    out
}

/// One row standing for `run` (not empty); see [`merge_rows`].
fn merged(mut run: Vec<(String, String, i64)>) -> (String, String, i64) {
    if run.len() == 1 {
        return run.remove(0);
    }
    let mut payload = String::with_capacity(
        MERGED_PREFIX.len() + run.iter().map(|r| r.1.len() + 1).sum::<usize>() + 2,
    );
    payload.push_str(MERGED_PREFIX);
    for (i, (_, p, _)) in run.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        payload.push_str(p);
    }
    payload.push_str("]}");
    let count = run.iter().map(|r| r.2).sum();
    (std::mem::take(&mut run[0].0), payload, count)
}

/// Outbox rows `(event_id, payload, event_count)` for `batches`, in order. A row is
/// known by its first event's id: enqueueing it again is a no-op.
fn rows_of(batches: &[EventBatch]) -> anyhow::Result<Vec<(String, String, i64)>> {
    let mut rows = Vec::new();
    for batch in batches {
        if batch.len() == 1 {
            let event = batch.clone().into_events().remove(0);
            rows.push((
                event.event_id.to_string(),
                serde_json::to_string(&event)?,
                1,
            ));
            continue;
        }
        for bundle in batch.chunks(MAX_BUNDLE) {
            let Some(id) = bundle.first_id() else {
                continue;
            };
            let count = bundle.len() as i64;
            let payload = serde_json::to_string(&Bundled { bundle })?;
            rows.push((id.to_string(), payload, count));
        }
    }
    Ok(rows)
}

/// The events of one outbox row.
fn events_of(payload: &str) -> anyhow::Result<Vec<AccessEvent>> {
    if payload.starts_with(MERGED_PREFIX) {
        let Merged { rows } = serde_json::from_str(payload)?;
        let mut events = Vec::new();
        for row in rows {
            events.extend(events_of(row.get())?);
        }
        Ok(events)
    } else if payload.starts_with(BUNDLE_PREFIX) {
        let Bundled { bundle } = serde_json::from_str(payload)?;
        Ok(bundle.into_events())
    } else {
        Ok(vec![serde_json::from_str(payload)?])
    }
}

/// Outbox rows from arrays of ids, payloads and event counts ($1, $2, $4), all
/// enqueued at $3 (PostgreSQL, native connection).
const PG_INSERT: &str = "INSERT INTO access_event_outbox (event_id, payload, enqueued_us, event_count) \
     SELECT t.i, t.p, $3, t.c FROM UNNEST($1::text[], $2::text[], $4::bigint[]) AS t (i, p, c) \
     ON CONFLICT (event_id) DO NOTHING";
/// [`PG_INSERT`] in a transaction that commits without waiting for the WAL flush.
const PG_INSERT_RELAXED: &str = "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) \
     INSERT INTO access_event_outbox (event_id, payload, enqueued_us, event_count) \
     SELECT t.i, t.p, $3, t.c FROM relaxed, UNNEST($1::text[], $2::text[], $4::bigint[]) AS t (i, p, c) \
     ON CONFLICT (event_id) DO NOTHING";

/// Inserts the rows of several calls (each call's [`rows_of`] its events) in one
/// transaction (idempotent by event id); `relaxed` commits without waiting for the
/// disk flush (see [`ReadEventSync`]).
async fn insert_group(
    db: &Db,
    calls: Vec<Vec<OutboxRow>>,
    relaxed: bool,
) -> anyhow::Result<Vec<()>> {
    let n = calls.len();
    insert_rows(db, calls.into_iter().flatten().collect(), relaxed).await?;
    Ok(vec![(); n])
}

/// Inserts outbox `rows` in one transaction (idempotent by event id), as
/// [`insert_group`] says.
async fn insert_rows(
    db: &Db,
    rows: Vec<(String, String, i64)>,
    relaxed: bool,
) -> anyhow::Result<()> {
    if let Some(pool) = db.native_postgres() {
        return insert_rows_postgres(pool, &rows, relaxed).await;
    }
    match (db.backend(), relaxed) {
        (Backend::Sqlite, true) => {
            let _turn = db.write_turn().await;
            let pool = db
                .relaxed_pool()
                .expect("an SQLite database has a relaxed pool");
            let mut conn = pool.acquire().await?;
            // One message to SQLite's worker thread (each a thread wake-up, slow when
            // both cores are busy); a single statement is atomic on its own.
            let mut script = Script::new(Backend::Sqlite);
            let several = rows.len() > INSERT_CHUNK;
            if several {
                script.push("BEGIN IMMEDIATE", |_| ());
            }
            push_outbox_rows(&mut script, &rows);
            if several {
                script.push("COMMIT", |_| ());
            }
            let written = script.execute(&mut conn).await;
            if written.is_err() {
                // Never hand back a connection that may be inside a transaction.
                let _ = conn.close().await;
            }
            written?;
        }
        (backend, relaxed) => {
            let tx = db.begin_script().await?;
            let mut script = Script::new(backend);
            if relaxed {
                script.push("SET LOCAL synchronous_commit = off", |_| ());
            }
            push_outbox_rows(&mut script, &rows);
            tx.commit(script).await?;
        }
    }
    Ok(())
}

/// [`insert_rows`] on PostgreSQL: one statement of constant text, one array per
/// column, so one round trip in a transaction of its own, prepared and planned once
/// per connection whatever the group's size. `set_config(.., true)` holds for that
/// transaction, whose commit then does not wait for the WAL flush.
async fn insert_rows_postgres(
    pool: &sqlx::PgPool,
    rows: &[(String, String, i64)],
    relaxed: bool,
) -> anyhow::Result<()> {
    let (mut ids, mut payloads, mut counts) = (vec![], vec![], vec![]);
    for (id, payload, count) in rows {
        ids.push(id.as_str());
        payloads.push(payload.as_str());
        counts.push(*count);
    }
    sqlx::query(if relaxed {
        PG_INSERT_RELAXED
    } else {
        PG_INSERT
    })
    .bind(&ids)
    .bind(&payloads)
    .bind(to_micros(chrono::Utc::now()))
    .bind(&counts)
    .execute(pool)
    .await?;
    Ok(())
}

/// [`OutboxStore`] over a service's [`Db`] (SQLite or Postgres).
#[derive(Debug, Clone)]
pub struct SqlOutbox {
    db: Db,
    notify: Arc<Notify>,
    /// Events enqueued on their own (reads) are written in groups: a read-heavy
    /// service pays one transaction per group of concurrent calls, not per call.
    /// Each call hands in its events' rows (see [`rows_of`]), serialized once
    /// whether they go to the journal or, refused there, to the table.
    alone: Arc<GroupCommit<Vec<OutboxRow>, ()>>,
    /// Relaxed reads with a journal (always on SQLite, on PostgreSQL when
    /// configured): events enqueued on their own go to the journal instead (see
    /// [`Journal`]).
    journal: Option<Arc<Journal>>,
    /// Writes the journal refused so far (see [`OutboxStore::enqueue_batch`]).
    journal_refusals: Arc<AtomicU64>,
}

/// Most calls' events (single events or batches) in one group insert.
const MAX_GROUP: usize = 2_000;
/// Rows per multi-row INSERT (4 parameters each).
const INSERT_CHUNK: usize = 300;

impl SqlOutbox {
    /// The outbox in `db` (migrated by [`Db::migrate`]); events enqueued on their
    /// own are flushed to disk before [`OutboxStore::enqueue`] returns.
    pub fn new(db: Db) -> Self {
        Self::with_read_sync(db, ReadEventSync::Full)
    }

    /// Like [`Self::new`], committing events enqueued on their own (reads) as `sync`
    /// says; relaxed reads on SQLite go to the journal beside the database.
    pub fn with_read_sync(db: Db, sync: ReadEventSync) -> Self {
        let journal = db.sqlite_file().map(Journal::beside);
        Self::with_journal(db, sync, journal.as_deref())
    }

    /// Like [`Self::with_read_sync`], relaxed reads going to the journal file
    /// `journal` (when given; `None`: to the table). On PostgreSQL the file must be
    /// on a disk that outlives the process; see the journal's documentation.
    pub fn with_journal(db: Db, sync: ReadEventSync, journal: Option<&Path>) -> Self {
        let writer = db.clone();
        let relaxed = sync == ReadEventSync::Relaxed;
        let alone = GroupCommit::new(MAX_GROUP, move |calls: Vec<Vec<OutboxRow>>| {
            let db = writer.clone();
            async move { insert_group(&db, calls, relaxed).await }
        });
        let journal = match journal.filter(|_| relaxed).map(Journal::open) {
            None => None,
            Some(Ok(Some(journal))) => Some(Arc::new(journal)),
            Some(Ok(None)) => {
                tracing::debug!(
                    "read-event journal held by another outbox; writing reads to the table"
                );
                None
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot open the read-event journal; writing reads to the table");
                None
            }
        };
        let outbox = Self {
            db,
            notify: Arc::new(Notify::new()),
            alone: Arc::new(alone),
            journal,
            journal_refusals: Arc::new(AtomicU64::new(0)),
        };
        if let Some(journal) = &outbox.journal
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(move_journal_periodically(
                Arc::downgrade(journal),
                outbox.db.clone(),
            ));
        }
        outbox
    }

    /// Sets how many bytes of read events the journal may hold, not yet moved into
    /// the table, before further reads are written to the table directly (default
    /// 256 MiB; no effect without a journal).
    pub fn with_journal_backlog(self, bytes: u64) -> Self {
        if let Some(journal) = &self.journal {
            journal.set_max_backlog(bytes);
        }
        self
    }

    /// Whether relaxed reads go to a journal file (see [`Self::with_journal`]).
    pub fn has_journal(&self) -> bool {
        self.journal.is_some()
    }

    /// Moves the journal's records (if any) into the outbox table: before the
    /// database closes at a graceful stop, so that a journal on a disk that does
    /// not outlive the process (a pod's emptyDir) leaves nothing behind.
    pub async fn move_journal(&self) -> anyhow::Result<()> {
        if let Some(journal) = &self.journal {
            move_journal(journal, &self.db).await?;
        }
        Ok(())
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

    /// The database this outbox lives in.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

impl OutboxStore for SqlOutbox {
    async fn enqueue(&self, event: &AccessEvent) -> anyhow::Result<()> {
        self.enqueue_batch(EventBatch::single(event.clone())).await
    }

    async fn enqueue_batch(&self, batch: EventBatch) -> anyhow::Result<()> {
        let rows = rows_of(std::slice::from_ref(&batch))?;
        let journaled = match &self.journal {
            Some(journal) => match journal.append(&rows) {
                Ok(()) => true,
                Err(e) => {
                    // The table is the reference path: the events are stored there
                    // (or the call fails), never dropped. Logged on the 1st, 2nd,
                    // 4th, 8th... refusal: at thousands of reads a second, not each.
                    let refusals = self.journal_refusals.fetch_add(1, Ordering::Relaxed) + 1;
                    if refusals.is_power_of_two() {
                        tracing::warn!(error = %e, refusals, "read-event journal refused a write; writing to the outbox table");
                    }
                    false
                }
            },
            None => false,
        };
        if !journaled {
            self.alone.submit(vec![rows]).await?;
        }
        self.wake();
        Ok(())
    }

    async fn peek(&self, limit: usize) -> anyhow::Result<Vec<(i64, AccessEvent)>> {
        // Nothing enqueued is invisible here, unless the journal cannot be moved
        // (its disk full or failing): then its events wait there, and the rows
        // already in the table are delivered meanwhile instead of waiting too. The
        // periodic move reports the failure.
        if let Err(e) = self.move_journal().await {
            tracing::debug!(error = %e, "read-event journal not moved before a peek");
        }
        // Sizes first, so a row of many events is not read only to be left out.
        let sizes =
            sqlx::query("SELECT id, event_count FROM access_event_outbox ORDER BY id LIMIT $1")
                .bind(limit as i64)
                .fetch_all(self.db.pool())
                .await?;
        let (mut rows, mut events, mut last) = (0i64, 0usize, None);
        for row in &sizes {
            let count = row.try_get::<i64, _>(1)?.max(1) as usize;
            if rows > 0 && events + count > limit {
                break;
            }
            rows += 1;
            events += count;
            last = Some(row.try_get::<i64, _>(0)?);
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT id, payload FROM access_event_outbox WHERE id <= $1 ORDER BY id LIMIT $2",
        )
        .bind(last)
        .bind(rows)
        .fetch_all(self.db.pool())
        .await?;
        let mut out = Vec::with_capacity(events);
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let payload: String = row.try_get(1)?;
            out.extend(events_of(&payload)?.into_iter().map(|e| (id, e)));
        }
        Ok(out)
    }

    async fn ack(&self, ids: &[i64]) -> anyhow::Result<()> {
        // Waits its turn behind the service's writes instead of in SQLite's busy handler.
        let _turn = self.db.write_turn().await;
        for chunk in ids.chunks(500) {
            let sql = format!(
                "DELETE FROM access_event_outbox WHERE id IN ({})",
                placeholders(self.db.backend(), 1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(self.db.write_pool()).await?;
        }
        Ok(())
    }

    async fn record_attempt(&self, ids: &[i64]) -> anyhow::Result<()> {
        // Waits its turn behind the service's writes instead of in SQLite's busy handler.
        let _turn = self.db.write_turn().await;
        for chunk in ids.chunks(500) {
            let sql = format!(
                "UPDATE access_event_outbox SET attempts = attempts + 1 WHERE id IN ({})",
                placeholders(self.db.backend(), 1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(self.db.write_pool()).await?;
        }
        Ok(())
    }

    async fn pending(&self) -> anyhow::Result<i64> {
        self.move_journal().await?;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(event_count), 0) AS BIGINT) FROM access_event_outbox",
        )
        .fetch_one(self.db.pool())
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn notified(&self) {
        self.notify.notified().await
    }
}

/// Moves `journal`'s records into the outbox table of `db` (relaxed, like the
/// writes they stand for).
async fn move_journal(journal: &Journal, db: &Db) -> anyhow::Result<()> {
    if journal.has_unmoved() {
        journal
            .move_to_outbox(|rows, merge| {
                insert_rows(db, if merge { merge_rows(rows) } else { rows }, true)
            })
            .await?;
    }
    Ok(())
}

/// How often the journal is moved into the table when nothing reads the outbox
/// (no forwarder, or audit-log down), so it stays small.
const JOURNAL_MOVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Moves the journal every [`JOURNAL_MOVE_INTERVAL`] until its outbox is gone.
async fn move_journal_periodically(journal: std::sync::Weak<Journal>, db: Db) {
    let mut tick = tokio::time::interval(JOURNAL_MOVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u64 = 0;
    loop {
        tick.tick().await;
        let Some(journal) = journal.upgrade() else {
            return;
        };
        match move_journal(&journal, &db).await {
            Ok(()) if failures > 0 => {
                tracing::info!(failures, "read-event journal moved again");
                failures = 0;
            }
            Ok(()) => {}
            Err(e) => {
                // Loud, but once every ~10 s rather than every tick.
                if failures.is_multiple_of(50) {
                    tracing::warn!(error = %e, failures, "moving the read-event journal into the outbox table failed; retrying");
                }
                failures += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outcome;

    fn event(method: &str) -> AccessEvent {
        AccessEvent::new(chrono::Utc::now(), "crm", "consent", method, Outcome::Ok)
    }

    fn bundle(n: usize) -> EventBatch {
        let mut bundle = EventBatch::new(event("BatchCheckConsent"));
        for i in 0..n {
            bundle.push("email", &format!("hash-{i}"));
        }
        bundle
    }

    /// Journal rows merge into runs of at most MAX_MERGED events, each known by its
    /// first row's id, and read back as the same events in the same order; a row
    /// too big to merge stays as it was; merging the same rows again gives the same
    /// rows (what makes a second move of them a no-op).
    #[test]
    fn merged_rows_hold_the_same_events_and_merge_the_same_way_again() {
        let mut batches: Vec<EventBatch> = (0..150)
            .map(|i| {
                EventBatch::single(event(if i % 2 == 0 {
                    "CheckConsent"
                } else {
                    "GetPurpose"
                }))
            })
            .collect();
        batches.insert(120, bundle(30));
        batches.push(bundle(150));
        let rows = rows_of(&batches).unwrap();
        assert_eq!(rows.len(), 152);
        let want: Vec<AccessEvent> = batches.into_iter().flat_map(|b| b.into_events()).collect();

        let merged = merge_rows(rows.clone());
        let counts: Vec<i64> = merged.iter().map(|r| r.2).collect();
        // 100 singles; 20 singles, the bundle of 30, 30 singles; the big bundle alone.
        assert_eq!(counts, vec![100, 80, 150]);
        assert_eq!(merged[0].0, rows[0].0, "known by the first row's id");
        assert_eq!(merged[1].0, rows[100].0);
        assert_eq!(
            merged[2], rows[151],
            "a row merged with none stays as it was"
        );
        assert!(merged[0].1.starts_with(MERGED_PREFIX));
        let events: Vec<AccessEvent> = merged
            .iter()
            .flat_map(|r| events_of(&r.1).unwrap())
            .collect();
        assert_eq!(
            serde_json::to_value(&events).unwrap(),
            serde_json::to_value(&want).unwrap()
        );
        assert_eq!(merge_rows(rows), merged);
    }
}
