//! `custodia.connector.v1.DataSource` over the configured tables.
//!
//! Every mutation runs in one transaction that first claims its `request_id`
//! in `custodia_connector_requests`; a repeat finds the claim and gets the
//! first call's stored response, so nothing is changed or counted twice.

use std::{pin::Pin, sync::Arc};

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use custodia_core::{
    ApiError,
    echo::echo,
    idempotency,
    legal_time::{CalendarPeriod, Clock},
    subject::SubjectId,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::{RetainedData, RetentionAction, RetentionPolicy},
    connector::v1::{
        self as pb, Capability, CategoryCount, DataCategory, ExportedRecord, RestrictionAction,
        data_source_server::DataSource,
    },
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use prost_types::{Struct, Timestamp, Value, value::Kind};
use serde_json::Value as Json;
use sqlx::{
    AnyConnection, Connection, Row,
    any::{AnyRow, AnyTypeInfoKind},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    Table,
    config::{EraseAction, FixedValue, RestrictionKind, TimeUnit},
    db::{Backend, Bind, ColKind, Column, Db, Sql, TimeStorage, execute, q},
    subject::Subject,
};

/// Implementation name reported by GetCapabilities.
pub const VERSION: &str = concat!("custodia-connector-sql/", env!("CARGO_PKG_VERSION"));
/// At most this many records per ExportSubject message.
pub const MAX_BATCH_RECORDS: usize = 1000;
/// At most this many bytes per ExportSubject message (a single larger record
/// is sent alone).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
const MAX_REQUEST_ID: usize = 128;
const MAX_IDENTIFIERS: usize = 32;
const MAX_CORRECTIONS: usize = 256;
const MAX_VALUE_BYTES: usize = 64 * 1024;
/// 2^53: larger integers are exported as decimal strings.
const MAX_SAFE_INT: i64 = 1 << 53;

type Reply<T> = Result<Response<T>, Status>;
type ExportStream =
    Pin<Box<dyn Stream<Item = Result<pb::ExportSubjectResponse, Status>> + Send + 'static>>;

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct SqlDataSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    display_name: String,
    tables: Vec<Table>,
    clock: Arc<dyn Clock>,
}

impl SqlDataSource {
    pub(crate) fn new(
        db: Db,
        display_name: String,
        tables: Vec<Table>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                display_name,
                tables,
                clock,
            }),
        }
    }
}

// ---------------------------------------------------------------- validation

fn subject_ids(
    v: &mut Validator,
    refs: &[custodia_proto::common::v1::SubjectRef],
) -> Vec<SubjectId> {
    if refs.is_empty() {
        v.add("subject_identifiers", "at least one identifier is required");
    } else if refs.len() > MAX_IDENTIFIERS {
        v.add(
            "subject_identifiers",
            format!("at most {MAX_IDENTIFIERS} identifiers"),
        );
    }
    let mut ids = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        match SubjectId::parse(&r.r#type, &r.value, &format!("subject_identifiers[{i}]")) {
            Ok(id) => ids.push(id),
            Err(ApiError::InvalidArgument(list)) => {
                for f in list {
                    v.add(f.field, f.description);
                }
            }
            Err(other) => v.add(format!("subject_identifiers[{i}]"), other.to_string()),
        }
    }
    ids
}

fn request_id(v: &mut Validator, field: &str, value: &str) {
    v.required(field, value, MAX_REQUEST_ID);
}

impl Inner {
    /// The tables selected by `categories` (all when empty).
    fn select<'a>(
        &'a self,
        v: &mut Validator,
        field: &str,
        categories: &[String],
    ) -> Vec<&'a Table> {
        if categories.is_empty() {
            return self.tables.iter().collect();
        }
        let mut out = Vec::new();
        for (i, c) in categories.iter().enumerate() {
            match self.tables.iter().find(|t| t.cfg.category() == c) {
                Some(t) => {
                    if !out.iter().any(|o: &&Table| std::ptr::eq(*o, t)) {
                        out.push(t);
                    }
                }
                None => v.add(
                    format!("{field}[{i}]"),
                    format!(
                        "unknown category `{}` (GetCapabilities lists them)",
                        echo(c)
                    ),
                ),
            }
        }
        // Keep configuration order, which erasure relies on.
        out.sort_by_key(|t| self.tables.iter().position(|x| std::ptr::eq(x, *t)));
        out
    }

    fn sql(&self) -> Sql {
        Sql::new(self.db.backend)
    }

    async fn subject(
        &self,
        conn: &mut AnyConnection,
        ids: Vec<SubjectId>,
    ) -> Result<Subject, ApiError> {
        let mut subject = Subject::new(ids);
        subject
            .widen(conn, &self.tables, self.db.backend)
            .await
            .map_err(ApiError::internal)?;
        Ok(subject)
    }
}

// ---------------------------------------------------------------- idempotency
//
// The connector keeps its keys in the database it serves (the institution's),
// not in custodia's `request_keys`; the rules are custodia's own
// (`custodia_core::idempotency`): bound to the request's fingerprint, a reuse
// with another body refused with IDEMPOTENCY_KEY_REUSED. Its one caller is
// custodia's dsar service, so keys are not scoped by principal here.

enum Claim {
    New,
    Done(Vec<u8>),
}

async fn claim(
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

async fn record(
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
        let mut tx = inner.db.begin_write().await.map_err(ApiError::from)?;
        let fp = idempotency::fingerprint(&$request);
        match claim(
            &mut *tx,
            inner.db.backend,
            $rpc,
            &$request_id,
            &fp,
            inner.clock.now(),
        )
        .await?
        {
            Claim::Done(bytes) => {
                tx.rollback().await.map_err(ApiError::from)?;
                Message::decode(bytes.as_slice()).map_err(ApiError::internal)?
            }
            Claim::New => {
                let response = {
                    let $conn: &mut AnyConnection = &mut *tx;
                    $work
                }?;
                record(&mut *tx, $rpc, &$request_id, &response).await?;
                tx.commit().await.map_err(ApiError::from)?;
                response
            }
        }
    }};
}

// ---------------------------------------------------------------- values

fn json_to_value(v: Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) if !(-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&i) => {
                Kind::StringValue(i.to_string())
            }
            Some(i) => Kind::NumberValue(i as f64),
            None => match n.as_u64() {
                Some(u) => Kind::StringValue(u.to_string()),
                None => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            },
        },
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The value of column `i` of a SQLite row, by its storage class.
fn sqlite_json(row: &AnyRow, i: usize) -> Result<Json, sqlx::Error> {
    use sqlx::{TypeInfo, ValueRef};
    let raw = row.try_get_raw(i)?;
    if raw.is_null() || raw.type_info().is_null() {
        return Ok(Json::Null);
    }
    let kind = raw.type_info().kind();
    Ok(match kind {
        AnyTypeInfoKind::Bool => Json::Bool(row.try_get(i)?),
        AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
            Json::from(row.try_get::<i64, _>(i)?)
        }
        AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => {
            serde_json::Number::from_f64(row.try_get::<f64, _>(i)?).map_or(Json::Null, Json::Number)
        }
        AnyTypeInfoKind::Text => Json::String(row.try_get(i)?),
        AnyTypeInfoKind::Blob => Json::String(
            base64::engine::general_purpose::STANDARD.encode(row.try_get::<Vec<u8>, _>(i)?),
        ),
        AnyTypeInfoKind::Null => Json::Null,
    })
}

fn text_of(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// A time read from a record field.
fn parse_time(v: &Json, storage: TimeStorage) -> Option<DateTime<Utc>> {
    match v {
        Json::Number(n) => {
            let i = n.as_i64()?;
            match storage {
                TimeStorage::Unix(TimeUnit::Milliseconds) => DateTime::from_timestamp_millis(i),
                _ => DateTime::from_timestamp(i, 0),
            }
        }
        Json::String(s) => parse_text_time(s),
        _ => None,
    }
}

fn parse_text_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.to_utc());
        }
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn fixed_bind(v: &FixedValue) -> Bind {
    match v {
        FixedValue::Bool(b) => Bind::Bool(*b),
        FixedValue::Int(i) => Bind::Int(*i),
        FixedValue::Float(f) => Bind::Float(*f),
        FixedValue::Text(s) => Bind::Text(s.clone()),
    }
}

/// A correction's value for `column`, or why it does not fit.
fn correction_bind(column: &Column, value: Option<&Value>) -> Result<Bind, String> {
    let scalar = "must be a string, number, boolean or null";
    match value.and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(Bind::Null),
        Some(Kind::BoolValue(b)) => match column.kind {
            ColKind::Bool | ColKind::Integer | ColKind::Other => Ok(Bind::Bool(*b)),
            _ => Err(format!("field `{}` does not take a boolean", column.name)),
        },
        Some(Kind::NumberValue(n)) => match column.kind {
            ColKind::Integer if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(Bind::Int(*n as i64)),
            ColKind::Integer => Err(format!("field `{}` takes an integer", column.name)),
            ColKind::Float | ColKind::Other => Ok(Bind::Float(*n)),
            _ => Err(format!("field `{}` does not take a number", column.name)),
        },
        Some(Kind::StringValue(s)) => {
            if s.len() > MAX_VALUE_BYTES {
                return Err(format!("the value is longer than {MAX_VALUE_BYTES} bytes"));
            }
            match column.kind {
                ColKind::Integer => s
                    .trim()
                    .parse::<i64>()
                    .map(Bind::Int)
                    .map_err(|_| format!("field `{}` takes an integer", column.name)),
                ColKind::Float => s
                    .trim()
                    .parse::<f64>()
                    .map(Bind::Float)
                    .map_err(|_| format!("field `{}` takes a number", column.name)),
                ColKind::Bool => Err(format!("field `{}` takes a boolean", column.name)),
                ColKind::Timestamp => parse_text_time(s)
                    .map(|t| Bind::Text(t.to_rfc3339()))
                    .ok_or_else(|| format!("field `{}` takes an RFC 3339 date-time", column.name)),
                ColKind::Text | ColKind::Other => Ok(Bind::Text(s.clone())),
            }
        }
        Some(_) => Err(scalar.to_string()),
    }
}

/// The smallest Unix second `s` with `period.after(s) > now`: rows whose
/// anchor is at or after it are still within the period.
fn period_threshold(period: &CalendarPeriod, now: DateTime<Utc>) -> i64 {
    let at = |s: i64| DateTime::from_timestamp(s, 0).map(|t| period.after(t));
    let span = (i64::from(period.years) * 366
        + i64::from(period.months) * 31
        + i64::from(period.weeks) * 7
        + i64::from(period.days)
        + 2)
        * 86_400
        + i64::from(period.hours) * 3600
        + i64::from(period.minutes) * 60
        + i64::from(period.seconds);
    let mut lo = now.timestamp().saturating_sub(span);
    let mut hi = now.timestamp();
    if at(lo).is_none_or(|t| t > now) {
        return lo;
    }
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        match at(mid) {
            Some(t) if t > now => hi = mid,
            _ => lo = mid,
        }
    }
    hi
}

fn count(category: &str, n: i64) -> CategoryCount {
    CategoryCount {
        category: category.to_string(),
        count: n,
    }
}

// ---------------------------------------------------------------- conditions

impl Table {
    fn from(&self) -> String {
        format!("{} AS t", q(&self.cfg.name))
    }

    /// `WHERE "pk" IN (SELECT t."pk" FROM ... WHERE cond)`: UPDATE and DELETE
    /// cannot alias their table on every backend.
    fn rows_in(&self, cond: &str) -> String {
        format!(
            "{pk} IN (SELECT t.{pk} FROM {from} WHERE {cond})",
            pk = q(&self.cfg.primary_key),
            from = self.from()
        )
    }

    /// Rows still within their legal retention (kept on erasure).
    fn held(&self, sql: &mut Sql, now: DateTime<Utc>) -> Option<String> {
        let hold = self.cfg.retained_by_law.as_ref()?;
        let period = self.hold_period.expect("checked at start-up");
        let e = sql.epoch_seconds(&self.schema, &hold.anchor_column);
        let p = sql.param(Bind::Int(period_threshold(&period, now)));
        Some(format!("({e} IS NOT NULL AND {e} >= {p})"))
    }

    /// Rows whose processing is restricted.
    fn restricted(&self, sql: &mut Sql, backend: Backend) -> String {
        match &self.cfg.restriction {
            Some(r) if r.kind == RestrictionKind::Timestamp => {
                format!("t.{} IS NOT NULL", q(&r.column))
            }
            Some(r) => {
                if backend == Backend::Postgres && self.schema.col(&r.column).kind == ColKind::Bool
                {
                    format!("COALESCE(t.{}, FALSE)", q(&r.column))
                } else {
                    format!("COALESCE(t.{}, 0) <> 0", q(&r.column))
                }
            }
            None => {
                let p = sql.param(Bind::Text(self.cfg.name.clone()));
                format!(
                    "EXISTS (SELECT 1 FROM custodia_connector_restrictions r \
                     WHERE r.table_name = {p} AND r.record_id = CAST(t.{} AS TEXT))",
                    q(&self.cfg.primary_key)
                )
            }
        }
    }

    /// Rows not anonymised yet (so a second pass changes and counts nothing).
    fn not_anonymised(&self, sql: &mut Sql) -> String {
        let Some(a) = &self.cfg.anonymise else {
            return "1 = 1".into();
        };
        let mut terms: Vec<String> = a
            .set_null
            .iter()
            .map(|c| format!("t.{} IS NOT NULL", q(c)))
            .collect();
        for (c, v) in &a.set {
            let col = self.schema.col(c).clone();
            let p = sql.param_for(&col, fixed_bind(v));
            terms.push(format!("(t.{} IS NULL OR t.{} <> {p})", q(c), q(c)));
        }
        format!("({})", terms.join(" OR "))
    }

    /// Deletes or anonymises the rows matching `cond` (built in `sql`); the count.
    async fn dispose(
        &self,
        conn: &mut AnyConnection,
        mut sql: Sql,
        cond: String,
        action: EraseAction,
    ) -> Result<i64, ApiError> {
        match action {
            EraseAction::Delete => {
                if self.cfg.restriction.is_none() {
                    // The connector's own restriction rows go with the records.
                    let mut side = sql.clone();
                    let p = side.param(Bind::Text(self.cfg.name.clone()));
                    side.push(&format!(
                        "DELETE FROM custodia_connector_restrictions WHERE table_name = {p} \
                         AND record_id IN (SELECT CAST(t.{} AS TEXT) FROM {} WHERE {cond})",
                        q(&self.cfg.primary_key),
                        self.from()
                    ));
                    execute(conn, side).await?;
                }
                sql.push(&format!(
                    "DELETE FROM {} WHERE {}",
                    q(&self.cfg.name),
                    self.rows_in(&cond)
                ));
                Ok(execute(conn, sql).await? as i64)
            }
            EraseAction::Anonymise => {
                let a = self.cfg.anonymise.as_ref().expect("checked at start-up");
                let mut sets: Vec<String> = a
                    .set_null
                    .iter()
                    .map(|c| format!("{} = NULL", q(c)))
                    .collect();
                for (c, v) in &a.set {
                    let col = self.schema.col(c).clone();
                    let p = sql.param_for(&col, fixed_bind(v));
                    sets.push(format!("{} = {p}", q(c)));
                }
                let not_yet = self.not_anonymised(&mut sql);
                sql.push(&format!(
                    "UPDATE {} SET {} WHERE {}",
                    q(&self.cfg.name),
                    sets.join(", "),
                    self.rows_in(&format!("{cond} AND {not_yet}"))
                ));
                Ok(execute(conn, sql).await? as i64)
            }
        }
    }

    fn retained(&self, kept: i64, max_anchor: Option<i64>) -> Option<RetainedData> {
        let hold = self.cfg.retained_by_law.as_ref()?;
        if kept == 0 {
            return None;
        }
        let period = self.hold_period?;
        let until = max_anchor
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .map(|t| timestamp(period.after(t)));
        Some(RetainedData {
            category: self.cfg.category().to_string(),
            description: format!(
                "{kept} record(s) of {}{}",
                self.cfg.category(),
                if self.cfg.description.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.cfg.description)
                }
            ),
            record_count: kept,
            ground: hold.ground.proto() as i32,
            legal_reference: hold.legal_reference.clone(),
            reason: hold.reason.clone(),
            retain_until_time: until,
        })
    }
}

/// Counts rows and the latest legal anchor among them.
async fn count_held(
    conn: &mut AnyConnection,
    table: &Table,
    mut sql: Sql,
    cond: &str,
) -> Result<(i64, Option<i64>), ApiError> {
    let hold = table.cfg.retained_by_law.as_ref().expect("held table");
    let e = sql.epoch_seconds(&table.schema, &hold.anchor_column);
    sql.push(&format!(
        "SELECT COUNT(*), MAX({e}) FROM {} WHERE {cond}",
        table.from()
    ));
    let row = sql.query().fetch_one(conn).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

async fn count_rows(
    conn: &mut AnyConnection,
    table: &Table,
    mut sql: Sql,
    cond: &str,
) -> Result<i64, ApiError> {
    sql.push(&format!(
        "SELECT COUNT(*) FROM {} WHERE {cond}",
        table.from()
    ));
    Ok(sql.query().fetch_one(conn).await?.try_get(0)?)
}

// ---------------------------------------------------------------- export

impl Inner {
    async fn export(
        &self,
        ids: Vec<SubjectId>,
        tables: Vec<usize>,
        out: &mpsc::Sender<Result<pb::ExportSubjectResponse, Status>>,
    ) -> Result<(), ApiError> {
        let mut conn = self.db.pool.acquire().await?;
        let subject = self.subject(&mut conn, ids).await?;
        let mut batch = pb::ExportSubjectResponse::default();
        let mut bytes = 0usize;
        for index in tables {
            let table = &self.tables[index];
            let mut sql = self.sql();
            let Some(cond) = subject.condition(&mut sql, table) else {
                continue;
            };
            let columns: Vec<&String> = table
                .schema
                .order
                .iter()
                .filter(|c| !table.cfg.exclude_columns.contains(c))
                .collect();
            let select = match self.db.backend {
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
                let mut fields: serde_json::Map<String, Json> = match self.db.backend {
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
}

// ---------------------------------------------------------------- the service

#[tonic::async_trait]
impl DataSource for SqlDataSource {
    async fn get_capabilities(
        &self,
        _request: Request<pb::GetCapabilitiesRequest>,
    ) -> Reply<pb::GetCapabilitiesResponse> {
        let inner = &self.inner;
        let mut capabilities = vec![
            Capability::Export as i32,
            Capability::Erase as i32,
            Capability::Restrict as i32,
        ];
        if inner.tables.iter().any(|t| !t.cfg.rectifiable.is_empty()) {
            capabilities.push(Capability::Rectify as i32);
        }
        if inner.tables.iter().any(|t| t.cfg.retention.is_some()) {
            capabilities.push(Capability::Retention as i32);
        }
        let mut identifier_types: Vec<String> = inner
            .tables
            .iter()
            .flat_map(|t| t.cfg.identifiers.keys().cloned())
            .collect();
        identifier_types.sort();
        identifier_types.dedup();
        let categories = inner
            .tables
            .iter()
            .map(|t| {
                let action = match t.cfg.erase {
                    EraseAction::Delete => RetentionAction::Delete,
                    EraseAction::Anonymise => RetentionAction::Anonymise,
                } as i32;
                let retention = match (&t.cfg.retention, &t.cfg.retained_by_law) {
                    (Some(r), _) => Some(RetentionPolicy {
                        period: r.period.clone(),
                        anchor: r.anchor.clone(),
                        criteria: r.criteria.clone(),
                        action,
                    }),
                    (None, Some(h)) => Some(RetentionPolicy {
                        period: h.period.clone(),
                        anchor: String::new(),
                        criteria: h.reason.clone(),
                        action,
                    }),
                    (None, None) => None,
                };
                DataCategory {
                    category: t.cfg.category().to_string(),
                    description: t.cfg.description.clone(),
                    purposes: t.cfg.purposes.clone(),
                    recipients: t.cfg.recipients.clone(),
                    retention,
                    origin: t.cfg.origin.clone(),
                }
            })
            .collect();
        Ok(Response::new(pb::GetCapabilitiesResponse {
            display_name: inner.display_name.clone(),
            version: VERSION.to_string(),
            capabilities,
            identifier_types,
            categories,
        }))
    }

    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Reply<ExportStream> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let ids = subject_ids(&mut v, &req.subject_identifiers);
        v.max_len("dsar_request", &req.dsar_request, MAX_ID);
        let tables: Vec<usize> = self
            .inner
            .select(&mut v, "categories", &req.categories)
            .into_iter()
            .filter_map(|t| self.inner.tables.iter().position(|x| std::ptr::eq(x, t)))
            .collect();
        v.finish()?;
        let (tx, rx) = mpsc::channel(2);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.export(ids, tables, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Reply<pb::EraseSubjectResponse> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let ids = subject_ids(&mut v, &req.subject_identifiers);
        v.max_len("dsar_request", &req.dsar_request, MAX_ID);
        request_id(&mut v, "request_id", &req.request_id);
        let tables = self.inner.select(&mut v, "categories", &req.categories);
        v.finish()?;
        let inner = &self.inner;
        let now = inner.clock.now();
        let response: pb::EraseSubjectResponse =
            once_per_request!(self, "EraseSubject", req, req.request_id, |conn| {
                async {
                    let subject = inner.subject(conn, ids).await?;
                    let mut erased = Vec::new();
                    let mut retained = Vec::new();
                    // Children before parents: the reverse of the configured order.
                    for table in tables.iter().rev() {
                        let mut sql = inner.sql();
                        let Some(cond) = subject.condition(&mut sql, table) else {
                            erased.push(count(table.cfg.category(), 0));
                            continue;
                        };
                        let cond = match table.held(&mut sql, now) {
                            Some(held) => {
                                let mut probe = inner.sql();
                                let c = subject.condition(&mut probe, table).unwrap_or_default();
                                let h = table.held(&mut probe, now).unwrap_or_default();
                                let (kept, max) =
                                    count_held(conn, table, probe, &format!("{c} AND {h}")).await?;
                                retained.extend(table.retained(kept, max));
                                format!("{cond} AND NOT {held}")
                            }
                            None => cond,
                        };
                        let n = table.dispose(conn, sql, cond, table.cfg.erase).await?;
                        erased.push(count(table.cfg.category(), n));
                    }
                    erased.reverse();
                    Ok::<_, ApiError>(pb::EraseSubjectResponse { erased, retained })
                }
                .await
            });
        Ok(Response::new(response))
    }

    async fn restrict_subject(
        &self,
        request: Request<pb::RestrictSubjectRequest>,
    ) -> Reply<pb::RestrictSubjectResponse> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let ids = subject_ids(&mut v, &req.subject_identifiers);
        v.max_len("dsar_request", &req.dsar_request, MAX_ID);
        v.max_len("reason", &req.reason, MAX_TEXT);
        request_id(&mut v, "request_id", &req.request_id);
        let action = RestrictionAction::try_from(req.action).unwrap_or_default();
        v.check(
            action != RestrictionAction::Unspecified,
            "action",
            "must be RESTRICTION_ACTION_RESTRICT or RESTRICTION_ACTION_LIFT",
        );
        let tables = self.inner.select(&mut v, "categories", &req.categories);
        v.finish()?;
        let inner = &self.inner;
        let now = inner.clock.now();
        let restrict = action == RestrictionAction::Restrict;
        let response: pb::RestrictSubjectResponse =
            once_per_request!(self, "RestrictSubject", req, req.request_id, |conn| {
                async {
                    let subject = inner.subject(conn, ids).await?;
                    let mut affected = Vec::new();
                    for table in &tables {
                        let mut sql = inner.sql();
                        let Some(cond) = subject.condition(&mut sql, table) else {
                            affected.push(count(table.cfg.category(), 0));
                            continue;
                        };
                        let n = match &table.cfg.restriction {
                            Some(r) => {
                                let column = q(&r.column);
                                let value = match (r.kind, restrict) {
                                    (RestrictionKind::Flag, flag) => {
                                        let col = table.schema.col(&r.column).clone();
                                        sql.param_for(&col, Bind::Bool(flag))
                                    }
                                    (RestrictionKind::Timestamp, true) => {
                                        let p = sql.time_for(&table.schema, &r.column, now);
                                        format!("COALESCE({column}, {p})")
                                    }
                                    (RestrictionKind::Timestamp, false) => "NULL".to_string(),
                                };
                                sql.push(&format!(
                                    "UPDATE {} SET {column} = {value} WHERE {}",
                                    q(&table.cfg.name),
                                    table.rows_in(&cond)
                                ));
                                execute(conn, sql).await? as i64
                            }
                            None => {
                                let mut probe = inner.sql();
                                let c = subject.condition(&mut probe, table).unwrap_or_default();
                                let n = count_rows(conn, table, probe, &c).await?;
                                let name = sql.param(Bind::Text(table.cfg.name.clone()));
                                let pk = q(&table.cfg.primary_key);
                                if restrict {
                                    let at = sql.param(Bind::Int(now.timestamp_micros()));
                                    let why = sql.param(Bind::Text(req.reason.clone()));
                                    sql.push(&format!(
                                        "INSERT INTO custodia_connector_restrictions \
                                         (table_name, record_id, restricted_at, reason) \
                                         SELECT {name}, CAST(t.{pk} AS TEXT), {at}, {why} \
                                         FROM {} WHERE {cond} \
                                         ON CONFLICT (table_name, record_id) DO NOTHING",
                                        table.from()
                                    ));
                                } else {
                                    sql.push(&format!(
                                        "DELETE FROM custodia_connector_restrictions \
                                         WHERE table_name = {name} AND record_id IN \
                                         (SELECT CAST(t.{pk} AS TEXT) FROM {} WHERE {cond})",
                                        table.from()
                                    ));
                                }
                                execute(conn, sql).await?;
                                n
                            }
                        };
                        affected.push(count(table.cfg.category(), n));
                    }
                    Ok::<_, ApiError>(pb::RestrictSubjectResponse { affected })
                }
                .await
            });
        Ok(Response::new(response))
    }

    async fn rectify_subject(
        &self,
        request: Request<pb::RectifySubjectRequest>,
    ) -> Reply<pb::RectifySubjectResponse> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let ids = subject_ids(&mut v, &req.subject_identifiers);
        v.max_len("dsar_request", &req.dsar_request, MAX_ID);
        request_id(&mut v, "request_id", &req.request_id);
        if req.corrections.is_empty() {
            v.add("corrections", "at least one correction is required");
        } else if req.corrections.len() > MAX_CORRECTIONS {
            v.add(
                "corrections",
                format!("at most {MAX_CORRECTIONS} corrections per request"),
            );
        }
        for (i, c) in req.corrections.iter().enumerate() {
            v.required(&format!("corrections[{i}].category"), &c.category, MAX_ID)
                .required(&format!("corrections[{i}].field"), &c.field, MAX_ID)
                .max_len(&format!("corrections[{i}].record_id"), &c.record_id, MAX_ID);
        }
        v.finish()?;
        let inner = &self.inner;
        let response: pb::RectifySubjectResponse = once_per_request!(
            self,
            "RectifySubject",
            req,
            req.request_id,
            |conn| {
                async {
                    let mut subject = inner.subject(conn, ids).await?;
                    let mut results = Vec::new();
                    for (i, c) in req.corrections.iter().enumerate() {
                        let refused = |message: String| pb::CorrectionResult {
                            index: i as i32,
                            applied: false,
                            record_count: 0,
                            message,
                        };
                        let Some(table) = inner.tables.iter().find(|t| t.cfg.category() == c.category)
                        else {
                            results.push(refused(format!("unknown category `{}`", c.category)));
                            continue;
                        };
                        if !table.cfg.rectifiable.contains(&c.field) {
                            results.push(refused(
                                if table.schema.columns.contains_key(&c.field) {
                                    format!(
                                        "field `{}` of `{}` cannot be rectified through this connector",
                                        c.field, c.category
                                    )
                                } else {
                                    format!("unknown field `{}` in `{}`", c.field, c.category)
                                },
                            ));
                            continue;
                        }
                        let column = table.schema.col(&c.field).clone();
                        let value = match correction_bind(&column, c.value.as_ref()) {
                            Ok(b) => b,
                            Err(message) => {
                                results.push(refused(message));
                                continue;
                            }
                        };
                        let mut sql = inner.sql();
                        let Some(mut cond) = subject.condition(&mut sql, table) else {
                            results.push(refused(format!(
                                "no record of the subject in `{}`",
                                c.category
                            )));
                            continue;
                        };
                        if !c.record_id.is_empty() {
                            let p = sql.param(Bind::Text(c.record_id.clone()));
                            cond = format!(
                                "{cond} AND CAST(t.{} AS TEXT) = {p}",
                                q(&table.cfg.primary_key)
                            );
                        }
                        let p = sql.param_for(&column, value.clone());
                        sql.push(&format!(
                            "UPDATE {} SET {} = {p} WHERE {}",
                            q(&table.cfg.name),
                            q(&c.field),
                            table.rows_in(&cond)
                        ));
                        // A value the database refuses fails this correction only.
                        let mut savepoint = conn.begin().await?;
                        match execute(&mut savepoint, sql).await {
                            Ok(0) => {
                                savepoint.rollback().await?;
                                results.push(refused(if c.record_id.is_empty() {
                                    format!("no record of the subject in `{}`", c.category)
                                } else {
                                    format!(
                                        "record `{}` of `{}` does not belong to the subject",
                                        c.record_id, c.category
                                    )
                                }));
                            }
                            Ok(n) => {
                                savepoint.commit().await?;
                                // A corrected identifier still identifies the subject.
                                if let (Some((kind, _)), Bind::Text(s)) = (
                                    table.cfg.identifiers.iter().find(|(_, col)| **col == c.field),
                                    &value,
                                ) && let Ok(id) = SubjectId::parse(kind, s, "")
                                {
                                    subject.add(&id);
                                }
                                results.push(pb::CorrectionResult {
                                    index: i as i32,
                                    applied: true,
                                    record_count: n as i64,
                                    message: String::new(),
                                });
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, category = %c.category, field = %c.field, "correction refused by the database");
                                savepoint.rollback().await?;
                                results.push(refused(format!(
                                    "the database refused the value for `{}`",
                                    c.field
                                )));
                            }
                        }
                    }
                    Ok::<_, ApiError>(pb::RectifySubjectResponse { results })
                }
                .await
            }
        );
        Ok(Response::new(response))
    }

    async fn apply_retention(
        &self,
        request: Request<pb::ApplyRetentionRequest>,
    ) -> Reply<pb::ApplyRetentionResponse> {
        let req = request.into_inner();
        let inner = &self.inner;
        let mut v = Validator::new();
        request_id(&mut v, "request_id", &req.request_id);
        let default_rule = pb::RetentionRule::default();
        let rule = req.rule.as_ref().unwrap_or(&default_rule);
        if req.rule.is_none() {
            v.add("rule", "is required");
        }
        v.required("rule.rule_id", &rule.rule_id, MAX_ID);
        let default_policy = RetentionPolicy::default();
        let policy = rule.policy.as_ref().unwrap_or(&default_policy);
        if req.rule.is_some() && rule.policy.is_none() {
            v.add("rule.policy", "is required");
        }
        let action = RetentionAction::try_from(policy.action).unwrap_or_default();
        if rule.policy.is_some() && action == RetentionAction::Unspecified {
            v.add(
                "rule.policy.action",
                "must be RETENTION_ACTION_DELETE or RETENTION_ACTION_ANONYMISE",
            );
        }
        let cutoff = rule
            .cutoff_time
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32));
        if req.rule.is_some() && cutoff.is_none() {
            v.add("rule.cutoff_time", "is required");
        }
        let tables: Vec<&Table> = if rule.categories.is_empty() {
            inner
                .tables
                .iter()
                .filter(|t| t.cfg.purposes.contains(&rule.rule_id))
                // Tables of the purpose that cannot apply the rule are left out;
                // naming such a category explicitly is FAILED_PRECONDITION below.
                .filter(|t| {
                    let able = t.cfg.retention.is_some()
                        && (action != RetentionAction::Anonymise || t.cfg.anonymise.is_some());
                    if !able {
                        tracing::info!(category = t.cfg.category(), rule = %rule.rule_id,
                            "retention rule skipped: no anchor or anonymisation configured");
                    }
                    able
                })
                .collect()
        } else {
            inner.select(&mut v, "rule.categories", &rule.categories)
        };
        v.finish()?;
        for t in &tables {
            if t.cfg.retention.is_none() {
                return Err(ApiError::precondition(
                    "NO_RETENTION_ANCHOR",
                    format!(
                        "category `{}` has no retention anchor column configured in this connector",
                        t.cfg.category()
                    ),
                )
                .into());
            }
            if action == RetentionAction::Anonymise && t.cfg.anonymise.is_none() {
                return Err(ApiError::precondition(
                    "NO_ANONYMISATION",
                    format!(
                        "category `{}` has no anonymisation configured in this connector",
                        t.cfg.category()
                    ),
                )
                .into());
            }
        }
        let cutoff = cutoff.expect("validated").timestamp();
        let now = inner.clock.now();
        let dry_run = req.dry_run;
        let response: pb::ApplyRetentionResponse =
            once_per_request!(self, "ApplyRetention", req, req.request_id, |conn| {
                async {
                    let mut out = pb::ApplyRetentionResponse::default();
                    for table in tables.iter().rev() {
                        let category = table.cfg.category();
                        let retention = table.cfg.retention.as_ref().expect("checked above");
                        let anchor = retention
                            .anchors
                            .get(&policy.anchor)
                            .unwrap_or(&retention.anchor_column);
                        // Builds "due" (+ extra terms) into a fresh statement.
                        let due = |sql: &mut Sql| {
                            let e = sql.epoch_seconds(&table.schema, anchor);
                            let p = sql.param(Bind::Int(cutoff));
                            let mut cond = format!("({e} IS NOT NULL AND {e} < {p})");
                            if action == RetentionAction::Anonymise {
                                cond = format!("{cond} AND {}", table.not_anonymised(sql));
                            }
                            cond
                        };
                        let mut sql = inner.sql();
                        let c = due(&mut sql);
                        let matched = count_rows(conn, table, sql, &c).await?;
                        out.matched.push(count(category, matched));
                        if matched == 0 {
                            continue;
                        }
                        // Kept by law.
                        let mut sql = inner.sql();
                        let mut c = due(&mut sql);
                        if let Some(held) = table.held(&mut sql, now) {
                            let (kept, max) =
                                count_held(conn, table, sql, &format!("{c} AND {held}")).await?;
                            out.retained.extend(table.retained(kept, max));
                        }
                        // Kept because restricted (Art. 18: storage only).
                        let mut sql = inner.sql();
                        c = due(&mut sql);
                        if let Some(held) = table.held(&mut sql, now) {
                            c = format!("{c} AND NOT {held}");
                        }
                        let restricted = table.restricted(&mut sql, inner.db.backend);
                        let n =
                            count_rows(conn, table, sql, &format!("{c} AND {restricted}")).await?;
                        if n > 0 {
                            out.retained.push(RetainedData {
                                category: category.to_string(),
                                description: format!("{n} restricted record(s) of {category}"),
                                record_count: n,
                                ground: 0,
                                legal_reference: "GDPR Art. 18".into(),
                                reason: "processing is restricted; the data is only stored \
                                         until the restriction is lifted"
                                    .into(),
                                retain_until_time: None,
                            });
                        }
                        if dry_run {
                            continue;
                        }
                        let mut sql = inner.sql();
                        let mut c = due(&mut sql);
                        if let Some(held) = table.held(&mut sql, now) {
                            c = format!("{c} AND NOT {held}");
                        }
                        let restricted = table.restricted(&mut sql, inner.db.backend);
                        let c = format!("{c} AND NOT {restricted}");
                        match action {
                            RetentionAction::Anonymise => {
                                let n = table.dispose(conn, sql, c, EraseAction::Anonymise).await?;
                                out.anonymised.push(count(category, n));
                            }
                            _ => {
                                let n = table.dispose(conn, sql, c, EraseAction::Delete).await?;
                                out.deleted.push(count(category, n));
                            }
                        }
                    }
                    out.matched.reverse();
                    out.deleted.reverse();
                    out.anonymised.reverse();
                    Ok::<_, ApiError>(out)
                }
                .await
            });
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_matches_calendar_addition() {
        let now: DateTime<Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
        let p: CalendarPeriod = "P10Y".parse().unwrap();
        let s = period_threshold(&p, now);
        let t = DateTime::from_timestamp(s, 0).unwrap();
        assert!(p.after(t) > now);
        assert!(p.after(t - chrono::Duration::seconds(1)) <= now);
    }

    #[test]
    fn times_in_common_shapes() {
        for s in [
            "2024-01-02T03:04:05Z",
            "2024-01-02 03:04:05",
            "2024-01-02T03:04:05.250+00:00",
            "2024-01-02 03:04:05+00",
        ] {
            assert_eq!(
                parse_text_time(s).unwrap().timestamp(),
                1_704_164_645,
                "{s}"
            );
        }
        assert!(parse_text_time("2024-01-02").is_some());
        assert!(parse_text_time("yesterday").is_none());
    }

    #[test]
    fn big_integers_become_strings() {
        let v = json_to_value(Json::from(9_007_199_254_740_993i64));
        assert_eq!(v.kind, Some(Kind::StringValue("9007199254740993".into())));
        let v = json_to_value(Json::from(42));
        assert_eq!(v.kind, Some(Kind::NumberValue(42.0)));
    }
}
