//! Storage of notices and consent records (same store, second table family).

use std::collections::HashMap;

use custodia_core::{
    ApiError,
    group_commit::GroupCommit,
    idempotency::{self, Claim, RequestKey},
    outbox::{AccessEvent, enqueue_all_script, outbox_rows},
    storage::{Backend, Db, NATIVE_PG_CONNECTIONS, Params, Script, ScriptTx, placeholders},
};
use custodia_proto::consent::v1::{ConsentEvent, ConsentState, Notice};
use prost::Message;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use crate::{cache::CachedState, decision::StateRow, store::ConsentStore};

/// Pseudo purpose id under which a blanket objection to direct marketing is kept.
pub const DIRECT_MARKETING: &str = "@direct-marketing";

/// One decision to write: the event and the state it leaves.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Keyed subject hash.
    pub subject_hash: String,
    /// Purpose id (or [`DIRECT_MARKETING`]).
    pub purpose_id: String,
    /// The event as returned by the API (subject value blanked).
    pub event: ConsentEvent,
    /// When the subject decided (µs).
    pub decision_us: i64,
    /// When a grant lapses (µs).
    pub expire_us: Option<i64>,
}

/// A subject's state for one purpose, as the API shows it, from its latest event.
pub fn subject_consent(
    event: &ConsentEvent,
    decision_us: i64,
    expire_us: Option<i64>,
    reconfirmation_required: bool,
) -> custodia_proto::consent::v1::SubjectConsent {
    use crate::register::timestamp;
    use custodia_core::storage::from_micros;
    custodia_proto::consent::v1::SubjectConsent {
        subject: event.subject.clone(),
        purpose: event.purpose.clone(),
        state: event.state,
        decision_time: Some(timestamp(from_micros(decision_us))),
        expire_time: expire_us.map(|us| timestamp(from_micros(us))),
        notice: event
            .evidence
            .as_ref()
            .map(|e| e.notice.clone())
            .unwrap_or_default(),
        reconfirmation_required,
        consent_event: event.name.clone(),
        guardian: event.guardian.clone(),
    }
}

impl ConsentStore {
    /// Publishes the next version of notice `id`; returns it. Idempotent by `key`.
    pub async fn publish_notice(
        &self,
        id: &str,
        notice: Notice,
        purpose_ids: &[String],
        key: Option<&RequestKey>,
        now_us: i64,
    ) -> Result<Notice, ApiError> {
        let mut tx = self.db().begin_write().await?;
        if let Claim::Replay(earlier) = idempotency::claim(&mut tx, key, "", now_us).await? {
            drop(tx);
            let resource = earlier.resource;
            let (id, version) = resource.split_once('/').unwrap_or_default();
            return self
                .notice(id, version.parse().ok())
                .await?
                .ok_or_else(|| ApiError::not_found("notice", resource.clone()));
        }
        // Locks the notice's versions on Postgres; SQLite serialises writers anyway.
        let current: Option<i64> =
            sqlx::query("SELECT MAX(version) FROM notices WHERE notice_id = $1")
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let version = current.unwrap_or(0) + 1;
        let mut notice = notice;
        notice.name = format!("notices/{id}/versions/{version}");
        notice.version = version as i32;
        let effective_us = notice
            .effective_time
            .as_ref()
            .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
            .unwrap_or(now_us);
        sqlx::query(
            "INSERT INTO notices (notice_id, version, body, material, effective_us) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(version)
        .bind(notice.encode_to_vec())
        .bind(i64::from(notice.material_change))
        .bind(effective_us)
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => ApiError::precondition(
                "CONCURRENT_PUBLICATION",
                format!("another version of notices/{id} was published at the same time; retry"),
            ),
            other => other.into(),
        })?;
        for purpose in purpose_ids {
            sqlx::query(
                "INSERT INTO notice_purposes (notice_id, version, purpose_id) VALUES ($1, $2, $3)",
            )
            .bind(id.to_string())
            .bind(version)
            .bind(purpose.clone())
            .execute(&mut *tx)
            .await?;
        }
        idempotency::set_resource(&mut tx, key, &format!("{id}/{version}")).await?;
        tx.commit().await?;
        Ok(notice)
    }

    /// Version `version` of notice `id` (the latest when `None`).
    pub async fn notice(&self, id: &str, version: Option<i64>) -> anyhow::Result<Option<Notice>> {
        let row =
            match version {
                Some(v) => {
                    sqlx::query("SELECT body FROM notices WHERE notice_id = $1 AND version = $2")
                        .bind(id.to_string())
                        .bind(v)
                        .fetch_optional(self.db().pool())
                        .await?
                }
                None => sqlx::query(
                    "SELECT body FROM notices WHERE notice_id = $1 ORDER BY version DESC LIMIT 1",
                )
                .bind(id.to_string())
                .fetch_optional(self.db().pool())
                .await?,
            };
        row.map(|r| Ok(Notice::decode(r.try_get::<Vec<u8>, _>(0)?.as_slice())?))
            .transpose()
    }

    /// Notices by (id, version), optionally of one notice id or covering one purpose.
    pub async fn notices(
        &self,
        notice_id: Option<&str>,
        purpose_id: Option<&str>,
        after: Option<(String, i64)>,
        limit: usize,
    ) -> anyhow::Result<Vec<Notice>> {
        let mut p = Params::new();
        let mut clauses = Vec::new();
        if let Some(id) = notice_id {
            clauses.push(format!("n.notice_id = {}", p.text(id)));
        }
        if let Some(purpose) = purpose_id {
            clauses.push(format!(
                "EXISTS (SELECT 1 FROM notice_purposes np WHERE np.notice_id = n.notice_id \
                 AND np.version = n.version AND np.purpose_id = {})",
                p.text(purpose)
            ));
        }
        if let Some((id, version)) = after {
            let a = p.text(id.clone());
            let b = p.text(id);
            let v = p.int(version);
            clauses.push(format!(
                "(n.notice_id > {a} OR (n.notice_id = {b} AND n.version > {v}))"
            ));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT n.body FROM notices n {where_clause} ORDER BY n.notice_id, n.version LIMIT {}",
            p.int(limit as i64)
        );
        let rows = p
            .bind(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(self.db().pool())
            .await?;
        rows.iter()
            .map(|r| Ok(Notice::decode(r.try_get::<Vec<u8>, _>(0)?.as_slice())?))
            .collect()
    }

    /// Effective time of the latest material notice version covering `purpose_id`
    /// that is in force at `now_us`.
    pub async fn material_notice_us(
        &self,
        purpose_id: &str,
        now_us: i64,
    ) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(n.effective_us) FROM notices n JOIN notice_purposes np \
             ON np.notice_id = n.notice_id AND np.version = n.version \
             WHERE np.purpose_id = $1 AND n.material = 1 AND n.effective_us <= $2",
        )
        .bind(purpose_id.to_string())
        .bind(now_us)
        .fetch_one(self.db().pool())
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Writes `records` (events plus current state) and `access` in one transaction;
    /// a retry with the same key (see [`idempotency`]) returns the first call's
    /// events instead.
    ///
    /// Concurrent calls share the transaction (group commit, see [`WriteJob`]); this
    /// returns once it is committed.
    pub async fn record(
        &self,
        key: Option<&RequestKey>,
        records: &[NewRecord],
        receipt: Option<(&str, &str, Vec<u8>)>,
        access: &AccessEvent,
        now_us: i64,
    ) -> Result<Vec<ConsentEvent>, ApiError> {
        let job = WriteJob {
            key: key.cloned(),
            records: records.to_vec(),
            receipt: receipt.map(|(id, subject_hash, body)| Receipt {
                id: id.to_string(),
                subject_hash: subject_hash.to_string(),
                body,
            }),
            access: access.clone(),
            now_us,
        };
        self.record_all(vec![job])
            .await?
            .pop()
            .unwrap_or_else(|| Err(ApiError::internal(anyhow::anyhow!("no write result"))))
    }

    /// Writes `jobs` in one transaction (with whatever concurrent calls submit
    /// meanwhile); one result per job, in order. When the transaction fails, every
    /// job of the call fails (a job submitted alone gets its own error).
    pub async fn record_all(&self, jobs: Vec<WriteJob>) -> Result<Vec<WriteResult>, ApiError> {
        self.writes().submit(jobs).await.map_err(ApiError::internal)
    }

    /// Current state rows (as stored events) of the subjects, by purpose.
    pub async fn subject_states(
        &self,
        subject_hashes: &[String],
    ) -> anyhow::Result<Vec<(String, i64, Option<i64>, ConsentEvent)>> {
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
                let body: Vec<u8> = r.try_get(3)?;
                out.push((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    ConsentEvent::decode(body.as_slice())?,
                ));
            }
        }
        Ok(out)
    }

    /// Changes after `after_seq` (all subjects), optionally for some purposes only.
    pub async fn changes(
        &self,
        after_seq: i64,
        purpose_ids: &[String],
        limit: usize,
    ) -> anyhow::Result<Vec<(i64, i64, Option<i64>, ConsentEvent)>> {
        if purpose_ids.len() <= VALUES_PER_QUERY {
            return self.changes_of(after_seq, purpose_ids, limit).await;
        }
        let mut out = Vec::new();
        for chunk in purpose_ids.chunks(VALUES_PER_QUERY) {
            out.extend(self.changes_of(after_seq, chunk, limit).await?);
        }
        Ok(first_by_seq(out, |c| c.0, limit))
    }

    /// [`Self::changes`] in one statement.
    async fn changes_of(
        &self,
        after_seq: i64,
        purpose_ids: &[String],
        limit: usize,
    ) -> anyhow::Result<Vec<(i64, i64, Option<i64>, ConsentEvent)>> {
        let mut p = Params::new();
        let mut clauses = vec![format!("seq > {}", p.int(after_seq))];
        if !purpose_ids.is_empty() {
            let ids: Vec<String> = purpose_ids.iter().map(|id| p.text(id.clone())).collect();
            clauses.push(format!("purpose_id IN ({})", ids.join(", ")));
        }
        let sql = format!(
            "SELECT seq, decision_us, body FROM consent_events WHERE {} ORDER BY seq LIMIT {}",
            clauses.join(" AND "),
            p.int(limit as i64)
        );
        let rows = p
            .bind(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(self.db().pool())
            .await?;
        rows.iter()
            .map(|r| {
                let body: Vec<u8> = r.try_get(2)?;
                let event = ConsentEvent::decode(body.as_slice())?;
                let expire_us = event
                    .expire_time
                    .as_ref()
                    .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
                Ok((r.try_get(0)?, r.try_get(1)?, expire_us, event))
            })
            .collect()
    }

    /// The first change recorded at or after `record_us`.
    pub async fn first_change_at_or_after(&self, record_us: i64) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query("SELECT MIN(seq) FROM consent_events WHERE record_us >= $1")
            .bind(record_us)
            .fetch_one(self.db().pool())
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// The newest change number (0 when there is none).
    pub async fn last_change(&self) -> anyhow::Result<i64> {
        let next: i64 = sqlx::query("SELECT next FROM consent_change_seq WHERE id = 1")
            .fetch_one(self.db().pool())
            .await?
            .try_get(0)?;
        Ok(next - 1)
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
    ) -> anyhow::Result<Vec<(i64, String, i64, ConsentEvent)>> {
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
        let rows = p
            .bind(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(self.db().pool())
            .await?;
        rows.iter()
            .map(|r| {
                let body: Vec<u8> = r.try_get(3)?;
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    ConsentEvent::decode(body.as_slice())?,
                ))
            })
            .collect()
    }

    /// Receipt `id`, as issued.
    pub async fn receipt(
        &self,
        id: &str,
    ) -> anyhow::Result<Option<custodia_proto::consent::v1::ConsentReceipt>> {
        let row = sqlx::query("SELECT body FROM receipts WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db().pool())
            .await?;
        row.map(|r| {
            let body: Vec<u8> = r.try_get(0)?;
            Ok(custodia_proto::consent::v1::ConsentReceipt::decode(
                body.as_slice(),
            )?)
        })
        .transpose()
    }

    /// Erases every consent record of the subjects (D-7, D-9): events, current
    /// states and receipts are deleted. Returns the numbers of events and receipts.
    ///
    /// Receipts are found through the subject's events: a receipt is only ever
    /// issued for a call that records at least one event, every event of that call
    /// names it, and both are written in one transaction. So no index on
    /// `receipts.subject_hash` is needed (SQLite dropped it: every RecordConsent
    /// wrote one more random page for it, a sixth of a group commit's log frames).
    /// The ids come from the very events deleted (`RETURNING`), so a consent
    /// committed by another replica meanwhile either goes with its receipt or
    /// stays with it.
    pub async fn erase(&self, subject_hashes: &[String]) -> anyhow::Result<(i64, i64)> {
        let mut tx = self.db().begin_write().await?;
        let mut erased = 0;
        let mut receipts = 0;
        for hash in subject_hashes {
            let events =
                sqlx::query("DELETE FROM consent_events WHERE subject_hash = $1 RETURNING body")
                    .bind(hash.clone())
                    .fetch_all(&mut *tx)
                    .await?;
            erased += events.len() as i64;
            let mut ids = std::collections::BTreeSet::new();
            for row in events {
                let body: Vec<u8> = row.try_get(0)?;
                let event = ConsentEvent::decode(body.as_slice())?;
                if let Some(id) = crate::receipt::id_of(&event.receipt) {
                    ids.insert(id.to_string());
                }
            }
            for id in ids {
                receipts += sqlx::query("DELETE FROM receipts WHERE id = $1 AND subject_hash = $2")
                    .bind(id)
                    .bind(hash.clone())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as i64;
            }
            sqlx::query("DELETE FROM subject_consents WHERE subject_hash = $1")
                .bind(hash.clone())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((erased, receipts))
    }

    /// The material notice versions covering a purpose, by effective time
    /// (ascending): (effective µs, notice id, version).
    pub async fn material_notices(
        &self,
        purpose_id: &str,
    ) -> anyhow::Result<Vec<(i64, String, i64)>> {
        let rows = sqlx::query(
            "SELECT n.effective_us, n.notice_id, n.version FROM notices n JOIN notice_purposes np \
             ON np.notice_id = n.notice_id AND np.version = n.version \
             WHERE np.purpose_id = $1 AND n.material = 1 ORDER BY n.effective_us, n.notice_id, n.version",
        )
        .bind(purpose_id.to_string())
        .fetch_all(self.db().pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Like [`Self::states`], the query shared with the checks that miss the cache
    /// at the same time: one query per group of concurrent calls and purpose
    /// instead of one per call (see [`StateReads`]).
    pub async fn states_together(
        &self,
        subject_hashes: &[&str],
        purpose_id: &str,
    ) -> anyhow::Result<States> {
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
    ) -> anyhow::Result<States> {
        states_in(self.db(), subject_hashes, purpose_id).await
    }

    /// Subjects of the events after `after_seq` (at most `limit`), with the last seq
    /// seen, and the erasure epoch: what a replica needs to drop stale check states.
    pub async fn changes_since(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> anyhow::Result<(Vec<String>, i64, i64)> {
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
    pub async fn erasure_epoch(&self) -> anyhow::Result<i64> {
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
    ) -> anyhow::Result<Vec<(i64, ConsentEvent)>> {
        if subject_hashes.len() <= VALUES_PER_QUERY {
            return self
                .events_of(subject_hashes, purpose_id, after_seq, limit)
                .await;
        }
        let mut out = Vec::new();
        for chunk in subject_hashes.chunks(VALUES_PER_QUERY) {
            out.extend(self.events_of(chunk, purpose_id, after_seq, limit).await?);
        }
        Ok(first_by_seq(out, |e| e.0, limit))
    }

    /// [`Self::events`] in one statement.
    async fn events_of(
        &self,
        subject_hashes: &[String],
        purpose_id: Option<&str>,
        after_seq: Option<i64>,
        limit: usize,
    ) -> anyhow::Result<Vec<(i64, ConsentEvent)>> {
        let mut p = Params::new();
        let hashes: Vec<String> = subject_hashes.iter().map(|h| p.text(h.clone())).collect();
        let mut clauses = vec![format!("subject_hash IN ({})", hashes.join(", "))];
        if let Some(purpose) = purpose_id {
            clauses.push(format!("purpose_id = {}", p.text(purpose)));
        }
        if let Some(after) = after_seq {
            clauses.push(format!("seq > {}", p.int(after)));
        }
        let sql = format!(
            "SELECT seq, body FROM consent_events WHERE {} ORDER BY seq LIMIT {}",
            clauses.join(" AND "),
            p.int(limit as i64)
        );
        let rows = p
            .bind(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(self.db().pool())
            .await?;
        rows.iter()
            .map(|r| {
                let body: Vec<u8> = r.try_get(1)?;
                Ok((r.try_get(0)?, ConsentEvent::decode(body.as_slice())?))
            })
            .collect()
    }
}

/// Most values of a request list (subjects' hashes, purposes) bound in one
/// statement: SQLite refuses more than 32,766 parameters, PostgreSQL 65,535.
/// The API's own maxima keep lists under it; a longer list is read in chunks.
const VALUES_PER_QUERY: usize = 1000;

/// The first `limit` rows by change number of the rows that chunks of one list
/// found (each chunk's own first `limit`): a row found by two chunks (a value
/// given twice) counts once.
fn first_by_seq<T>(mut rows: Vec<T>, seq: impl Fn(&T) -> i64, limit: usize) -> Vec<T> {
    rows.sort_unstable_by_key(|r| seq(r));
    rows.dedup_by_key(|r| seq(r));
    rows.truncate(limit);
    rows
}

/// A receipt to store with a consent write.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Receipt id (`receipts/{id}`).
    pub id: String,
    /// Keyed hash of the subject it was issued to.
    pub subject_hash: String,
    /// The signed receipt, encoded.
    pub body: Vec<u8>,
}

/// One consent write (RecordConsent, WithdrawConsent, RecordObjection) as
/// [`ConsentStore::record`] gets it.
///
/// Concurrent writes are committed together: one transaction, one disk flush and a
/// fixed number of statements per group of jobs, not per job. Within a group, jobs
/// take their change numbers in queue order, so a later job's state wins and the
/// change stream sees them in that order; a job repeating the request id of an
/// earlier one (in the database or earlier in the group) replays its events.
#[derive(Debug, Clone)]
pub struct WriteJob {
    /// Idempotency key of the call, if it sent a `request_id`.
    pub key: Option<RequestKey>,
    /// Events to append and the states they leave.
    pub records: Vec<NewRecord>,
    /// Receipt to store, if any.
    pub receipt: Option<Receipt>,
    /// Access event, enqueued in the same transaction.
    pub access: AccessEvent,
    /// Record time (µs).
    pub now_us: i64,
}

/// What one [`WriteJob`] returns: its events (or those of the call it replays).
pub type WriteResult = Result<Vec<ConsentEvent>, ApiError>;

/// The group-commit queue of consent writes.
pub type Writes = GroupCommit<WriteJob, WriteResult>;

/// Most jobs in one group.
const MAX_GROUP_JOBS: usize = 512;
/// Rows per multi-row statement (at most 8 parameters each).
const ROWS_PER_STATEMENT: usize = 200;
/// Most parameters of a group written as one PostgreSQL statement (its limit is
/// 65,535); a larger group takes one statement per table and chunk.
const MAX_STATEMENT_PARAMS: usize = 30_000;

/// Reads of (purpose id, subject hash) by concurrent checks, shared (see
/// [`ConsentStore::states_together`]).
pub type StateReads = GroupCommit<(String, String), CachedState>;

/// Most subjects in one shared read (a BatchCheckConsent's 10,000 go alone).
const MAX_READ_GROUP: usize = 10_000;

/// The states of `subject_hashes` for `purpose_id` (see [`ConsentStore::states`]).
async fn states_in(db: &Db, subject_hashes: &[&str], purpose_id: &str) -> anyhow::Result<States> {
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

/// States by subject hash (keys are keyed hashes already: a fast hasher).
pub type States = HashMap<String, CachedState, foldhash::fast::RandomState>;

/// Subjects per state query.
const STATE_READ_CHUNK: usize = 500;
/// State queries of one read in flight at once.
const STATE_READS_IN_FLIGHT: usize = 4;

/// A row of `subject_consents` as [`states_in`] reads it.
pub type StateRowOf = (String, String, ConsentState, i64, Option<i64>);

/// The rows of `chunk` for `purpose_id` and for direct marketing, or for every
/// purpose when `purpose_id` is `None`.
async fn state_rows(
    db: Db,
    chunk: Vec<String>,
    purpose_id: Option<String>,
) -> anyhow::Result<Vec<StateRowOf>> {
    if let Some(pool) = db.native_postgres() {
        // One statement of constant text for any chunk size (prepared once per
        // connection), the subjects bound as one array.
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
        return rows.iter().map(state_row_of).collect();
    }
    // SQLite: the chunk's rows as one JSON array in one row. sqlx hands every row
    // from SQLite's worker thread to the async task on its own (a thread wake-up
    // each): a cold 10,000-subject batch spent more on that than on its lookups.
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

/// Rows aggregated by SQLite's `json_group_array(json_array(...))`.
fn rows_of_json(json: &str) -> anyhow::Result<Vec<StateRowOf>> {
    let rows: Vec<(String, String, i32, i64, Option<i64>)> = serde_json::from_str(json)?;
    Ok(rows
        .into_iter()
        .map(|(h, p, s, d, e)| (h, p, ConsentState::try_from(s).unwrap_or_default(), d, e))
        .collect())
}

/// A row of PostgreSQL's query of [`state_rows`].
fn state_row_of(r: &sqlx::postgres::PgRow) -> anyhow::Result<StateRowOf> {
    let state = ConsentState::try_from(r.try_get::<i64, _>(2)? as i32).unwrap_or_default();
    Ok((
        r.try_get(0)?,
        r.try_get(1)?,
        state,
        r.try_get(3)?,
        r.try_get(4)?,
    ))
}

impl ConsentStore {
    /// Every state row of the subjects (all purposes), for the state index.
    pub async fn rows_of_subjects(
        &self,
        subject_hashes: &[String],
    ) -> anyhow::Result<Vec<StateRowOf>> {
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
    ) -> anyhow::Result<(Vec<StateRowOf>, Option<(String, String)>)> {
        let (hash, pid) = after
            .map(|(h, p)| (h.clone(), p.clone()))
            .unwrap_or_default();
        let db = self.db();
        if let Some(pool) = db.native_postgres() {
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
            .collect::<anyhow::Result<Vec<_>>>()?;
            // Rows arrive in the ORDER BY of the key's collation.
            let last = rows.last().map(|r| (r.0.clone(), r.1.clone()));
            return Ok((rows, last));
        }
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
}

/// The queue of state reads of `db`: one [`ConsentStore::states`] query per
/// purpose in the group.
pub(crate) fn state_reads(db: Db) -> StateReads {
    GroupCommit::new(MAX_READ_GROUP, move |keys: Vec<(String, String)>| {
        let db = db.clone();
        async move {
            let mut by_purpose: HashMap<&str, Vec<&str>> = HashMap::new();
            for (pid, hash) in &keys {
                by_purpose.entry(pid).or_default().push(hash);
            }
            let mut found: HashMap<(&str, String), CachedState> = HashMap::new();
            for (pid, hashes) in by_purpose {
                for (hash, state) in states_in(&db, &hashes, pid).await? {
                    found.insert((pid, hash), state);
                }
            }
            Ok(keys
                .iter()
                .map(|(pid, hash)| {
                    found
                        .get(&(pid.as_str(), hash.clone()))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect())
        }
    })
}

/// The queue writing consent jobs to `db`.
pub(crate) fn writes(db: Db) -> Writes {
    GroupCommit::new(MAX_GROUP_JOBS, move |jobs: Vec<WriteJob>| {
        let db = db.clone();
        async move {
            // Optimistic first: no request id of the group looked up, the insert of
            // the ids fails if one was claimed before (a client's retry). Then again
            // with the lookup, which turns such a job into a replay.
            let written = match write_jobs(&db, &jobs, false).await {
                Err(_) => write_jobs(&db, &jobs, true).await,
                written => written,
            };
            match written {
                Ok(results) => Ok(results),
                // Alone, the job gets its own error (its kind intact).
                Err(e) if jobs.len() == 1 => Ok(vec![Err(e)]),
                // In a group: rolled back; GroupCommit retries each job alone.
                Err(e) => Err(anyhow::Error::new(e)),
            }
        }
    })
}

/// What a job of a group does.
enum Plan {
    /// Writes its records.
    Write,
    /// Repeats an earlier call: returns its events (by id).
    Replay(Vec<String>),
    /// Repeats the job at this index of the same group.
    Same(usize),
    /// Reuses a key with another request body: refused.
    Reused,
}

/// The refusal of `job`, whose key was used before with another body.
fn reused(job: &WriteJob) -> ApiError {
    idempotency::reused(job.key.as_ref().map(RequestKey::method).unwrap_or_default())
}

fn event_id(event: &ConsentEvent) -> &str {
    event.name.rsplit('/').next().unwrap_or_default()
}

/// The ids of `job`'s events, comma-separated: what its idempotency key names.
fn event_ids(job: &WriteJob) -> String {
    let ids: Vec<&str> = job.records.iter().map(|r| event_id(&r.event)).collect();
    ids.join(",")
}

/// Writes `jobs` in one transaction; one result per job, in order.
///
/// `look_up`: first look up which request ids earlier calls claimed (replays);
/// without, a claimed id makes the write fail on the key's uniqueness. Without
/// the lookup a group is one message to SQLite's worker thread (`BEGIN`, every
/// write, `COMMIT`) and one statement of constant text on PostgreSQL's native
/// connection (see [`write_postgres`]); with it, a transaction of two.
async fn write_jobs(
    db: &Db,
    jobs: &[WriteJob],
    look_up: bool,
) -> Result<Vec<WriteResult>, ApiError> {
    if !look_up && let Some(pool) = db.native_postgres() {
        let plans = plan(jobs, &HashMap::new());
        write_postgres(pool, &writing(jobs, &plans), &access_of(jobs, &plans)).await?;
        return Ok(results(jobs, &plans, &HashMap::new()));
    }
    let backend = db.backend();
    let mut tx = db.begin_script().await?;
    let earlier = if look_up {
        replayed_all(&mut tx, backend, jobs).await?
    } else {
        HashMap::new()
    };
    let plans = plan(jobs, &earlier);
    let replay_ids: Vec<&str> = plans
        .iter()
        .flat_map(|p| match p {
            Plan::Replay(ids) => ids.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        })
        .collect();
    let stored = if replay_ids.is_empty() {
        HashMap::new()
    } else {
        events_by_id(tx.conn().await?, backend, &replay_ids).await?
    };
    let writing = writing(jobs, &plans);
    let access = access_of(jobs, &plans);
    if access.is_empty() {
        // Only refusals: end the transaction now, while this writer holds the turn.
        tx.rollback().await?;
    } else {
        tx.commit(write_script(backend, &writing, &access)?).await?;
    }
    Ok(results(jobs, &plans, &stored))
}

/// The access events of `jobs` given their plans: a replay is an access too
/// (its answer holds the subject's data), marked as one; a refused reuse of a
/// key answers nothing and records nothing here.
fn access_of(jobs: &[WriteJob], plans: &[Plan]) -> Vec<AccessEvent> {
    jobs.iter()
        .zip(plans)
        .filter_map(|(job, plan)| match plan {
            Plan::Write => Some(job.access.clone()),
            Plan::Same(_) | Plan::Replay(_) => {
                let mut event = job.access.clone();
                event.detail = serde_json::json!({ "replay": true }).to_string();
                Some(event)
            }
            Plan::Reused => None,
        })
        .collect()
}

/// What each job does, given what `earlier` calls left by key: the first job of
/// a key writes, later ones of the group repeat it; a key used before (or
/// earlier in the group) with another request body is refused.
fn plan(jobs: &[WriteJob], earlier: &HashMap<KeyOf, Earlier>) -> Vec<Plan> {
    let mut first_of: HashMap<KeyOf, usize> = HashMap::new();
    jobs.iter()
        .enumerate()
        .map(|(i, job)| {
            let Some(key) = &job.key else {
                return Plan::Write;
            };
            let id = key_of(key);
            if let Some(e) = earlier.get(&id) {
                if e.fingerprint != key.fingerprint() {
                    return Plan::Reused;
                }
                let ids = e
                    .resource
                    .split(',')
                    .filter(|id| !id.is_empty())
                    .map(str::to_string)
                    .collect();
                return Plan::Replay(ids);
            }
            match first_of.get(&id) {
                Some(&first) => {
                    let same = jobs[first]
                        .key
                        .as_ref()
                        .is_some_and(|k| k.fingerprint() == key.fingerprint());
                    if same {
                        Plan::Same(first)
                    } else {
                        Plan::Reused
                    }
                }
                None => {
                    first_of.insert(id, i);
                    Plan::Write
                }
            }
        })
        .collect()
}

/// The identity of a key: (principal, method, request id).
type KeyOf = (String, String, String);

fn key_of(key: &RequestKey) -> KeyOf {
    (
        key.principal().to_string(),
        key.method().to_string(),
        key.request_id().to_string(),
    )
}

/// What an earlier call with a key left: its fingerprint and event ids.
struct Earlier {
    fingerprint: String,
    resource: String,
}

/// The jobs that write.
fn writing<'a>(jobs: &'a [WriteJob], plans: &[Plan]) -> Vec<&'a WriteJob> {
    jobs.iter()
        .zip(plans)
        .filter(|(_, p)| matches!(p, Plan::Write))
        .map(|(j, _)| j)
        .collect()
}

/// Each job's result: its events, those of the job it repeats, or the `stored`
/// events of the earlier call it replays.
fn results(
    jobs: &[WriteJob],
    plans: &[Plan],
    stored: &HashMap<String, ConsentEvent>,
) -> Vec<WriteResult> {
    let events_of = |job: &WriteJob| job.records.iter().map(|r| r.event.clone()).collect();
    jobs.iter()
        .zip(plans)
        .map(|(job, plan)| {
            Ok(match plan {
                Plan::Write => events_of(job),
                Plan::Same(first) => events_of(&jobs[*first]),
                Plan::Reused => return Err(reused(job)),
                Plan::Replay(ids) => ids
                    .iter()
                    .filter_map(|id| stored.get(id))
                    .cloned()
                    .collect(),
            })
        })
        .collect()
}

impl ConsentStore {
    /// The events an earlier call with `key` recorded (erased ones left out),
    /// if there was such a call; IDEMPOTENCY_KEY_REUSED if it sent another body.
    pub async fn replay_of(&self, key: &RequestKey) -> Result<Option<Vec<ConsentEvent>>, ApiError> {
        let mut conn = self.db().pool().acquire().await?;
        let Some(earlier) = idempotency::find(&mut conn, key).await? else {
            return Ok(None);
        };
        let ids: Vec<&str> = earlier
            .resource
            .split(',')
            .filter(|id| !id.is_empty())
            .collect();
        let found = events_by_id(&mut conn, self.db().backend(), &ids).await?;
        Ok(Some(
            ids.iter()
                .filter_map(|id| found.get(*id))
                .cloned()
                .collect(),
        ))
    }
}

/// What earlier calls with the keys of `jobs` left, by key.
async fn replayed_all(
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
async fn events_by_id(
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
            let body: Vec<u8> = row.try_get(1)?;
            let event = ConsentEvent::decode(body.as_slice()).map_err(ApiError::internal)?;
            out.insert(row.try_get(0)?, event);
        }
    }
    Ok(out)
}

/// A record of a group: (index in the group, record, encoded event, record time).
type Numbered<'a> = (i64, &'a NewRecord, Vec<u8>, i64);

/// The records of `jobs`, in order. Event `i` takes change number `first + i`.
fn numbered<'a>(jobs: &[&'a WriteJob]) -> Vec<Numbered<'a>> {
    jobs.iter()
        .flat_map(|j| j.records.iter().map(move |r| (r, j.now_us)))
        .enumerate()
        .map(|(i, (r, now_us))| (i as i64, r, r.event.encode_to_vec(), now_us))
        .collect()
}

/// The state each (subject, purpose) is left in: the index of its last event, in
/// order. One row per key, as PostgreSQL refuses to update a row twice in one
/// statement.
fn last_of_each(events: &[Numbered]) -> Vec<usize> {
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, (_, r, _, _)) in events.iter().enumerate() {
        last.insert((&r.subject_hash, &r.purpose_id), i);
    }
    let mut states: Vec<usize> = last.into_values().collect();
    states.sort_unstable();
    states
}

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
async fn write_postgres(
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

/// The statements writing the records, receipts, idempotency keys and access events
/// of `jobs` (none of them a replay): a fixed number per group.
fn write_script(
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
