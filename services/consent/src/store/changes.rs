//! The change log: events in change-number order, for streams, trails and the
//! replicas' cache followers.

use custodia_core::{ApiError, storage::Params};
use custodia_proto::consent::v1::ConsentEvent;
use sqlx::{Row, any::AnyRow};

use super::ConsentStore;
use super::body;

impl ConsentStore {
    /// Changes after `after_seq` (all subjects), optionally for some purposes only.
    pub async fn changes(
        &self,
        after_seq: i64,
        purpose_ids: &[String],
        limit: usize,
    ) -> Result<Vec<(i64, i64, Option<i64>, ConsentEvent)>, ApiError> {
        in_chunks(
            purpose_ids,
            limit,
            |chunk| self.changes_of(after_seq, chunk, limit),
            |c| c.0,
        )
        .await
    }

    /// [`Self::changes`] in one statement.
    async fn changes_of(
        &self,
        after_seq: i64,
        purpose_ids: &[String],
        limit: usize,
    ) -> Result<Vec<(i64, i64, Option<i64>, ConsentEvent)>, ApiError> {
        let mut p = Params::new();
        let mut clauses = vec![format!("seq > {}", p.int(after_seq))];
        if !purpose_ids.is_empty() {
            let ids: Vec<String> = purpose_ids.iter().map(|id| p.text(id.clone())).collect();
            clauses.push(format!("purpose_id IN ({})", ids.join(", ")));
        }
        let rows = self
            .events_where("seq, decision_us, body", &clauses, p, limit)
            .await?;
        rows.iter()
            .map(|r| {
                let event: ConsentEvent = body(r, 2)?;
                let expire_us = event
                    .expire_time
                    .as_ref()
                    .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
                Ok((r.try_get(0)?, r.try_get(1)?, expire_us, event))
            })
            .collect()
    }

    /// The `columns` of the first `limit` events (by change number) matching
    /// every one of `clauses`, whose parameters `p` holds.
    async fn events_where(
        &self,
        columns: &str,
        clauses: &[String],
        mut p: Params,
        limit: usize,
    ) -> Result<Vec<AnyRow>, ApiError> {
        let sql = format!(
            "SELECT {columns} FROM consent_events WHERE {} ORDER BY seq LIMIT {}",
            clauses.join(" AND "),
            p.int(limit as i64)
        );
        self.rows(p, sql).await
    }

    /// The first change recorded at or after `record_us`.
    pub async fn first_change_at_or_after(&self, record_us: i64) -> Result<Option<i64>, ApiError> {
        let row = sqlx::query("SELECT MIN(seq) FROM consent_events WHERE record_us >= $1")
            .bind(record_us)
            .fetch_one(self.db().pool())
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// The newest change number (0 when there is none).
    pub async fn last_change(&self) -> Result<i64, ApiError> {
        let next: i64 = sqlx::query("SELECT next FROM consent_change_seq WHERE id = 1")
            .fetch_one(self.db().pool())
            .await?
            .try_get(0)?;
        Ok(next - 1)
    }

    /// Subjects of the events after `after_seq` (at most `limit`), with the last seq
    /// seen, and the erasure epoch: what a replica needs to drop stale check states.
    pub async fn changes_since(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<(Vec<String>, i64, i64), ApiError> {
        let rows = sqlx::query(
            "SELECT seq, subject_hash FROM consent_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        let mut last = after_seq;
        let mut subjects = Vec::with_capacity(rows.len());
        for r in rows {
            last = r.try_get(0)?;
            subjects.push(r.try_get(1)?);
        }
        Ok((subjects, last, self.erasure_epoch().await?))
    }

    /// How many erasures have been made (moves with each).
    pub async fn erasure_epoch(&self) -> Result<i64, ApiError> {
        let row = sqlx::query("SELECT erasures FROM consent_cache_epoch WHERE id = 1")
            .fetch_one(self.db().pool())
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The full trail of the subjects (oldest first), after `after_seq`.
    pub async fn events(
        &self,
        subject_hashes: &[String],
        purpose_id: Option<&str>,
        after_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, ConsentEvent)>, ApiError> {
        in_chunks(
            subject_hashes,
            limit,
            |chunk| self.events_of(chunk, purpose_id, after_seq, limit),
            |e| e.0,
        )
        .await
    }

    /// [`Self::events`] in one statement.
    async fn events_of(
        &self,
        subject_hashes: &[String],
        purpose_id: Option<&str>,
        after_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, ConsentEvent)>, ApiError> {
        let mut p = Params::new();
        let hashes: Vec<String> = subject_hashes.iter().map(|h| p.text(h.clone())).collect();
        let mut clauses = vec![format!("subject_hash IN ({})", hashes.join(", "))];
        if let Some(purpose) = purpose_id {
            clauses.push(format!("purpose_id = {}", p.text(purpose)));
        }
        if let Some(after) = after_seq {
            clauses.push(format!("seq > {}", p.int(after)));
        }
        let rows = self.events_where("seq, body", &clauses, p, limit).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, body(r, 1)?)))
            .collect()
    }
}

/// Most values of a request list (subjects' hashes, purposes) bound in one
/// statement: SQLite refuses more than 32,766 parameters, PostgreSQL 65,535.
/// The API's own maxima keep lists under it; a longer list is read in chunks.
const VALUES_PER_QUERY: usize = 1000;

/// `read` of `list`, whose statement binds every value: in one statement, or,
/// for a list longer than [`VALUES_PER_QUERY`], one per chunk, keeping the
/// first `limit` rows by change number (`seq`) of them all.
async fn in_chunks<'a, T, Fut>(
    list: &'a [String],
    limit: usize,
    read: impl Fn(&'a [String]) -> Fut,
    seq: impl Fn(&T) -> i64,
) -> Result<Vec<T>, ApiError>
where
    Fut: Future<Output = Result<Vec<T>, ApiError>>,
{
    if list.len() <= VALUES_PER_QUERY {
        return read(list).await;
    }
    let mut out = Vec::new();
    for chunk in list.chunks(VALUES_PER_QUERY) {
        out.extend(read(chunk).await?);
    }
    Ok(first_by_seq(out, seq, limit))
}

/// The first `limit` rows by change number of the rows that chunks of one list
/// found (each chunk's own first `limit`): a row found by two chunks (a value
/// given twice) counts once.
fn first_by_seq<T>(mut rows: Vec<T>, seq: impl Fn(&T) -> i64, limit: usize) -> Vec<T> {
    rows.sort_unstable_by_key(|r| seq(r));
    rows.dedup_by_key(|r| seq(r));
    rows.truncate(limit);
    rows
}
