//! The server under test: only the audit-log service, in process, on 127.0.0.1:0,
//! over the test suite's configuration (fresh temp dir, fresh PostgreSQL database).

use std::time::{Duration, Instant};

use custodia_core::{
    Config,
    config::ReadEventSync,
    server::{Application, ServiceDef},
};
use custodia_proto::audit::v1::{
    GetSignedTreeHeadRequest, SignedTreeHead, audit_log_service_client::AuditLogServiceClient,
};
use custodia_tests::{ADMIN_TOKEN, Backend, TestDatabase, authed, test_config};
use tonic::transport::{Channel, Endpoint};

/// Key of the subject hash, fixed so the load generator can compute subject hashes
/// for a log it populates directly through the store.
pub const SUBJECT_KEY: &str = "loadgen-subject-hash-key";

/// A gRPC client of the audit log.
pub type Client = AuditLogServiceClient<Channel>;

/// Configuration and the resources behind it (temp dir, Postgres database).
#[derive(Debug)]
pub struct BenchEnv {
    /// Configuration of the server under test.
    pub config: Config,
    /// Which backend.
    pub backend: Backend,
    _dir: tempfile::TempDir,
    database: Option<TestDatabase>,
}

impl BenchEnv {
    /// A fresh data dir / database. `db_connections` sets the pool size (the
    /// production default is 16; the test suite uses 4).
    pub async fn new(backend: Backend, db_connections: u32) -> Self {
        let (mut config, dir, database) = test_config(backend).await;
        config.database.max_connections = db_connections;
        config.audit.subject_hash_key = Some(SUBJECT_KEY.to_string().into());
        Self {
            config,
            backend,
            _dir: dir,
            database,
        }
    }

    /// Where the data lives, for the result block.
    pub fn describe(&self) -> String {
        match &self.database {
            Some(db) => format!(
                "postgres database {}",
                db.url.rsplit('/').next().unwrap_or("?")
            ),
            None => format!("sqlite file in {}", self.config.data_dir.display()),
        }
    }

    /// Builds and starts the server; returns it with the time `Application::build`
    /// took (migrations, key loading, and loading the Merkle tree from the database).
    pub async fn start(&self) -> anyhow::Result<BenchServer> {
        self.start_services(&[custodia_audit_log::SERVICE]).await
    }

    /// Like [`Self::start`], hosting `services`.
    pub async fn start_services(&self, services: &[ServiceDef]) -> anyhow::Result<BenchServer> {
        let t0 = Instant::now();
        let app = Application::build(self.config.clone(), services).await?;
        let startup = t0.elapsed();
        let endpoint = format!("http://{}", app.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(BenchServer {
            endpoint,
            startup,
            stop: Some(stop),
            task: Some(task),
            child: None,
        })
    }

    /// Starts `binary` (the `custodia` executable) as a process of its own serving
    /// `services` (names as `custodia serve` takes them) over this environment's
    /// data dir or database, so the load generator and the server no longer share
    /// one process: the figures are the binary's as an operator runs it, and the
    /// server's CPU is measured apart from the client's. Access events stay queued
    /// in the outbox unless audit-log is among `services` (the forwarder's endpoint
    /// is then this server).
    pub async fn spawn_binary(
        &self,
        binary: &std::path::Path,
        services: &[&str],
    ) -> anyhow::Result<BenchServer> {
        // A free port: bound, read, released, then taken by the child.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg("serve")
            .args(services)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&c.data_dir)
            .env_remove("CUSTODIA_CONFIG")
            .env("RUST_LOG", "error")
            .env("CUSTODIA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env(
                "CUSTODIA__DATABASE__MAX_CONNECTIONS",
                c.database.max_connections.to_string(),
            )
            .env(
                "CUSTODIA__SERVER__IO_THREADS",
                c.server.io_threads.to_string(),
            )
            .env("CUSTODIA__CONSENT__RECEIPT_SIGNING_KEY", "24".repeat(32))
            .env("CUSTODIA__AUDIT__SUBJECT_HASH_KEY", SUBJECT_KEY)
            .env("CUSTODIA__AUDIT__SIGNING_KEY", "42".repeat(32))
            .env(
                "CUSTODIA__AUDIT__READ_EVENT_SYNC",
                match c.audit.read_event_sync {
                    ReadEventSync::Relaxed => "relaxed",
                    ReadEventSync::Full => "full",
                },
            )
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if !services.contains(&"audit-log") {
            // Nothing listens on the discard port: deliveries fail at once and back off.
            cmd.env("CUSTODIA__AUDIT__ENDPOINT", "http://127.0.0.1:9");
        }
        if let Some(dir) = &c.audit.read_event_journal_dir {
            cmd.env("CUSTODIA__AUDIT__READ_EVENT_JOURNAL_DIR", dir);
        }
        if let Some(db) = &self.database {
            cmd.arg("--database-url").arg(&db.url);
        }
        let t0 = Instant::now();
        let mut child = cmd.spawn()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{} exited at start: {status}", binary.display());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "{} did not listen within 60 s",
                binary.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(BenchServer {
            endpoint,
            startup: t0.elapsed(),
            stop: None,
            task: None,
            child: Some(child),
        })
    }

    /// Drops the Postgres database (the temp dir goes with `self`).
    pub async fn cleanup(mut self) {
        if let Some(db) = self.database.take() {
            db.drop_now().await;
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct BenchServer {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Time taken by `Application::build`.
    pub startup: Duration,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The server process, when it runs apart ([`BenchEnv::spawn_binary`]).
    child: Option<tokio::process::Child>,
}

impl BenchServer {
    /// Process id of the server when it runs as a process of its own.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// A new HTTP/2 connection to the server.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.endpoint.clone())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }

    /// An audit-log client on its own HTTP/2 connection.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let channel = self.channel().await?;
        Ok(AuditLogServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    /// Stops the server gracefully.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        if let Some(mut child) = self.child.take() {
            // SIGTERM, for a graceful stop; SIGKILL if it takes over 30 s.
            if let Some(pid) = child.id() {
                tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await?;
            }
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(status) => anyhow::ensure!(status?.success(), "the server exited with an error"),
                Err(_) => child.kill().await?,
            }
        }
        Ok(())
    }
}

/// The latest signed head, if any.
pub async fn latest_head(client: &mut Client) -> anyhow::Result<Option<SignedTreeHead>> {
    match client
        .get_signed_tree_head(authed(
            GetSignedTreeHeadRequest { tree_size: 0 },
            ADMIN_TOKEN,
        ))
        .await
    {
        Ok(r) => Ok(r.into_inner().head),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// Polls until a signed head covers at least `size` entries (every 5 ms, for at most
/// `limit`); returns the head and how long it took.
pub async fn wait_for_head(
    client: &mut Client,
    size: u64,
    limit: Duration,
) -> anyhow::Result<(SignedTreeHead, Duration)> {
    let t0 = Instant::now();
    loop {
        if let Some(head) = latest_head(client).await?
            && head.tree_size as u64 >= size
        {
            return Ok((head, t0.elapsed()));
        }
        anyhow::ensure!(
            t0.elapsed() < limit,
            "no signed head covered {size} entries within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
