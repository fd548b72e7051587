//! The database side: the pool, what each configured table looks like (read
//! from the catalogue at start-up, so a typo in the config fails then and not
//! on a subject's request), and a small statement builder that quotes
//! identifiers from the config and binds every value.

use std::{collections::BTreeMap, sync::Once, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    AnyConnection, AnyPool, AssertSqlSafe, Executor, Row,
    any::{AnyArguments, AnyPoolOptions},
    query::Query,
};

use crate::config::{TableConfig, TimeUnit};

/// Which engine the connector talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Pool plus backend.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Db {
    /// Connects to `url`. SQLite gets a busy timeout and foreign keys on; nothing
    /// else about the institution's database is changed.
    pub async fn connect(url: &SecretString, max_connections: u32) -> anyhow::Result<Self> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let raw = url.expose_secret();
        let backend = if raw.starts_with("sqlite:") {
            Backend::Sqlite
        } else if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("database_url: unsupported scheme (expected sqlite:// or postgres://)");
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(raw).await.map_err(|e| match e {
            // Connection errors can echo the URL and its password.
            sqlx::Error::Configuration(_) => anyhow::anyhow!("database_url is not a valid URL"),
            sqlx::Error::Io(io) => anyhow::anyhow!("cannot reach the database: {}", io.kind()),
            other => anyhow::anyhow!("cannot connect to the database: {other}"),
        })?;
        Ok(Self { pool, backend })
    }

    /// A transaction that will write (SQLite takes the write lock at once).
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Creates the connector's own tables when missing.
    pub async fn ensure_own_tables(&self) -> anyhow::Result<()> {
        let bytes = match self.backend {
            Backend::Sqlite => "BLOB",
            Backend::Postgres => "BYTEA",
        };
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS custodia_connector_requests (\
                 request_id TEXT NOT NULL, rpc TEXT NOT NULL, fingerprint TEXT NOT NULL, \
                 response {bytes}, created_at BIGINT NOT NULL, \
                 PRIMARY KEY (request_id, rpc))"
            ),
            "CREATE TABLE IF NOT EXISTS custodia_connector_restrictions (\
             table_name TEXT NOT NULL, record_id TEXT NOT NULL, restricted_at BIGINT NOT NULL, \
             reason TEXT NOT NULL, PRIMARY KEY (table_name, record_id))"
                .to_string(),
        ];
        for s in statements {
            sqlx::query(AssertSqlSafe(s))
                .execute(&self.pool)
                .await
                .context("creating the connector's own tables")?;
        }
        Ok(())
    }

    /// Reads the columns of every configured table and checks each configured
    /// column exists.
    pub async fn describe(&self, tables: &[TableConfig]) -> anyhow::Result<Vec<TableSchema>> {
        let mut out = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            let rows = match self.backend {
                Backend::Sqlite => {
                    sqlx::query(
                        "SELECT CAST(name AS TEXT), CAST(COALESCE(type, '') AS TEXT) \
                         FROM pragma_table_info($1) ORDER BY cid",
                    )
                    .bind(&t.name)
                    .fetch_all(&self.pool)
                    .await?
                }
                Backend::Postgres => {
                    sqlx::query(
                        "SELECT CAST(column_name AS TEXT), CAST(udt_name AS TEXT) \
                         FROM information_schema.columns \
                         WHERE table_schema = current_schema() AND table_name = $1 \
                         ORDER BY ordinal_position",
                    )
                    .bind(&t.name)
                    .fetch_all(&self.pool)
                    .await?
                }
            };
            anyhow::ensure!(
                !rows.is_empty(),
                "tables[{i}].name: table {} does not exist in the database",
                t.name
            );
            let mut columns = BTreeMap::new();
            let mut order = Vec::new();
            for row in rows {
                let name: String = row.try_get(0)?;
                let declared: String = row.try_get(1)?;
                let kind = match self.backend {
                    Backend::Sqlite => sqlite_kind(&declared),
                    Backend::Postgres => postgres_kind(&declared),
                };
                order.push(name.clone());
                columns.insert(
                    name.clone(),
                    Column {
                        name,
                        kind,
                        // Type names come from the catalogue; anything odd is cast via text.
                        pg_type: if crate::config::is_plain_identifier(&declared) {
                            declared
                        } else {
                            "text".to_string()
                        },
                    },
                );
            }
            let schema = TableSchema {
                columns,
                order,
                time_unit: t.time_unit,
            };
            let check = |field: &str, column: &str| -> anyhow::Result<()> {
                anyhow::ensure!(
                    schema.columns.contains_key(column),
                    "tables[{i}].{field}: table {} has no column {column}",
                    t.name
                );
                Ok(())
            };
            check("primary_key", &t.primary_key)?;
            for (kind, c) in &t.identifiers {
                check(&format!("identifiers.{kind}"), c)?;
            }
            for (field, c) in [
                ("created_column", &t.created_column),
                ("updated_column", &t.updated_column),
            ] {
                if let Some(c) = c {
                    check(field, c)?;
                }
            }
            for c in &t.exclude_columns {
                check("exclude_columns", c)?;
            }
            for c in &t.rectifiable {
                check("rectifiable", c)?;
            }
            if let Some(a) = &t.anonymise {
                for c in a.set_null.iter().chain(a.set.keys()) {
                    check("anonymise", c)?;
                }
            }
            if let Some(h) = &t.retained_by_law {
                check("retained_by_law.anchor_column", &h.anchor_column)?;
            }
            if let Some(r) = &t.restriction {
                check("restriction.column", &r.column)?;
            }
            if let Some(r) = &t.retention {
                check("retention.anchor_column", &r.anchor_column)?;
                for c in r.anchors.values() {
                    check("retention.anchors", c)?;
                }
            }
            out.push(schema);
        }
        Ok(out)
    }
}

/// How a column's values behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColKind {
    /// Boolean.
    Bool,
    /// Integer.
    Integer,
    /// Floating point or decimal.
    Float,
    /// Text.
    Text,
    /// A native timestamp or date (PostgreSQL).
    Timestamp,
    /// Anything else (uuid, json, bytes...): compared as text.
    Other,
}

fn sqlite_kind(declared: &str) -> ColKind {
    let d = declared.to_ascii_lowercase();
    if d.contains("bool") {
        ColKind::Bool
    } else if d.contains("int") {
        ColKind::Integer
    } else if d.contains("char") || d.contains("clob") || d.contains("text") {
        ColKind::Text
    } else if d.contains("date") || d.contains("time") {
        // SQLite has no time type; such columns hold ISO 8601 text by convention.
        ColKind::Text
    } else if d.contains("real") || d.contains("floa") || d.contains("doub") || d.contains("num") {
        ColKind::Float
    } else {
        ColKind::Other
    }
}

fn postgres_kind(udt: &str) -> ColKind {
    match udt {
        "bool" => ColKind::Bool,
        "int2" | "int4" | "int8" => ColKind::Integer,
        "float4" | "float8" | "numeric" => ColKind::Float,
        "text" | "varchar" | "bpchar" | "citext" | "name" => ColKind::Text,
        "timestamp" | "timestamptz" | "date" => ColKind::Timestamp,
        _ => ColKind::Other,
    }
}

/// One column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: ColKind,
    /// PostgreSQL type name (`udt_name`), for casting bound text.
    pub pg_type: String,
}

/// The columns of one configured table.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub columns: BTreeMap<String, Column>,
    /// Column names in table order.
    pub order: Vec<String>,
    pub time_unit: Option<TimeUnit>,
}

impl TableSchema {
    /// The column (checked at start-up to exist).
    pub fn col(&self, name: &str) -> &Column {
        &self.columns[name]
    }

    /// How a time column is stored.
    pub fn time_storage(&self, name: &str) -> TimeStorage {
        match (self.time_unit, self.col(name).kind) {
            (Some(unit), _) => TimeStorage::Unix(unit),
            (None, ColKind::Integer) => TimeStorage::Unix(TimeUnit::Seconds),
            (None, ColKind::Timestamp) => TimeStorage::Native,
            _ => TimeStorage::Text,
        }
    }
}

/// How a time column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeStorage {
    /// Integer Unix time.
    Unix(TimeUnit),
    /// A native timestamp (PostgreSQL).
    Native,
    /// ISO 8601 text.
    Text,
}

/// `"name"`: a config identifier (validated plain) quoted.
pub fn q(name: &str) -> String {
    debug_assert!(crate::config::is_plain_identifier(name));
    format!("\"{name}\"")
}

/// A value to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// A statement being assembled: SQL text with `$n` placeholders, and their values.
#[derive(Debug, Clone)]
pub struct Sql {
    pub text: String,
    binds: Vec<Bind>,
    backend: Backend,
}

impl Sql {
    pub fn new(backend: Backend) -> Self {
        Self {
            text: String::new(),
            binds: Vec::new(),
            backend,
        }
    }

    /// Appends SQL text (never a value).
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Binds `value`; returns its placeholder.
    pub fn param(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    /// Binds `value` for storing into / comparing with `column`: on PostgreSQL
    /// as text cast to the column's type (so one path fits int, bool, uuid,
    /// timestamp, numeric...), on SQLite as the value itself.
    pub fn param_for(&mut self, column: &Column, value: Bind) -> String {
        match self.backend {
            Backend::Sqlite => self.param(value),
            Backend::Postgres => {
                let text = match value {
                    Bind::Null => Bind::Null,
                    Bind::Bool(b) if column.kind == ColKind::Integer => {
                        Bind::Text(if b { "1" } else { "0" }.into())
                    }
                    Bind::Bool(b) => Bind::Text(b.to_string()),
                    Bind::Int(i) => Bind::Text(i.to_string()),
                    Bind::Float(f) => Bind::Text(f.to_string()),
                    Bind::Text(s) => Bind::Text(s),
                };
                let p = self.param(text);
                format!("CAST({p} AS \"{}\")", column.pg_type)
            }
        }
    }

    /// A time value for `column`, in its storage.
    pub fn time_for(&mut self, schema: &TableSchema, column: &str, t: DateTime<Utc>) -> String {
        let value = match schema.time_storage(column) {
            TimeStorage::Unix(TimeUnit::Seconds) => Bind::Int(t.timestamp()),
            TimeStorage::Unix(TimeUnit::Milliseconds) => Bind::Int(t.timestamp_millis()),
            TimeStorage::Native | TimeStorage::Text => {
                Bind::Text(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }
        };
        let col = schema.col(column).clone();
        self.param_for(&col, value)
    }

    /// SQL for the Unix seconds of time column `column` of alias `t`.
    pub fn epoch_seconds(&self, schema: &TableSchema, column: &str) -> String {
        let c = format!("t.{}", q(column));
        match (schema.time_storage(column), self.backend) {
            (TimeStorage::Unix(TimeUnit::Seconds), _) => c,
            (TimeStorage::Unix(TimeUnit::Milliseconds), _) => format!("({c} / 1000)"),
            (TimeStorage::Native, Backend::Postgres) => {
                format!("CAST(FLOOR(EXTRACT(EPOCH FROM {c})) AS BIGINT)")
            }
            (_, Backend::Postgres) => {
                format!("CAST(FLOOR(EXTRACT(EPOCH FROM CAST({c} AS TIMESTAMPTZ))) AS BIGINT)")
            }
            (_, Backend::Sqlite) => format!("CAST(strftime('%s', {c}) AS INTEGER)"),
        }
    }

    /// The query, ready to run.
    pub fn query(self) -> Query<'static, sqlx::Any, AnyArguments> {
        let mut query = sqlx::query(AssertSqlSafe(self.text));
        for b in self.binds {
            query = match b {
                Bind::Null => query.bind(None::<String>),
                Bind::Bool(v) => query.bind(v),
                Bind::Int(v) => query.bind(v),
                Bind::Float(v) => query.bind(v),
                Bind::Text(v) => query.bind(v),
            };
        }
        query
    }
}

/// Runs `sql` and returns rows affected.
pub async fn execute(conn: &mut AnyConnection, sql: Sql) -> Result<u64, sqlx::Error> {
    Ok(sql.query().execute(conn).await?.rows_affected())
}
