//! The portable write path.

use std::collections::HashMap;

use custodia_core::{
    ApiError,
    idempotency::RequestKey,
    outbox::{AccessEvent, enqueue_all_script},
    storage::{Backend, Script, ScriptTx, placeholders},
};
use custodia_proto::consent::v1::ConsentEvent;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::body;
use super::group_commit::{
    Earlier, KeyOf, MAX_STATEMENT_PARAMS, ROWS_PER_STATEMENT, Receipt, WriteJob, event_id,
    event_ids, last_of_each, numbered,
};

/// The statements writing the records, receipts, idempotency keys and access events
/// of `jobs` (none of them a replay): a fixed number per group.
pub(super) fn write_script(
    backend: Backend,
    jobs: &[&WriteJob],
    access: &[AccessEvent],
) -> Result<Script, ApiError> {
    let total: usize = jobs.iter().map(|j| j.records.len()).sum();
    // Parameters: 15 per record (event and state), at most 11 more per job.
    let mut script = if total * 15 + jobs.len() * 11 <= MAX_STATEMENT_PARAMS {
        Script::one_statement(backend)
    } else {
        Script::new(backend)
    };
    if total > 0 {
        let events = numbered(jobs);
        // Gap-free, commit-ordered change numbers (see the migration), in job order:
        // the counter moves first (taking its row lock on PostgreSQL) and event `i`
        // takes the number it moved from plus `i`. As one PostgreSQL statement, the
        // events read that number from the counter's RETURNING (every part of the
        // statement sees the snapshot before the move); as separate statements,
        // from the counter itself (a transaction sees its own writes).
        let (first, from) = if script.is_one_statement() {
            script.push_named(
                "seq",
                &format!(
                    "UPDATE consent_change_seq SET next = next + {total} WHERE id = 1 \
                     RETURNING next - {total} AS first"
                ),
                |_| (),
            );
            ("seq.first".to_string(), "FROM seq, (")
        } else {
            script.push(
                &format!("UPDATE consent_change_seq SET next = next + {total} WHERE id = 1"),
                |_| (),
            );
            (
                format!("(SELECT next FROM consent_change_seq WHERE id = 1) - {total}"),
                "FROM (",
            )
        };
        script.insert_rows(
            (
                &format!(
                    "INSERT INTO consent_events (seq, event_id, subject_hash, purpose_id, state, \
                     body, decision_us, record_us) \
                     SELECT {first} + v.column1, v.column2, v.column3, v.column4, \
                     v.column5, v.column6, v.column7, v.column8 {from}"
                ),
                ") AS v",
            ),
            8,
            ROWS_PER_STATEMENT,
            &events,
            |b, (i, r, body, now_us)| {
                b.bind(*i)
                    .bind(event_id(&r.event).to_string())
                    .bind(r.subject_hash.clone())
                    .bind(r.purpose_id.clone())
                    .bind(i64::from(r.event.state))
                    .bind(body.clone())
                    .bind(r.decision_us)
                    .bind(*now_us);
            },
        );
        let states: Vec<_> = last_of_each(&events)
            .into_iter()
            .map(|i| &events[i])
            .collect();
        // PostgreSQL's table still has the body column (see `PG_WRITE`).
        let with_body = backend == Backend::Postgres;
        let (columns, set_body) = if with_body {
            ("expire_us, event_id, body)", ", body = excluded.body")
        } else {
            ("expire_us, event_id)", "")
        };
        script.insert_rows(
            (
                &format!(
                    "INSERT INTO subject_consents (subject_hash, purpose_id, state, decision_us, \
                     {columns}"
                ),
                &format!(
                    "ON CONFLICT (subject_hash, purpose_id) DO UPDATE SET state = excluded.state, \
                     decision_us = excluded.decision_us, expire_us = excluded.expire_us, \
                     event_id = excluded.event_id{set_body}"
                ),
            ),
            6 + usize::from(with_body),
            ROWS_PER_STATEMENT,
            &states,
            |b, (_, r, body, _)| {
                b.bind(r.subject_hash.clone())
                    .bind(r.purpose_id.clone())
                    .bind(i64::from(r.event.state))
                    .bind(r.decision_us)
                    .bind(r.expire_us)
                    .bind(event_id(&r.event).to_string());
                if with_body {
                    b.bind(body.clone());
                }
            },
        );
    }
    let receipts: Vec<&Receipt> = jobs.iter().filter_map(|j| j.receipt.as_ref()).collect();
    script.insert_rows(
        ("INSERT INTO receipts (id, subject_hash, body)", ""),
        3,
        ROWS_PER_STATEMENT,
        &receipts,
        |b, r| {
            b.bind(r.id.clone())
                .bind(r.subject_hash.clone())
                .bind(r.body.clone());
        },
    );
    let keys: Vec<(&RequestKey, &WriteJob)> = jobs
        .iter()
        .filter_map(|j| j.key.as_ref().map(|k| (k, *j)))
        .collect();
    script.insert_rows(
        (
            "INSERT INTO request_keys (principal, method, request_id, fingerprint, resource, \
             create_us)",
            "",
        ),
        6,
        ROWS_PER_STATEMENT,
        &keys,
        |b, (k, j)| {
            b.bind(k.principal().to_string())
                .bind(k.method().to_string())
                .bind(k.request_id().to_string())
                .bind(k.fingerprint().to_string())
                .bind(event_ids(j))
                .bind(j.now_us);
        },
    );
    enqueue_all_script(&mut script, access).map_err(ApiError::internal)?;
    Ok(script)
}

/// What earlier calls with the keys of `jobs` left, by key.
pub(super) async fn replayed_all(
    tx: &mut ScriptTx,
    backend: Backend,
    jobs: &[WriteJob],
) -> Result<HashMap<KeyOf, Earlier>, ApiError> {
    let keys: Vec<&RequestKey> = jobs.iter().filter_map(|j| j.key.as_ref()).collect();
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let distinct = |f: fn(&RequestKey) -> &str| {
        let mut v: Vec<&str> = keys.iter().map(|k| f(k)).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let (principals, methods, request_ids) = (
        distinct(RequestKey::principal),
        distinct(RequestKey::method),
        distinct(RequestKey::request_id),
    );
    let mut script = Script::new(backend);
    for chunk in request_ids.chunks(ROWS_PER_STATEMENT * 2) {
        // Every key column constrained, so the primary key index serves the lookup.
        let sql = format!(
            "SELECT principal, method, request_id, fingerprint, resource FROM request_keys \
             WHERE principal IN ({}) AND method IN ({}) AND request_id IN ({})",
            placeholders(backend, 1, principals.len()),
            placeholders(backend, principals.len() + 1, methods.len()),
            placeholders(backend, principals.len() + methods.len() + 1, chunk.len()),
        );
        script.push(&sql, |b| {
            for p in principals.iter().chain(&methods).chain(chunk) {
                b.bind(p.to_string());
            }
        });
    }
    for row in tx.fetch_all(script).await? {
        found.insert(
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            Earlier {
                fingerprint: row.try_get(3)?,
                resource: row.try_get(4)?,
            },
        );
    }
    Ok(found)
}

/// Stored events by id (erased ones are absent).
pub(super) async fn events_by_id(
    conn: &mut AnyConnection,
    backend: Backend,
    ids: &[&str],
) -> Result<HashMap<String, ConsentEvent>, ApiError> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(ROWS_PER_STATEMENT * 2) {
        let sql = format!(
            "SELECT event_id, body FROM consent_events WHERE event_id IN ({})",
            placeholders(backend, 1, chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id.to_string());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let event: ConsentEvent = body(&row, 1)?;
            out.insert(row.try_get(0)?, event);
        }
    }
    Ok(out)
}
