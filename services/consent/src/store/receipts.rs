//! Receipts and the keys that signed them.

use custodia_core::ApiError;
use sqlx::Row;

use super::ConsentStore;
use super::body;

impl ConsentStore {
    /// Adds a receipt-signing key to the keys ListReceiptKeys hands out, first
    /// used at `now_us`; a key already there keeps its first use.
    pub async fn add_receipt_key(
        &self,
        key_id: &str,
        public_key: &[u8],
        now_us: i64,
    ) -> Result<(), ApiError> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO receipt_keys (key_id, public_key, first_used_us) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id.to_string())
        .bind(public_key.to_vec())
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every key that has signed receipts, newest first: (key id, public key,
    /// first use in µs).
    pub async fn receipt_keys(&self) -> Result<Vec<(String, Vec<u8>, i64)>, ApiError> {
        let rows = sqlx::query(
            "SELECT key_id, public_key, first_used_us FROM receipt_keys \
             ORDER BY first_used_us DESC, key_id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Receipt `id`, as issued.
    pub async fn receipt(
        &self,
        id: &str,
    ) -> Result<Option<custodia_proto::consent::v1::ConsentReceipt>, ApiError> {
        let row = sqlx::query("SELECT body FROM receipts WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db().pool())
            .await?;
        row.map(|r| body(&r, 0)).transpose()
    }
}
