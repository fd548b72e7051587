//! RectifySubject: each correction applied in a savepoint of its own, so a
//! value the configuration or the database refuses fails that correction only.

use custodia_core::{ApiError, subject::SubjectId};
use custodia_proto::connector::v1 as pb;
use sqlx::{AnyConnection, Connection};

use crate::{
    db::{Bind, execute, q},
    service::Inner,
    values::correction_bind,
};

/// Applies `corrections` to the rows of the subject `ids` on `conn` (the
/// request's transaction).
pub(crate) async fn rectify(
    inner: &Inner,
    conn: &mut AnyConnection,
    ids: Vec<SubjectId>,
    corrections: &[pb::Correction],
) -> Result<pb::RectifySubjectResponse, ApiError> {
    let mut subject = inner.subject(conn, ids).await?;
    let mut results = Vec::new();
    for (i, c) in corrections.iter().enumerate() {
        let refused = |message: String| pb::CorrectionResult {
            index: i as i32,
            applied: false,
            record_count: 0,
            message,
        };
        let Some(table) = inner.tables.iter().find(|t| t.cfg.category() == c.category) else {
            results.push(refused(format!("unknown category `{}`", c.category)));
            continue;
        };
        if !table.cfg.rectifiable.contains(&c.field) {
            results.push(refused(if table.schema.columns.contains_key(&c.field) {
                format!(
                    "field `{}` of `{}` cannot be rectified through this connector",
                    c.field, c.category
                )
            } else {
                format!("unknown field `{}` in `{}`", c.field, c.category)
            }));
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
                    table
                        .cfg
                        .identifiers
                        .iter()
                        .find(|(_, col)| **col == c.field),
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
