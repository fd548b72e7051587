//! Requests, source tasks, exports, data sources and retention runs on SQLite
//! or PostgreSQL (portable SQL over `sqlx::Any`).
//!
//! A request is one `dsar_requests` row (the protobuf record and the columns
//! listings filter on) plus its append-only action record, its recipient
//! notifications, one task row per data source and at most one export row.
//! Every change runs in one transaction that first claims the idempotency
//! key, then locks the request row, lets the caller decide on the current
//! state, writes the result and enqueues the access events: a refused or
//! failed change leaves nothing behind.

use custodia_core::{
    ApiError,
    idempotency::{self, Claim, RequestKey},
    outbox::{AccessEvent, SqlOutbox, enqueue_in},
    storage::{Db, Params},
};
use custodia_proto::dsar::v1::{
    self as pb, ActionEntry, ExportPackage, RecipientNotification, RequestState, SourceTask,
};
use prost::Message;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use crate::model;

/// A request as stored, with everything kept about it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The id in `requests/{id}`.
    pub id: String,
    /// The record (without actions, tasks, notifications and export).
    pub record: pb::Request,
    /// The action record, oldest first.
    pub actions: Vec<ActionEntry>,
    /// Source tasks, by source id.
    pub tasks: Vec<SourceTask>,
    /// Recipient notifications, oldest first.
    pub notifications: Vec<RecipientNotification>,
    /// The export package, once building started.
    pub export: Option<ExportRow>,
    /// Version for concurrency checks.
    pub version: i64,
}

impl Loaded {
    /// The current state.
    pub fn state(&self) -> RequestState {
        self.record.state()
    }

    /// The task of source `id`, if any.
    pub fn task(&self, source_id: &str) -> Option<&SourceTask> {
        let name = model::source_name(source_id);
        self.tasks.iter().find(|t| t.data_source == name)
    }
}

/// An export package and where its file is.
#[derive(Debug, Clone, Default)]
pub struct ExportRow {
    /// The package description.
    pub package: ExportPackage,
    /// Path of the zip (empty until built).
    pub path: String,
}

/// The writes a change asks for, applied in one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    /// Action entries to append.
    pub actions: Vec<ActionEntry>,
    /// Tasks to insert or replace (by source).
    pub tasks: Vec<SourceTask>,
    /// Recipient notifications to append.
    pub notifications: Vec<RecipientNotification>,
    /// The export to insert or replace.
    pub export: Option<ExportRow>,
    /// Access events to enqueue beside the caller's.
    pub events: Vec<AccessEvent>,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Applied.
    Applied,
    /// A retry of an earlier call with the same request_id: that call's resource.
    Replayed(String),
}

/// A task due for an attempt.
#[derive(Debug, Clone)]
pub struct DueTask {
    /// The request id.
    pub request_id: String,
    /// The source id.
    pub source_id: String,
}

/// The dsar database.
#[derive(Debug, Clone)]
pub struct DsarStore {
    db: Db,
    outbox: SqlOutbox,
}

fn decode<M: Message + Default>(bytes: &[u8]) -> anyhow::Result<M> {
    Ok(M::decode(bytes)?)
}

/// Stored form of a request state.
pub fn state_str(s: RequestState) -> &'static str {
    match s {
        RequestState::Unspecified => "UNSPECIFIED",
        RequestState::Received => "RECEIVED",
        RequestState::IdentityVerification => "IDENTITY_VERIFICATION",
        RequestState::InProgress => "IN_PROGRESS",
        RequestState::Completed => "COMPLETED",
        RequestState::Rejected => "REJECTED",
        RequestState::Cancelled => "CANCELLED",
    }
}

/// Stored form of a task state.
pub fn task_state_str(s: pb::SourceTaskState) -> &'static str {
    match s {
        pb::SourceTaskState::Unspecified => "UNSPECIFIED",
        pb::SourceTaskState::Pending => "PENDING",
        pb::SourceTaskState::Running => "RUNNING",
        pb::SourceTaskState::Succeeded => "SUCCEEDED",
        pb::SourceTaskState::Failed => "FAILED",
        pb::SourceTaskState::Unsupported => "UNSUPPORTED",
        pb::SourceTaskState::HandledManually => "HANDLED_MANUALLY",
    }
}

fn export_state_str(s: pb::ExportState) -> &'static str {
    match s {
        pb::ExportState::Unspecified => "UNSPECIFIED",
        pb::ExportState::Building => "BUILDING",
        pb::ExportState::Ready => "READY",
        pb::ExportState::Failed => "FAILED",
        pb::ExportState::Expired => "EXPIRED",
    }
}

async fn load(conn: &mut AnyConnection, id: &str) -> anyhow::Result<Option<Loaded>> {
    let Some(row) = sqlx::query("SELECT record, version FROM dsar_requests WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let record: Vec<u8> = row.try_get(0)?;
    let mut out = Loaded {
        id: id.to_string(),
        record: decode(&record)?,
        version: row.try_get(1)?,
        ..Default::default()
    };
    for r in sqlx::query("SELECT body FROM dsar_actions WHERE request_id = $1 ORDER BY seq")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?
    {
        out.actions.push(decode(&r.try_get::<Vec<u8>, _>(0)?)?);
    }
    for r in sqlx::query("SELECT body FROM dsar_notifications WHERE request_id = $1 ORDER BY seq")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?
    {
        out.notifications
            .push(decode(&r.try_get::<Vec<u8>, _>(0)?)?);
    }
    for r in sqlx::query("SELECT body FROM dsar_tasks WHERE request_id = $1 ORDER BY source_id")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?
    {
        out.tasks.push(decode(&r.try_get::<Vec<u8>, _>(0)?)?);
    }
    if let Some(r) = sqlx::query("SELECT body, path FROM dsar_exports WHERE request_id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
    {
        out.export = Some(ExportRow {
            package: decode(&r.try_get::<Vec<u8>, _>(0)?)?,
            path: r.try_get(1)?,
        });
    }
    Ok(Some(out))
}

async fn write_record(
    conn: &mut AnyConnection,
    id: &str,
    record: &pb::Request,
    now_us: i64,
) -> anyhow::Result<()> {
    let due_us = record
        .due_time
        .as_ref()
        .map(model::micros_of)
        .unwrap_or_default();
    sqlx::query(
        "UPDATE dsar_requests SET state = $2, record = $3, due_us = $4, terminal = $5, \
         update_us = $6 WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(state_str(record.state()).to_string())
    .bind(model::bare(record).encode_to_vec())
    .bind(due_us)
    .bind(i64::from(crate::state::is_terminal(record.state())))
    .bind(now_us)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply(
    conn: &mut AnyConnection,
    id: &str,
    changes: &Changes,
    now_us: i64,
) -> anyhow::Result<()> {
    if !changes.actions.is_empty() {
        let mut seq: i64 =
            sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM dsar_actions WHERE request_id = $1")
                .bind(id.to_string())
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
        for a in &changes.actions {
            seq += 1;
            sqlx::query(
                "INSERT INTO dsar_actions (request_id, seq, body, create_us) VALUES ($1, $2, $3, $4)",
            )
            .bind(id.to_string())
            .bind(seq)
            .bind(a.encode_to_vec())
            .bind(now_us)
            .execute(&mut *conn)
            .await?;
        }
    }
    if !changes.notifications.is_empty() {
        let mut seq: i64 = sqlx::query(
            "SELECT COALESCE(MAX(seq), 0) FROM dsar_notifications WHERE request_id = $1",
        )
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        for n in &changes.notifications {
            seq += 1;
            sqlx::query(
                "INSERT INTO dsar_notifications (request_id, seq, body) VALUES ($1, $2, $3)",
            )
            .bind(id.to_string())
            .bind(seq)
            .bind(n.encode_to_vec())
            .execute(&mut *conn)
            .await?;
        }
    }
    for t in &changes.tasks {
        let source_id = model::source_id_of(&t.data_source).to_string();
        let next_us = t
            .next_attempt_time
            .as_ref()
            .map(model::micros_of)
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO dsar_tasks (request_id, source_id, state, next_attempt_us, body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id, source_id) DO UPDATE SET \
             state = excluded.state, next_attempt_us = excluded.next_attempt_us, body = excluded.body",
        )
        .bind(id.to_string())
        .bind(source_id)
        .bind(task_state_str(t.state()).to_string())
        .bind(next_us)
        .bind(t.encode_to_vec())
        .execute(&mut *conn)
        .await?;
    }
    if let Some(e) = &changes.export {
        let expire_us = e.package.expire_time.as_ref().map(model::micros_of);
        sqlx::query(
            "INSERT INTO dsar_exports (request_id, state, path, expire_us, body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO UPDATE SET \
             state = excluded.state, path = excluded.path, expire_us = excluded.expire_us, \
             body = excluded.body",
        )
        .bind(id.to_string())
        .bind(export_state_str(e.package.state()).to_string())
        .bind(e.path.clone())
        .bind(expire_us)
        .bind(e.package.encode_to_vec())
        .execute(&mut *conn)
        .await?;
    }
    for event in &changes.events {
        enqueue_in(&mut *conn, event).await?;
    }
    Ok(())
}

/// Filters of `ListRequests`; all set filters must match.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only these states (any).
    pub states: Vec<RequestState>,
    /// Only this type.
    pub kind: Option<i32>,
    /// Only requests overdue at this time (µs).
    pub overdue_at_us: Option<i64>,
    /// Only due strictly before this (µs).
    pub due_before_us: Option<i64>,
    /// Only requests naming a subject with this hash.
    pub subject_hash: Option<String>,
    /// Only received at or after (µs).
    pub received_from_us: Option<i64>,
    /// Only received before (µs).
    pub received_before_us: Option<i64>,
}

impl DsarStore {
    /// The store in `db` (migrated), enqueuing access events in `outbox`.
    pub fn new(db: Db, outbox: SqlOutbox) -> Self {
        Self { db, outbox }
    }

    /// Records a new request with its subject hashes and first action.
    /// Idempotent by `key`.
    pub async fn create(
        &self,
        record: &pb::Request,
        subject_hashes: &[String],
        key: Option<&RequestKey>,
        changes: Changes,
        event: &AccessEvent,
        now_us: i64,
    ) -> Result<Done, ApiError> {
        let id = model::request_id_of(&record.name).to_string();
        let mut tx = self.db.begin_write().await?;
        if let Claim::Replay(earlier) =
            idempotency::claim(&mut tx, key, &record.name, now_us).await?
        {
            return self.replay(tx, event, earlier.resource).await;
        }
        let receive_us = record
            .receive_time
            .as_ref()
            .map(model::micros_of)
            .unwrap_or(now_us);
        sqlx::query(
            "INSERT INTO dsar_requests (id, type, state, record, receive_us, due_us, terminal, \
             version, create_us, update_us) VALUES ($1, $2, $3, $4, $5, 0, 0, 1, $6, $6)",
        )
        .bind(id.clone())
        .bind(i64::from(record.r#type))
        .bind(state_str(record.state()).to_string())
        .bind(model::bare(record).encode_to_vec())
        .bind(receive_us)
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        write_record(&mut tx, &id, record, now_us).await?;
        for h in subject_hashes {
            sqlx::query(
                "INSERT INTO dsar_request_subjects (request_id, subject_hash) VALUES ($1, $2) \
                 ON CONFLICT (request_id, subject_hash) DO NOTHING",
            )
            .bind(id.clone())
            .bind(h.clone())
            .execute(&mut *tx)
            .await?;
        }
        apply(&mut tx, &id, &changes, now_us).await?;
        enqueue_in(&mut tx, event).await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(Done::Applied)
    }

    async fn replay(
        &self,
        mut tx: custodia_core::storage::WriteTx,
        event: &AccessEvent,
        earlier: String,
    ) -> Result<Done, ApiError> {
        let mut event = event.clone();
        event.resource = earlier.clone();
        event.detail = serde_json::json!({ "replay_of": earlier }).to_string();
        enqueue_in(&mut tx, &event).await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(Done::Replayed(earlier))
    }

    /// Changes request `id`: `decide` sees the current request (mutable
    /// record) and returns further writes, or refuses. Idempotent by
    /// `key` (see [`idempotency`]). `event`, when given, is enqueued in the same
    /// transaction.
    pub async fn change<F>(
        &self,
        id: &str,
        key: Option<&RequestKey>,
        event: Option<&AccessEvent>,
        now_us: i64,
        decide: F,
    ) -> Result<Done, ApiError>
    where
        F: FnOnce(&mut Loaded) -> Result<Changes, ApiError>,
    {
        let mut tx = self.db.begin_write().await?;
        let name = model::request_name(id);
        // The key binds the body, which names the request: a replay is of this one.
        if let Claim::Replay(earlier) = idempotency::claim(&mut tx, key, &name, now_us).await? {
            let earlier = earlier.resource;
            return match event {
                Some(e) => self.replay(tx, e, earlier).await,
                None => Ok(Done::Replayed(earlier)),
            };
        }
        // Lock the row first (a write), so concurrent changes serialise.
        let touched = sqlx::query("UPDATE dsar_requests SET version = version + 1 WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if touched == 0 {
            return Err(ApiError::not_found("request", name));
        }
        let mut current = load(&mut tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found("request", name.clone()))?;
        let before = current.record.clone();
        let changes = decide(&mut current)?;
        if current.record != before {
            current.record.update_time = Some(model::timestamp(now_us));
        }
        write_record(&mut tx, id, &current.record, now_us).await?;
        apply(&mut tx, id, &changes, now_us).await?;
        if let Some(e) = event {
            enqueue_in(&mut tx, e).await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        Ok(Done::Applied)
    }

    /// Request `id`, if it exists.
    pub async fn get(&self, id: &str) -> anyhow::Result<Option<Loaded>> {
        // One snapshot: a request's state and the actions that led to it are written
        // together, so they must be read together.
        let mut tx = self.db.begin_read().await?;
        let loaded = load(&mut tx, id).await?;
        tx.rollback().await?;
        Ok(loaded)
    }

    /// Requests matching `filter`, soonest due first, after `after` (due µs,
    /// id), at most `limit`.
    pub async fn list(
        &self,
        filter: &RequestFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> anyhow::Result<Vec<Loaded>> {
        let mut p = Params::new();
        let mut clauses: Vec<String> = Vec::new();
        if !filter.states.is_empty() {
            let list: Vec<String> = filter
                .states
                .iter()
                .map(|s| p.text(state_str(*s)))
                .collect();
            clauses.push(format!("state IN ({})", list.join(", ")));
        }
        if let Some(t) = filter.kind {
            clauses.push(format!("type = {}", p.int(i64::from(t))));
        }
        if let Some(now) = filter.overdue_at_us {
            clauses.push(format!("terminal = 0 AND due_us < {}", p.int(now)));
        }
        if let Some(before) = filter.due_before_us {
            clauses.push(format!("due_us < {}", p.int(before)));
        }
        if let Some(from) = filter.received_from_us {
            clauses.push(format!("receive_us >= {}", p.int(from)));
        }
        if let Some(before) = filter.received_before_us {
            clauses.push(format!("receive_us < {}", p.int(before)));
        }
        if let Some(h) = &filter.subject_hash {
            clauses.push(format!(
                "id IN (SELECT request_id FROM dsar_request_subjects WHERE subject_hash = {})",
                p.text(h.clone())
            ));
        }
        if let Some((due, id)) = after {
            let (d1, d2) = (p.int(due), p.int(due));
            let id = p.text(id);
            clauses.push(format!("(due_us > {d1} OR (due_us = {d2} AND id > {id}))"));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT id FROM dsar_requests {where_clause} ORDER BY due_us, id LIMIT {}",
            p.int(limit as i64)
        );
        let q = p.bind(sqlx::query(AssertSqlSafe(sql)));
        let mut tx = self.db.begin_read().await?;
        let ids: Vec<String> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = load(&mut tx, &id).await? {
                out.push(r);
            }
        }
        tx.rollback().await?;
        Ok(out)
    }

    /// Tasks that should run now: pending, or failed with their retry due.
    pub async fn due_tasks(&self, now_us: i64, limit: usize) -> anyhow::Result<Vec<DueTask>> {
        let rows = sqlx::query(
            "SELECT t.request_id, t.source_id FROM dsar_tasks t \
             JOIN dsar_requests r ON r.id = t.request_id WHERE r.terminal = 0 AND \
             (t.state = 'PENDING' OR (t.state = 'FAILED' AND t.next_attempt_us <= $1)) \
             ORDER BY t.next_attempt_us, t.request_id, t.source_id LIMIT $2",
        )
        .bind(now_us)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueTask {
                    request_id: r.try_get(0)?,
                    source_id: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Puts tasks left RUNNING by a stopped process back to PENDING, so a
    /// restart asks those sources again (with the same idempotency key).
    pub async fn requeue_running(&self) -> anyhow::Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT DISTINCT request_id FROM dsar_tasks WHERE state = 'RUNNING'")
                .fetch_all(self.db.pool())
                .await?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Requests whose export is BUILDING (waiting for sources or the zip).
    pub async fn building_exports(&self) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query("SELECT request_id FROM dsar_exports WHERE state = 'BUILDING'")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Requests whose READY export expired at `now_us`.
    pub async fn expired_exports(&self, now_us: i64) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT request_id FROM dsar_exports WHERE state = 'READY' AND expire_us <= $1",
        )
        .bind(now_us)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    // ---- data sources -----------------------------------------------------

    /// Registers source `id`; ALREADY_EXISTS when taken. Idempotent by `key`.
    pub async fn create_source(
        &self,
        id: &str,
        source: &pb::DataSource,
        key: Option<&RequestKey>,
        event: &AccessEvent,
        now_us: i64,
    ) -> Result<Done, ApiError> {
        let name = model::source_name(id);
        let mut tx = self.db.begin_write().await?;
        if let Claim::Replay(earlier) = idempotency::claim(&mut tx, key, &name, now_us).await? {
            return self.replay(tx, event, earlier.resource).await;
        }
        let inserted = sqlx::query(
            "INSERT INTO dsar_sources (id, body, version, create_us, update_us) \
             VALUES ($1, $2, 1, $3, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(source.encode_to_vec())
        .bind(now_us)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(ApiError::AlreadyExists {
                resource: "data source",
                name,
            });
        }
        enqueue_in(&mut tx, event).await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(Done::Applied)
    }

    /// Changes source `id` with `decide`. Idempotent by `key`; `event`
    /// may be absent for the worker's capability refresh.
    pub async fn change_source<F>(
        &self,
        id: &str,
        key: Option<&RequestKey>,
        event: Option<&AccessEvent>,
        now_us: i64,
        decide: F,
    ) -> Result<Done, ApiError>
    where
        F: FnOnce(&mut pb::DataSource, i64) -> Result<(), ApiError>,
    {
        let name = model::source_name(id);
        let mut tx = self.db.begin_write().await?;
        if let Claim::Replay(earlier) = idempotency::claim(&mut tx, key, &name, now_us).await? {
            let earlier = earlier.resource;
            return match event {
                Some(e) => self.replay(tx, e, earlier).await,
                None => Ok(Done::Replayed(earlier)),
            };
        }
        let Some(row) = sqlx::query("SELECT body, version FROM dsar_sources WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(ApiError::not_found("data source", name));
        };
        let mut source: pb::DataSource = decode(&row.try_get::<Vec<u8>, _>(0)?)?;
        let version: i64 = row.try_get(1)?;
        decide(&mut source, version)?;
        sqlx::query(
            "UPDATE dsar_sources SET body = $2, version = version + 1, update_us = $3 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(source.encode_to_vec())
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        if let Some(e) = event {
            enqueue_in(&mut tx, e).await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        Ok(Done::Applied)
    }

    /// Source `id` with its version, create and update times (µs).
    pub async fn get_source(
        &self,
        id: &str,
    ) -> anyhow::Result<Option<(pb::DataSource, i64, i64, i64)>> {
        let row = sqlx::query(
            "SELECT body, version, create_us, update_us FROM dsar_sources WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            Ok((
                decode(&r.try_get::<Vec<u8>, _>(0)?)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
            ))
        })
        .transpose()
    }

    /// Every registered source (the table is small), by id.
    pub async fn list_sources(
        &self,
    ) -> anyhow::Result<Vec<(String, pb::DataSource, i64, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT id, body, version, create_us, update_us FROM dsar_sources ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    decode(&r.try_get::<Vec<u8>, _>(1)?)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }

    // ---- retention runs ---------------------------------------------------

    /// Records a new run. Idempotent by `key`.
    pub async fn create_run(
        &self,
        id: &str,
        run: &pb::RetentionRun,
        key: Option<&RequestKey>,
        event: &AccessEvent,
        now_us: i64,
    ) -> Result<Done, ApiError> {
        let mut tx = self.db.begin_write().await?;
        if let Claim::Replay(earlier) = idempotency::claim(&mut tx, key, &run.name, now_us).await? {
            return self.replay(tx, event, earlier.resource).await;
        }
        sqlx::query(
            "INSERT INTO dsar_retention_runs (id, start_us, state, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.to_string())
        .bind(now_us)
        .bind(format!("{:?}", run.state()))
        .bind(run.encode_to_vec())
        .execute(&mut *tx)
        .await?;
        enqueue_in(&mut tx, event).await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(Done::Applied)
    }

    /// Replaces run `id` (its results and final state) with its access events.
    pub async fn finish_run(
        &self,
        id: &str,
        run: &pb::RetentionRun,
        events: &[AccessEvent],
    ) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("UPDATE dsar_retention_runs SET state = $2, body = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(format!("{:?}", run.state()))
            .bind(run.encode_to_vec())
            .execute(&mut *tx)
            .await?;
        for e in events {
            enqueue_in(&mut tx, e).await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// Run `id`, if any.
    pub async fn get_run(&self, id: &str) -> anyhow::Result<Option<pb::RetentionRun>> {
        let row = sqlx::query("SELECT body FROM dsar_retention_runs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| decode(&r.try_get::<Vec<u8>, _>(0)?))
            .transpose()
    }

    /// Runs newest first, after `after` (start µs, id), at most `limit`.
    pub async fn list_runs(
        &self,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> anyhow::Result<Vec<(i64, String, pb::RetentionRun)>> {
        let rows = match after {
            None => {
                sqlx::query(
                    "SELECT start_us, id, body FROM dsar_retention_runs \
                     ORDER BY start_us DESC, id DESC LIMIT $1",
                )
                .bind(limit as i64)
                .fetch_all(self.db.pool())
                .await?
            }
            Some((start, id)) => {
                sqlx::query(
                    "SELECT start_us, id, body FROM dsar_retention_runs WHERE start_us < $1 \
                     OR (start_us = $2 AND id < $3) ORDER BY start_us DESC, id DESC LIMIT $4",
                )
                .bind(start)
                .bind(start)
                .bind(id)
                .bind(limit as i64)
                .fetch_all(self.db.pool())
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    decode(&r.try_get::<Vec<u8>, _>(2)?)?,
                ))
            })
            .collect()
    }
}
