//! The reference `custodia.connector.v1.DataSource`: a connector driven by a
//! TOML file that maps an existing SQL database (SQLite or PostgreSQL) to the
//! connector API, so an institution without a custom adapter can let dsar
//! export, erase, restrict, rectify and apply retention in its own database.
//!
//! - [`ConnectorConfig`] says which tables hold personal data, which column
//!   holds each identifier type, what erasure does (delete or anonymise), what
//!   the law makes the source keep (and until when), how restriction is
//!   recorded, which columns may be rectified and what retention counts from.
//! - [`Connector::connect`] opens the database and checks every configured
//!   table and column exists; [`Connector::serve`] (or [`serve`]) runs the gRPC
//!   server with bearer-token auth and the per-RPC scopes the proto declares
//!   (`connector.read`, `connector.write`).
//!
//! Mutations are idempotent by `request_id` (a table the connector owns,
//! `custodia_connector_requests`, keeps each first response).
#![forbid(unsafe_code)]

mod capabilities;
pub mod config;
mod db;
mod erasure;
mod export;
mod idempotency;
mod rectification;
mod restriction;
mod retention;
mod service;
mod statements;
mod subject;
#[cfg(feature = "testing")]
pub mod testing;
mod validate;
mod values;

use std::sync::Arc;

use anyhow::Context;
use custodia_core::{
    auth::{StaticTokens, layer::AuthLayer, scopes::ScopeTable},
    decode_errors::DecodeErrorLayer,
    legal_time::{CalendarPeriod, Clock, SystemClock},
};
use custodia_proto::connector::v1::data_source_server::DataSourceServer;
use tokio::net::TcpListener;

pub use config::ConnectorConfig;
pub use service::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, SqlDataSource, VERSION};

/// A configured table with what the database says about it.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub cfg: config::TableConfig,
    pub schema: db::TableSchema,
    pub hold_period: Option<CalendarPeriod>,
}

/// A connector ready to serve: database opened and checked, auth configured.
#[derive(Debug, Clone)]
pub struct Connector {
    service: SqlDataSource,
    auth: AuthLayer,
}

impl Connector {
    /// Opens the database of `config` (system clock).
    pub async fn connect(config: ConnectorConfig) -> anyhow::Result<Self> {
        Self::connect_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Opens the database of `config`, taking "now" from `clock`: validates the
    /// configuration, checks every table and column exists, and creates the
    /// connector's own two tables when missing.
    pub async fn connect_with_clock(
        config: ConnectorConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let tokens = StaticTokens::from_config(&config.auth, config.auth.admin_token.as_ref())
            .context("auth")?;
        let scopes = ScopeTable::from_descriptor_set(custodia_proto::FILE_DESCRIPTOR_SET)?;
        let auth = AuthLayer::new(Arc::new(tokens), scopes, None);
        let db = db::Db::connect(&config.database_url, config.max_connections).await?;
        let schemas = db.describe(&config.tables).await?;
        db.ensure_own_tables().await?;
        let tables = config
            .tables
            .iter()
            .cloned()
            .zip(schemas)
            .map(|(cfg, schema)| {
                let hold_period = cfg
                    .retained_by_law
                    .as_ref()
                    .map(|h| config::parse_period(&h.period))
                    .transpose()?;
                Ok(Table {
                    cfg,
                    schema,
                    hold_period,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            service: SqlDataSource::new(db, config.display_name.clone(), tables, clock),
            auth,
        })
    }

    /// The handlers without auth (mount them behind [`Connector::auth_layer`]).
    pub fn data_source(&self) -> SqlDataSource {
        self.service.clone()
    }

    /// The tonic service of the handlers, without auth.
    pub fn service(&self) -> DataSourceServer<SqlDataSource> {
        DataSourceServer::new(self.service.clone())
    }

    /// The layer authenticating bearer tokens and enforcing each RPC's scope.
    pub fn auth_layer(&self) -> AuthLayer {
        self.auth.clone()
    }

    /// Serves on `listener` (health and DataSource) until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<DataSourceServer<SqlDataSource>>()
            .await;
        tonic::transport::Server::builder()
            .layer(self.auth.clone())
            .layer(DecodeErrorLayer)
            .add_service(health_service)
            .add_service(self.service())
            .serve_with_incoming_shutdown(
                // TCP_NODELAY, or a two-segment answer waits for a delayed ACK (~40 ms).
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
            .context("connector gRPC server failed")
    }
}

/// Opens the database of `config` and serves on `listener` until `shutdown`.
pub async fn serve(
    config: ConnectorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Connector::connect(config)
        .await?
        .serve(listener, shutdown)
        .await
}

/// Resolves on Ctrl-C or SIGTERM, for [`serve`]'s `shutdown`.
pub use custodia_core::server::shutdown_signal as stop_signal;
