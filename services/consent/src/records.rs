//! Storage of notices and consent records (same store, second table family).

use std::collections::HashMap;

use custodia_core::{
    ApiError,
    outbox::{AccessEvent, enqueue_in},
    storage::{Params, placeholders},
};
use custodia_proto::consent::v1::{ConsentEvent, ConsentState, Notice};
use prost::Message;
use sqlx::{AssertSqlSafe, Row};

use crate::{
    decision::StateRow,
    store::{ConsentStore, remember, replayed},
};

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
    /// Publishes the next version of notice `id`; returns it. Idempotent by `request_id`.
    pub async fn publish_notice(
        &self,
        id: &str,
        notice: Notice,
        purpose_ids: &[String],
        request_id: &str,
        now_us: i64,
    ) -> Result<Notice, ApiError> {
        let mut tx = self.db().begin_write().await?;
        if let Some(resource) = replayed(&mut tx, "PublishNotice", request_id).await? {
            drop(tx);
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
        remember(
            &mut tx,
            "PublishNotice",
            request_id,
            &format!("{id}/{version}"),
            now_us,
        )
        .await?;
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
    /// a retry with the same `request_id` returns the first call's events instead.
    pub async fn record(
        &self,
        method: &str,
        request_id: &str,
        records: &[NewRecord],
        receipt: Option<(&str, &str, Vec<u8>)>,
        access: &AccessEvent,
        now_us: i64,
    ) -> Result<Vec<ConsentEvent>, ApiError> {
        let mut tx = self.db().begin_write().await?;
        if let Some(resource) = replayed(&mut tx, method, request_id).await? {
            let ids: Vec<String> = resource.split(',').map(str::to_string).collect();
            let mut events = Vec::new();
            for id in ids {
                let row = sqlx::query("SELECT body FROM consent_events WHERE event_id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = row {
                    events.push(
                        ConsentEvent::decode(row.try_get::<Vec<u8>, _>(0)?.as_slice())
                            .map_err(ApiError::internal)?,
                    );
                }
            }
            return Ok(events);
        }
        // Gap-free, commit-ordered change numbers (see the migration).
        let first: i64 = sqlx::query(
            "UPDATE consent_change_seq SET next = next + $1 WHERE id = 1 RETURNING next - $2",
        )
        .bind(records.len() as i64)
        .bind(records.len() as i64)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        for (i, r) in records.iter().enumerate() {
            let event_id = r
                .event
                .name
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let body = r.event.encode_to_vec();
            sqlx::query(
                "INSERT INTO consent_events (seq, event_id, subject_hash, purpose_id, state, body, decision_us, record_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(first + i as i64)
            .bind(event_id.clone())
            .bind(r.subject_hash.clone())
            .bind(r.purpose_id.clone())
            .bind(i64::from(r.event.state))
            .bind(body.clone())
            .bind(r.decision_us)
            .bind(now_us)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO subject_consents (subject_hash, purpose_id, state, decision_us, expire_us, event_id, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (subject_hash, purpose_id) DO UPDATE SET state = excluded.state, \
                 decision_us = excluded.decision_us, expire_us = excluded.expire_us, \
                 event_id = excluded.event_id, body = excluded.body",
            )
            .bind(r.subject_hash.clone())
            .bind(r.purpose_id.clone())
            .bind(i64::from(r.event.state))
            .bind(r.decision_us)
            .bind(r.expire_us)
            .bind(event_id)
            .bind(body)
            .execute(&mut *tx)
            .await?;
        }
        if let Some((id, subject_hash, body)) = receipt {
            sqlx::query("INSERT INTO receipts (id, subject_hash, body) VALUES ($1, $2, $3)")
                .bind(id.to_string())
                .bind(subject_hash.to_string())
                .bind(body)
                .execute(&mut *tx)
                .await?;
        }
        let ids: Vec<&str> = records
            .iter()
            .map(|r| r.event.name.rsplit('/').next().unwrap_or_default())
            .collect();
        remember(&mut tx, method, request_id, &ids.join(","), now_us).await?;
        enqueue_in(&mut tx, access)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await?;
        Ok(records.iter().map(|r| r.event.clone()).collect())
    }

    /// The state of `subject_hash` for `purpose_id` and the blanket direct-marketing
    /// objection.
    pub async fn state(
        &self,
        subject_hash: &str,
        purpose_id: &str,
    ) -> anyhow::Result<(Option<StateRow>, bool)> {
        let rows = sqlx::query(
            "SELECT purpose_id, state, decision_us, expire_us FROM subject_consents \
             WHERE subject_hash = $1 AND purpose_id IN ($2, $3)",
        )
        .bind(subject_hash.to_string())
        .bind(purpose_id.to_string())
        .bind(DIRECT_MARKETING.to_string())
        .fetch_all(self.db().pool())
        .await?;
        let mut row = None;
        let mut objected_dm = false;
        for r in rows {
            let pid: String = r.try_get(0)?;
            let state = ConsentState::try_from(r.try_get::<i64, _>(1)? as i32).unwrap_or_default();
            if pid == DIRECT_MARKETING {
                objected_dm = state == ConsentState::Objected;
            } else {
                row = Some(StateRow {
                    state,
                    decision_us: r.try_get(2)?,
                    expire_us: r.try_get(3)?,
                });
            }
        }
        Ok((row, objected_dm))
    }

    /// Current state rows (as stored events) of the subjects, by purpose.
    pub async fn subject_states(
        &self,
        subject_hashes: &[String],
    ) -> anyhow::Result<Vec<(String, i64, Option<i64>, ConsentEvent)>> {
        let mut out = Vec::new();
        for hash in subject_hashes {
            let rows = sqlx::query(
                "SELECT purpose_id, decision_us, expire_us, body FROM subject_consents \
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
            "SELECT COALESCE(expire_us, {max}), subject_hash, decision_us, body FROM subject_consents \
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
    pub async fn erase(&self, subject_hashes: &[String]) -> anyhow::Result<(i64, i64)> {
        let mut tx = self.db().begin_write().await?;
        let mut erased = 0;
        let mut receipts = 0;
        for hash in subject_hashes {
            receipts += sqlx::query("DELETE FROM receipts WHERE subject_hash = $1")
                .bind(hash.clone())
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
            erased += sqlx::query("DELETE FROM consent_events WHERE subject_hash = $1")
                .bind(hash.clone())
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
            sqlx::query("DELETE FROM subject_consents WHERE subject_hash = $1")
                .bind(hash.clone())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE consent_cache_epoch SET erasures = erasures + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((erased, receipts))
    }

    /// Effective times (µs, ascending) of the material notices covering a purpose.
    pub async fn material_notice_times(&self, purpose_id: &str) -> anyhow::Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT n.effective_us FROM notices n JOIN notice_purposes np \
             ON np.notice_id = n.notice_id AND np.version = n.version \
             WHERE np.purpose_id = $1 AND n.material = 1 ORDER BY n.effective_us",
        )
        .bind(purpose_id.to_string())
        .fetch_all(self.db().pool())
        .await?;
        rows.iter().map(|r| Ok(r.try_get::<i64, _>(0)?)).collect()
    }

    /// States of several subjects for one purpose (and their objection to direct
    /// marketing), by subject hash; subjects without a row are absent.
    pub async fn states(
        &self,
        subject_hashes: &[&str],
        purpose_id: &str,
    ) -> anyhow::Result<HashMap<String, (Option<StateRow>, bool)>> {
        let mut out: HashMap<String, (Option<StateRow>, bool)> = HashMap::new();
        let backend = self.db().backend();
        for chunk in subject_hashes.chunks(500) {
            let sql = format!(
                "SELECT subject_hash, purpose_id, state, decision_us, expire_us FROM subject_consents \
                 WHERE purpose_id IN ({}) AND subject_hash IN ({})",
                placeholders(backend, 1, 2),
                placeholders(backend, 3, chunk.len()),
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(purpose_id.to_string())
                .bind(DIRECT_MARKETING.to_string());
            for h in chunk {
                q = q.bind(h.to_string());
            }
            for r in q.fetch_all(self.db().pool()).await? {
                let hash: String = r.try_get(0)?;
                let pid: String = r.try_get(1)?;
                let state =
                    ConsentState::try_from(r.try_get::<i64, _>(2)? as i32).unwrap_or_default();
                let entry = out.entry(hash).or_default();
                if pid == DIRECT_MARKETING {
                    entry.1 = state == ConsentState::Objected;
                }
                if pid == purpose_id {
                    entry.0 = Some(StateRow {
                        state,
                        decision_us: r.try_get(3)?,
                        expire_us: r.try_get(4)?,
                    });
                }
            }
        }
        Ok(out)
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

    /// The newest event seq (0 when there is none).
    pub async fn last_seq(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT MAX(seq) FROM consent_events")
            .fetch_one(self.db().pool())
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// The full trail of the subjects (oldest first), after `after_seq`.
    pub async fn events(
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
