//! Database pools and migrations on two backends, chosen by URL scheme:
//! SQLite (embedded default: one file per service, WAL, fsync on commit, created
//! if missing) and PostgreSQL (production; one schema per service when services
//! share a database). Stores are written once against `sqlx::Any` with portable
//! SQL (`$n` placeholders, `ON CONFLICT`, `RETURNING`, integers for times) and
//! each backend has its own migrations; one conformance suite per store runs on
//! both backends.

use std::{
    path::Path,
    sync::{Arc, Once},
    time::Duration,
};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    AnyPool, AssertSqlSafe, Executor,
    any::AnyPoolOptions,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{Config, ServiceName};

mod script;
pub use script::{Binds, Script, ScriptTx};

/// Which database engine a [`Db`] talks to, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file (embedded default).
    Sqlite,
    /// PostgreSQL server (production).
    Postgres,
}

/// A connection pool plus the backend it talks to.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// SQLite only: one connection with `synchronous = NORMAL`, for writes that
    /// need not wait for the disk flush (see [`Db::relaxed_pool`]).
    relaxed: Option<AnyPool>,
    /// SQLite only: the one connection every write under [`Db::write_turn`] uses
    /// (see [`Db::write_pool`]).
    writer: Option<AnyPool>,
    /// SQLite only: copies the write-ahead log into the database file in the
    /// background (see [`Checkpointer`]).
    checkpointer: Option<Arc<Checkpointer>>,
    backend: Backend,
    /// SQLite only: the database file (none for an in-memory database).
    sqlite_file: Option<Arc<Path>>,
    /// PostgreSQL only: a small pool of native connections (same database and
    /// schema, opened on first use) for bulk writes that bind arrays, which
    /// `sqlx::Any` cannot (see [`Db::native_postgres`]).
    native_pg: Option<sqlx::PgPool>,
    /// SQLite has one writer at a time; writers of this process queue here instead
    /// of in SQLite's busy handler, which sleeps for up to 100 ms between tries.
    write_gate: Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction from [`Db::begin_write`]: derefs to the connection (use
/// `&mut *tx` as an executor) and holds this process's SQLite write turn until it
/// commits or is dropped (rolled back).
#[derive(Debug)]
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// Rolls back (dropping the transaction does too).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// A service's migrations, one set per backend (embed with `sqlx::migrate!`).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Migrations for SQLite.
    pub sqlite: &'static Migrator,
    /// Migrations for PostgreSQL.
    pub postgres: &'static Migrator,
}

/// The shared access-event outbox table, present in every service's database.
pub static OUTBOX_MIGRATIONS: Migrations = Migrations {
    sqlite: &OUTBOX_SQLITE,
    postgres: &OUTBOX_POSTGRES,
};
static OUTBOX_SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static OUTBOX_POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

impl Db {
    /// The pool (an `AnyPool`: portable SQL only).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// SQLite only: a one-connection pool whose commits do not wait for the disk
    /// flush (`synchronous = NORMAL` in WAL mode: a commit survives a crash of the
    /// process but not of the machine). Take [`Db::write_turn`] before writing.
    pub fn relaxed_pool(&self) -> Option<&AnyPool> {
        self.relaxed.as_ref()
    }

    /// Where writes go: on SQLite one connection of its own (`synchronous = FULL`),
    /// to be used only while holding [`Db::write_turn`]; on PostgreSQL the pool.
    /// SQLite drops a connection's whole page cache when another connection has
    /// written since its last transaction, so writes spread over the pool's
    /// connections re-read the B-tree pages they touch (the newest versions from
    /// the write-ahead log, by `pread`); a single writer keeps them, and a service
    /// that enlarges the writer's cache (audit-log) does so once, not per pooled
    /// connection.
    pub fn write_pool(&self) -> &AnyPool {
        self.writer.as_ref().unwrap_or(&self.pool)
    }

    /// PostgreSQL only: native connections to the same database and schema, for
    /// statements `sqlx::Any` cannot express (array parameters: one `UNNEST`
    /// insert of thousands of rows binds one array per column instead of one
    /// parameter per value). At most [`NATIVE_PG_CONNECTIONS`] at once.
    pub fn native_postgres(&self) -> Option<&sqlx::PgPool> {
        self.native_pg.as_ref()
    }

    /// SQLite only: the database file (none for an in-memory database).
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// After an erasure (D-9): on SQLite, copies the write-ahead log into the
    /// database and truncates it to nothing, so the erased rows' old page images
    /// do not linger in the `-wal` file (the database's own pages were zeroed as
    /// the rows went: every connection runs with `secure_delete`). A reader still
    /// on an older snapshot holds the log back: tried a few times, then left to
    /// the next erasure with a warning. Returns whether the log was emptied.
    /// PostgreSQL keeps dead row versions until VACUUM reclaims them: see
    /// deploy/README.md ("Erasure and VACUUM"); nothing is done here.
    pub async fn scrub_log(&self) -> bool {
        let Some(checkpointer) = &self.checkpointer else {
            return true;
        };
        for attempt in 0..SCRUB_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(SCRUB_RETRY).await;
            }
            let _turn = self.write_gate.lock().await;
            let done: Result<(i32, i32, i32), _> =
                sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&checkpointer.pool)
                    .await;
            match done {
                Ok((0, _, _)) => return true,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "truncating the WAL after an erasure"),
            }
        }
        tracing::warn!(
            "the SQLite write-ahead log could not be truncated after an erasure (a long \
             reader held it): the next erasure tries again"
        );
        false
    }

    /// Applies the shared outbox migrations, then `service`'s own. Safe to run from
    /// several replicas at once (Postgres takes an advisory lock).
    pub async fn migrate(&self, service: &Migrations) -> anyhow::Result<()> {
        // The shared outbox keeps its own bookkeeping table, so neither migrator sees
        // the other's versions as unknown.
        let mut outbox =
            Migrator::with_migrations(self.pick(&OUTBOX_MIGRATIONS).migrations.to_vec());
        outbox.dangerous_set_table_name("_custodia_outbox_migrations");
        outbox
            .run(&self.pool)
            .await
            .context("applying outbox migrations")?;
        self.pick(service)
            .run(&self.pool)
            .await
            .context("applying service migrations")?;
        Ok(())
    }

    fn pick(&self, set: &Migrations) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => set.sqlite,
            Backend::Postgres => set.postgres,
        }
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`): a deferred transaction that reads first and then
    /// writes can fail with SQLITE_BUSY when another writer got in between, which
    /// no busy timeout resolves.
    ///
    /// On SQLite, writers of this process also take turns (see [`WriteTx`]).
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let turn = self.write_turn().await;
                Ok(WriteTx {
                    tx: self.write_pool().begin_with("BEGIN IMMEDIATE").await?,
                    _turn: turn,
                })
            }
            Backend::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _turn: None,
            }),
        }
    }

    /// Starts a read-only transaction that sees one snapshot across its statements
    /// (a record read from several tables is never half old, half new): a deferred
    /// transaction on SQLite (WAL keeps its snapshot), REPEATABLE READ on PostgreSQL.
    pub async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin().await,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
            }
        }
    }

    /// This process's SQLite write turn (none on PostgreSQL), for writes made
    /// outside [`Self::begin_write`].
    pub async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_gate.clone().lock_owned().await),
            Backend::Postgres => None,
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        if let Some(relaxed) = &self.relaxed {
            relaxed.close().await;
        }
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.pool.close().await;
        }
        if let Some(native) = &self.native_pg {
            native.close().await;
        }
        self.pool.close().await;
    }
}

/// Opens the database of `service`: its configured URL, else
/// `<data_dir>/<service>.db` (SQLite, created if missing).
pub async fn open_service(config: &Config, service: ServiceName) -> anyhow::Result<Db> {
    let url = service_url(config, service)?;
    connect(&url, service.ident(), config.database.max_connections)
        .await
        .with_context(|| format!("opening the {service} database"))
}

/// The database URL of `service`: its configured URL, or its SQLite file in the
/// data directory (the directory is created when missing).
pub fn service_url(config: &Config, service: ServiceName) -> anyhow::Result<SecretString> {
    Ok(match config.database_url(service) {
        Some(url) => url.clone(),
        None => {
            crate::private_files::create_dir_all(&config.data_dir).with_context(|| {
                format!("creating data directory {}", config.data_dir.display())
            })?;
            sqlite_file_url(&config.data_dir.join(format!("{}.db", service.ident()))).into()
        }
    })
}

/// `sqlite://` URL of a file, created when missing.
pub fn sqlite_file_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Connects to `url`. For Postgres, `schema` is created if missing and becomes the
/// connection's `search_path`, so services sharing one database never share tables.
pub async fn connect(url: &SecretString, schema: &str, max_connections: u32) -> anyhow::Result<Db> {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);

    let raw = url.expose_secret();
    let options = AnyPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10));
    if raw.starts_with("sqlite:") {
        let file = raw
            .strip_prefix("sqlite://")
            .and_then(|rest| rest.split('?').next())
            .filter(|p| !p.is_empty() && *p != ":memory:")
            .map(Path::new);
        if let Some(dir) = file.and_then(Path::parent)
            && !dir.as_os_str().is_empty()
        {
            crate::private_files::create_dir_all(dir)?;
        }
        // Created owner-only here rather than by SQLite (0644 less the umask): its
        // -wal, -shm and journal files then take the same mode.
        if let Some(file) = file
            && raw
                .split_once('?')
                .is_some_and(|(_, query)| query.split('&').any(|p| p == "mode=rwc"))
        {
            crate::private_files::create_file_if_missing(file)?;
        }
        // FULL so an acknowledged commit survives power loss.
        let pool = sqlite_options(options, "FULL")
            .connect(raw)
            .await
            .map_err(redact)?;
        let one_connection = || {
            AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
        };
        let writer = sqlite_options(one_connection(), "FULL")
            .connect_lazy(raw)
            .map_err(redact)?;
        let relaxed = sqlite_options(one_connection(), "NORMAL")
            .connect_lazy(raw)
            .map_err(redact)?;
        let write_gate = Arc::default();
        let checkpointer = Checkpointer::start(raw, file, Arc::clone(&write_gate))?;
        Ok(Db {
            pool,
            relaxed: Some(relaxed),
            writer: Some(writer),
            checkpointer: Some(checkpointer),
            backend: Backend::Sqlite,
            sqlite_file: file.map(Arc::from),
            native_pg: None,
            write_gate,
        })
    } else if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
        validate_schema_name(schema)?;
        {
            let bootstrap = AnyPoolOptions::new()
                .max_connections(1)
                .connect(raw)
                .await
                .map_err(redact)?;
            bootstrap
                .execute(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
                )))
                .await?;
            bootstrap.close().await;
        }
        let native_pg = PgPoolOptions::new()
            .max_connections(NATIVE_PG_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(
                raw.parse::<PgConnectOptions>()
                    .map_err(|_| anyhow::anyhow!("invalid database URL"))?
                    .options([("search_path", format!("\"{schema}\""))]),
            );
        let set_path = format!("SET search_path TO \"{schema}\"");
        let pool = options
            .after_connect(move |conn, _| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(AssertSqlSafe(set_path)).await?;
                    Ok(())
                })
            })
            .connect(raw)
            .await
            .map_err(redact)?;
        Ok(Db {
            pool,
            relaxed: None,
            writer: None,
            checkpointer: None,
            backend: Backend::Postgres,
            sqlite_file: None,
            native_pg: Some(native_pg),
            write_gate: Arc::default(),
        })
    } else {
        anyhow::bail!("unsupported database URL scheme (expected sqlite:// or postgres://)")
    }
}

/// Pool options for an SQLite file: WAL for concurrent readers, `synchronous` as
/// given, foreign keys on, wait rather than fail when another writer holds the
/// lock, no checkpoint inside commits (the [`Checkpointer`] does them), statement
/// journals in memory, deleted content overwritten with zeros (`secure_delete`,
/// D-9: an erased row must not stay readable in a free page), and the file read
/// through a shared memory map of up to
/// [`SQLITE_MMAP`] (no `pread` and copy into each connection's page cache per page:
/// a cold 10,000-subject BatchCheckConsent reads thousands of pages).
///
/// Statement journals: each statement of a multi-statement transaction (a group
/// commit is one) keeps the pages it changes in a journal of its own, to undo just
/// that statement if it fails. By default one past 64 KiB spills to a temporary
/// file, created, written and deleted by every group commit: about a tenth of the
/// writer thread's time under RecordConsent load (see BENCHMARKS.md).
/// `temp_store = MEMORY` keeps them (and temporary tables and sorts, which our
/// queries keep small) in memory; they last one statement and never hold
/// committed data.
fn sqlite_options(options: AnyPoolOptions, synchronous: &'static str) -> AnyPoolOptions {
    options
        // A connection to a local file cannot have been dropped by a server, and
        // the ping before every acquire was one more round trip to SQLite's
        // worker thread (a thread wake-up each way) on every query.
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(AssertSqlSafe(format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                     PRAGMA wal_autocheckpoint = 0; PRAGMA temp_store = MEMORY; \
                     PRAGMA mmap_size = {SQLITE_MMAP}; PRAGMA secure_delete = ON;"
                )))
                .await?;
                Ok(())
            })
        })
}

/// Attempts of [`Db::scrub_log`], and the wait between two.
const SCRUB_ATTEMPTS: usize = 5;
const SCRUB_RETRY: Duration = Duration::from_millis(100);

/// Bytes of an SQLite file read through a memory map (SQLite's default is none).
const SQLITE_MMAP: u64 = 256 * 1024 * 1024;

/// Most native PostgreSQL connections of one [`Db`] (see [`Db::native_postgres`]).
pub const NATIVE_PG_CONNECTIONS: u32 = 2;

/// How often the [`Checkpointer`] looks at the write-ahead log.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// Pages the write-ahead log may grow by before the [`Checkpointer`] finishes it
/// under the write turn (64 MiB of 4 KiB pages), so that it starts again from its
/// beginning.
const LOG_RESTART_PAGES: i32 = 16_384;

/// Checkpoints an SQLite file's write-ahead log on a connection of its own, so
/// that no commit ever does (`wal_autocheckpoint` is off on every connection).
///
/// Every [`CHECKPOINT_INTERVAL`] that the log has grown, a round:
/// 1. Runs a PASSIVE checkpoint while writes go on. It copies the log's pages
///    into the database file; SQLite flushes that file only when the copy
///    reached the end of the log, which a commit landing meanwhile prevents.
/// 2. Flushes the database file from here, still while writes go on, so that
///    dirty pages never pile up.
/// 3. Once the log has grown by [`LOG_RESTART_PAGES`] since the last time, runs a
///    second PASSIVE checkpoint under the write turn ([`Db::write_turn`]). No
///    commit of this process can land meanwhile, so it copies the few pages
///    logged since step 1, flushes the file and marks the whole log copied; the
///    next write then starts the log again from its beginning. Under steady
///    writes nothing else ever does (a commit always lands during step 1).
///
/// Step 3 holds the write turn for the copy and flush of what was logged since
/// step 1 (2-5 ms on the RecordConsent benchmark), hence only every
/// [`LOG_RESTART_PAGES`] and not every round.
///
/// Left to SQLite, the checkpoint ran inside whichever commit found the log past
/// its limit, and flushed the database file inside that commit. Under steady
/// writes the log never restarted, so past the limit that was every commit that
/// found the checkpoint lock free: on the RecordConsent benchmark ~8 flushes of
/// ~8 ms a second, each stalling a whole group commit (BENCHMARKS.md,
/// "checkpoints out of the commits"). Stops when the last [`Db`] handle is
/// dropped or the database is closed.
#[derive(Debug)]
struct Checkpointer {
    pool: AnyPool,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Checkpointer {
    fn start(
        url: &str,
        file: Option<&Path>,
        write_gate: Arc<tokio::sync::Mutex<()>>,
    ) -> anyhow::Result<Arc<Self>> {
        let pool = sqlite_options(
            AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10)),
            "NORMAL",
        )
        .connect_lazy(url)
        .map_err(redact)?;
        let mut round = CheckpointRound {
            pool: pool.clone(),
            file: file.map(flush_handle).transpose()?,
            write_gate,
            restart_pages: LOG_RESTART_PAGES,
            logged: 0,
            finished_at: 0,
        };
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                if round.pool.is_closed() {
                    break;
                }
                if let Err(e) = round.run().await {
                    tracing::debug!(error = %e, "background WAL checkpoint failed");
                }
            }
        });
        Ok(Arc::new(Self { pool, _stop: stop }))
    }
}

/// One [`Checkpointer`] round and what it remembers of the last.
#[derive(Debug)]
struct CheckpointRound {
    pool: AnyPool,
    /// The database file, for step 2's flush (none for an in-memory database).
    file: Option<Arc<std::fs::File>>,
    write_gate: Arc<tokio::sync::Mutex<()>>,
    restart_pages: i32,
    /// Pages in the log at the last round's first checkpoint.
    logged: i32,
    /// Pages in the log when a round last finished it under the write turn; 0
    /// once the log has started again.
    finished_at: i32,
}

impl CheckpointRound {
    /// Runs a round; true if it finished the log under the write turn.
    async fn run(&mut self) -> anyhow::Result<bool> {
        let (_, logged, _) = passive_checkpoint(&self.pool).await?;
        if logged < self.logged {
            self.finished_at = 0;
        }
        let grown = logged != self.logged;
        self.logged = logged;
        if logged <= 0 || !grown {
            return Ok(false);
        }
        if let Some(file) = &self.file {
            let file = Arc::clone(file);
            tokio::task::spawn_blocking(move || file.sync_data()).await??;
        }
        if logged < self.finished_at + self.restart_pages {
            return Ok(false);
        }
        self.finish().await
    }

    /// Step 3: a checkpoint under the write turn; true if it copied the whole log.
    async fn finish(&mut self) -> anyhow::Result<bool> {
        let _turn = self.write_gate.lock().await;
        let (busy, logged, copied) = passive_checkpoint(&self.pool).await?;
        // A reader of an older snapshot holds back the copy (and another
        // checkpointer on the file, the lock): try again once the log has grown by
        // as much again.
        if busy == 0 {
            self.finished_at = logged;
        }
        Ok(busy == 0 && copied == logged)
    }
}

/// Runs a PASSIVE checkpoint: (busy, pages in the log, pages copied), the log as
/// of the checkpoint's start.
async fn passive_checkpoint(pool: &AnyPool) -> Result<(i32, i32, i32), sqlx::Error> {
    sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await
}

/// A read-only descriptor of the SQLite file at `path` for the [`Checkpointer`]'s
/// early flush, one per file for the life of the process. It is never closed:
/// closing any descriptor of a file drops every POSIX lock this process holds on
/// it, SQLite's own included (another process could then take the database as
/// unused and delete its log). SQLite keeps its own descriptors open for the same
/// reason. One per database file, so a process holds a handful.
fn flush_handle(path: &Path) -> anyhow::Result<Arc<std::fs::File>> {
    use std::os::unix::fs::MetadataExt;
    static HANDLES: std::sync::Mutex<Vec<(u64, u64, Arc<std::fs::File>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut handles = HANDLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let meta = std::fs::metadata(path).context("cannot read the SQLite file's metadata")?;
    if let Some((_, _, file)) = handles
        .iter()
        .find(|(dev, ino, _)| *dev == meta.dev() && *ino == meta.ino())
    {
        return Ok(Arc::clone(file));
    }
    let file = Arc::new(std::fs::File::open(path).context("cannot open the SQLite file")?);
    // Keyed by what was opened (the path may name another file by now).
    let meta = file.metadata()?;
    handles.push((meta.dev(), meta.ino(), Arc::clone(&file)));
    Ok(file)
}

fn validate_schema_name(schema: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !schema.is_empty()
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "invalid schema name {schema:?}"
    );
    Ok(())
}

/// Connection errors can echo the URL; keep only the kind of failure.
fn redact(e: sqlx::Error) -> anyhow::Error {
    match e {
        sqlx::Error::Configuration(_) => anyhow::anyhow!("invalid database URL"),
        sqlx::Error::Io(io) => anyhow::anyhow!("cannot reach the database: {}", io.kind()),
        other => anyhow::anyhow!("database connection failed: {other}"),
    }
}

/// `n` bind placeholders numbered from `start`, for statements whose parameters are
/// all bound in order.
///
/// SQLite gets anonymous `?`: it resolves `$N` names through a linear list, so parsing
/// a statement with n named parameters, and sqlx's binding (which asks each
/// parameter's name), cost O(n²) — most of an append's time with a 400-row INSERT of
/// 5,200 parameters. Anonymous parameters bind in order at O(1) each.
pub fn placeholders(backend: Backend, start: usize, n: usize) -> String {
    match backend {
        Backend::Sqlite => vec!["?"; n].join(", "),
        Backend::Postgres => (start..start + n)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Microseconds since the Unix epoch: the portable time column type.
pub fn to_micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

/// Inverse of [`to_micros`].
pub fn from_micros(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Parameters of a query assembled at run time (optional filters): each `push`
/// returns the `$n` placeholder to put in the SQL, and [`Params::bind`] binds the
/// values in that order.
#[derive(Debug, Default, Clone)]
pub struct Params {
    values: Vec<Param>,
}

#[derive(Debug, Clone)]
enum Param {
    Int(i64),
    Text(String),
}

impl Params {
    /// No parameters yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an integer; returns its placeholder.
    pub fn int(&mut self, v: i64) -> String {
        self.values.push(Param::Int(v));
        format!("${}", self.values.len())
    }

    /// Adds a text; returns its placeholder.
    pub fn text(&mut self, v: impl Into<String>) -> String {
        self.values.push(Param::Text(v.into()));
        format!("${}", self.values.len())
    }

    /// Binds every value to `query`, in placeholder order.
    pub fn bind<'q>(
        self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        for v in self.values {
            query = match v {
                Param::Int(i) => query.bind(i),
                Param::Text(s) => query.bind(s),
            };
        }
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages in the log, as a PASSIVE checkpoint reports them.
    async fn log_pages(pool: &AnyPool) -> i32 {
        passive_checkpoint(pool).await.unwrap().1
    }

    async fn write_row(db: &Db) {
        let mut tx = db.begin_write().await.unwrap();
        sqlx::query("INSERT INTO t (body) VALUES (randomblob(3000))")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    async fn rows<'c>(on: impl sqlx::Executor<'c, Database = sqlx::Any>) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(on)
            .await
            .unwrap()
    }

    /// An SQLite file with 100 rows written, whose own [`Checkpointer`] is
    /// stopped, and a round of the test's own (its connection is also the probe).
    async fn setup(dir: &tempfile::TempDir) -> (Db, CheckpointRound) {
        let path = dir.path().join("ck.db");
        let url = SecretString::from(sqlite_file_url(&path));
        let db = connect(&url, "ck", 4).await.unwrap();
        db.checkpointer.as_ref().unwrap().pool.close().await;
        for pool in [db.pool(), db.write_pool()] {
            let every: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(every, 0, "no commit checkpoints");
            let temp: i64 = sqlx::query_scalar("PRAGMA temp_store")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(temp, 2, "statement journals in memory");
        }
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
            .execute(db.write_pool())
            .await
            .unwrap();
        for _ in 0..100 {
            write_row(&db).await;
        }
        let pool = sqlite_options(AnyPoolOptions::new().max_connections(1), "NORMAL")
            .connect(url.expose_secret())
            .await
            .unwrap();
        let round = CheckpointRound {
            pool,
            file: Some(flush_handle(&path).unwrap()),
            write_gate: Arc::clone(&db.write_gate),
            restart_pages: 1,
            logged: 0,
            finished_at: 0,
        };
        (db, round)
    }

    /// A checkpoint that a commit (here a reader's snapshot) kept from the log's
    /// end leaves the log growing with every commit: commits never checkpoint.
    /// Step 3 finishes it, and the next commit starts it again.
    #[tokio::test]
    async fn only_a_finished_log_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut round) = setup(&dir).await;
        let probe = round.pool.clone();
        let mut reader = db.begin_read().await.unwrap();
        assert_eq!(rows(&mut *reader).await, 100);
        write_row(&db).await;
        let held_back = log_pages(&probe).await;
        reader.rollback().await.unwrap();
        for _ in 0..3 {
            write_row(&db).await;
        }
        let grown = log_pages(&probe).await;
        assert!(
            grown > held_back,
            "{grown} pages after 3 commits, {held_back} before"
        );

        assert!(round.finish().await.unwrap(), "nothing holds the copy back");
        write_row(&db).await;
        let started_again = log_pages(&probe).await;
        assert!(
            started_again < held_back,
            "{started_again} pages after a finished log and one commit, {held_back} before"
        );
        assert_eq!(rows(&probe).await, 105);
        probe.close().await;
        db.close().await;
    }

    /// Rounds finish the log (step 3 takes the write turn) while another task
    /// keeps committing, and no write is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_finish_the_log_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut round) = setup(&dir).await;
        let probe = round.pool.clone();
        let before = log_pages(&probe).await;
        assert!(before >= 100, "{before} pages logged");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writes = tokio::spawn({
            let (db, stop) = (db.clone(), Arc::clone(&stop));
            async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    write_row(&db).await;
                    n += 1;
                }
                n
            }
        });
        let mut rounds = 1;
        while !round.run().await.unwrap() {
            rounds += 1;
            assert!(rounds < 100, "no round finished the log");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writes.await.unwrap();
        write_row(&db).await;
        let after = log_pages(&probe).await;
        assert!(
            after < before,
            "{after} pages after a finished round and one commit, {before} before"
        );
        assert_eq!(rows(&probe).await, 101 + written);
        probe.close().await;
        db.close().await;
    }
}
