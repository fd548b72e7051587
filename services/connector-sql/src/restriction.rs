//! RestrictSubject: the subject's rows marked restricted (Art. 18) or the
//! mark lifted, with the table's flag or timestamp column, or in the
//! connector's side table.

use chrono::{DateTime, Utc};
use custodia_core::{ApiError, subject::SubjectId};
use custodia_proto::connector::v1 as pb;
use sqlx::AnyConnection;

use crate::{
    Table,
    config::RestrictionKind,
    db::{Bind, execute, q},
    service::Inner,
    statements::{count, count_rows},
};

/// Restricts (or, with `restrict` false, lifts the restriction of) the subject
/// `ids` in `tables` on `conn` (the request's transaction).
pub(crate) async fn restrict(
    inner: &Inner,
    conn: &mut AnyConnection,
    ids: Vec<SubjectId>,
    tables: &[&Table],
    restrict: bool,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<pb::RestrictSubjectResponse, ApiError> {
    let subject = inner.subject(conn, ids).await?;
    let mut affected = Vec::new();
    for table in tables {
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
                    let why = sql.param(Bind::Text(reason.to_string()));
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
