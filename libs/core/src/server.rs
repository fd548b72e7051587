//! Server bootstrap shared by every service: opens and migrates each service's
//! database, wires auth, access-event forwarding, grpc.health.v1 (SERVING only
//! once the database is migrated), reflection v1 + v1alpha, request size and time
//! limits, and graceful shutdown on SIGTERM / Ctrl-C.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use futures::future::BoxFuture;
use secrecy::SecretString;
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::{service::RoutesBuilder, transport::server::Router};
use tonic_health::ServingStatus;
use tower::layer::util::{Identity, Stack};

use crate::{
    Config, ServiceName,
    auth::{
        StaticTokens,
        layer::{AuthLayer, Denial, DenialRecorder},
        scopes::ScopeTable,
    },
    connect::{ConnectLayer, MethodTable},
    connections::{ActivityLayer, Connections},
    decode_errors::DecodeErrorLayer,
    keys::{self, Origin},
    legal_time::{Clock, LegalCalendar, SystemClock},
    outbound::Outbound,
    outbox::{
        AccessEvent, OutboxStore, Outcome, SqlOutbox, forwarder::Forwarder, grpc_sink::GrpcSink,
    },
    storage::{self, Db, Migrations},
    subject::SubjectHasher,
};

/// Everything a service needs to build its handlers.
#[derive(Clone)]
pub struct ServiceContext {
    /// Which service this is.
    pub name: ServiceName,
    /// The process configuration.
    pub config: Arc<Config>,
    /// The service's own database, migrated.
    pub db: Db,
    /// The service's access-event outbox (in `db`).
    pub outbox: SqlOutbox,
    /// Source of "now"; tests inject a manual clock.
    pub clock: Arc<dyn Clock>,
    /// Keyed hash of subject identifiers.
    pub subjects: SubjectHasher,
    /// Holiday calendar and timezone for legal deadlines.
    pub calendar: Arc<LegalCalendar>,
    /// Where this process's other services can be reached (`http://host:port`).
    pub self_endpoint: String,
    /// Token for calls to other custodia services (the admin or forwarder token).
    pub internal_token: Option<SecretString>,
    /// How calls to other servers are made (TLS of `https://` endpoints).
    pub outbound: Outbound,
    /// Becomes `true` when the server starts shutting down: long-lived streams end
    /// then, so a rollout is not held up by idle watchers.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Each principal's allowance of access events naming subjects, shared by
    /// the process's services.
    pub quota: crate::quota::SubjectQuota,
    /// Where erasures are recorded for replay after a backup restore (D-9).
    pub erasures: crate::erasure_ledger::ErasureLedger,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("name", &self.name)
            .field("backend", &self.db.backend())
            .finish_non_exhaustive()
    }
}

/// What a service hands back once built: its gRPC routes and background tasks.
pub struct Mounted {
    /// Adds the service's tonic server(s) to the router.
    pub register: Box<dyn FnOnce(&mut RoutesBuilder) + Send>,
    /// Background work (schedulers, watchers) run until shutdown.
    pub tasks: Vec<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// How the process builds one service.
#[derive(Clone, Copy)]
pub struct ServiceDef {
    /// Which service.
    pub name: ServiceName,
    /// Its migrations on both backends.
    pub migrations: &'static Migrations,
    /// Builds its handlers on a migrated database.
    pub mount: fn(ServiceContext) -> BoxFuture<'static, anyhow::Result<Mounted>>,
}

impl std::fmt::Debug for ServiceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDef")
            .field("name", &self.name)
            .finish()
    }
}

/// Secrets resolved for one process.
struct Secrets {
    admin_token: Option<SecretString>,
    subject_key: SecretString,
    forwarder_token: Option<SecretString>,
}

fn resolve_secrets(config: &Config) -> anyhow::Result<Secrets> {
    let embedded = config.is_embedded();
    let admin_token = if embedded {
        let (token, origin) = keys::configured_or_file(
            config.auth.admin_token.as_ref(),
            &config.data_dir,
            "admin.token",
        )?;
        if origin == Origin::Generated {
            keys::announce_generated_admin_token(&token, &keys::admin_token_path(&config.data_dir));
        }
        Some(token)
    } else {
        config.auth.admin_token.clone()
    };
    let subject_key = match (&config.audit.subject_hash_key, embedded) {
        (Some(key), _) => key.clone(),
        (None, true) => keys::configured_or_file(None, &config.data_dir, "subject-hash.key")?.0,
        (None, false) => anyhow::bail!(
            "audit.subject_hash_key must be set when services use PostgreSQL \
             (every replica needs the same key)"
        ),
    };
    let forwarder_token = config
        .audit
        .forwarder_token
        .clone()
        .or_else(|| admin_token.clone());
    Ok(Secrets {
        admin_token,
        subject_key,
        forwarder_token,
    })
}

/// The tower layers around every call: activity (outermost: a call is in flight
/// on its connection, see [`crate::connections`]), CORS (when configured),
/// Connect and gRPC-Web (each a translation to gRPC, see [`crate::connect`]),
/// auth, then decode errors: whatever the encoding, a call meets the same auth,
/// limits and access logging.
type Layers = Stack<
    DecodeErrorLayer,
    Stack<
        AuthLayer,
        Stack<
            tonic_web::GrpcWebLayer,
            Stack<
                ConnectLayer,
                Stack<
                    tower::util::Either<tower_http::cors::CorsLayer, Identity>,
                    Stack<ActivityLayer, Identity>,
                >,
            >,
        >,
    >,
>;

/// A bound, ready-to-run custodia server hosting one or more services.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router<Layers>,
    /// The connections held, under the configured caps and timeouts.
    connections: Connections,
    /// See [`crate::config::ServerConfig::io_threads`].
    io_threads: usize,
    tasks: Vec<BoxFuture<'static, ()>>,
    /// Each service's database and outbox, closed in turn at the stop.
    dbs: Vec<(Db, SqlOutbox)>,
    grace: Duration,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Builds `services` with the system clock.
    pub async fn build(config: Config, services: &[ServiceDef]) -> anyhow::Result<Self> {
        Self::build_with_clock(config, services, Arc::new(SystemClock)).await
    }

    /// Builds `services`, binding `config.server.listen` (port 0 picks one).
    pub async fn build_with_clock(
        config: Config,
        services: &[ServiceDef],
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!services.is_empty(), "no service to serve");
        // The one validation `config check` runs too.
        config.validate()?;
        let config = Arc::new(config);
        crate::private_files::secure_data_dirs(&config)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let secrets = resolve_secrets(&config)?;
        let calendar = Arc::new(LegalCalendar::from_config(&config.legal)?);
        crate::subject::set_phone_region(calendar.jurisdiction().country())
            .map_err(|e| anyhow::anyhow!(e))?;
        let outbound = Outbound::from_config(&config.outbound.tls)?;
        let subjects = SubjectHasher::new(secrets.subject_key.clone());
        let scopes = ScopeTable::from_descriptor_set(custodia_proto::FILE_DESCRIPTOR_SET)?;
        let tokens = StaticTokens::from_config(&config.auth, secrets.admin_token.as_ref())?;

        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        if !addr.ip().to_canonical().is_loopback() {
            // The binary has no TLS: beyond this host, encryption is a proxy's or a mesh's.
            tracing::warn!(
                %addr,
                "serving plaintext gRPC on a non-loopback address: TLS is not configured; \
                 put a TLS-terminating proxy or an mTLS service mesh in front"
            );
        }
        let self_endpoint = format!("http://{}", loopback_of(addr));
        let audit_endpoint = config
            .audit
            .endpoint
            .clone()
            .unwrap_or_else(|| self_endpoint.clone());

        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        let mut tasks = Vec::new();
        let mut dbs = Vec::new();
        let mut outboxes = HashMap::new();
        let quota = crate::quota::SubjectQuota::new(
            config.audit.max_subject_events_per_minute,
            clock.clone(),
        );
        let erasures = crate::erasure_ledger::ErasureLedger::new(config.erasure_ledger_path());
        for def in services {
            health_reporter
                .set_service_status(def.name.grpc_name(), ServingStatus::NotServing)
                .await;
            let db = storage::open_service(&config, def.name).await?;
            db.migrate(def.migrations)
                .await
                .with_context(|| format!("migrating the {} database", def.name))?;
            let sync = config.audit.read_event_sync;
            let outbox = match (db.backend(), &config.audit.read_event_journal_dir) {
                (storage::Backend::Postgres, Some(dir)) => {
                    let journal = dir.join(format!("{}-read-events", def.name));
                    SqlOutbox::with_journal(db.clone(), sync, Some(&journal))
                        .with_journal_backlog(PG_JOURNAL_BACKLOG)
                }
                _ => SqlOutbox::with_read_sync(db.clone(), sync),
            };
            let ctx = ServiceContext {
                name: def.name,
                config: config.clone(),
                db: db.clone(),
                outbox: outbox.clone(),
                clock: clock.clone(),
                subjects: subjects.clone(),
                calendar: calendar.clone(),
                self_endpoint: self_endpoint.clone(),
                internal_token: secrets.forwarder_token.clone(),
                outbound: outbound.clone(),
                shutdown: shutdown_rx.clone(),
                quota: quota.clone(),
                erasures: erasures.clone(),
            };
            let mounted = (def.mount)(ctx)
                .await
                .with_context(|| format!("starting the {} service", def.name))?;
            (mounted.register)(&mut routes);
            tasks.extend(mounted.tasks);
            if let Some(token) = &secrets.forwarder_token {
                let sink = GrpcSink::new(&outbound, &audit_endpoint, token.clone())?;
                let forwarder = Forwarder::new(outbox.clone(), sink, config.audit.batch_size);
                tasks.push(Box::pin(forwarder.run()));
            } else {
                tracing::warn!(service = %def.name, "no audit.forwarder_token: access events stay queued");
            }
            outboxes.insert(def.name, outbox.clone());
            dbs.push((db, outbox));
            health_reporter
                .set_service_status(def.name.grpc_name(), ServingStatus::Serving)
                .await;
        }
        health_reporter
            .set_service_status("", ServingStatus::Serving)
            .await;

        routes.add_service(health_service);
        let served: Vec<&str> = services.iter().map(|d| d.name.grpc_name()).collect();
        routes.add_service(crate::reflection::v1(&served)?);
        routes.add_service(crate::reflection::v1alpha(&served)?);

        let denials = OutboxDenials {
            outboxes,
            clock: clock.clone(),
        };
        let methods = MethodTable::new(
            crate::connect::methods::pool(),
            &services
                .iter()
                .map(|d| d.name.grpc_name())
                .collect::<Vec<_>>(),
        );
        let openapi =
            crate::connect::openapi::document(&methods, &scopes, env!("CARGO_PKG_VERSION"));
        let auth = AuthLayer::new(Arc::new(tokens), scopes, Some(Arc::new(denials)));
        let connect = ConnectLayer::new(
            methods,
            config.server.max_request_bytes,
            Duration::from_secs(config.server.request_timeout_secs),
            Some(auth.clone()),
        )
        .with_document(
            "/openapi.json",
            "application/json",
            serde_json::to_vec_pretty(&openapi)?.into(),
        );
        let server = &config.server;
        let router = tonic::transport::Server::builder()
            .timeout(Duration::from_secs(server.request_timeout_secs))
            .concurrency_limit_per_connection(server.concurrency_limit_per_connection)
            .max_concurrent_streams(server.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(server.keepalive_interval_secs)))
            .http2_keepalive_timeout(Some(Duration::from_secs(server.keepalive_timeout_secs)))
            .accept_http1(true)
            .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()))
            .layer(ActivityLayer)
            .layer(tower::util::option_layer(cors_layer(&server.cors)))
            .layer(connect)
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(auth)
            .layer(DecodeErrorLayer)
            .add_routes(routes.routes().prepare());

        Ok(Self {
            listener,
            addr,
            router,
            connections: Connections::new(config.server.connection_limits()),
            tasks,
            dbs,
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
            io_threads: config.server.io_threads,
            shutdown: shutdown_tx,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGTERM or Ctrl-C, then lets in-flight calls finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves (tests pass a oneshot receiver).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let background: Vec<JoinHandle<()>> = self.tasks.into_iter().map(tokio::spawn).collect();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let grace = self.grace;
        let streams = self.shutdown;
        let stopping = async move {
            shutdown.await;
            tracing::info!("shutting down; finishing in-flight calls");
            let _ = streams.send(true);
            let _ = stop_tx.send(());
        };
        let connections = self.connections;
        let mut server: BoxFuture<'static, anyhow::Result<()>> = if self.io_threads == 0 {
            let incoming = admitted(self.listener, connections);
            let router = self.router;
            Box::pin(async move {
                Ok(router
                    .serve_with_incoming_shutdown(incoming, stopping)
                    .await?)
            })
        } else {
            Box::pin(serve_on_threads(
                self.router,
                self.listener,
                connections,
                self.io_threads,
                stopping,
            ))
        };
        let result = tokio::select! {
            r = &mut server => r,
            _ = async {
                if stop_rx.await.is_err() {
                    // The server ended before shutdown began.
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("grace period over; closing remaining calls");
                Ok(())
            }
        };
        // Stops I/O threads still serving (see `serve_on_threads`) before the pools close.
        drop(server);
        for task in background {
            task.abort();
        }
        for (db, outbox) in self.dbs {
            move_journal_at_stop(&outbox).await;
            db.close().await;
        }
        result.context("gRPC server failed")
    }
}

/// Most bytes a PostgreSQL service's read-event journal's files hold before
/// reads go straight to the table: ~40,000 checks' events, about a second at
/// 40,000 checks/s (a segment counts until it is removed and a move takes a
/// while; with 4 MiB the checks' p99 looked worse in a trial, 3.8-4.1 ms against
/// 2.8-3.6 ms), a quarter of the pods' 64 MiB emptyDir. While PostgreSQL is unreachable the journal fills to
/// this and the calls then fail as they do without a journal: what a pod deleted
/// during such an outage takes with its emptyDir is bounded by this, not by the
/// length of the outage.
const PG_JOURNAL_BACKLOG: u64 = 16 << 20;

/// Moves what `outbox`'s read-event journal holds into its table before the
/// database closes. Tried three times: the first statement can meet a pooled
/// connection whose I/O thread has stopped (see `serve_on_threads`), which the
/// pool then replaces. What cannot be moved stays in the file for the next start.
async fn move_journal_at_stop(outbox: &SqlOutbox) {
    if !outbox.has_journal() {
        return;
    }
    for attempt in 1..=3 {
        match tokio::time::timeout(Duration::from_secs(5), outbox.move_journal()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, attempt, "moving the read-event journal at the stop failed")
            }
            Err(_) => tracing::warn!(
                attempt,
                "moving the read-event journal at the stop timed out"
            ),
        }
    }
}

/// Serves `router` on `threads` threads, each running a single-threaded runtime of
/// its own, until `shutdown` resolves; then lets the threads finish their calls.
/// Connections from `listener` are dealt out in turn. Dropping the future stops
/// the threads at once (after the grace period).
///
/// A call served on one thread can depend on another thread's runtime: a
/// group-commit writer task spawned there by an earlier caller, a PostgreSQL
/// connection of the shared pool opened there (its socket is driven by that
/// runtime). So no thread drops its runtime before every thread has finished its
/// calls: a thread done early keeps running its runtime's tasks and I/O until
/// the last one is done (or the threads are stopped).
async fn serve_on_threads(
    router: Router<Layers>,
    listener: TcpListener,
    connections: Connections,
    threads: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // `halt`: stop accepting, finish calls; `_force`, dropped with this future: stop now.
    let (halt_tx, halt_rx) = tokio::sync::watch::channel(false);
    let (_force, force_rx) = tokio::sync::watch::channel(());
    // Threads done serving (or failed to start): each waits for all before it
    // drops its runtime.
    let (finished_tx, finished_rx) = tokio::sync::watch::channel(0usize);
    let mut senders = Vec::with_capacity(threads);
    let mut done = Vec::with_capacity(threads);
    for i in 0..threads {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let router = router.clone();
        let connections = connections.clone();
        let mut halt = halt_rx.clone();
        let mut force = force_rx.clone();
        let finished = finished_tx.clone();
        let mut all_finished = finished_rx.clone();
        std::thread::Builder::new()
            .name(format!("custodia-io-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let served = match runtime {
                    Err(e) => {
                        // Counted too, so the others do not wait for this one.
                        finished.send_modify(|n| *n += 1);
                        Err(anyhow::Error::from(e))
                    }
                    Ok(runtime) => runtime.block_on(async {
                        let incoming = futures::stream::unfold(rx, move |mut rx| {
                            let connections = connections.clone();
                            async move {
                                loop {
                                    let stream = rx.recv().await?;
                                    match tokio::net::TcpStream::from_std(stream) {
                                        Err(e) => return Some((Err(e), rx)),
                                        Ok(stream) => {
                                            if let Some(io) = connections.admit(stream) {
                                                return Some((Ok(io), rx));
                                            }
                                        }
                                    }
                                }
                            }
                        });
                        let halted = async move {
                            let _ = halt.wait_for(|h| *h).await;
                        };
                        tokio::select! {
                            r = router.serve_with_incoming_shutdown(incoming, halted) => {
                                let served = r.map_err(anyhow::Error::from);
                                finished.send_modify(|n| *n += 1);
                                tokio::select! {
                                    _ = all_finished.wait_for(|n| *n >= threads) => {}
                                    _ = force.changed() => {}
                                }
                                served
                            }
                            _ = force.changed() => Ok(()),
                        }
                    }),
                };
                let _ = done_tx.send(served);
            })
            .context("starting an I/O thread")?;
        senders.push(tx);
        done.push(done_rx);
    }
    let accept = async {
        for next in (0..threads).cycle() {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // TCP_NODELAY, as on the shared runtime (see `run_until`).
                    let _ = stream.set_nodelay(true);
                    let stream = stream.into_std()?;
                    if senders[next].send(stream).is_err() {
                        anyhow::bail!("I/O thread {next} stopped");
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Ok(())
    };
    let accepted = tokio::select! {
        r = accept => r,
        _ = shutdown => Ok(()),
    };
    let _ = halt_tx.send(true);
    drop(senders);
    let mut first_error = accepted.err();
    for thread in done {
        let served = thread
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("an I/O thread panicked")));
        if let Err(e) = served {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The connections `listener` accepts, each admitted under `connections`' caps
/// (a refused one is closed at once) with TCP_NODELAY: without it a response
/// written as two segments waits for the client's delayed ACK (~40 ms), every
/// unary call with a larger answer.
fn admitted(
    listener: TcpListener,
    connections: Connections,
) -> impl futures::Stream<Item = std::io::Result<crate::connections::Guarded<tokio::net::TcpStream>>>
{
    futures::stream::unfold(
        (listener, connections),
        |(listener, connections)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        if let Some(io) = connections.admit(stream) {
                            return Some((Ok(io), (listener, connections)));
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        },
    )
}

/// CORS for the configured origins (none: no CORS layer, browsers of other
/// origins are refused by their own same-origin rule). Credentials (cookies) are
/// never allowed; the headers a Connect, gRPC-Web or gRPC caller sends are.
fn cors_layer(config: &crate::config::CorsConfig) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origins = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    let names = |list: &[&'static str]| -> Vec<http::HeaderName> {
        list.iter()
            .map(|h| http::HeaderName::from_static(h))
            .collect()
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([http::Method::GET, http::Method::POST])
            .allow_headers(names(&[
                "authorization",
                "content-type",
                "connect-protocol-version",
                "connect-timeout-ms",
                "grpc-timeout",
                "x-grpc-web",
                "x-user-agent",
                "traceparent",
                "tracestate",
            ]))
            .expose_headers(names(&[
                "grpc-status",
                "grpc-message",
                "grpc-status-details-bin",
            ]))
            .max_age(Duration::from_secs(7200)),
    )
}

/// A wildcard bind address is not connectable; loop back to it instead.
fn loopback_of(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Records refused calls into the outbox of the service that was called.
struct OutboxDenials {
    outboxes: HashMap<ServiceName, SqlOutbox>,
    clock: Arc<dyn Clock>,
}

impl DenialRecorder for OutboxDenials {
    fn record<'a>(&'a self, denial: Denial<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(service) = ServiceName::from_grpc_path(denial.path) else {
                return;
            };
            let Some(outbox) = self.outboxes.get(&service) else {
                return;
            };
            let method = denial.path.rsplit('/').next().unwrap_or_default();
            let mut event = AccessEvent::new(
                self.clock.now(),
                denial.actor.unwrap_or("anonymous"),
                service.grpc_name(),
                method,
                Outcome::Denied,
            );
            event.status_code = denial.code as i32;
            event.trace_id = denial.trace_id.to_string();
            event.detail = serde_json::json!({ "reason": denial.reason }).to_string();
            if let Err(e) = outbox.enqueue(&event).await {
                tracing::error!(error = %e, "could not record a denied call");
            }
        })
    }
}
