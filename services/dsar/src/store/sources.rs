//! Registered data sources: one row each, the protobuf source as its body,
//! with a version for etags.

use custodia_core::{ApiError, idempotency::RequestKey, outbox::AccessEvent};
use custodia_proto::dsar::v1 as pb;
use prost::Message;
use sqlx::Row;

use super::{Done, DsarStore, decode};
use crate::model;

impl DsarStore {
    /// Registers source `id`; ALREADY_EXISTS when taken. Idempotent by `key`.
    pub async fn create_source(
        &self,
        id: &str,
        source: &pb::DataSource,
        key: Option<&RequestKey>,
        event: &AccessEvent,
        now_us: i64,
    ) -> Result<Done, ApiError> {
        let name = model::source_name(id);
        let mut w = match self.begin(key, &name, Some(event), now_us).await? {
            Ok(w) => w,
            Err(done) => return Ok(done),
        };
        let inserted = sqlx::query(
            "INSERT INTO dsar_sources (id, body, version, create_us, update_us) \
             VALUES ($1, $2, 1, $3, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(source.encode_to_vec())
        .bind(now_us)
        .execute(&mut *w)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(ApiError::AlreadyExists {
                resource: "data source",
                name,
            });
        }
        w.commit(&[event]).await?;
        Ok(Done::Applied)
    }

    /// Changes source `id` with `decide`. Idempotent by `key`; `event`
    /// may be absent for the worker's capability refresh.
    pub async fn change_source<F>(
        &self,
        id: &str,
        key: Option<&RequestKey>,
        event: Option<&AccessEvent>,
        now_us: i64,
        decide: F,
    ) -> Result<Done, ApiError>
    where
        F: FnOnce(&mut pb::DataSource, i64) -> Result<(), ApiError>,
    {
        let name = model::source_name(id);
        let mut w = match self.begin(key, &name, event, now_us).await? {
            Ok(w) => w,
            Err(done) => return Ok(done),
        };
        let Some(row) = sqlx::query("SELECT body, version FROM dsar_sources WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *w)
            .await?
        else {
            return Err(ApiError::not_found("data source", name));
        };
        let mut source: pb::DataSource = decode(&row.try_get::<Vec<u8>, _>(0)?)?;
        let version: i64 = row.try_get(1)?;
        decide(&mut source, version)?;
        sqlx::query(
            "UPDATE dsar_sources SET body = $2, version = version + 1, update_us = $3 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(source.encode_to_vec())
        .bind(now_us)
        .execute(&mut *w)
        .await?;
        w.commit(event.as_slice()).await?;
        Ok(Done::Applied)
    }

    /// Source `id` with its version, create and update times (µs).
    pub async fn get_source(
        &self,
        id: &str,
    ) -> Result<Option<(pb::DataSource, i64, i64, i64)>, ApiError> {
        let row = sqlx::query(
            "SELECT body, version, create_us, update_us FROM dsar_sources WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            Ok((
                decode(&r.try_get::<Vec<u8>, _>(0)?)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
            ))
        })
        .transpose()
    }

    /// Every registered source (the table is small), by id.
    pub async fn list_sources(
        &self,
    ) -> Result<Vec<(String, pb::DataSource, i64, i64, i64)>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, body, version, create_us, update_us FROM dsar_sources ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    decode(&r.try_get::<Vec<u8>, _>(1)?)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }
}
