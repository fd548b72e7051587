//! The register of processing in the store: purposes.

use custodia_core::{
    ApiError,
    idempotency::{self, Claim, RequestKey},
    storage::Params,
};
use custodia_proto::consent::v1::Purpose;
use prost::Message;
use sqlx::{AssertSqlSafe, Row, any::AnyRow};

use super::{ConsentStore, PurposeFilter, StoredPurpose, Written};
use super::{body, where_clause};

fn etag() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn row_to_purpose(r: &AnyRow) -> Result<StoredPurpose, ApiError> {
    Ok(StoredPurpose {
        id: r.try_get("id")?,
        purpose: body(r, "body")?,
        create_us: r.try_get("create_us")?,
        update_us: r.try_get("update_us")?,
        etag: r.try_get("etag")?,
    })
}

const PURPOSE_COLUMNS: &str = "id, body, create_us, update_us, etag";

/// Purpose `id` as `executor` (the pool, or a transaction) sees it.
async fn purpose_in<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<StoredPurpose>, ApiError> {
    let sql = format!("SELECT {PURPOSE_COLUMNS} FROM purposes WHERE id = $1");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(row_to_purpose).transpose()
}

impl ConsentStore {
    /// Creates purpose `id`; ALREADY_EXISTS when taken. Idempotent by `key`.
    pub async fn create_purpose(
        &self,
        id: &str,
        purpose: &Purpose,
        next_review_us: i64,
        key: Option<&RequestKey>,
        now_us: i64,
    ) -> Result<Written, ApiError> {
        let mut tx = self.db.begin_write().await?;
        if let Claim::Replay(earlier) = idempotency::claim(&mut tx, key, id, now_us).await? {
            return Ok(Written::Replayed(earlier.resource));
        }
        let exists = sqlx::query("SELECT 1 FROM purposes WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(ApiError::AlreadyExists {
                resource: "purpose",
                name: format!("purposes/{id}"),
            });
        }
        let stored = StoredPurpose {
            id: id.to_string(),
            purpose: purpose.clone(),
            create_us: now_us,
            update_us: now_us,
            etag: etag(),
        };
        sqlx::query(
            "INSERT INTO purposes (id, body, lawful_basis, category, state, next_review_us, create_us, update_us, etag) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id.to_string())
        .bind(purpose.encode_to_vec())
        .bind(i64::from(purpose.lawful_basis))
        .bind(i64::from(purpose.category))
        .bind(i64::from(purpose.state))
        .bind(next_review_us)
        .bind(now_us)
        .bind(now_us)
        .bind(stored.etag.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Written::Done(Box::new(stored)))
    }

    /// Purpose `id`, if it exists.
    pub async fn purpose(&self, id: &str) -> Result<Option<StoredPurpose>, ApiError> {
        purpose_in(self.db.pool(), id).await
    }

    /// Purposes matching `filter` with id after `after`, by id, at most `limit`.
    pub async fn purposes(
        &self,
        filter: &PurposeFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredPurpose>, ApiError> {
        let mut p = Params::new();
        let mut clauses: Vec<String> = Vec::new();
        if let Some(t) = filter.review_due_before_us {
            clauses.push(format!("next_review_us < {}", p.int(t)));
        }
        if let Some(b) = filter.lawful_basis {
            clauses.push(format!("lawful_basis = {}", p.int(i64::from(b))));
        }
        if let Some(c) = filter.category {
            clauses.push(format!("category = {}", p.int(i64::from(c))));
        }
        if !filter.include_retired {
            let retired = custodia_proto::consent::v1::PurposeState::Retired as i32;
            clauses.push(format!("state <> {}", p.int(i64::from(retired))));
        }
        if let Some(after) = after {
            clauses.push(format!("id > {}", p.text(after)));
        }
        let where_clause = where_clause(&clauses);
        let sql = format!(
            "SELECT {PURPOSE_COLUMNS} FROM purposes {where_clause} ORDER BY id LIMIT {}",
            p.int(limit as i64)
        );
        let rows = self.rows(p, sql).await?;
        rows.iter().map(row_to_purpose).collect()
    }

    /// Replaces purpose `id` by `purpose` if its etag is still `expected_etag`
    /// (when given). Idempotent by `key`.
    pub async fn update_purpose(
        &self,
        id: &str,
        purpose: &Purpose,
        next_review_us: i64,
        expected_etag: Option<&str>,
        key: Option<&RequestKey>,
        now_us: i64,
    ) -> Result<Written, ApiError> {
        let mut tx = self.db.begin_write().await?;
        if let Claim::Replay(earlier) = idempotency::claim(&mut tx, key, id, now_us).await? {
            return Ok(Written::Replayed(earlier.resource));
        }
        let current = purpose_in(&mut *tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found("purpose", format!("purposes/{id}")))?;
        if let Some(expected) = expected_etag
            && expected != current.etag
        {
            return Err(ApiError::precondition(
                "ETAG_MISMATCH",
                "the purpose changed since it was read (etag differs); read it again and retry",
            ));
        }
        let stored = StoredPurpose {
            id: id.to_string(),
            purpose: purpose.clone(),
            create_us: current.create_us,
            update_us: now_us,
            etag: etag(),
        };
        sqlx::query(
            "UPDATE purposes SET body = $1, lawful_basis = $2, category = $3, state = $4, \
             next_review_us = $5, update_us = $6, etag = $7 WHERE id = $8",
        )
        .bind(purpose.encode_to_vec())
        .bind(i64::from(purpose.lawful_basis))
        .bind(i64::from(purpose.category))
        .bind(i64::from(purpose.state))
        .bind(next_review_us)
        .bind(now_us)
        .bind(stored.etag.clone())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Written::Done(Box::new(stored)))
    }
}
