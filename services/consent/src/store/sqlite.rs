//! SQLite's own paths.

use custodia_core::{
    ApiError,
    storage::{Db, placeholders},
};
use custodia_proto::consent::v1::ConsentState;
use sqlx::AssertSqlSafe;

use super::{DIRECT_MARKETING, StateRowOf};

/// Rows aggregated by SQLite's `json_group_array(json_array(...))`.
fn rows_of_json(json: &str) -> Result<Vec<StateRowOf>, ApiError> {
    let rows: Vec<(String, String, i32, i64, Option<i64>)> =
        serde_json::from_str(json).map_err(ApiError::internal)?;
    Ok(rows
        .into_iter()
        .map(|(h, p, s, d, e)| (h, p, ConsentState::try_from(s).unwrap_or_default(), d, e))
        .collect())
}

/// [`super::states`]'s rows of `chunk` for `purpose_id` and for direct
/// marketing, or for every purpose when `purpose_id` is `None`: the chunk's rows
/// as one JSON array in one row. sqlx hands every row from SQLite's worker thread
/// to the async task on its own (a thread wake-up each): a cold 10,000-subject
/// batch spent more on that than on its lookups.
pub(super) async fn state_rows(
    db: &Db,
    chunk: Vec<String>,
    purpose_id: Option<String>,
) -> Result<Vec<StateRowOf>, ApiError> {
    let backend = db.backend();
    let (purposes, first) = match &purpose_id {
        Some(_) => (
            format!("purpose_id IN ({}) AND ", placeholders(backend, 1, 2)),
            3,
        ),
        None => (String::new(), 1),
    };
    let sql = format!(
        "SELECT json_group_array(json_array(subject_hash, purpose_id, state, decision_us, expire_us)) \
         FROM subject_consents WHERE {purposes}subject_hash IN ({})",
        placeholders(backend, first, chunk.len()),
    );
    let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
    if let Some(pid) = purpose_id {
        q = q.bind(pid).bind(DIRECT_MARKETING.to_string());
    }
    for h in chunk {
        q = q.bind(h);
    }
    rows_of_json(&q.fetch_one(db.pool()).await?)
}

/// Up to `limit` state rows after (`hash`, `pid`) in key order, and the last key
/// of the page (see [`super::ConsentStore::state_rows_after`]).
pub(super) async fn state_rows_after(
    db: &Db,
    hash: String,
    pid: String,
    limit: i64,
) -> Result<(Vec<StateRowOf>, Option<(String, String)>), ApiError> {
    let json: String = sqlx::query_scalar(
        "SELECT json_group_array(json_array(subject_hash, purpose_id, state, decision_us, expire_us)) \
         FROM (SELECT * FROM subject_consents WHERE (subject_hash, purpose_id) > ($1, $2) \
         ORDER BY subject_hash, purpose_id LIMIT $3)",
    )
    .bind(hash)
    .bind(pid)
    .bind(limit)
    .fetch_one(db.pool())
    .await?;
    let rows = rows_of_json(&json)?;
    // SQLite compares text bytewise (BINARY), as Rust does; the aggregate's
    // order is not guaranteed, the maximum is.
    let last = rows
        .iter()
        .map(|r| (&r.0, &r.1))
        .max()
        .map(|(h, p)| (h.clone(), p.clone()));
    Ok((rows, last))
}
