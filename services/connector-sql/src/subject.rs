//! Finding a subject's rows: the identifiers dsar sent (normalised as custodia
//! does), widened through `person` tables, turned into one WHERE condition per
//! table so a row matching several identifiers is still one row.

use std::collections::{BTreeMap, BTreeSet};

use custodia_core::subject::{SubjectId, email_with_unicode_domain, phone_other_spellings};
use futures::TryStreamExt;
use sqlx::{AnyConnection, Row};

use crate::{
    Table,
    db::{Bind, ColKind, Sql, q},
};

/// Most identifiers one subject may gather through `person` tables.
const MAX_IDENTIFIERS: usize = 256;
/// Rounds of widening through `person` tables.
const MAX_ROUNDS: usize = 4;

/// Every known identifier of one person: type -> normalised values.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    ids: BTreeMap<String, BTreeSet<String>>,
}

impl Subject {
    /// The subject identified by `ids`.
    pub fn new(ids: impl IntoIterator<Item = SubjectId>) -> Self {
        let mut s = Self::default();
        for id in ids {
            s.add(&id);
        }
        s
    }

    /// Adds `id`; whether it was new.
    pub fn add(&mut self, id: &SubjectId) -> bool {
        if self.len() >= MAX_IDENTIFIERS {
            return false;
        }
        self.ids
            .entry(id.kind().to_string())
            .or_default()
            .insert(id.value().to_string())
    }

    fn len(&self) -> usize {
        self.ids.values().map(BTreeSet::len).sum()
    }

    /// The condition selecting the subject's rows of `table` (alias `t`), or
    /// `None` when no identifier of the subject can match there.
    pub fn condition(&self, sql: &mut Sql, table: &Table) -> Option<String> {
        let mut terms = Vec::new();
        for (kind, column) in &table.cfg.identifiers {
            let Some(values) = self.ids.get(kind) else {
                continue;
            };
            let col = table.schema.col(column);
            for value in values {
                if col.kind == ColKind::Integer {
                    // A value that is no integer cannot be in an integer column.
                    if let Ok(v) = value.parse::<i64>() {
                        let p = sql.param(Bind::Int(v));
                        terms.push(format!("t.{} = {p}", q(column)));
                    }
                    continue;
                }
                let base = if col.kind == ColKind::Text {
                    format!("t.{}", q(column))
                } else {
                    format!("CAST(t.{} AS TEXT)", q(column))
                };
                // Stored values may not be normalised; compare them normalised as
                // custodia normalises identifiers (custodia_core::subject).
                let expr = match kind.as_str() {
                    "email" => format!("LOWER(TRIM({base}))"),
                    "student_number" | "staff_number" => format!("UPPER(TRIM({base}))"),
                    "phone" => format!(
                        "REPLACE(REPLACE(REPLACE(REPLACE(REPLACE({base}, ' ', ''), '-', ''), \
                         '.', ''), '(', ''), ')', '')"
                    ),
                    _ => base,
                };
                // An internationalised domain is normalised to its IDNA ASCII
                // form; stored addresses usually have it as typed, in Unicode.
                let unicode = (kind == "email")
                    .then(|| email_with_unicode_domain(value))
                    .flatten();
                // A phone is normalised to E.164; stored numbers are usually
                // national (`06 12 34 56 78`).
                let national = if kind == "phone" {
                    phone_other_spellings(value)
                } else {
                    Vec::new()
                };
                for spelling in std::iter::once(value.clone())
                    .chain(unicode)
                    .chain(national)
                {
                    let p = sql.param(Bind::Text(spelling));
                    terms.push(format!("{expr} = {p}"));
                }
            }
        }
        (!terms.is_empty()).then(|| format!("({})", terms.join(" OR ")))
    }

    /// Widens the subject through `person` tables: a row found by one of its
    /// identifier columns gives the person's other identifiers.
    pub async fn widen(
        &mut self,
        conn: &mut AnyConnection,
        tables: &[Table],
        backend: crate::db::Backend,
    ) -> Result<(), sqlx::Error> {
        for _ in 0..MAX_ROUNDS {
            let mut grew = false;
            for table in tables.iter().filter(|t| t.cfg.person) {
                let mut sql = Sql::new(backend);
                let Some(cond) = self.condition(&mut sql, table) else {
                    continue;
                };
                let kinds: Vec<(&String, &String)> = table.cfg.identifiers.iter().collect();
                let select = kinds
                    .iter()
                    .map(|(_, c)| format!("CAST(t.{} AS TEXT)", q(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                sql.push(&format!(
                    "SELECT {select} FROM {} AS t WHERE {cond} LIMIT 1000",
                    q(&table.cfg.name)
                ));
                let mut found = Vec::new();
                {
                    let mut rows = sql.query().fetch(&mut *conn);
                    while let Some(row) = rows.try_next().await? {
                        for (i, (kind, _)) in kinds.iter().enumerate() {
                            if let Some(v) = row.try_get::<Option<String>, _>(i)?
                                && let Ok(id) = SubjectId::parse(kind, &v, "")
                            {
                                found.push(id);
                            }
                        }
                    }
                }
                for id in found {
                    grew |= self.add(&id);
                }
            }
            if !grew {
                break;
            }
        }
        Ok(())
    }
}
