//! The one idempotency mechanism of every mutating RPC.
//!
//! A caller that may retry a write sends a `request_id`. The key it claims is
//! scoped to the caller and the method, `(principal, method, request_id)`, and
//! bound to a fingerprint of the whole request message:
//! - the same principal retrying with the same body gets the first call's
//!   answer (a replay, which is an access event like any call);
//! - the same principal reusing the key with another body is refused with
//!   FAILED_PRECONDITION `IDEMPOTENCY_KEY_REUSED`: its new data would otherwise
//!   be dropped silently;
//! - another principal's key is simply a new key for this one: nothing of the
//!   first caller's call is ever returned to it.
//!
//! The key is claimed in the same transaction as the write it guards
//! ([`claim`]), so a crash cannot separate them; the table, `request_keys`, is
//! in every service's database (the shared migrations of this crate).

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use crate::{auth::CallContext, error::ApiError, storage::Db};

/// Longest accepted `request_id`, in bytes.
pub const MAX_REQUEST_ID: usize = 128;

/// `ErrorInfo.reason` of a key reused with another request body.
pub const KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// An idempotency key: who called which method with which `request_id`, and a
/// fingerprint of what they sent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    principal: String,
    method: String,
    request_id: String,
    fingerprint: String,
}

impl std::fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestKey")
            .field("principal", &self.principal)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl RequestKey {
    /// The key of `request` to `method` by `principal`; `None` without a `request_id`.
    pub fn new(
        principal: &str,
        method: &str,
        request_id: &str,
        request: &impl Message,
    ) -> Option<Self> {
        if request_id.is_empty() {
            return None;
        }
        Some(Self {
            principal: principal.to_string(),
            method: method.to_string(),
            request_id: request_id.to_string(),
            fingerprint: fingerprint(request),
        })
    }

    /// The key of `request` to `method` by the caller of `call`.
    pub fn of(
        call: &CallContext,
        method: &str,
        request_id: &str,
        request: &impl Message,
    ) -> Option<Self> {
        Self::new(call.principal.name(), method, request_id, request)
    }

    /// The caller the key belongs to.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The method the key belongs to.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The caller's `request_id`.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Hex SHA-256 of the request message.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The refusal of a reuse of this key with another body.
    pub fn reused(&self) -> ApiError {
        reused(&self.method)
    }
}

/// Hex SHA-256 of `request`'s protobuf encoding. prost encodes fields in field
/// order and custodia's messages have no maps, so equal messages give equal
/// bytes whatever encoding (gRPC, JSON) they arrived in.
pub fn fingerprint(request: &impl Message) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// FAILED_PRECONDITION `IDEMPOTENCY_KEY_REUSED` for `method`.
pub fn reused(method: &str) -> ApiError {
    ApiError::precondition(
        KEY_REUSED,
        format!(
            "request_id was already used by this caller for a different {method} request; \
             send a new request_id for a new request (the field `request_id` names a retry \
             of the same request only)"
        ),
    )
}

/// What an earlier call with the same key left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    /// The resource it wrote, as the store named it.
    pub resource: String,
    /// Its answer, for methods that keep it ([`set_response`]).
    pub response: Option<Vec<u8>>,
}

/// The outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use of the key (or no key): go ahead and write.
    Fresh,
    /// A retry of an earlier call with the same body: answer with what it left.
    Replay(Earlier),
}

/// Claims `key` for `resource` inside the caller's write transaction. A key
/// used before with another fingerprint is refused with [`reused`].
pub async fn claim(
    conn: &mut AnyConnection,
    key: Option<&RequestKey>,
    resource: &str,
    now_us: i64,
) -> Result<Claim, ApiError> {
    let Some(key) = key else {
        return Ok(Claim::Fresh);
    };
    let inserted = sqlx::query(
        "INSERT INTO request_keys (principal, method, request_id, fingerprint, resource, \
         create_us) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (principal, method, request_id) DO NOTHING",
    )
    .bind(key.principal.clone())
    .bind(key.method.clone())
    .bind(key.request_id.clone())
    .bind(key.fingerprint.clone())
    .bind(resource.to_string())
    .bind(now_us)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    match find(conn, key).await? {
        Some(earlier) => Ok(Claim::Replay(earlier)),
        // The conflicting row is gone again (its transaction rolled back after
        // ours saw it): writing now could do the work twice, so the caller
        // retries and finds the key free or taken.
        None => Err(ApiError::Unavailable(
            "a call with the same request_id was in progress; retry the call".into(),
        )),
    }
}

/// What an earlier call with `key` left, if there was one; [`reused`] if that
/// call sent another body.
pub async fn find(conn: &mut AnyConnection, key: &RequestKey) -> Result<Option<Earlier>, ApiError> {
    let row = sqlx::query(
        "SELECT fingerprint, resource, response FROM request_keys \
         WHERE principal = $1 AND method = $2 AND request_id = $3",
    )
    .bind(key.principal.clone())
    .bind(key.method.clone())
    .bind(key.request_id.clone())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored: String = row.try_get(0)?;
    if stored != key.fingerprint {
        return Err(key.reused());
    }
    Ok(Some(Earlier {
        resource: row.try_get(1)?,
        response: row.try_get(2)?,
    }))
}

/// Renames what the claimed `key` wrote (a store that learns it only after
/// writing, e.g. the name of an appended entry).
pub async fn set_resource(
    conn: &mut AnyConnection,
    key: Option<&RequestKey>,
    resource: &str,
) -> Result<(), ApiError> {
    let Some(key) = key else { return Ok(()) };
    sqlx::query(
        "UPDATE request_keys SET resource = $4 \
         WHERE principal = $1 AND method = $2 AND request_id = $3",
    )
    .bind(key.principal.clone())
    .bind(key.method.clone())
    .bind(key.request_id.clone())
    .bind(resource.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Keeps the first answer of the claimed `key`, for methods whose answer is
/// not a stored resource that a replay could read again.
pub async fn set_response(
    conn: &mut AnyConnection,
    key: Option<&RequestKey>,
    response: &impl Message,
) -> Result<(), ApiError> {
    let Some(key) = key else { return Ok(()) };
    sqlx::query(
        "UPDATE request_keys SET response = $4 \
         WHERE principal = $1 AND method = $2 AND request_id = $3",
    )
    .bind(key.principal.clone())
    .bind(key.method.clone())
    .bind(key.request_id.clone())
    .bind(response.encode_to_vec())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The answer kept with `earlier` ([`set_response`]), decoded.
pub fn kept_response<M: Message + Default>(earlier: &Earlier) -> Result<M, ApiError> {
    let bytes = earlier.response.as_deref().ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("idempotency key without a kept answer"))
    })?;
    M::decode(bytes).map_err(ApiError::internal)
}

/// How long a claim without an answer ([`begin`]) holds off other calls with
/// its key: past this, the first call is taken for dead (its process stopped
/// mid-way) and a retry does the (repeatable) work again.
pub const IN_PROGRESS_FOR_US: i64 = 120_000_000;

/// For a method whose work is naturally repeatable and spans several
/// transactions (shredding, erasure): claims `key` before the work starts.
/// `None`: go ahead, then [`finish`] (or [`abandon`] on failure). `Some`: the
/// answer of an earlier call with the key, to give again. A call while another
/// with the same key is still working is refused UNAVAILABLE (retry), so two
/// concurrent calls never both work and give different answers.
pub async fn begin<M: Message + Default>(
    db: &Db,
    key: Option<&RequestKey>,
    now_us: i64,
) -> Result<Option<M>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let mut tx = db.begin_write().await?;
    let answer = match claim(&mut tx, Some(key), "", now_us).await? {
        Claim::Fresh => None,
        Claim::Replay(earlier) if earlier.response.is_some() => Some(kept_response(&earlier)?),
        Claim::Replay(_) => {
            let taken = sqlx::query(
                "UPDATE request_keys SET create_us = $4 \
                 WHERE principal = $1 AND method = $2 AND request_id = $3 \
                 AND response IS NULL AND create_us < $5",
            )
            .bind(key.principal.clone())
            .bind(key.method.clone())
            .bind(key.request_id.clone())
            .bind(now_us)
            .bind(now_us - IN_PROGRESS_FOR_US)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if taken == 0 {
                return Err(ApiError::Unavailable(format!(
                    "a {} call with the same request_id is in progress; retry the call \
                     to get its answer",
                    key.method
                )));
            }
            None
        }
    };
    tx.commit().await?;
    Ok(answer)
}

/// Keeps `response` as the answer of the key [`begin`] claimed, and returns it.
pub async fn finish<M: Message>(
    db: &Db,
    key: Option<&RequestKey>,
    response: M,
) -> Result<M, ApiError> {
    if key.is_some() {
        let mut tx = db.begin_write().await?;
        set_response(&mut tx, key, &response).await?;
        tx.commit().await?;
    }
    Ok(response)
}

/// Frees the key [`begin`] claimed after the work failed, so a retry works
/// at once instead of waiting for the claim to go stale.
pub async fn abandon(db: &Db, key: Option<&RequestKey>) {
    let Some(key) = key else { return };
    let freed = async {
        let mut tx = db.begin_write().await?;
        sqlx::query(
            "DELETE FROM request_keys WHERE principal = $1 AND method = $2 \
             AND request_id = $3 AND response IS NULL",
        )
        .bind(key.principal.clone())
        .bind(key.method.clone())
        .bind(key.request_id.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    if let Err(e) = freed.await {
        tracing::warn!(error = %e, "could not free an idempotency key after a failed call");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_bind_caller_method_and_body() {
        let a = prost_types::Duration {
            seconds: 1,
            nanos: 0,
        };
        let b = prost_types::Duration {
            seconds: 2,
            nanos: 0,
        };
        assert!(RequestKey::new("crm", "M", "", &a).is_none());
        let k = RequestKey::new("crm", "M", "r1", &a).unwrap();
        assert_eq!(k, RequestKey::new("crm", "M", "r1", &a).unwrap());
        assert_ne!(k, RequestKey::new("moodle", "M", "r1", &a).unwrap());
        assert_ne!(k, RequestKey::new("crm", "N", "r1", &a).unwrap());
        assert_ne!(
            k.fingerprint(),
            RequestKey::new("crm", "M", "r1", &b).unwrap().fingerprint()
        );
        assert!(!format!("{k:?}").contains("r1"), "Debug keeps ids out");
    }

    #[test]
    fn reuse_is_a_precondition_naming_request_id() {
        let status = tonic::Status::from(reused("ReportBreach"));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("request_id"));
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.reason, KEY_REUSED);
    }
}
