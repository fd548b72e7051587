//! Requests and what is kept with them: the record row, the append-only
//! actions and recipient notifications, the source tasks and the export.

use custodia_core::{
    ApiError,
    idempotency::RequestKey,
    outbox::AccessEvent,
    proto_time::{micros_of, timestamp_micros},
    storage::Params,
};
use custodia_proto::dsar::v1 as pb;
use prost::Message;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{
    Changes, Done, DsarStore, DueTask, ExportRow, Loaded, RequestFilter, decode, export_state_str,
    state_str, task_state_str,
};
use crate::model;

async fn load(conn: &mut AnyConnection, id: &str) -> Result<Option<Loaded>, ApiError> {
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
    out.actions = bodies(
        conn,
        "SELECT body FROM dsar_actions WHERE request_id = $1 ORDER BY seq",
        id,
    )
    .await?;
    out.notifications = bodies(
        conn,
        "SELECT body FROM dsar_notifications WHERE request_id = $1 ORDER BY seq",
        id,
    )
    .await?;
    out.tasks = bodies(
        conn,
        "SELECT body FROM dsar_tasks WHERE request_id = $1 ORDER BY source_id",
        id,
    )
    .await?;
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

/// The bodies `sql` selects for request `id`, decoded.
async fn bodies<M: Message + Default>(
    conn: &mut AnyConnection,
    sql: &'static str,
    id: &str,
) -> Result<Vec<M>, ApiError> {
    sqlx::query(sql)
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| decode(&r.try_get::<Vec<u8>, _>(0)?))
        .collect()
}

async fn write_record(
    conn: &mut AnyConnection,
    id: &str,
    record: &pb::Request,
    now_us: i64,
) -> Result<(), ApiError> {
    let due_us = record.due_time.as_ref().map(micros_of).unwrap_or_default();
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

/// Appends `rows` (body, create µs when the table keeps it) to an
/// append-only table of request `id`, after its last `seq`.
async fn append(
    conn: &mut AnyConnection,
    last_seq: &'static str,
    insert: &'static str,
    id: &str,
    rows: Vec<(Vec<u8>, Option<i64>)>,
) -> Result<(), ApiError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut seq: i64 = sqlx::query(last_seq)
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    for (body, create_us) in rows {
        seq += 1;
        let mut q = sqlx::query(insert)
            .bind(id.to_string())
            .bind(seq)
            .bind(body);
        if let Some(us) = create_us {
            q = q.bind(us);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn apply(
    conn: &mut AnyConnection,
    id: &str,
    changes: &Changes,
    now_us: i64,
) -> Result<(), ApiError> {
    append(
        conn,
        "SELECT COALESCE(MAX(seq), 0) FROM dsar_actions WHERE request_id = $1",
        "INSERT INTO dsar_actions (request_id, seq, body, create_us) VALUES ($1, $2, $3, $4)",
        id,
        changes
            .actions
            .iter()
            .map(|a| (a.encode_to_vec(), Some(now_us)))
            .collect(),
    )
    .await?;
    append(
        conn,
        "SELECT COALESCE(MAX(seq), 0) FROM dsar_notifications WHERE request_id = $1",
        "INSERT INTO dsar_notifications (request_id, seq, body) VALUES ($1, $2, $3)",
        id,
        changes
            .notifications
            .iter()
            .map(|n| (n.encode_to_vec(), None))
            .collect(),
    )
    .await?;
    for t in &changes.tasks {
        let source_id = model::source_id_of(&t.data_source).to_string();
        let next_us = t
            .next_attempt_time
            .as_ref()
            .map(micros_of)
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
        let expire_us = e.package.expire_time.as_ref().map(micros_of);
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
    Ok(())
}

/// The access events a change enqueues: its own, then the caller's.
fn events_of<'a>(changes: &'a Changes, event: Option<&'a AccessEvent>) -> Vec<&'a AccessEvent> {
    changes.events.iter().chain(event).collect()
}

/// The ids of the rows `sql` selects (one text column).
async fn ids(db: &custodia_core::storage::Db, sql: &'static str) -> Result<Vec<String>, ApiError> {
    let rows = sqlx::query(sql).fetch_all(db.pool()).await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

impl DsarStore {
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
        let mut w = match self.begin(key, &record.name, Some(event), now_us).await? {
            Ok(w) => w,
            Err(done) => return Ok(done),
        };
        let receive_us = record
            .receive_time
            .as_ref()
            .map(micros_of)
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
        .execute(&mut *w)
        .await?;
        write_record(&mut w, &id, record, now_us).await?;
        for h in subject_hashes {
            sqlx::query(
                "INSERT INTO dsar_request_subjects (request_id, subject_hash) VALUES ($1, $2) \
                 ON CONFLICT (request_id, subject_hash) DO NOTHING",
            )
            .bind(id.clone())
            .bind(h.clone())
            .execute(&mut *w)
            .await?;
        }
        apply(&mut w, &id, &changes, now_us).await?;
        w.commit(&events_of(&changes, Some(event))).await?;
        Ok(Done::Applied)
    }

    /// Changes request `id`: `decide` sees the current request (mutable
    /// record) and returns further writes, or refuses. Idempotent by
    /// `key` (see [`custodia_core::idempotency`]). `event`, when given, is
    /// enqueued in the same transaction.
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
        let name = model::request_name(id);
        // The key binds the body, which names the request: a replay is of this one.
        let mut w = match self.begin(key, &name, event, now_us).await? {
            Ok(w) => w,
            Err(done) => return Ok(done),
        };
        // Lock the row first (a write), so concurrent changes serialise.
        let touched = sqlx::query("UPDATE dsar_requests SET version = version + 1 WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *w)
            .await?
            .rows_affected();
        if touched == 0 {
            return Err(ApiError::not_found("request", name));
        }
        let mut current = load(&mut w, id)
            .await?
            .ok_or_else(|| ApiError::not_found("request", name.clone()))?;
        let before = current.record.clone();
        let changes = decide(&mut current)?;
        if current.record != before {
            current.record.update_time = Some(timestamp_micros(now_us));
        }
        write_record(&mut w, id, &current.record, now_us).await?;
        apply(&mut w, id, &changes, now_us).await?;
        w.commit(&events_of(&changes, event)).await?;
        Ok(Done::Applied)
    }

    /// Request `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Loaded>, ApiError> {
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
    ) -> Result<Vec<Loaded>, ApiError> {
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
    pub async fn due_tasks(&self, now_us: i64, limit: usize) -> Result<Vec<DueTask>, ApiError> {
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
    pub async fn requeue_running(&self) -> Result<Vec<String>, ApiError> {
        ids(
            &self.db,
            "SELECT DISTINCT request_id FROM dsar_tasks WHERE state = 'RUNNING'",
        )
        .await
    }

    /// Requests whose export is BUILDING (waiting for sources or the zip).
    pub async fn building_exports(&self) -> Result<Vec<String>, ApiError> {
        ids(
            &self.db,
            "SELECT request_id FROM dsar_exports WHERE state = 'BUILDING'",
        )
        .await
    }

    /// Requests whose READY export expired at `now_us`.
    pub async fn expired_exports(&self, now_us: i64) -> Result<Vec<String>, ApiError> {
        let rows = sqlx::query(
            "SELECT request_id FROM dsar_exports WHERE state = 'READY' AND expire_us <= $1",
        )
        .bind(now_us)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }
}

impl DsarStore {
    /// Retention of closed requests: every request in a terminal state
    /// last changed before `cutoff_us` is deleted with its subjects, actions,
    /// notifications, tasks and export row (the export file is removed too).
    /// Returns how many were due; with `dry_run`, only counts.
    pub async fn purge_closed(&self, cutoff_us: i64, dry_run: bool) -> Result<i64, ApiError> {
        let due = sqlx::query("SELECT id FROM dsar_requests WHERE terminal = 1 AND update_us < $1")
            .bind(cutoff_us)
            .fetch_all(self.db.pool())
            .await?;
        if dry_run || due.is_empty() {
            return Ok(due.len() as i64);
        }
        let mut files = Vec::new();
        let mut tx = self.db.begin_write().await?;
        for row in &due {
            let id: String = row.try_get(0)?;
            if let Some(export) = sqlx::query("SELECT path FROM dsar_exports WHERE request_id = $1")
                .bind(id.clone())
                .fetch_optional(&mut *tx)
                .await?
            {
                let path: String = export.try_get(0)?;
                if !path.is_empty() {
                    files.push(path);
                }
            }
            for table in [
                "dsar_request_subjects",
                "dsar_actions",
                "dsar_notifications",
                "dsar_tasks",
                "dsar_exports",
            ] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE request_id = $1"
                )))
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM dsar_requests WHERE id = $1 AND terminal = 1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        for f in files {
            let _ = tokio::fs::remove_file(f).await;
        }
        self.db.scrub_log().await;
        Ok(due.len() as i64)
    }
}
