//! Retention runs: one row each, the protobuf run as its body.

use custodia_core::{
    ApiError, idempotency::RequestKey, outbox::AccessEvent, recorded_write::RecordedWrite,
};
use custodia_proto::dsar::v1 as pb;
use prost::Message;
use sqlx::Row;

use super::{Done, DsarStore, decode};

impl DsarStore {
    /// Records a new run. Idempotent by `key`.
    pub async fn create_run(
        &self,
        id: &str,
        run: &pb::RetentionRun,
        key: Option<&RequestKey>,
        event: &AccessEvent,
        now_us: i64,
    ) -> Result<Done, ApiError> {
        let mut w = match self.begin(key, &run.name, Some(event), now_us).await? {
            Ok(w) => w,
            Err(done) => return Ok(done),
        };
        sqlx::query(
            "INSERT INTO dsar_retention_runs (id, start_us, state, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.to_string())
        .bind(now_us)
        .bind(format!("{:?}", run.state()))
        .bind(run.encode_to_vec())
        .execute(&mut *w)
        .await?;
        w.commit(&[event]).await?;
        Ok(Done::Applied)
    }

    /// Replaces run `id` (its results and final state) with its access events.
    pub async fn finish_run(
        &self,
        id: &str,
        run: &pb::RetentionRun,
        events: &[AccessEvent],
    ) -> Result<(), ApiError> {
        let mut w = RecordedWrite::begin(&self.db, &self.outbox).await?;
        sqlx::query("UPDATE dsar_retention_runs SET state = $2, body = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(format!("{:?}", run.state()))
            .bind(run.encode_to_vec())
            .execute(&mut *w)
            .await?;
        w.commit(&events.iter().collect::<Vec<_>>()).await
    }

    /// Run `id`, if any.
    pub async fn get_run(&self, id: &str) -> Result<Option<pb::RetentionRun>, ApiError> {
        let row = sqlx::query("SELECT body FROM dsar_retention_runs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| decode(&r.try_get::<Vec<u8>, _>(0)?))
            .transpose()
    }

    /// Runs newest first, after `after` (start µs, id), at most `limit`.
    pub async fn list_runs(
        &self,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<(i64, String, pb::RetentionRun)>, ApiError> {
        let rows = match after {
            None => {
                sqlx::query(
                    "SELECT start_us, id, body FROM dsar_retention_runs \
                     ORDER BY start_us DESC, id DESC LIMIT $1",
                )
                .bind(limit as i64)
                .fetch_all(self.db.pool())
                .await?
            }
            Some((start, id)) => {
                sqlx::query(
                    "SELECT start_us, id, body FROM dsar_retention_runs WHERE start_us < $1 \
                     OR (start_us = $2 AND id < $3) ORDER BY start_us DESC, id DESC LIMIT $4",
                )
                .bind(start)
                .bind(start)
                .bind(id)
                .bind(limit as i64)
                .fetch_all(self.db.pool())
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    decode(&r.try_get::<Vec<u8>, _>(2)?)?,
                ))
            })
            .collect()
    }
}
