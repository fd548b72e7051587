//! The two migration sets of each service cannot drift silently (issue #25):
//! every service's database is migrated on SQLite and on PostgreSQL and the
//! schemas compared (tables, columns with their kind and nullability, indexes
//! with their columns and uniqueness, triggers). The differences that are meant
//! are listed below with their reason; any other one fails the test.

use std::collections::BTreeSet;

use custodia_core::{
    ServiceName,
    storage::{self, Db, Migrations},
};
use custodia_tests::{Backend, test_config};
use sqlx::{AssertSqlSafe, Row};

/// Differences kept on purpose, as "service: item".
const KNOWN: &[(&str, &str)] = &[
    // PostgreSQL keeps them one more release for the previous release's pods
    // (rolling upgrade), see the consent migrations' README.
    ("consent", "column subject_consents.body bytes not null"),
    (
        "consent",
        "index receipts_subject on receipts (subject_hash)",
    ),
];

/// One name for the append-only guard of a table: SQLite needs a trigger for
/// UPDATE and one for DELETE, PostgreSQL one trigger calling a function.
fn trigger(name: &str, table: &str) -> String {
    if ["append_only", "no_update", "no_delete"]
        .iter()
        .any(|g| name.ends_with(g))
    {
        format!("append-only guard on {table}")
    } else {
        format!("trigger {name} on {table}")
    }
}

fn kind(sql_type: &str) -> &'static str {
    let t = sql_type.to_ascii_lowercase();
    if t.contains("int") || t == "serial" || t == "bigserial" {
        "int"
    } else if t.contains("char") || t.contains("text") || t == "name" {
        "text"
    } else if t.contains("blob") || t.contains("bytea") {
        "bytes"
    } else if t.contains("real")
        || t.contains("double")
        || t.contains("float")
        || t.contains("numeric")
    {
        "float"
    } else if t.contains("bool") {
        "bool"
    } else {
        "other"
    }
}

async fn sqlite_schema(db: &Db) -> BTreeSet<String> {
    let pool = db.pool();
    let mut out = BTreeSet::new();
    let tables = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY name")
        .fetch_all(pool)
        .await
        .unwrap();
    for t in tables {
        let table: String = t.try_get(0).unwrap();
        // SQLite's own bookkeeping of AUTOINCREMENT columns.
        if table == "sqlite_sequence" {
            continue;
        }
        out.insert(format!("table {table}"));
        let mut pk_columns = Vec::new();
        for c in sqlx::query(AssertSqlSafe(format!("PRAGMA table_info(\"{table}\")")))
            .fetch_all(pool)
            .await
            .unwrap()
        {
            let name: String = c.try_get("name").unwrap();
            let ty: String = c.try_get("type").unwrap();
            let notnull: i64 = c.try_get("notnull").unwrap();
            let pk: i64 = c.try_get("pk").unwrap();
            let null = if notnull == 1 || pk > 0 {
                "not null"
            } else {
                "null"
            };
            out.insert(format!("column {table}.{name} {} {null}", kind(&ty)));
            if pk > 0 {
                pk_columns.push((pk, name));
            }
        }
        // From the table: an INTEGER PRIMARY KEY is the rowid, with no index.
        if !pk_columns.is_empty() {
            pk_columns.sort();
            let cols: Vec<String> = pk_columns.into_iter().map(|(_, n)| n).collect();
            out.insert(format!("primary key on {table} ({})", cols.join(", ")));
        }
        for i in sqlx::query(AssertSqlSafe(format!("PRAGMA index_list(\"{table}\")")))
            .fetch_all(pool)
            .await
            .unwrap()
        {
            let name: String = i.try_get("name").unwrap();
            let unique: i64 = i.try_get("unique").unwrap();
            let origin: String = i.try_get("origin").unwrap();
            let cols: Vec<String> =
                sqlx::query(AssertSqlSafe(format!("PRAGMA index_info(\"{name}\")")))
                    .fetch_all(pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.try_get::<String, _>("name").unwrap_or_default())
                    .collect();
            // Primary keys and UNIQUE constraints are named by the engine.
            let label = match origin.as_str() {
                "pk" => continue,
                "u" => "unique".to_string(),
                _ if unique == 1 => format!("unique index {name}"),
                _ => format!("index {name}"),
            };
            out.insert(format!("{label} on {table} ({})", cols.join(", ")));
        }
    }
    for t in sqlx::query("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")
        .fetch_all(pool)
        .await
        .unwrap()
    {
        let name: String = t.try_get(0).unwrap();
        let table: String = t.try_get(1).unwrap();
        out.insert(trigger(&name, &table));
    }
    out
}

async fn postgres_schema(db: &Db) -> BTreeSet<String> {
    let pool = db.pool();
    let mut out = BTreeSet::new();
    let schema: String = sqlx::query("SELECT current_schema()::text")
        .fetch_one(pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    for t in sqlx::query(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND table_name NOT LIKE '\\_%'",
    )
    .bind(schema.clone())
    .fetch_all(pool)
    .await
    .unwrap()
    {
        let table: String = t.try_get(0).unwrap();
        out.insert(format!("table {table}"));
    }
    for c in sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns c WHERE table_schema = $1 AND table_name NOT LIKE '\\_%' \
         AND table_name IN (SELECT table_name FROM information_schema.tables \
             WHERE table_schema = $1 AND table_type = 'BASE TABLE')",
    )
    .bind(schema.clone())
    .fetch_all(pool)
    .await
    .unwrap()
    {
        let (table, name, ty, nullable): (String, String, String, String) = (
            c.try_get(0).unwrap(),
            c.try_get(1).unwrap(),
            c.try_get(2).unwrap(),
            c.try_get(3).unwrap(),
        );
        let null = if nullable == "YES" {
            "null"
        } else {
            "not null"
        };
        out.insert(format!("column {table}.{name} {} {null}", kind(&ty)));
    }
    for i in sqlx::query(
        "SELECT t.relname::text, i.relname::text, ix.indisunique, ix.indisprimary, \
            (SELECT string_agg(a.attname::text, ', ' ORDER BY k.ord) \
               FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord) \
               JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum), \
            EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid AND c.contype = 'u') \
         FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid \
         JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = $1 AND t.relname NOT LIKE '\\_%'",
    )
    .bind(schema.clone())
    .fetch_all(pool)
    .await
    .unwrap()
    {
        let (table, name, unique, primary, cols, constraint): (
            String,
            String,
            bool,
            bool,
            Option<String>,
            bool,
        ) = (
            i.try_get(0).unwrap(),
            i.try_get(1).unwrap(),
            i.try_get(2).unwrap(),
            i.try_get(3).unwrap(),
            i.try_get(4).unwrap(),
            i.try_get(5).unwrap(),
        );
        let label = if primary {
            "primary key".to_string()
        } else if constraint {
            "unique".to_string()
        } else if unique {
            format!("unique index {name}")
        } else {
            format!("index {name}")
        };
        out.insert(format!("{label} on {table} ({})", cols.unwrap_or_default()));
    }
    for t in sqlx::query(
        "SELECT DISTINCT trigger_name::text, event_object_table::text \
         FROM information_schema.triggers WHERE trigger_schema = $1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
    {
        let name: String = t.try_get(0).unwrap();
        let table: String = t.try_get(1).unwrap();
        out.insert(trigger(&name, &table));
    }
    out
}

async fn migrated(
    backend: Backend,
    service: ServiceName,
    migrations: &Migrations,
) -> (BTreeSet<String>, Option<custodia_tests::TestDatabase>) {
    let (config, _dir, pg) = test_config(backend).await;
    let db = storage::open_service(&config, service).await.unwrap();
    db.migrate(migrations).await.unwrap();
    let schema = match backend {
        Backend::Sqlite => sqlite_schema(&db).await,
        Backend::Postgres => postgres_schema(&db).await,
    };
    db.close().await;
    (schema, pg)
}

#[tokio::test]
async fn both_backends_migrate_to_the_same_schema() {
    let services: [(ServiceName, &Migrations); 4] = [
        (ServiceName::AuditLog, &custodia_audit_log::MIGRATIONS),
        (ServiceName::Consent, &custodia_consent::MIGRATIONS),
        (ServiceName::Dsar, &custodia_dsar::MIGRATIONS),
        (ServiceName::Breach, &custodia_breach::MIGRATIONS),
    ];
    let mut drift = Vec::new();
    for (service, migrations) in services {
        let (sqlite, _) = migrated(Backend::Sqlite, service, migrations).await;
        let (postgres, pg) = migrated(Backend::Postgres, service, migrations).await;
        if let Some(pg) = pg {
            pg.drop_now().await;
        }
        assert!(
            sqlite.iter().any(|s| s.starts_with("table ")),
            "{service}: no table read"
        );
        let known = |item: &str| {
            KNOWN
                .iter()
                .any(|(s, k)| *s == service.ident() && *k == item)
        };
        for (s, k) in KNOWN {
            if *s == service.ident() {
                assert!(
                    sqlite.contains(*k) != postgres.contains(*k),
                    "KNOWN lists `{k}` for {service}, which no longer differs: remove it"
                );
            }
        }
        for item in sqlite.symmetric_difference(&postgres) {
            if !known(item) {
                let side = if sqlite.contains(item) {
                    "SQLite only"
                } else {
                    "PostgreSQL only"
                };
                drift.push(format!("{service}: {side}: {item}"));
            }
        }
    }
    assert!(
        drift.is_empty(),
        "the migration sets drifted (fix a migration, or list the difference in KNOWN with why):\n{}",
        drift.join("\n")
    );
}
