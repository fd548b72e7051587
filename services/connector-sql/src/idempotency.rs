//! Mutations once per `request_id`.
//!
//! The connector keeps its keys in the database it serves (the institution's),
//! not in custodia's `request_keys`; the rules are custodia's own
//! (`custodia_core::idempotency`): bound to the request's fingerprint, a reuse
//! with another body refused with IDEMPOTENCY_KEY_REUSED. Its one caller is
//! custodia's dsar service, so keys are not scoped by principal here.

use chrono::{DateTime, Utc};
use custodia_core::{ApiError, idempotency};
use prost::Message;
use sqlx::{AnyConnection, Row};

use crate::db::{Backend, Bind, Sql, execute};

/// What claiming a request id found.
pub(crate) enum Claim {
    /// Not claimed before: the caller does the work.
    New,
    /// Done by an earlier call: its encoded response.
    Done(Vec<u8>),
}

/// Claims `request_id` for `rpc` in the caller's transaction.
pub(crate) async fn claim(
    conn: &mut AnyConnection,
    backend: Backend,
    rpc: &str,
    request_id: &str,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> Result<Claim, ApiError> {
    let mut sql = Sql::new(backend);
    let (a, b, c, d) = (
        sql.param(Bind::Text(request_id.into())),
        sql.param(Bind::Text(rpc.into())),
        sql.param(Bind::Text(fingerprint.into())),
        sql.param(Bind::Int(now.timestamp_micros())),
    );
    sql.push(&format!(
        "INSERT INTO custodia_connector_requests (request_id, rpc, fingerprint, created_at) \
         VALUES ({a}, {b}, {c}, {d}) ON CONFLICT (request_id, rpc) DO NOTHING"
    ));
    if execute(conn, sql).await? == 1 {
        return Ok(Claim::New);
    }
    let row = sqlx::query(
        "SELECT fingerprint, response FROM custodia_connector_requests \
         WHERE request_id = $1 AND rpc = $2",
    )
    .bind(request_id)
    .bind(rpc)
    .fetch_one(conn)
    .await?;
    let stored: String = row.try_get(0)?;
    let response: Option<Vec<u8>> = row.try_get(1)?;
    if stored != fingerprint {
        return Err(idempotency::reused(rpc));
    }
    Ok(Claim::Done(response.unwrap_or_default()))
}

/// Keeps the response of the call that claimed `request_id`.
pub(crate) async fn record(
    conn: &mut AnyConnection,
    rpc: &str,
    request_id: &str,
    response: &impl Message,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE custodia_connector_requests SET response = $1 WHERE request_id = $2 AND rpc = $3",
    )
    .bind(response.encode_to_vec())
    .bind(request_id)
    .bind(rpc)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `work` once per `request_id`: in one transaction with the claim, or
/// answers the stored response of the first call.
macro_rules! once_per_request {
    ($self:expr, $rpc:expr, $request:expr, $request_id:expr, |$conn:ident| $work:expr) => {{
        let inner = &$self.inner;
        let mut tx = inner
            .db
            .begin_write()
            .await
            .map_err(custodia_core::ApiError::from)?;
        let fp = custodia_core::idempotency::fingerprint(&$request);
        match $crate::idempotency::claim(
            &mut *tx,
            inner.db.backend,
            $rpc,
            &$request_id,
            &fp,
            inner.clock.now(),
        )
        .await?
        {
            $crate::idempotency::Claim::Done(bytes) => {
                tx.rollback().await.map_err(custodia_core::ApiError::from)?;
                prost::Message::decode(bytes.as_slice())
                    .map_err(custodia_core::ApiError::internal)?
            }
            $crate::idempotency::Claim::New => {
                let response = {
                    let $conn: &mut sqlx::AnyConnection = &mut *tx;
                    $work
                }?;
                $crate::idempotency::record(&mut *tx, $rpc, &$request_id, &response).await?;
                tx.commit().await.map_err(custodia_core::ApiError::from)?;
                response
            }
        }
    }};
}
pub(crate) use once_per_request;
