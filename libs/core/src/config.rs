//! Configuration: embedded defaults, then an optional TOML file, then
//! `CUSTODIA__SECTION__KEY` environment variables (later wins). Secrets are
//! wrapped in [`SecretString`] so they never appear in `Debug` output or logs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::SecretString;
use serde::Deserialize;

use crate::legal_time::LegalTimeConfig;

mod checks;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "CUSTODIA__";

/// The whole configuration of a custodia process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC server listens and its limits.
    pub server: ServerConfig,
    /// Directory for the embedded default: SQLite files, generated keys and tokens.
    pub data_dir: PathBuf,
    /// Shared database settings; per-service overrides live in `services`.
    pub database: DatabaseConfig,
    /// Per-service settings.
    pub services: ServicesConfig,
    /// Callers (principals), their tokens and scopes.
    pub auth: AuthConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Jurisdiction, timezone and holiday calendar used for legal deadlines.
    pub legal: LegalTimeConfig,
    /// Access-event pipeline and subject pseudonymisation.
    pub audit: AuditConfig,
    /// The controller named in consent receipts, and the receipt signing key.
    pub consent: ConsentConfig,
    /// Data-subject requests: fan-out to connectors, export packages.
    pub dsar: DsarConfig,
    /// Calls custodia makes to other servers (connectors, audit-log apart).
    pub outbound: OutboundConfig,
    /// What keeps an erasure effective after a backup is restored.
    pub erasure: ErasureConfig,
    /// How long custodia keeps its own records (R-3).
    pub retention: RetentionConfig,
}

/// How long custodia keeps its own records (`[retention]`, R-3), as ISO 8601
/// periods (`P5Y`); empty keeps them. Applied by dsar's scheduled retention
/// runs (`dsar.retention_interval_secs`) and recorded in each run. Export
/// packages expire on their own (`dsar.export_ttl_secs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// The consent trail (events, receipts, erasure suppressions of a
    /// withdrawal) of a subject and purpose, after the relation ended (the
    /// last withdrawal or refusal). Default: the limitation period of a claim
    /// (5 years, Code civil art. 2224). Objections are kept.
    pub consent_trails: String,
    /// Closed data-subject requests (completed, rejected, cancelled), after
    /// they closed. Default 5 years.
    pub closed_requests: String,
    /// The access log's search index by subject, after the entry was
    /// appended (the entries stay in the tree). Default 5 years.
    pub audit_index: String,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            consent_trails: "P5Y".into(),
            closed_requests: "P5Y".into(),
            audit_index: "P5Y".into(),
        }
    }
}

/// Erasures that stay done (`[erasure]`, D-9).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErasureConfig {
    /// The erasure ledger: every erasure of consent records and every shredding
    /// of the access log is appended to it (keyed hashes of the subjects only),
    /// and `custodia erasures replay` applies it again after a backup is
    /// restored. Keep it out of the database backups (its own volume), or a
    /// restore rolls it back too. Default: `<data_dir>/erasure-ledger.jsonl`.
    pub ledger_file: Option<PathBuf>,
}

impl Config {
    /// Where the erasure ledger is kept (see [`ErasureConfig::ledger_file`]).
    pub fn erasure_ledger_path(&self) -> PathBuf {
        self.erasure
            .ledger_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("erasure-ledger.jsonl"))
    }
}

/// Calls custodia makes to other servers (`[outbound]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// TLS of `https://` endpoints.
    pub tls: OutboundTlsConfig,
}

/// TLS of outbound `https://` calls (`[outbound.tls]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundTlsConfig {
    /// Trust the system's roots (and Mozilla's); true by default.
    pub system_roots: bool,
    /// A PEM file of further CA certificates to trust (an institution's own CA).
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) to present, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl Default for OutboundTlsConfig {
    fn default() -> Self {
        Self {
            system_roots: true,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// Data-subject request processing (`[dsar]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DsarConfig {
    /// Where custodia's own consent and audit-log services are called for a
    /// subject's records (`http://host:port`). Unset: this process's own address.
    pub custodia_endpoint: Option<String>,
    /// The consent service, when it runs apart (Kubernetes: `http://custodia-consent:50051`).
    /// Unset: `custodia_endpoint`.
    pub consent_endpoint: Option<String>,
    /// The audit-log service, when it runs apart. Unset: `custodia_endpoint`, then
    /// `audit.endpoint`.
    pub audit_endpoint: Option<String>,
    /// Token for those calls (needs consent.read, consent.admin, audit.read,
    /// audit.admin). Unset: the internal (forwarder or admin) token.
    pub custodia_token: Option<SecretString>,
    /// Directory of export packages. Unset: `<data_dir>/dsar-exports`.
    pub export_dir: Option<PathBuf>,
    /// Seconds an export package stays downloadable before it is deleted.
    pub export_ttl_secs: u64,
    /// Deadline of one call to a connector, in seconds, unless the data source sets its own.
    pub connector_timeout_secs: u64,
    /// First retry delay after a failed source call, in seconds; doubles per attempt.
    pub retry_initial_secs: u64,
    /// Longest retry delay, in seconds.
    pub retry_max_secs: u64,
    /// How often the fan-out worker looks for due work, in milliseconds.
    pub poll_interval_ms: u64,
    /// Seconds between scheduled retention runs (R-3), counted on the
    /// service clock; 0 (the default) leaves retention to ApplyRetention.
    pub retention_interval_secs: u64,
    /// Tokens that data sources' `credentials_ref = "config:NAME"` refer to.
    /// (`env:VAR` refers to an environment variable instead.)
    pub credentials: BTreeMap<String, SecretString>,
}

impl Default for DsarConfig {
    fn default() -> Self {
        Self {
            custodia_endpoint: None,
            consent_endpoint: None,
            audit_endpoint: None,
            custodia_token: None,
            export_dir: None,
            export_ttl_secs: 30 * 24 * 3600,
            connector_timeout_secs: 30,
            retry_initial_secs: 60,
            retry_max_secs: 6 * 3600,
            poll_interval_ms: 1000,
            retention_interval_secs: 0,
            credentials: BTreeMap::new(),
        }
    }
}

/// Consent receipts: who the controller is and how receipts are signed; the
/// state index of checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentConfig {
    /// Ed25519 seed (64 hex characters or base64url) signing consent receipts.
    /// Unset: generated into `data_dir` in the embedded default; required with PostgreSQL.
    pub receipt_signing_key: Option<SecretString>,
    /// The institution (data controller) named in receipts.
    pub controller_name: String,
    /// Contact address of the controller or its DPO.
    pub controller_email: String,
    /// The controller's web site.
    pub controller_url: String,
    /// URL of the privacy policy receipts refer to.
    pub policy_url: String,
    /// Most consent states (subject x purpose) a replica keeps in memory so that
    /// checks of subjects not checked lately read no database (~40 bytes each plus
    /// ~100 per subject); a bigger table is not indexed. 0 turns the index off.
    pub state_index_max_rows: usize,
    /// Digital age of consent by country (Art. 8(1)), ISO 3166-1 alpha-2 code to
    /// age (13-16), over the built-in table of the member states' laws (FR 15,
    /// BE 13, ...; 16 where the law sets none): for a law that changes, or a
    /// country the table lacks. A purpose's own `digital_consent_age` wins over both.
    pub digital_consent_ages: BTreeMap<String, i32>,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        Self {
            receipt_signing_key: None,
            controller_name: String::new(),
            controller_email: String::new(),
            controller_url: String::new(),
            policy_url: String::new(),
            state_index_max_rows: 1_000_000,
            digital_consent_ages: BTreeMap::new(),
        }
    }
}

/// gRPC server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Largest accepted request message, in bytes.
    pub max_request_bytes: usize,
    /// Time limit for one unary call, in seconds (streams are not cut).
    pub request_timeout_secs: u64,
    /// Calls served at once per connection before back-pressure.
    pub concurrency_limit_per_connection: usize,
    /// Seconds to let in-flight calls finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Threads that serve connections, each with a scheduler of its own, accepted
    /// connections dealt out between them in turn (0, the default: every
    /// connection on the process's shared, work-stealing runtime). A connection's
    /// calls then never change thread, which saves a fifth to a third of the CPU
    /// of a small call (BENCHMARKS.md), but one connection is served by one core:
    /// set it to the number of cores when many clients or connections call (a
    /// load balancer, h2load), leave it at 0 when one client multiplexes
    /// everything over one connection.
    pub io_threads: usize,
    /// Most connections held at once. At the cap a new connection evicts the one
    /// idle the longest (a connection with a call in flight never is); when
    /// every connection is busy it is refused at once.
    pub max_connections: usize,
    /// Milliseconds a new connection may wait before its first call; then it is
    /// closed (silent TCP connections, an HTTP/2 preface alone).
    pub handshake_timeout_ms: u64,
    /// Milliseconds a connection is kept with no call in flight.
    pub idle_timeout_ms: u64,
    /// Seconds between HTTP/2 keepalive pings the server sends.
    pub keepalive_interval_secs: u64,
    /// Seconds a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout_secs: u64,
    /// HTTP/2 MAX_CONCURRENT_STREAMS: calls a client may open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Browsers allowed to call the Connect and gRPC-Web sides (CORS).
    pub cors: CorsConfig,
}

/// Cross-origin calls from browsers (`[server.cors]`): off unless origins are
/// listed. Credentials (cookies) are never allowed; callers send a bearer token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed, e.g. `https://www.example.edu`; `*` for any.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_request_bytes: 4 * 1024 * 1024,
            request_timeout_secs: 30,
            concurrency_limit_per_connection: 256,
            shutdown_grace_secs: 20,
            io_threads: 0,
            max_connections: 4096,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            max_concurrent_streams: 256,
            cors: CorsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The connection limits these settings describe.
    pub fn connection_limits(&self) -> crate::connections::ConnectionLimits {
        crate::connections::ConnectionLimits {
            max_connections: self.max_connections,
            handshake_timeout: std::time::Duration::from_millis(self.handshake_timeout_ms),
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
        }
    }
}

/// Database settings shared by every service unless overridden.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...` or `sqlite://...`. Unset: one SQLite file per service in `data_dir`.
    /// With one Postgres URL for several services, each service gets its own schema.
    pub url: Option<SecretString>,
    /// Pool size per service.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
        }
    }
}

/// Per-service configuration blocks.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    /// consent service.
    pub consent: ServiceConfig,
    /// dsar service.
    pub dsar: ServiceConfig,
    /// breach service.
    pub breach: ServiceConfig,
    /// audit-log service.
    pub audit_log: ServiceConfig,
}

/// Settings of one service.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Overrides `database.url` for this service.
    pub database_url: Option<SecretString>,
}

/// Authentication: static bearer tokens per calling system.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Token of the built-in `admin` principal (every scope). In the embedded
    /// default it is generated when unset; `CUSTODIA_ADMIN_TOKEN` also sets it.
    pub admin_token: Option<SecretString>,
    /// One entry per calling system (crm, moodle, web-banner, dpo, ...).
    pub principals: BTreeMap<String, PrincipalConfig>,
}

/// One calling system.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PrincipalConfig {
    /// The bearer token, as a secret.
    pub token: Option<SecretString>,
    /// Alternatively the hex SHA-256 of the token, so the file holds no secret.
    pub token_sha256: Option<String>,
    /// Scopes granted, e.g. `consent.check`; `*` grants every scope.
    pub scopes: Vec<String>,
    /// Free text shown in access reviews.
    pub description: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info,custodia=debug`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// `service.name` reported to OpenTelemetry.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            service_name: "custodia".into(),
        }
    }
}

/// Access-event pipeline and subject pseudonymisation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Where forwarders deliver events (`http://host:port` of audit-log). Unset: this
    /// process's own listen address (all services in one process).
    pub endpoint: Option<String>,
    /// Token the forwarders present to audit-log (needs `audit.append`). Unset: the admin token.
    pub forwarder_token: Option<SecretString>,
    /// Events per `AppendEvents` call.
    pub batch_size: usize,
    /// Key for the keyed hash (HMAC-SHA256) of subject identifiers; the same on every
    /// service. Unset in the embedded default: generated into `data_dir`.
    pub subject_hash_key: Option<SecretString>,
    /// Ed25519 signing key of the audit log (hex seed). Unset: generated into `data_dir`.
    pub signing_key: Option<SecretString>,
    /// How the access events of *reads* (checks, gets, lists) are committed to the
    /// outbox before the answer: `relaxed` (default) commits without waiting for the
    /// disk flush — the event survives a crash or kill of custodia, but not a power
    /// loss of the database host in the last moments (SQLite `synchronous=NORMAL` in
    /// WAL mode, PostgreSQL `synchronous_commit=off` for that transaction); `full`
    /// waits for the flush, at several times the cost per read. Events of changes
    /// are always in the change's own, fully durable transaction. On SQLite,
    /// relaxed read events are appended to a journal file beside the database
    /// (`<service>.db-read-events`, one write per call) and moved into the outbox
    /// table in the background; a journal left by a crash is moved at the next start.
    pub read_event_sync: ReadEventSync,
    /// PostgreSQL with relaxed reads: a directory for read-event journals like
    /// SQLite's (`<dir>/<service>-read-events`, created if missing), so that a read
    /// costs a file write instead of an INSERT waited for. The directory must
    /// outlive the process: a restart moves what it holds into the outbox table, a
    /// graceful stop moves everything before it exits, and what is lost with the
    /// directory (a pod's emptyDir when its node dies) is what was not moved yet,
    /// normally the last ~200 ms of reads, at most 16 MiB of events (~40,000
    /// checks): beyond that, while PostgreSQL is unreachable, reads go to the table
    /// and fail as they do without a journal.
    /// Unset (default): relaxed reads are inserted into the outbox table before the
    /// answer. Ignored on SQLite, whose journal always lies beside the database.
    pub read_event_journal_dir: Option<PathBuf>,
    /// Most access events naming a subject that one principal's reads may cause
    /// per minute, per process (see [`crate::quota`]); 0 turns the quota off.
    pub max_subject_events_per_minute: u32,
}

/// See [`AuditConfig::read_event_sync`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadEventSync {
    /// Committed, survives a crash of custodia; not flushed before the answer.
    #[default]
    Relaxed,
    /// Flushed to disk before the answer.
    Full,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            forwarder_token: None,
            batch_size: 500,
            subject_hash_key: None,
            signing_key: None,
            read_event_sync: ReadEventSync::Relaxed,
            read_event_journal_dir: None,
            max_subject_events_per_minute: 600_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            data_dir: PathBuf::from("./data"),
            database: DatabaseConfig::default(),
            services: ServicesConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
            legal: LegalTimeConfig::default(),
            audit: AuditConfig::default(),
            consent: ConsentConfig::default(),
            dsar: DsarConfig::default(),
            outbound: OutboundConfig::default(),
            erasure: ErasureConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` if given (it must exist), then `CUSTODIA__` env vars.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The layered sources, so callers (the CLI) can merge their own overrides last.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// Extracts and validates a configuration from `figment`.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        if config.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("data_dir must not be empty".into()));
        }
        if config.auth.admin_token.is_none()
            && let Ok(token) = std::env::var("CUSTODIA_ADMIN_TOKEN")
            && !token.is_empty()
        {
            config.auth.admin_token = Some(token.into());
        }
        config.validate()?;
        Ok(config)
    }

    /// Every check of the configuration alone, the one validation both `serve`
    /// ([`crate::server::Application::build`]) and `config check` run (through
    /// [`Self::from_figment`]): what the selected services check at start on top
    /// depends on which services run (their signing keys with PostgreSQL) or on
    /// files (a generated admin token).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_server_limits()?;
        for (key, value) in [
            ("retention.consent_trails", &self.retention.consent_trails),
            ("retention.closed_requests", &self.retention.closed_requests),
            ("retention.audit_index", &self.retention.audit_index),
        ] {
            if !value.is_empty() && value.parse::<crate::legal_time::CalendarPeriod>().is_err() {
                return Err(ConfigError(format!(
                    "{key} must be an ISO 8601 period such as P5Y (or empty to keep)"
                )));
            }
        }
        crate::outbound::Outbound::from_config(&self.outbound.tls)
            .map_err(|e| ConfigError(format!("{e:#}")))?;
        if self.server.max_request_bytes < 1024 {
            return Err(ConfigError(
                "server.max_request_bytes must be at least 1024".into(),
            ));
        }
        if self.server.io_threads > 256 {
            return Err(ConfigError(
                "server.io_threads must be at most 256 (0: the shared runtime)".into(),
            ));
        }
        let server = &self.server;
        for origin in &server.cors.allowed_origins {
            let valid = origin == "*"
                || (origin.starts_with("https://") || origin.starts_with("http://"))
                    && !origin
                        .trim_start_matches("https://")
                        .trim_start_matches("http://")
                        .contains('/')
                    && http::HeaderValue::from_str(origin).is_ok();
            if !valid {
                return Err(ConfigError(format!(
                    "server.cors.allowed_origins: {origin:?} is not an origin \
                     (scheme://host[:port], or *)"
                )));
            }
        }
        for (key, value) in [
            ("server.max_connections", server.max_connections as u64),
            ("server.handshake_timeout_ms", server.handshake_timeout_ms),
            ("server.idle_timeout_ms", server.idle_timeout_ms),
            (
                "server.keepalive_interval_secs",
                server.keepalive_interval_secs,
            ),
            (
                "server.keepalive_timeout_secs",
                server.keepalive_timeout_secs,
            ),
            (
                "server.max_concurrent_streams",
                u64::from(server.max_concurrent_streams),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{key} must be at least 1")));
            }
        }
        if self.dsar.connector_timeout_secs == 0 || self.dsar.poll_interval_ms == 0 {
            return Err(ConfigError(
                "dsar.connector_timeout_secs and dsar.poll_interval_ms must be at least 1".into(),
            ));
        }
        let mut countries = std::collections::BTreeSet::new();
        for (country, age) in &self.consent.digital_consent_ages {
            if !countries.insert(country.to_ascii_uppercase()) {
                return Err(ConfigError(format!(
                    "consent.digital_consent_ages.{country}: the country is given twice"
                )));
            }
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ConfigError(format!(
                    "consent.digital_consent_ages.{country}: expected an ISO 3166-1 alpha-2 country code"
                )));
            }
            if !(13..=16).contains(age) {
                return Err(ConfigError(format!(
                    "consent.digital_consent_ages.{country}: {age} is outside 13-16 (GDPR Art. 8(1))"
                )));
            }
        }
        if self.audit.batch_size == 0 {
            return Err(ConfigError("audit.batch_size must be at least 1".into()));
        }
        for (name, p) in &self.auth.principals {
            if name == crate::auth::ADMIN_PRINCIPAL {
                return Err(ConfigError(format!(
                    "auth.principals.{name}: the name is reserved for the built-in admin"
                )));
            }
            match (&p.token, &p.token_sha256) {
                (None, None) => {
                    return Err(ConfigError(format!(
                        "auth.principals.{name}: set token or token_sha256"
                    )));
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError(format!(
                        "auth.principals.{name}: set only one of token and token_sha256"
                    )));
                }
                (None, Some(h)) if h.len() != 64 || hex::decode(h).is_err() => {
                    return Err(ConfigError(format!(
                        "auth.principals.{name}.token_sha256: expected 64 hex characters"
                    )));
                }
                _ => {}
            }
        }
        crate::legal_time::LegalCalendar::from_config(&self.legal)
            .map_err(|e| ConfigError(format!("legal: {e}")))?;
        self.check_principals()?;
        self.check_secrets()?;
        crate::telemetry::env_filter(&self.telemetry).map_err(|e| ConfigError(e.to_string()))?;
        Ok(())
    }

    /// The database URL of `service`, if one is configured (else the embedded SQLite file).
    pub fn database_url(&self, service: crate::ServiceName) -> Option<&SecretString> {
        let per_service = match service {
            crate::ServiceName::Consent => &self.services.consent,
            crate::ServiceName::Dsar => &self.services.dsar,
            crate::ServiceName::Breach => &self.services.breach,
            crate::ServiceName::AuditLog => &self.services.audit_log,
        };
        per_service
            .database_url
            .as_ref()
            .or(self.database.url.as_ref())
    }

    /// True when no database URL is configured for any service: the embedded default.
    pub fn is_embedded(&self) -> bool {
        crate::ServiceName::ALL
            .iter()
            .all(|s| self.database_url(*s).is_none())
    }
}

/// A configuration that cannot be loaded or is invalid; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
// figment's Jail API returns its (large) error type by value; not ours to change.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn defaults_then_file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                r#"
                data_dir = "/var/lib/custodia"
                [server]
                listen = "0.0.0.0:7000"
                [auth.principals.crm]
                token = "file-token-0123456789"
                scopes = ["consent.check"]
                "#,
            )?;
            jail.set_env("CUSTODIA__SERVER__LISTEN", "127.0.0.1:9000");
            jail.set_env(
                "CUSTODIA__AUTH__PRINCIPALS__CRM__TOKEN",
                "env-token-0123456789",
            );
            let c = Config::load(Some(Path::new("c.toml"))).expect("loads");
            assert_eq!(c.server.listen.port(), 9000);
            assert_eq!(c.data_dir, PathBuf::from("/var/lib/custodia"));
            let crm = &c.auth.principals["crm"];
            assert_eq!(
                crm.token.as_ref().unwrap().expose_secret(),
                "env-token-0123456789"
            );
            assert_eq!(crm.scopes, vec!["consent.check"]);
            assert_eq!(c.server.max_request_bytes, 4 * 1024 * 1024);
            Ok(())
        });
    }

    #[test]
    fn defaults_alone() {
        figment::Jail::expect_with(|_| {
            let c = Config::load(None).expect("loads");
            assert_eq!(c.data_dir, PathBuf::from("./data"));
            assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
            assert!(c.is_embedded());
            Ok(())
        });
    }

    #[test]
    fn secrets_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CUSTODIA__AUTH__ADMIN_TOKEN", "super-secret-value");
            jail.set_env("CUSTODIA__DATABASE__URL", "postgres://u:pw-secret@db/x");
            jail.set_env("CUSTODIA__AUDIT__SUBJECT_HASH_KEY", "subject-key-secret");
            let c = Config::load(None).expect("loads");
            let debug = format!("{c:?}");
            assert!(!debug.contains("super-secret-value"), "{debug}");
            assert!(!debug.contains("pw-secret"), "{debug}");
            assert!(!debug.contains("subject-key-secret"), "{debug}");
            assert!(!c.is_embedded());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CUSTODIA__SERVER__LISTNE", "127.0.0.1:1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("listne"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn digital_consent_ages_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CUSTODIA__CONSENT__DIGITAL_CONSENT_AGES", "{FR=14,DE=13}");
            let c = Config::load(None).expect("loads");
            assert_eq!(c.consent.digital_consent_ages["FR"], 14);
            jail.set_env("CUSTODIA__CONSENT__DIGITAL_CONSENT_AGES", "{FR=12}");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("consent.digital_consent_ages.FR"), "{err}");
            jail.set_env("CUSTODIA__CONSENT__DIGITAL_CONSENT_AGES", "{FR=14,fr=15}");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("twice"), "{err}");
            jail.set_env("CUSTODIA__CONSENT__DIGITAL_CONSENT_AGES", "{France=15}");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("alpha-2"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn principal_needs_a_token() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "CUSTODIA__AUTH__PRINCIPALS__MOODLE__SCOPES",
                "[\"consent.check\"]",
            );
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("auth.principals.moodle"), "{err}");
            Ok(())
        });
    }
}
