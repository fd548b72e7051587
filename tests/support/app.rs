//! A running server for one test, and the fresh database under it.

use std::{sync::Arc, time::Duration};

use custodia_core::{
    Config,
    legal_time::{Clock, ManualClock},
    server::{Application, ServiceDef},
};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tonic::transport::{Channel, Endpoint};

use crate::{ADMIN_TOKEN, init_tracing};

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
        Self::start(config, services, dir, database).await
    }

    /// Runs `services` with `config` over `dir` and `database`, its clock at
    /// 2026-11-02T09:00:00Z.
    async fn start(
        config: Config,
        services: &[ServiceDef],
        dir: tempfile::TempDir,
        database: Option<TestDatabase>,
    ) -> Self {
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

    /// A process restart: stops the server gracefully (work in flight is torn
    /// down after `server.shutdown_grace_secs`) and starts `services` again over
    /// the same configuration, data directory and database, on a new port, the
    /// clock back at its start.
    pub async fn restart(mut self, services: &[ServiceDef]) -> Self {
        self.shut_down().await;
        Self::start(self.config, services, self._dir, self.database).await
    }

    /// Stops the server gracefully, runs `offline` (a backup, a restore, a
    /// command-line tool over the databases) while nothing holds them, and starts
    /// `services` again as [`Self::restart`] does.
    pub async fn while_stopped<F: std::future::Future<Output = ()>>(
        mut self,
        services: &[ServiceDef],
        offline: impl FnOnce(Config, Option<String>) -> F,
    ) -> Self {
        self.shut_down().await;
        let database = self.database.as_ref().map(|d| d.name.clone());
        offline(self.config.clone(), database).await;
        Self::start(self.config, services, self._dir, self.database).await
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

    /// The injected clock's time in whole seconds, as the protobuf timestamp a
    /// request carries (evidence collected "now", a breach detected "now").
    pub fn timestamp(&self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.clock.now().timestamp(),
            nanos: 0,
        }
    }

    /// Stops the server gracefully and drops its Postgres database.
    pub async fn stop(mut self) {
        self.shut_down().await;
        if let Some(db) = self.database.take() {
            db.drop_now().await;
        }
    }

    /// Stops the server gracefully; panics unless it stops cleanly.
    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}
