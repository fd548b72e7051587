//! EraseSubject: the subject's rows deleted or anonymised, table by table in
//! one transaction (children first), except what the law makes the source keep.

use chrono::{DateTime, Utc};
use custodia_core::{ApiError, subject::SubjectId};
use custodia_proto::connector::v1 as pb;
use sqlx::AnyConnection;

use crate::{
    Table,
    service::Inner,
    statements::{count, count_held},
};

/// Erases the subject `ids` from `tables` on `conn` (the request's transaction).
pub(crate) async fn erase(
    inner: &Inner,
    conn: &mut AnyConnection,
    ids: Vec<SubjectId>,
    tables: &[&Table],
    now: DateTime<Utc>,
) -> Result<pb::EraseSubjectResponse, ApiError> {
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
                let (kept, max) = count_held(conn, table, probe, &format!("{c} AND {h}")).await?;
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
