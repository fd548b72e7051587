//! Current states of subjects: what checks, the state index and the subject
//! views read.

use std::collections::HashMap;

use custodia_core::{
    ApiError,
    storage::{Db, NATIVE_PG_CONNECTIONS, Params},
};
use custodia_proto::consent::v1::{ConsentEvent, ConsentState};
use sqlx::Row;

use super::body;
use super::{ConsentStore, DIRECT_MARKETING, postgres, sqlite};
use crate::{cache::CachedState, decision::StateRow};

impl ConsentStore {
    /// Current state rows (as stored events) of the subjects, by purpose.
    pub async fn subject_states(
        &self,
        subject_hashes: &[String],
    ) -> Result<Vec<(String, i64, Option<i64>, ConsentEvent)>, ApiError> {
        let mut out = Vec::new();
        for hash in subject_hashes {
            let rows = sqlx::query(
                "SELECT purpose_id, decision_us, expire_us, (SELECT e.body FROM consent_events e \
                 WHERE e.event_id = subject_consents.event_id) FROM subject_consents \
                 WHERE subject_hash = $1 ORDER BY purpose_id",
            )
            .bind(hash.clone())
            .fetch_all(self.db().pool())
            .await?;
            for r in rows {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, body(&r, 3)?));
            }
        }
        Ok(out)
    }

    /// Current grants for `purpose_id` expiring before `before_us` (or, with
    /// `decided_before_us`, decided before a material notice change), soonest
    /// expiry first, after the `(expire_us, subject_hash)` position `after`.
    pub async fn reconsent_due(
        &self,
        purpose_id: &str,
        before_us: i64,
        decided_before_us: Option<i64>,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<(i64, String, i64, ConsentEvent)>, ApiError> {
        let mut p = Params::new();
        let granted = ConsentState::Granted as i32;
        let mut due = format!("COALESCE(expire_us, {}) < {}", i64::MAX, p.int(before_us));
        if let Some(material) = decided_before_us {
            due = format!("({due} OR decision_us < {})", p.int(material));
        }
        let mut clauses = vec![
            format!("purpose_id = {}", p.text(purpose_id)),
            format!("state = {}", p.int(i64::from(granted))),
            due,
        ];
        if let Some((exp, hash)) = after {
            let e1 = p.int(exp);
            let e2 = p.int(exp);
            let h = p.text(hash);
            clauses.push(format!(
                "(COALESCE(expire_us, {max}) > {e1} OR (COALESCE(expire_us, {max}) = {e2} AND subject_hash > {h}))",
                max = i64::MAX
            ));
        }
        let sql = format!(
            "SELECT COALESCE(expire_us, {max}), subject_hash, decision_us, (SELECT e.body FROM \
             consent_events e WHERE e.event_id = subject_consents.event_id) FROM subject_consents \
             WHERE {} ORDER BY COALESCE(expire_us, {max}), subject_hash LIMIT {}",
            clauses.join(" AND "),
            p.int(limit as i64),
            max = i64::MAX
        );
        let rows = self.rows(p, sql).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, body(r, 3)?)))
            .collect()
    }

    /// Like [`Self::states`], the query shared with the checks that miss the cache
    /// at the same time: one query per group of concurrent calls and purpose
    /// instead of one per call (see [`super::StateReads`]).
    pub async fn states_together(
        &self,
        subject_hashes: &[&str],
        purpose_id: &str,
    ) -> Result<States, ApiError> {
        let keys = subject_hashes
            .iter()
            .map(|h| (purpose_id.to_string(), h.to_string()))
            .collect();
        let found = self.reads().submit(keys).await?;
        Ok(subject_hashes
            .iter()
            .map(|h| h.to_string())
            .zip(found)
            .filter(|(_, state)| state.0.is_some() || state.1)
            .collect())
    }

    /// States of several subjects for one purpose (and their objection to direct
    /// marketing), by subject hash; subjects without a row are absent.
    pub async fn states(
        &self,
        subject_hashes: &[&str],
        purpose_id: &str,
    ) -> Result<States, ApiError> {
        states_in(self.db(), subject_hashes, purpose_id).await
    }

    /// Every state row of the subjects (all purposes), for the state index.
    pub async fn rows_of_subjects(
        &self,
        subject_hashes: &[String],
    ) -> Result<Vec<StateRowOf>, ApiError> {
        let mut out = Vec::new();
        for chunk in subject_hashes.chunks(STATE_READ_CHUNK) {
            out.extend(state_rows(self.db().clone(), chunk.to_vec(), None).await?);
        }
        Ok(out)
    }

    /// Up to `limit` state rows after `after` (subject hash, purpose id) in key
    /// order, and the last key of the page in the database's order: the state index
    /// loads the table page by page.
    pub async fn state_rows_after(
        &self,
        after: Option<&(String, String)>,
        limit: i64,
    ) -> Result<(Vec<StateRowOf>, Option<(String, String)>), ApiError> {
        let (hash, pid) = after
            .map(|(h, p)| (h.clone(), p.clone()))
            .unwrap_or_default();
        let db = self.db();
        match db.native_postgres() {
            Some(pool) => postgres::state_rows_after(pool, hash, pid, limit).await,
            None => sqlite::state_rows_after(db, hash, pid, limit).await,
        }
    }
}

/// States by subject hash (keys are keyed hashes already: a fast hasher).
pub type States = HashMap<String, CachedState, foldhash::fast::RandomState>;

/// Subjects per state query.
const STATE_READ_CHUNK: usize = 500;

/// State queries of one read in flight at once.
const STATE_READS_IN_FLIGHT: usize = 4;

/// A row of `subject_consents` as [`ConsentStore::states`] reads it.
pub type StateRowOf = (String, String, ConsentState, i64, Option<i64>);

/// The states of `subject_hashes` for `purpose_id` (see [`ConsentStore::states`]).
pub(super) async fn states_in(
    db: &Db,
    subject_hashes: &[&str],
    purpose_id: &str,
) -> Result<States, ApiError> {
    use futures::{StreamExt, TryStreamExt};
    let mut out = States::with_capacity_and_hasher(subject_hashes.len(), Default::default());
    // Chunks go to the database a few at a time, on connections of their own: on
    // SQLite each connection is a thread of its own, so the B-tree lookups of a big
    // cold batch run on every core instead of one.
    // (Owned chunks: a stream of futures borrowing the caller's slices is not
    // `Send` for every lifetime, which the group-commit queue needs.)
    // PostgreSQL binds a chunk as one array: bigger chunks, one per native connection.
    let chunk = if db.native_postgres().is_some() {
        subject_hashes
            .len()
            .div_ceil(NATIVE_PG_CONNECTIONS as usize)
            .clamp(STATE_READ_CHUNK, 5 * STATE_READ_CHUNK)
    } else {
        STATE_READ_CHUNK
    };
    let chunks: Vec<Vec<String>> = subject_hashes
        .chunks(chunk)
        .map(|c| c.iter().map(|h| h.to_string()).collect())
        .collect();
    let mut chunks = futures::stream::iter(chunks)
        .map(|chunk| state_rows(db.clone(), chunk, Some(purpose_id.to_string())))
        .buffer_unordered(STATE_READS_IN_FLIGHT);
    while let Some(rows) = chunks.try_next().await? {
        for (hash, pid, state, decision_us, expire_us) in rows {
            let entry = out.entry(hash).or_default();
            if pid == DIRECT_MARKETING {
                entry.1 = state == ConsentState::Objected;
            }
            if pid == purpose_id {
                entry.0 = Some(StateRow {
                    state,
                    decision_us,
                    expire_us,
                });
            }
        }
    }
    Ok(out)
}

/// The rows of `chunk` for `purpose_id` and for direct marketing, or for every
/// purpose when `purpose_id` is `None`.
async fn state_rows(
    db: Db,
    chunk: Vec<String>,
    purpose_id: Option<String>,
) -> Result<Vec<StateRowOf>, ApiError> {
    match db.native_postgres() {
        Some(pool) => postgres::state_rows(pool, chunk, purpose_id).await,
        None => sqlite::state_rows(&db, chunk, purpose_id).await,
    }
}
