//! ApplyRetention: the rows a rule has made due, deleted or anonymised,
//! except those the law makes the source keep and those restricted (Art. 18),
//! which are reported as retained.

use chrono::{DateTime, Utc};
use custodia_core::ApiError;
use custodia_proto::{
    common::v1::{RetainedData, RetentionAction},
    connector::v1 as pb,
};
use sqlx::AnyConnection;

use crate::{
    config::EraseAction,
    db::{Bind, Sql},
    service::Inner,
    statements::{count, count_held, count_rows},
    validate::Retention,
};

/// Applies `rule` on `conn` (the request's transaction); with `dry_run`, only
/// counts.
pub(crate) async fn apply(
    inner: &Inner,
    conn: &mut AnyConnection,
    rule: &Retention<'_, '_>,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<pb::ApplyRetentionResponse, ApiError> {
    let mut out = pb::ApplyRetentionResponse::default();
    for table in rule.tables.iter().rev() {
        let category = table.cfg.category();
        let retention = table.cfg.retention.as_ref().expect("checked above");
        let anchor = retention
            .anchors
            .get(rule.anchor)
            .unwrap_or(&retention.anchor_column);
        // Builds "due" (+ extra terms) into a fresh statement.
        let due = |sql: &mut Sql| {
            let e = sql.epoch_seconds(&table.schema, anchor);
            let p = sql.param(Bind::Int(rule.cutoff));
            let mut cond = format!("({e} IS NOT NULL AND {e} < {p})");
            if rule.action == RetentionAction::Anonymise {
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
            let (kept, max) = count_held(conn, table, sql, &format!("{c} AND {held}")).await?;
            out.retained.extend(table.retained(kept, max));
        }
        // Kept because restricted (Art. 18: storage only).
        let mut sql = inner.sql();
        c = due(&mut sql);
        if let Some(held) = table.held(&mut sql, now) {
            c = format!("{c} AND NOT {held}");
        }
        let restricted = table.restricted(&mut sql, inner.db.backend);
        let n = count_rows(conn, table, sql, &format!("{c} AND {restricted}")).await?;
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
        match rule.action {
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
