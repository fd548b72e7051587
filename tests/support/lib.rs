//! Test support for the workspace end-to-end suite: a real custodia server on
//! port 0 over a fresh database (SQLite in a temp dir, or a new PostgreSQL
//! database per test), and helpers to call it through the generated clients.
#![forbid(unsafe_code)]

use std::{sync::Arc, time::Duration};

use custodia_core::{
    Config,
    legal_time::{Clock, ManualClock},
    server::{Application, ServiceDef},
};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

/// Token of the admin principal in test servers.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Which database backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a fresh temp directory.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// Where the Postgres tests create their databases.
pub fn postgres_admin_url() -> String {
    std::env::var("CUSTODIA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh, empty PostgreSQL database; dropped by [`TestDatabase::drop_now`].
#[derive(Debug)]
pub struct TestDatabase {
    /// URL of the new database.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates `custodia_test_<uuid>`. Panics with one clear line when no server answers:
    /// the suite never silently skips its Postgres half.
    pub async fn create() -> Self {
        let admin = postgres_admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin} ({e}); start it or set \
                 CUSTODIA_TEST_POSTGRES_URL to a server where this user may CREATE DATABASE"
            )
        });
        let name = format!("custodia_test_{}", uuid::Uuid::new_v4().simple());
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("CREATE DATABASE");
        let (base, _) = admin.rsplit_once('/').expect("URL with a database path");
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Drops the database (best effort).
    pub async fn drop_now(self) {
        if let Ok(mut conn) = PgConnection::connect(&postgres_admin_url()).await {
            let _ = conn
                .execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await;
        }
    }
}

/// A running server for one test.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The injected clock; advance it instead of sleeping.
    pub clock: Arc<ManualClock>,
    /// The configuration the server runs with.
    pub config: Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    database: Option<TestDatabase>,
}

/// A test configuration on `backend`: port 0, temp data dir, known admin token.
pub async fn test_config(backend: Backend) -> (Config, tempfile::TempDir, Option<TestDatabase>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_path_buf();
    config.auth.admin_token = Some(ADMIN_TOKEN.to_string().into());
    config.database.max_connections = 4;
    // Fixed keys, so a second replica joining the same database signs alike.
    config.consent.receipt_signing_key = Some("24".repeat(32).into());
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let db = TestDatabase::create().await;
            config.database.url = Some(db.url.clone().into());
            config.audit.subject_hash_key = Some("test-subject-hash-key".to_string().into());
            config.audit.signing_key = Some("42".repeat(32).into());
            Some(db)
        }
    };
    (config, dir, database)
}

impl TestApp {
    /// Starts `services` on `backend` with `adjust` applied to the test configuration.
    pub async fn spawn_with(
        backend: Backend,
        services: &[ServiceDef],
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        init_tracing();
        let (mut config, dir, database) = test_config(backend).await;
        adjust(&mut config);
        let clock = Arc::new(ManualClock::new(
            "2026-11-02T09:00:00Z".parse().expect("timestamp"),
        ));
        let app = Application::build_with_clock(
            config.clone(),
            services,
            clock.clone() as Arc<dyn Clock>,
        )
        .await
        .expect("application builds");
        let endpoint = format!("http://{}", app.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            endpoint,
            clock,
            config,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
            database,
        }
    }

    /// Starts `services` on `backend` with the default test configuration.
    pub async fn spawn(backend: Backend, services: &[ServiceDef]) -> Self {
        Self::spawn_with(backend, services, |_| {}).await
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.endpoint.clone())
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connects")
    }

    /// Stops the server gracefully and drops its Postgres database.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
        if let Some(db) = self.database.take() {
            db.drop_now().await;
        }
    }
}

/// Wraps `message` in a request carrying `token` as a bearer token.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Retries `check` until it returns `Some`: background work (access-event
/// delivery, head integration) is asynchronous. Gives up after 15 s so a broken
/// pipeline fails instead of hanging; this waits for work, it never makes time pass
/// (tests advance the injected clock for that).
pub async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the first page (1,000 events) ListEvents returns for `filter`
/// satisfies `done` (access events reach audit-log through the outbox, later than
/// the call they describe), and returns that page.
pub async fn audit_events_until(
    channel: Channel,
    filter: custodia_proto::audit::v1::ListEventsRequest,
    done: impl Fn(&[custodia_proto::audit::v1::AccessEvent]) -> bool,
) -> Vec<custodia_proto::audit::v1::AccessEvent> {
    let client =
        custodia_proto::audit::v1::audit_log_service_client::AuditLogServiceClient::new(channel);
    let request = custodia_proto::audit::v1::ListEventsRequest {
        page_size: 1000,
        ..filter
    };
    let done = &done;
    eventually(|| {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let events = client
                .list_events(authed(request, ADMIN_TOKEN))
                .await
                .ok()?
                .into_inner()
                .events;
            done(&events).then_some(events)
        }
    })
    .await
}

/// Logs for the failing test, once per process, when `TEST_LOG` is set.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = custodia_core::telemetry::init(&Default::default());
        }
    });
}

/// CreatePurpose of `purposes/newsletter`: a communication purpose whose lawful
/// basis is consent, as the consent tests and the load generator use it.
pub fn newsletter_purpose() -> custodia_proto::consent::v1::CreatePurposeRequest {
    use custodia_proto::consent::v1::{
        CreatePurposeRequest, LawfulBasis, Purpose, PurposeCategory,
    };
    CreatePurposeRequest {
        purpose_id: "newsletter".into(),
        purpose: Some(Purpose {
            display_name: "Newsletter".into(),
            lawful_basis: LawfulBasis::Consent as i32,
            category: PurposeCategory::Communication as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

/// Every directory under `root` (itself included) and every file in them, with
/// their modes; panics unless directories are 0700 and files 0600 (the data
/// directory holds personal data and secrets). Symbolic links are skipped.
#[cfg(unix)]
pub fn assert_owner_only(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        // A live server renames and removes files (journal segments, -wal): a
        // file gone meanwhile is skipped.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "directory {} is {mode:o}", path.display());
            if let Ok(entries) = std::fs::read_dir(&path) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            assert_eq!(mode, 0o600, "file {} is {mode:o}", path.display());
        }
        found.push(path);
    }
    found
}
