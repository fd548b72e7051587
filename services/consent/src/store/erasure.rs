//! Erasure of a subject's consent records.

use custodia_core::ApiError;
use custodia_proto::consent::v1::ConsentEvent;

use super::ConsentStore;
use super::body;

impl ConsentStore {
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
    pub async fn erase(&self, subject_hashes: &[String]) -> Result<(i64, i64), ApiError> {
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
                let event: ConsentEvent = body(&row, 0)?;
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
}
