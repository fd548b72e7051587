//! Erasure of a subject's consent records, and the suppressions it keeps.

use std::collections::{BTreeSet, HashMap};

use custodia_core::ApiError;
use custodia_proto::{
    common::v1::RetentionGround,
    consent::v1::{ConsentEvent, ConsentState, Evidence},
};
use prost::Message;
use sqlx::Row;

use super::ConsentStore;
use super::body;

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Erasure {
    /// Consent events deleted (kept, minimised events are not counted).
    pub events: i64,
    /// Receipts deleted.
    pub receipts: i64,
    /// The standing objections and withdrawals kept, one per subject and purpose.
    pub kept: Vec<Suppression>,
}

/// A standing objection or withdrawal kept through an erasure (Art. 17(3),
/// Art. 21(3)): the keyed hash of the subject, never an identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// Keyed hash of the subject.
    pub subject_hash: String,
    /// The purpose id, or [`super::DIRECT_MARKETING`].
    pub purpose_id: String,
    /// OBJECTED or WITHDRAWN.
    pub state: ConsentState,
    /// When the subject decided (µs).
    pub decision_us: i64,
    /// Why it may be kept.
    pub ground: RetentionGround,
}

/// Why a kept state may be kept: an objection must be honoured for ever after
/// (Art. 21(3), a legal obligation, 17(3)(b)); the proof that consent was
/// withdrawn, and when, defends the controller against a claim that it
/// processed without consent (17(3)(e)).
pub fn ground_of(state: ConsentState) -> RetentionGround {
    match state {
        ConsentState::Objected => RetentionGround::LegalObligation,
        _ => RetentionGround::LegalClaims,
    }
}

/// The event as kept after an erasure: what was decided, about which purpose,
/// when and through which channel and notice; nothing that could single the
/// person out (address, browser, form, attached proof, guardian, age, free-text
/// reason) and no receipt (receipts are erased).
pub fn minimised(event: &ConsentEvent) -> ConsentEvent {
    ConsentEvent {
        name: event.name.clone(),
        subject: event.subject.clone(),
        purpose: event.purpose.clone(),
        state: event.state,
        evidence: event.evidence.as_ref().map(|e| Evidence {
            collect_time: e.collect_time,
            channel: e.channel,
            notice: e.notice.clone(),
            collector: e.collector.clone(),
            language: e.language.clone(),
            ..Default::default()
        }),
        record_time: event.record_time,
        request_id: event.request_id.clone(),
        ..Default::default()
    }
}

/// States an erasure keeps.
const KEPT: [ConsentState; 2] = [ConsentState::Withdrawn, ConsentState::Objected];

impl ConsentStore {
    /// Erases the consent records of the subjects (D-7, D-9) in one
    /// transaction: events, current states and receipts are deleted, except the
    /// current state of each purpose the subject withdrew from or objected to,
    /// which stays (its event minimised) and is entered in
    /// `erasure_suppressions`, so that checks keep answering WITHDRAWN /
    /// OBJECTED and a re-import cannot grant again (see [`Self::suppressed`]).
    ///
    /// Receipts are found through the subject's events: a receipt is only ever
    /// issued for a call that records at least one event, every event of that call
    /// names it, and both are written in one transaction. So no index on
    /// `receipts.subject_hash` is needed (SQLite dropped it: every RecordConsent
    /// wrote one more random page for it, a sixth of a group commit's log frames).
    /// The ids come from the very events deleted (`RETURNING`), so a consent
    /// committed by another replica meanwhile either goes with its receipt or
    /// stays with it.
    pub async fn erase(&self, subject_hashes: &[String], now_us: i64) -> Result<Erasure, ApiError> {
        let mut tx = self.db().begin_write().await?;
        let mut out = Erasure::default();
        let postgres = self.db().native_postgres().is_some();
        let kept_states = format!("({}, {})", KEPT[0] as i32, KEPT[1] as i32);
        for hash in subject_hashes {
            let standing = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT event_id, purpose_id, state, decision_us FROM subject_consents \
                 WHERE subject_hash = $1 AND state IN {kept_states}"
            )))
            .bind(hash.clone())
            .fetch_all(&mut *tx)
            .await?;
            let mut keep: HashMap<String, Suppression> = HashMap::new();
            for r in standing {
                let state = ConsentState::try_from(r.try_get::<i64, _>(2)? as i32)
                    .map_err(ApiError::internal)?;
                keep.insert(
                    r.try_get(0)?,
                    Suppression {
                        subject_hash: hash.clone(),
                        purpose_id: r.try_get(1)?,
                        state,
                        decision_us: r.try_get(3)?,
                        ground: ground_of(state),
                    },
                );
            }
            let events = sqlx::query(
                "DELETE FROM consent_events WHERE subject_hash = $1 \
                 RETURNING seq, event_id, purpose_id, state, body, decision_us, record_us",
            )
            .bind(hash.clone())
            .fetch_all(&mut *tx)
            .await?;
            let mut receipts = BTreeSet::new();
            let mut kept_bodies = Vec::new();
            for row in &events {
                let event: ConsentEvent = body(row, 4)?;
                if let Some(id) = crate::receipt::id_of(&event.receipt) {
                    receipts.insert(id.to_string());
                }
                let event_id: String = row.try_get(1)?;
                if !keep.contains_key(&event_id) {
                    out.events += 1;
                    continue;
                }
                let minimal = minimised(&event).encode_to_vec();
                sqlx::query(
                    "INSERT INTO consent_events (seq, event_id, subject_hash, purpose_id, state, \
                     body, decision_us, record_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(row.try_get::<i64, _>(0)?)
                .bind(event_id.clone())
                .bind(hash.clone())
                .bind(row.try_get::<String, _>(2)?)
                .bind(row.try_get::<i64, _>(3)?)
                .bind(minimal.clone())
                .bind(row.try_get::<i64, _>(5)?)
                .bind(row.try_get::<i64, _>(6)?)
                .execute(&mut *tx)
                .await?;
                kept_bodies.push((event_id, minimal));
            }
            for id in receipts {
                out.receipts +=
                    sqlx::query("DELETE FROM receipts WHERE id = $1 AND subject_hash = $2")
                        .bind(id)
                        .bind(hash.clone())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected() as i64;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM subject_consents WHERE subject_hash = $1 \
                 AND state NOT IN {kept_states}"
            )))
            .bind(hash.clone())
            .execute(&mut *tx)
            .await?;
            // PostgreSQL still keeps a copy of the body beside the state (see
            // `postgres::PG_WRITE`): it is minimised too.
            if postgres {
                for (event_id, minimal) in kept_bodies {
                    sqlx::query(
                        "UPDATE subject_consents SET body = $1 \
                         WHERE subject_hash = $2 AND event_id = $3",
                    )
                    .bind(minimal)
                    .bind(hash.clone())
                    .bind(event_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            let mut kept: Vec<Suppression> = keep.into_values().collect();
            kept.sort_by(|a, b| a.purpose_id.cmp(&b.purpose_id));
            for s in &kept {
                sqlx::query(
                    "INSERT INTO erasure_suppressions (subject_hash, purpose_id, state, \
                     decision_us, erase_us, ground) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (subject_hash, purpose_id) DO UPDATE SET state = excluded.state, \
                     decision_us = excluded.decision_us, erase_us = excluded.erase_us, \
                     ground = excluded.ground",
                )
                .bind(hash.clone())
                .bind(s.purpose_id.clone())
                .bind(s.state as i64)
                .bind(s.decision_us)
                .bind(now_us)
                .bind(s.ground as i64)
                .execute(&mut *tx)
                .await?;
            }
            out.kept.extend(kept);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Which of `purpose_ids` the subject is suppressed for: erased while it
    /// had withdrawn from or objected to them, and that decision still the
    /// current one (a fresh consent the subject gave since supersedes it).
    pub async fn suppressed(
        &self,
        subject_hash: &str,
        purpose_ids: &[&str],
    ) -> Result<Vec<String>, ApiError> {
        let rows = sqlx::query(
            "SELECT s.purpose_id FROM erasure_suppressions s JOIN subject_consents c \
             ON c.subject_hash = s.subject_hash AND c.purpose_id = s.purpose_id \
             AND c.state = s.state AND c.decision_us = s.decision_us \
             WHERE s.subject_hash = $1",
        )
        .bind(subject_hash.to_string())
        .fetch_all(self.db().pool())
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let pid: String = r.try_get(0)?;
            if purpose_ids.contains(&pid.as_str()) {
                out.push(pid);
            }
        }
        Ok(out)
    }
}

/// What [`ConsentStore::purge_closed_trails`] found (and deleted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Subject-purpose relations whose trail was due.
    pub states: i64,
    /// Consent events.
    pub events: i64,
    /// Receipts no remaining event names.
    pub receipts: i64,
    /// Erasure suppressions of withdrawals.
    pub suppressions: i64,
}

/// The receipt ids the events in column 1 (or 0) of `rows` name.
fn receipts_named(rows: Vec<sqlx::any::AnyRow>) -> Result<BTreeSet<String>, ApiError> {
    let mut ids = BTreeSet::new();
    for row in rows {
        let column = if row.len() > 1 { 1 } else { 0 };
        let event: ConsentEvent = body(&row, column)?;
        if let Some(id) = crate::receipt::id_of(&event.receipt) {
            ids.insert(id.to_string());
        }
    }
    Ok(ids)
}

/// Relations handled per transaction of [`ConsentStore::purge_closed_trails`].
const PURGE_BATCH: i64 = 500;

impl ConsentStore {
    /// Retention of consent's own records: the trail of every subject
    /// and purpose whose current state is WITHDRAWN or DENIED, decided before
    /// `cutoff_us`, is deleted (its events, its state, and the receipts no
    /// remaining event of the subject names), with the erasure suppressions of
    /// withdrawals decided before it. Objections stay: they must keep being
    /// honoured. With `dry_run`, only counts.
    pub async fn purge_closed_trails(
        &self,
        cutoff_us: i64,
        dry_run: bool,
    ) -> Result<Purged, ApiError> {
        let closed = format!(
            "({}, {})",
            ConsentState::Withdrawn as i32,
            ConsentState::Denied as i32
        );
        let mut out = Purged::default();
        let mut after: (String, String) = Default::default();
        loop {
            let mut tx = self.db().begin_write().await?;
            let due = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT subject_hash, purpose_id FROM subject_consents \
                 WHERE state IN {closed} AND decision_us < $1 \
                 AND (subject_hash > $2 OR (subject_hash = $2 AND purpose_id > $3)) \
                 ORDER BY subject_hash, purpose_id LIMIT $4"
            )))
            .bind(cutoff_us)
            .bind(after.0.clone())
            .bind(after.1.clone())
            .bind(PURGE_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = due.last() else {
                break;
            };
            after = (last.try_get(0)?, last.try_get(1)?);
            let done = due.len() < PURGE_BATCH as usize;
            // Per subject: the purposes due and the receipts their events name.
            let mut subjects: HashMap<String, (Vec<String>, BTreeSet<String>)> = HashMap::new();
            for row in &due {
                let (hash, pid): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                out.states += 1;
                let events = sqlx::query(if dry_run {
                    "SELECT body FROM consent_events WHERE subject_hash = $1 AND purpose_id = $2"
                } else {
                    "DELETE FROM consent_events WHERE subject_hash = $1 AND purpose_id = $2 \
                     RETURNING body"
                })
                .bind(hash.clone())
                .bind(pid.clone())
                .fetch_all(&mut *tx)
                .await?;
                out.events += events.len() as i64;
                let entry = subjects.entry(hash.clone()).or_default();
                entry.1.extend(receipts_named(events)?);
                if !dry_run {
                    sqlx::query(
                        "DELETE FROM subject_consents WHERE subject_hash = $1 AND purpose_id = $2",
                    )
                    .bind(hash)
                    .bind(pid.clone())
                    .execute(&mut *tx)
                    .await?;
                }
                entry.0.push(pid);
            }
            // A receipt goes when no remaining event of the subject names it (one
            // receipt may cover several purposes).
            for (hash, (purposes, candidates)) in subjects {
                let remaining = sqlx::query(
                    "SELECT purpose_id, body FROM consent_events WHERE subject_hash = $1",
                )
                .bind(hash.clone())
                .fetch_all(&mut *tx)
                .await?;
                let mut kept = Vec::new();
                for row in remaining {
                    let pid: String = row.try_get(0)?;
                    if !purposes.contains(&pid) {
                        kept.push(row);
                    }
                }
                let kept = receipts_named(kept)?;
                for id in candidates.difference(&kept) {
                    out.receipts += 1;
                    if !dry_run {
                        sqlx::query("DELETE FROM receipts WHERE id = $1 AND subject_hash = $2")
                            .bind(id.clone())
                            .bind(hash.clone())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            tx.commit().await?;
            if done {
                break;
            }
        }
        let withdrawn = ConsentState::Withdrawn as i32;
        let suppressions = if dry_run {
            sqlx::query(
                "SELECT COUNT(*) FROM erasure_suppressions WHERE state = $1 AND decision_us < $2",
            )
            .bind(i64::from(withdrawn))
            .bind(cutoff_us)
            .fetch_one(self.db().pool())
            .await?
            .try_get::<i64, _>(0)?
        } else {
            let mut tx = self.db().begin_write().await?;
            let n = sqlx::query(
                "DELETE FROM erasure_suppressions WHERE state = $1 AND decision_us < $2",
            )
            .bind(i64::from(withdrawn))
            .bind(cutoff_us)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
            tx.commit().await?;
            n
        };
        out.suppressions = suppressions;
        Ok(out)
    }
}
