//! Command-line interface: `serve`, `migrate`, `config check`, `auth scopes`,
//! `connector sql`, `erasures replay`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use custodia_core::{
    Config, ServiceName,
    auth::scopes::ScopeTable,
    server::{Application, ServiceDef},
    storage, telemetry,
};
use figment::providers::Serialized;

/// custodia: GDPR privacy operations for universities and schools (consent, data-subject
/// requests, breaches, tamper-evident access log) as gRPC services.
#[derive(Debug, Parser)]
#[command(name = "custodia", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// TOML configuration file (defaults < file < CUSTODIA__* env < flags).
    #[arg(long, global = true, env = "CUSTODIA_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the embedded default (SQLite files, generated keys, admin token).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Database for every service (postgres://... or sqlite://...); unset: SQLite files in the data dir.
    #[arg(
        long,
        global = true,
        env = "CUSTODIA_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the listed services (all four when none is listed) on one port.
    Serve {
        /// consent, dsar, breach, audit-log.
        services: Vec<ServiceName>,
        /// Listen address (default 127.0.0.1:50051).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply database migrations of the listed services (all when none) and exit.
    Migrate {
        /// consent, dsar, breach, audit-log.
        services: Vec<ServiceName>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Access-control tools.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Audit-log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Register-of-processing tools.
    #[command(subcommand)]
    Purposes(PurposesCommand),
    /// Erasure tools.
    #[command(subcommand)]
    Erasures(ErasuresCommand),
    /// Reference connectors (custodia.connector.v1.DataSource) for external systems.
    #[command(subcommand)]
    Connector(ConnectorCommand),
    /// Print the OpenAPI 3.1 document of the JSON (Connect) API of every service,
    /// as a server serves it at GET /openapi.json.
    Openapi,
}

#[derive(Debug, Subcommand)]
enum ConnectorCommand {
    /// Serve the SQL connector over the database that --config (a connector TOML
    /// file, e.g. deploy/examples/connector-sql.toml) describes.
    Sql {
        /// Listen address (default: the file's `listen`, else 127.0.0.1:50061).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum PurposesCommand {
    /// Create ready-made purposes through a running consent service (purposes that
    /// already exist are left as they are).
    Seed {
        /// Which preset: `cookies` (strictly necessary, preference, analytics, marketing).
        #[arg(long)]
        preset: String,
        /// consent service address. Default: this configuration's listen address.
        #[arg(long)]
        endpoint: Option<String>,
        /// Bearer token with `consent.admin`. Default: the embedded admin token file.
        #[arg(long, env = "CUSTODIA_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the whole Merkle tree from the stored entries, check every signed
    /// head, and report the first sequence number where the log no longer matches.
    /// Exit code 0: intact; 2: tampered.
    Verify {
        /// Trusted public key as `KEY_ID=HEX` (repeatable). Default: the key derived from
        /// the configured (or embedded) signing key; with --endpoint, the service's
        /// published keys.
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// Verify a running audit-log (e.g. http://127.0.0.1:50051) instead of its database.
        #[arg(long)]
        endpoint: Option<String>,
        /// Bearer token with `audit.read`, for --endpoint.
        #[arg(long, env = "CUSTODIA_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ErasuresCommand {
    /// After restoring databases from a backup: erase again every subject the
    /// erasure ledger (`[erasure] ledger_file`) names, in consent and audit-log.
    /// Run it before serving the restored databases; running it twice is harmless.
    Replay,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration (file + environment); print nothing secret.
    Check,
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Print every RPC with the scope it requires, and the configured principals' scopes.
    Scopes,
}

/// Every service the binary knows, in start-up order.
const ALL: [ServiceDef; 4] = [
    custodia_audit_log::SERVICE,
    custodia_consent::SERVICE,
    custodia_dsar::SERVICE,
    custodia_breach::SERVICE,
];

fn selected(names: &[ServiceName]) -> Vec<ServiceDef> {
    ALL.iter()
        .filter(|d| names.is_empty() || names.contains(&d.name))
        .copied()
        .collect()
}

fn load_config(global: &GlobalArgs, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    let mut figment = Config::figment(global.config.as_deref());
    if let Some(dir) = &global.data_dir {
        figment = figment.merge(Serialized::default("data_dir", dir));
    }
    if let Some(url) = &global.database_url {
        figment = figment.merge(Serialized::default("database.url", url));
    }
    if let Some(listen) = listen {
        figment = figment.merge(Serialized::default("server.listen", listen));
    }
    Ok(Config::from_figment(figment)?)
}

/// Runs one command; the exit code is what the process returns.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Databases, journals, keys and exports hold personal data and secrets: what
    // this process or its libraries create is owner-only, whatever umask it got.
    custodia_core::private_files::restrict_umask();
    match cli.command {
        Command::Serve { services, listen } => {
            let config = load_config(&cli.global, listen)?;
            let _telemetry = telemetry::init(&config.telemetry)?;
            let defs = selected(&services);
            let app = Application::build(config, &defs).await?;
            let names: Vec<_> = defs.iter().map(|d| d.name.as_str()).collect();
            tracing::info!(addr = %app.local_addr(), services = ?names, "custodia is serving");
            app.run_until_stopped().await?;
        }
        Command::Migrate { services } => {
            let config = load_config(&cli.global, None)?;
            let _telemetry = telemetry::init(&config.telemetry)?;
            for def in selected(&services) {
                let db = storage::open_service(&config, def.name).await?;
                db.migrate(def.migrations).await?;
                db.close().await;
                println!("{}: migrated", def.name);
            }
        }
        Command::Config(ConfigCommand::Check) => {
            let config = load_config(&cli.global, None)?;
            println!(
                "configuration is valid: listen {}, {} database, {} principal(s)",
                config.server.listen,
                if config.is_embedded() {
                    "embedded SQLite"
                } else {
                    "configured"
                },
                config.auth.principals.len()
            );
        }
        Command::Purposes(PurposesCommand::Seed {
            preset,
            endpoint,
            token,
        }) => {
            let config = load_config(&cli.global, None)?;
            let endpoint = endpoint.unwrap_or_else(|| format!("http://{}", config.server.listen));
            let token = match token {
                Some(t) => t,
                None => {
                    std::fs::read_to_string(custodia_core::keys::admin_token_path(&config.data_dir))
                        .map(|t| t.trim().to_string())
                        .map_err(|e| anyhow::anyhow!("no --token and no admin token file ({e})"))?
                }
            };
            for line in custodia_consent::presets::seed(&endpoint, &token, &preset).await? {
                println!("{line}");
            }
        }
        Command::Erasures(ErasuresCommand::Replay) => {
            let config = load_config(&cli.global, None)?;
            let _telemetry = telemetry::init(&config.telemetry)?;
            let replayed = crate::erasures::replay(&config).await?;
            println!("{replayed}");
        }
        Command::Openapi => {
            let scopes = ScopeTable::from_descriptor_set(custodia_proto::FILE_DESCRIPTOR_SET)?;
            let names: Vec<&str> = ServiceName::ALL.iter().map(|s| s.grpc_name()).collect();
            let methods = custodia_core::connect::MethodTable::new(
                custodia_core::connect::methods::pool(),
                &names,
            );
            let doc = custodia_core::connect::openapi::document(
                &methods,
                &scopes,
                env!("CARGO_PKG_VERSION"),
            );
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Command::Auth(AuthCommand::Scopes) => {
            let config = load_config(&cli.global, None)?;
            let table = ScopeTable::from_descriptor_set(custodia_proto::FILE_DESCRIPTOR_SET)?;
            for (method, scope) in table.methods() {
                println!(
                    "{method}\t{}",
                    scope.unwrap_or("(none: denied to everyone)")
                );
            }
            println!();
            println!("admin\t* (embedded default, or when an admin token is configured)");
            for (name, p) in &config.auth.principals {
                println!("{name}\t{}", p.scopes.join(" "));
            }
        }
        Command::Connector(ConnectorCommand::Sql { listen }) => {
            let path = cli.global.config.as_deref().ok_or_else(|| {
                anyhow::anyhow!("`custodia connector sql` needs --config <connector.toml>")
            })?;
            let mut config = custodia_connector_sql::ConnectorConfig::load(path)?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let _telemetry = telemetry::init(&Default::default())?;
            let listen = config.listen;
            let connector = custodia_connector_sql::Connector::connect(config).await?;
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(addr = %listener.local_addr()?, "the SQL connector is serving");
            connector
                .serve(listener, custodia_connector_sql::stop_signal())
                .await?;
        }
        Command::Audit(AuditCommand::Verify {
            public_keys,
            endpoint,
            token,
        }) => {
            let report = match endpoint {
                Some(endpoint) => {
                    let token = token.ok_or_else(|| {
                        anyhow::anyhow!("--endpoint needs --token (or CUSTODIA_TOKEN)")
                    })?;
                    custodia_audit_log::verify::verify_remote(&endpoint, &token, &public_keys)
                        .await?
                }
                None => {
                    let config = load_config(&cli.global, None)?;
                    custodia_audit_log::verify::verify_database(&config, &public_keys).await?
                }
            };
            println!("{report}");
            if !report.is_ok() {
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
