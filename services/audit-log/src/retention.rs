//! Retention of the search index: PruneSubjectIndex. Entries appended
//! before the cutoff can no longer be found by subject; they stay in the tree.

use custodia_core::ApiError;
use sqlx::Row;

use crate::store::LogStore;

/// What a prune found (and removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Index entries due.
    pub matched: i64,
    /// Index entries removed (0 in a dry run).
    pub removed: i64,
    /// The first sequence number still indexed.
    pub first_indexed_seq: i64,
}

impl LogStore {
    /// Removes the index entries of entries appended before `cutoff_us`: those
    /// below the size of the newest signed head older than it (a head covers
    /// only entries appended before it was signed).
    pub async fn prune_index(&self, cutoff_us: i64, dry_run: bool) -> Result<Pruned, ApiError> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(tree_size), 0) FROM audit_tree_heads WHERE timestamp_us < $1",
        )
        .bind(cutoff_us)
        .fetch_one(self.db().pool())
        .await?;
        let first: i64 = row.try_get(0)?;
        let matched: i64 = sqlx::query("SELECT COUNT(*) FROM audit_subject_index WHERE seq < $1")
            .bind(first)
            .fetch_one(self.db().pool())
            .await?
            .try_get(0)?;
        let removed = if dry_run || matched == 0 {
            0
        } else {
            let mut tx = self.db().begin_write().await?;
            let n = sqlx::query("DELETE FROM audit_subject_index WHERE seq < $1")
                .bind(first)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
            tx.commit().await?;
            self.db().scrub_log().await;
            n
        };
        Ok(Pruned {
            matched,
            removed,
            first_indexed_seq: first,
        })
    }
}
