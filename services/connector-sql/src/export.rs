//! ExportSubject: every record of the subject in the selected tables, one
//! query per table, streamed in batches.

use custodia_core::{ApiError, subject::SubjectId};
use custodia_proto::connector::v1::{self as pb, ExportedRecord};
use futures::TryStreamExt;
use prost::Message;
use prost_types::Struct;
use serde_json::Value as Json;
use sqlx::Row;
use tokio::sync::mpsc;
use tonic::Status;

use crate::{
    db::{Backend, q},
    service::{Inner, MAX_BATCH_BYTES, MAX_BATCH_RECORDS},
    values::{json_to_value, parse_time, sqlite_json, text_of, timestamp},
};

/// Sends the records of the subject `ids` in `tables` (indexes) to `out`, in
/// batches of at most [`MAX_BATCH_RECORDS`] records or [`MAX_BATCH_BYTES`].
pub(crate) async fn export(
    inner: &Inner,
    ids: Vec<SubjectId>,
    tables: Vec<usize>,
    out: &mpsc::Sender<Result<pb::ExportSubjectResponse, Status>>,
) -> Result<(), ApiError> {
    let mut conn = inner.db.pool.acquire().await?;
    let subject = inner.subject(&mut conn, ids).await?;
    let mut batch = pb::ExportSubjectResponse::default();
    let mut bytes = 0usize;
    for index in tables {
        let table = &inner.tables[index];
        let mut sql = inner.sql();
        let Some(cond) = subject.condition(&mut sql, table) else {
            continue;
        };
        let columns: Vec<&String> = table
            .schema
            .order
            .iter()
            .filter(|c| !table.cfg.exclude_columns.contains(c))
            .collect();
        let select = match inner.db.backend {
            Backend::Postgres => "CAST(to_jsonb(t) AS TEXT)".to_string(),
            // COALESCE hides the declared type, which the Any driver may not
            // know (DATETIME, BOOLEAN); values keep their storage class.
            Backend::Sqlite => columns
                .iter()
                .map(|c| format!("COALESCE(t.{}, NULL)", q(c)))
                .collect::<Vec<_>>()
                .join(", "),
        };
        sql.push(&format!(
            "SELECT {select} FROM {} WHERE {cond} ORDER BY t.{}",
            table.from(),
            q(&table.cfg.primary_key)
        ));
        let mut rows = sql.query().fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            let mut fields: serde_json::Map<String, Json> = match inner.db.backend {
                Backend::Postgres => {
                    let text: String = row.try_get(0)?;
                    match serde_json::from_str(&text).map_err(ApiError::internal)? {
                        Json::Object(m) => m,
                        _ => {
                            return Err(ApiError::internal(anyhow::anyhow!(
                                "row is not an object"
                            )));
                        }
                    }
                }
                Backend::Sqlite => {
                    let mut m = serde_json::Map::new();
                    for (i, c) in columns.iter().enumerate() {
                        m.insert((*c).clone(), sqlite_json(&row, i)?);
                    }
                    m
                }
            };
            for c in &table.cfg.exclude_columns {
                fields.remove(c);
            }
            let time = |c: &Option<String>| {
                c.as_ref().and_then(|c| {
                    fields
                        .get(c)
                        .and_then(|v| parse_time(v, table.schema.time_storage(c)))
                        .map(timestamp)
                })
            };
            let record = ExportedRecord {
                category: table.cfg.category().to_string(),
                record_id: fields
                    .get(&table.cfg.primary_key)
                    .map(text_of)
                    .unwrap_or_default(),
                create_time: time(&table.cfg.created_column),
                update_time: time(&table.cfg.updated_column),
                fields: Some(Struct {
                    fields: fields
                        .into_iter()
                        .map(|(k, v)| (k, json_to_value(v)))
                        .collect(),
                }),
            };
            // Field 1, length-delimited: tag + length prefix + the record.
            let len = record.encoded_len();
            let size = 1 + prost::length_delimiter_len(len) + len;
            if !batch.records.is_empty()
                && (batch.records.len() >= MAX_BATCH_RECORDS || bytes + size > MAX_BATCH_BYTES)
            {
                if out.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                    return Ok(()); // the caller went away
                }
                bytes = 0;
            }
            bytes += size;
            batch.records.push(record);
        }
    }
    if !batch.records.is_empty() {
        let _ = out.send(Ok(batch)).await;
    }
    Ok(())
}
