//! Notices: published versions and the purposes they cover.

use custodia_core::{
    ApiError,
    idempotency::{self, Claim, RequestKey},
    storage::Params,
};
use custodia_proto::consent::v1::Notice;
use prost::Message;
use sqlx::Row;

use super::ConsentStore;
use super::{body, where_clause};

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
    pub async fn notice(&self, id: &str, version: Option<i64>) -> Result<Option<Notice>, ApiError> {
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
        row.map(|r| body(&r, 0)).transpose()
    }

    /// Notices by (id, version), optionally of one notice id or covering one purpose.
    pub async fn notices(
        &self,
        notice_id: Option<&str>,
        purpose_id: Option<&str>,
        after: Option<(String, i64)>,
        limit: usize,
    ) -> Result<Vec<Notice>, ApiError> {
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
        let where_clause = where_clause(&clauses);
        let sql = format!(
            "SELECT n.body FROM notices n {where_clause} ORDER BY n.notice_id, n.version LIMIT {}",
            p.int(limit as i64)
        );
        let rows = self.rows(p, sql).await?;
        rows.iter().map(|r| body(r, 0)).collect()
    }

    /// Effective time of the latest material notice version covering `purpose_id`
    /// that is in force at `now_us`.
    pub async fn material_notice_us(
        &self,
        purpose_id: &str,
        now_us: i64,
    ) -> Result<Option<i64>, ApiError> {
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

    /// The material notice versions covering a purpose, by effective time
    /// (ascending): (effective µs, notice id, version).
    pub async fn material_notices(
        &self,
        purpose_id: &str,
    ) -> Result<Vec<(i64, String, i64)>, ApiError> {
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

    /// For each of `purpose_ids`, the name of the latest notice version in force
    /// at `now_us` that covers it (`notices/{id}/versions/{v}`), when one does.
    pub async fn latest_notices(
        &self,
        purpose_ids: &[&str],
        now_us: i64,
    ) -> Result<std::collections::HashMap<String, String>, ApiError> {
        let mut latest: std::collections::HashMap<String, (i64, i64, String)> =
            std::collections::HashMap::new();
        for chunk in purpose_ids.chunks(500) {
            let mut p = Params::new();
            let now = p.int(now_us);
            let ids: Vec<String> = chunk.iter().map(|id| p.text(*id)).collect();
            let sql = format!(
                "SELECT np.purpose_id, n.notice_id, n.version, n.effective_us FROM notices n \
                 JOIN notice_purposes np ON np.notice_id = n.notice_id AND np.version = n.version \
                 WHERE n.effective_us <= {now} AND np.purpose_id IN ({})",
                ids.join(", ")
            );
            for r in p
                .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
                .fetch_all(self.db().pool())
                .await?
            {
                let (purpose, notice, version, effective): (String, String, i64, i64) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
                let name = format!("notices/{notice}/versions/{version}");
                let candidate = (effective, version, name);
                match latest.get(&purpose) {
                    Some(best) if (best.0, best.1) >= (candidate.0, candidate.1) => {}
                    _ => {
                        latest.insert(purpose, candidate);
                    }
                }
            }
        }
        Ok(latest.into_iter().map(|(k, (_, _, n))| (k, n)).collect())
    }
}
