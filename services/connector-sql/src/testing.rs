//! Running the connector in tests: a real gRPC server on port 0 over a
//! throwaway SQLite file (or any database URL), plus ready-made "CRM" and
//! "Moodle" stand-ins for the dsar end-to-end tests.

use std::{path::PathBuf, sync::Arc};

use custodia_core::legal_time::{Clock, SystemClock};
use sqlx::{AssertSqlSafe, Executor};

use crate::{Connector, ConnectorConfig};

/// Bearer token of the `dsar` principal in [`CRM_CONFIG`] and [`MOODLE_CONFIG`]
/// (scopes connector.read and connector.write).
pub const DSAR_TOKEN: &str = "test-dsar-connector-token-0123456789";

/// Schema of the CRM stand-in: contacts (one row per person), interactions
/// (linked by contact id) and invoices (kept 10 years by law).
pub const CRM_SCHEMA: &str = r#"
CREATE TABLE contacts (
    id INTEGER PRIMARY KEY,
    email TEXT,
    first_name TEXT,
    last_name TEXT,
    phone TEXT,
    created_at TEXT,
    updated_at TEXT,
    last_activity_at TEXT,
    restricted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE interactions (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER,
    channel TEXT,
    note TEXT,
    occurred_at TEXT
);
CREATE TABLE invoices (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER,
    billing_email TEXT,
    billing_name TEXT,
    amount_cents INTEGER,
    issued_at TEXT
);
"#;

/// Configuration of the CRM stand-in (without `database_url`).
pub const CRM_CONFIG: &str = r#"
display_name = "Admissions CRM"

[auth.principals.dsar]
token = "test-dsar-connector-token-0123456789"
scopes = ["connector.read", "connector.write"]

[[tables]]
name = "contacts"
description = "Contact details of prospects and students"
purposes = ["purposes/admissions"]
primary_key = "id"
person = true
identifiers = { email = "email", crm_contact = "id" }
created_column = "created_at"
updated_column = "updated_at"
rectifiable = ["first_name", "last_name", "phone", "email"]
restriction = { column = "restricted" }
retention = { anchor_column = "last_activity_at", anchor = "last_activity", period = "P3Y", criteria = "3 years after the last contact" }

[[tables]]
name = "interactions"
description = "Calls, emails and meetings with the contact"
purposes = ["purposes/admissions"]
primary_key = "id"
identifiers = { crm_contact = "contact_id" }
created_column = "occurred_at"
retention = { anchor_column = "occurred_at" }

[[tables]]
name = "invoices"
description = "Invoices for fees"
purposes = ["purposes/billing"]
primary_key = "id"
identifiers = { crm_contact = "contact_id", email = "billing_email" }
created_column = "issued_at"
retention = { anchor_column = "issued_at", anchor = "transaction" }
retained_by_law = { anchor_column = "issued_at", period = "P10Y", ground = "legal_obligation", legal_reference = "Code de commerce, art. L123-22", reason = "Accounting records must be kept for 10 years" }
"#;

/// Schema of the Moodle stand-in (a small slice of `mdl_user` and friends).
pub const MOODLE_SCHEMA: &str = r#"
CREATE TABLE mdl_user (
    id INTEGER PRIMARY KEY,
    username TEXT,
    email TEXT,
    idnumber TEXT,
    firstname TEXT,
    lastname TEXT,
    timecreated INTEGER,
    timemodified INTEGER,
    lastaccess INTEGER
);
CREATE TABLE mdl_grade_grades (
    id INTEGER PRIMARY KEY,
    userid INTEGER,
    itemname TEXT,
    finalgrade REAL,
    timecreated INTEGER,
    timemodified INTEGER
);
CREATE TABLE mdl_logstore_standard_log (
    id INTEGER PRIMARY KEY,
    userid INTEGER,
    eventname TEXT,
    timecreated INTEGER
);
"#;

/// Configuration of the Moodle stand-in (without `database_url`): users found
/// by email, student number (`idnumber`) or Moodle user id; accounts are
/// anonymised rather than deleted, as Moodle does.
pub const MOODLE_CONFIG: &str = r#"
display_name = "Moodle"

[auth.principals.dsar]
token = "test-dsar-connector-token-0123456789"
scopes = ["connector.read", "connector.write"]

[[tables]]
name = "mdl_user"
category = "accounts"
description = "Moodle account"
purposes = ["purposes/teaching"]
primary_key = "id"
person = true
identifiers = { email = "email", student_number = "idnumber", moodle_user = "id" }
created_column = "timecreated"
updated_column = "timemodified"
erase = "anonymise"
anonymise = { set_null = ["email", "idnumber", "firstname", "lastname"], set = { username = "deleted" } }
rectifiable = ["firstname", "lastname", "email"]
retention = { anchor_column = "lastaccess", anchor = "last_activity", period = "P3Y" }

[[tables]]
name = "mdl_grade_grades"
category = "grades"
description = "Course grades"
purposes = ["purposes/teaching"]
primary_key = "id"
identifiers = { moodle_user = "userid" }
created_column = "timecreated"
updated_column = "timemodified"

[[tables]]
name = "mdl_logstore_standard_log"
category = "activity_log"
description = "Log of activity on the platform"
purposes = ["purposes/teaching"]
primary_key = "id"
identifiers = { moodle_user = "userid" }
created_column = "timecreated"
retention = { anchor_column = "timecreated", anchor = "collection", period = "P13M" }
"#;

/// A connector running for one test.
#[derive(Debug)]
pub struct TestConnector {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The database it serves (`sqlite://...` or `postgres://...`).
    pub database_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestConnector {
    /// Runs SQL (several statements allowed) on the connector's database, to
    /// seed or inspect data.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        execute(&self.database_url, sql).await
    }

    /// Counts rows with a query like `SELECT COUNT(*) FROM contacts`.
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.database_url).await?;
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok(n)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestConnector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs `sql` on `database_url`.
pub async fn execute(database_url: &str, sql: &str) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database_url).await?;
    pool.execute(AssertSqlSafe(sql.to_string())).await?;
    pool.close().await;
    Ok(())
}

/// `config_toml` (without `database_url`) with `database_url` set.
pub fn config_with_url(config_toml: &str, database_url: &str) -> anyhow::Result<ConnectorConfig> {
    let text = format!(
        "database_url = {}\n{config_toml}",
        toml_string(database_url)
    );
    ConnectorConfig::from_toml_str(&text)
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Starts the connector of `config` on 127.0.0.1:0.
pub async fn spawn(config: ConnectorConfig) -> anyhow::Result<TestConnector> {
    spawn_with_clock(config, Arc::new(SystemClock)).await
}

/// Starts the connector of `config` on 127.0.0.1:0, with "now" from `clock`.
pub async fn spawn_with_clock(
    config: ConnectorConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<TestConnector> {
    use secrecy::ExposeSecret;
    let database_url = config.database_url.expose_secret().to_string();
    let connector = Connector::connect_with_clock(config, clock).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(connector.serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok(TestConnector {
        endpoint,
        database_url,
        stop: Some(stop),
        task: Some(task),
        _dir: None,
    })
}

/// Creates a SQLite file in a temp dir, runs `schema_sql` on it, and starts
/// the connector of `config_toml` (TOML without `database_url`) over it.
pub async fn spawn_sqlite(schema_sql: &str, config_toml: &str) -> anyhow::Result<TestConnector> {
    spawn_sqlite_with_clock(schema_sql, config_toml, Arc::new(SystemClock)).await
}

/// [`spawn_sqlite`] with "now" from `clock`.
pub async fn spawn_sqlite_with_clock(
    schema_sql: &str,
    config_toml: &str,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<TestConnector> {
    let dir = tempfile::tempdir()?;
    let path: PathBuf = dir.path().join("source.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    execute(&url, schema_sql).await?;
    let mut running = spawn_with_clock(config_with_url(config_toml, &url)?, clock).await?;
    running._dir = Some(dir);
    Ok(running)
}

/// The CRM stand-in ([`CRM_SCHEMA`], [`CRM_CONFIG`]) over a fresh SQLite file.
pub async fn spawn_crm() -> anyhow::Result<TestConnector> {
    spawn_sqlite(CRM_SCHEMA, CRM_CONFIG).await
}

/// The Moodle stand-in ([`MOODLE_SCHEMA`], [`MOODLE_CONFIG`]) over a fresh SQLite file.
pub async fn spawn_moodle() -> anyhow::Result<TestConnector> {
    spawn_sqlite(MOODLE_SCHEMA, MOODLE_CONFIG).await
}
