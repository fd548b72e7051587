//! PostgreSQL's native paths.

use custodia_core::{
    ApiError,
    idempotency::RequestKey,
    outbox::{AccessEvent, outbox_rows},
};
use custodia_proto::consent::v1::ConsentState;
use sqlx::Row;

use super::{
    DIRECT_MARKETING, StateRowOf,
    group_commit::{Receipt, WriteJob, event_id, event_ids, last_of_each, numbered},
};

/// [`write_script`] as one statement of constant text binding one array per column
/// (see [`write_postgres`]). `subject_consents.body`, a copy of the event's body
/// that nothing reads any more (the evidence is read from `consent_events`; the
/// SQLite table has lost the column), is still written on PostgreSQL: pods of the
/// previous release read it during a rolling upgrade (deploy/README.md, "Upgrade").
/// The next release stops writing it (and lets it be NULL); the one after drops it.
const PG_WRITE: &str = "WITH seq AS (\
         UPDATE consent_change_seq SET next = next + $1::bigint WHERE id = 1 \
         RETURNING next - $1::bigint AS first), \
     ev AS (INSERT INTO consent_events (seq, event_id, subject_hash, purpose_id, state, body, \
         decision_us, record_us) \
         SELECT seq.first + t.i, t.e, t.s, t.p, t.st, t.b, t.d, t.r FROM seq, \
         UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bytea[], \
         $8::bigint[], $9::bigint[]) AS t (i, e, s, p, st, b, d, r)), \
     st AS (INSERT INTO subject_consents (subject_hash, purpose_id, state, decision_us, \
         expire_us, event_id, body) \
         SELECT * FROM UNNEST($10::text[], $11::text[], $12::bigint[], $13::bigint[], \
         $14::bigint[], $15::text[], $16::bytea[]) \
         ON CONFLICT (subject_hash, purpose_id) DO UPDATE SET state = excluded.state, \
         decision_us = excluded.decision_us, expire_us = excluded.expire_us, \
         event_id = excluded.event_id, body = excluded.body), \
     rc AS (INSERT INTO receipts (id, subject_hash, body) \
         SELECT * FROM UNNEST($17::text[], $18::text[], $19::bytea[])), \
     ik AS (INSERT INTO request_keys (principal, method, request_id, fingerprint, resource, \
         create_us) SELECT * FROM UNNEST($20::text[], $21::text[], $22::text[], $23::text[], \
         $24::text[], $25::bigint[])), \
     ob AS (INSERT INTO access_event_outbox (event_id, payload, enqueued_us, event_count) \
         SELECT t.i, t.p, $26::bigint, t.c FROM UNNEST($27::text[], $28::text[], $29::bigint[]) \
         AS t (i, p, c) ON CONFLICT (event_id) DO NOTHING) \
     SELECT 1";

/// Writes `jobs` (none of them a replay) as [`write_script`] does, on PostgreSQL's
/// native connection: one statement of constant text (prepared and planned once
/// per connection, not once per group size) in a transaction of its own (no
/// `BEGIN` or `COMMIT` round trip). The counter's row lock, which orders the
/// groups, is held from the moment the statement takes it to its commit only
/// (PostgreSQL runs the unreferenced data-modifying `WITH` queries too, in an
/// order of its own; the row locks of the states written are held to the commit,
/// so change numbers stay in step with the states). The states and idempotency
/// keys go in sorted by key: PostgreSQL locks them before the counter (seen), in
/// the order given, so two replicas' groups writing the same keys in different
/// orders would each hold a key the other waits for: a deadlock, which PostgreSQL
/// finds after `deadlock_timeout` (1 s) and ends by failing one (whose group is
/// then written again, counter first). That remains possible only against such a
/// second attempt, which takes the counter before the keys.
pub(super) async fn write_postgres(
    pool: &sqlx::PgPool,
    jobs: &[&WriteJob],
    access: &[AccessEvent],
) -> Result<(), ApiError> {
    let events = numbered(jobs);
    let mut states = last_of_each(&events);
    states.sort_unstable_by_key(|i| (&events[*i].1.subject_hash, &events[*i].1.purpose_id));
    let receipts: Vec<&Receipt> = jobs.iter().filter_map(|j| j.receipt.as_ref()).collect();
    let mut keys: Vec<(&RequestKey, &WriteJob)> = jobs
        .iter()
        .filter_map(|j| j.key.as_ref().map(|k| (k, *j)))
        .collect();
    keys.sort_unstable_by_key(|(k, _)| (k.principal(), k.method(), k.request_id()));
    let outbox = outbox_rows(access).map_err(ApiError::internal)?;
    let state_of = |i: &usize| &events[*i];
    sqlx::query(PG_WRITE)
        .bind(events.len() as i64)
        .bind(events.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| event_id(&e.1.event))
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.1.subject_hash.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.1.purpose_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| i64::from(e.1.event.state))
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.2.as_slice()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.1.decision_us).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.3).collect::<Vec<_>>())
        .bind(
            states
                .iter()
                .map(|i| state_of(i).1.subject_hash.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            states
                .iter()
                .map(|i| state_of(i).1.purpose_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            states
                .iter()
                .map(|i| i64::from(state_of(i).1.event.state))
                .collect::<Vec<_>>(),
        )
        .bind(
            states
                .iter()
                .map(|i| state_of(i).1.decision_us)
                .collect::<Vec<_>>(),
        )
        .bind(
            states
                .iter()
                .map(|i| state_of(i).1.expire_us)
                .collect::<Vec<_>>(),
        )
        .bind(
            states
                .iter()
                .map(|i| event_id(&state_of(i).1.event))
                .collect::<Vec<_>>(),
        )
        .bind(
            states
                .iter()
                .map(|i| state_of(i).2.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(receipts.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(
            receipts
                .iter()
                .map(|r| r.subject_hash.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            receipts
                .iter()
                .map(|r| r.body.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|(k, _)| k.principal()).collect::<Vec<_>>())
        .bind(keys.iter().map(|(k, _)| k.method()).collect::<Vec<_>>())
        .bind(keys.iter().map(|(k, _)| k.request_id()).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|(k, _)| k.fingerprint())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|(_, j)| event_ids(j)).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, j)| j.now_us).collect::<Vec<_>>())
        .bind(custodia_core::storage::to_micros(chrono::Utc::now()))
        .bind(outbox.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
        .bind(outbox.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(outbox.iter().map(|r| r.2).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    Ok(())
}

/// A row of PostgreSQL's query of [`state_rows`].
fn state_row_of(r: &sqlx::postgres::PgRow) -> Result<StateRowOf, ApiError> {
    let state = ConsentState::try_from(r.try_get::<i64, _>(2)? as i32).unwrap_or_default();
    Ok((
        r.try_get(0)?,
        r.try_get(1)?,
        state,
        r.try_get(3)?,
        r.try_get(4)?,
    ))
}

/// [`super::states`]'s rows of `chunk` for `purpose_id` and for direct
/// marketing, or for every purpose when `purpose_id` is `None`: one statement of
/// constant text for any chunk size (prepared once per connection), the subjects
/// bound as one array.
pub(super) async fn state_rows(
    pool: &sqlx::PgPool,
    chunk: Vec<String>,
    purpose_id: Option<String>,
) -> Result<Vec<StateRowOf>, ApiError> {
    let rows = match &purpose_id {
        Some(pid) => {
            sqlx::query(
                "SELECT subject_hash, purpose_id, state, decision_us, expire_us \
                 FROM subject_consents \
                 WHERE purpose_id = ANY($1::text[]) AND subject_hash = ANY($2::text[])",
            )
            .bind([pid.as_str(), DIRECT_MARKETING])
            .bind(&chunk)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT subject_hash, purpose_id, state, decision_us, expire_us \
                 FROM subject_consents WHERE subject_hash = ANY($1::text[])",
            )
            .bind(&chunk)
            .fetch_all(pool)
            .await?
        }
    };
    rows.iter().map(state_row_of).collect()
}

/// Up to `limit` state rows after (`hash`, `pid`) in key order, and the last key
/// of the page (see [`super::ConsentStore::state_rows_after`]).
pub(super) async fn state_rows_after(
    pool: &sqlx::PgPool,
    hash: String,
    pid: String,
    limit: i64,
) -> Result<(Vec<StateRowOf>, Option<(String, String)>), ApiError> {
    let rows = sqlx::query(
        "SELECT subject_hash, purpose_id, state, decision_us, expire_us FROM subject_consents \
         WHERE (subject_hash, purpose_id) > ($1, $2) \
         ORDER BY subject_hash, purpose_id LIMIT $3",
    )
    .bind(hash)
    .bind(pid)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(state_row_of)
    .collect::<Result<Vec<_>, ApiError>>()?;
    // Rows arrive in the ORDER BY of the key's collation.
    let last = rows.last().map(|r| (r.0.clone(), r.1.clone()));
    Ok((rows, last))
}
