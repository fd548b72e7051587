//! The SQL run on a configured table: which rows a subject, a legal hold, a
//! restriction or an anonymisation selects, and what deletes or anonymises
//! them. Table and column names come from the checked configuration and are
//! quoted; every value is bound.

use chrono::{DateTime, Utc};
use custodia_core::{ApiError, legal_time::CalendarPeriod};
use custodia_proto::{common::v1::RetainedData, connector::v1::CategoryCount};
use sqlx::{AnyConnection, Row};

use crate::{
    Table,
    config::{AnonymiseConfig, EraseAction, RestrictionKind},
    db::{Backend, Bind, ColKind, Sql, execute, q},
    values::{fixed_bind, timestamp},
};

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

/// A count of `category`.
pub(crate) fn count(category: &str, n: i64) -> CategoryCount {
    CategoryCount {
        category: category.to_string(),
        count: n,
    }
}

impl Table {
    /// The table, aliased `t` (conditions name its columns `t."column"`).
    pub(crate) fn from(&self) -> String {
        format!("{} AS t", q(&self.cfg.name))
    }

    /// `WHERE "pk" IN (SELECT t."pk" FROM ... WHERE cond)`: UPDATE and DELETE
    /// cannot alias their table on every backend.
    pub(crate) fn rows_in(&self, cond: &str) -> String {
        format!(
            "{pk} IN (SELECT t.{pk} FROM {from} WHERE {cond})",
            pk = q(&self.cfg.primary_key),
            from = self.from()
        )
    }

    /// Rows still within their legal retention (kept on erasure).
    pub(crate) fn held(&self, sql: &mut Sql, now: DateTime<Utc>) -> Option<String> {
        let hold = self.cfg.retained_by_law.as_ref()?;
        let period = self.hold_period.expect("checked at start-up");
        let e = sql.epoch_seconds(&self.schema, &hold.anchor_column);
        let p = sql.param(Bind::Int(period_threshold(&period, now)));
        Some(format!("({e} IS NOT NULL AND {e} >= {p})"))
    }

    /// Rows whose processing is restricted.
    pub(crate) fn restricted(&self, sql: &mut Sql, backend: Backend) -> String {
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
    pub(crate) fn not_anonymised(&self, sql: &mut Sql) -> String {
        let Some(a) = &self.cfg.anonymise else {
            return "1 = 1".into();
        };
        let mut terms: Vec<String> = a
            .set_null
            .iter()
            .map(|c| format!("t.{} IS NOT NULL", q(c)))
            .collect();
        for (c, p) in self.anonymised_values(sql, a) {
            terms.push(format!("(t.{} IS NULL OR t.{} <> {p})", q(c), q(c)));
        }
        format!("({})", terms.join(" OR "))
    }

    /// The columns anonymisation `a` sets to a value, each with the placeholder
    /// of its value (bound in `sql`, cast for the column).
    fn anonymised_values<'a>(
        &self,
        sql: &mut Sql,
        a: &'a AnonymiseConfig,
    ) -> Vec<(&'a String, String)> {
        a.set
            .iter()
            .map(|(c, v)| {
                let col = self.schema.col(c).clone();
                (c, sql.param_for(&col, fixed_bind(v)))
            })
            .collect()
    }

    /// Deletes or anonymises the rows matching `cond` (built in `sql`); the count.
    pub(crate) async fn dispose(
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
                for (c, p) in self.anonymised_values(&mut sql, a) {
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

    /// What this table's legal hold kept (`kept` rows, the latest anchor at
    /// `max_anchor`), as the response reports it; nothing when it kept none.
    pub(crate) fn retained(&self, kept: i64, max_anchor: Option<i64>) -> Option<RetainedData> {
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
pub(crate) async fn count_held(
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

/// Counts the rows matching `cond` (built in `sql`).
pub(crate) async fn count_rows(
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
}
