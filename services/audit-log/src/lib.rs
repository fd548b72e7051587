//! audit-log service: the append-only, tamper-evident log of every access to personal data.
#![forbid(unsafe_code)]

pub mod entry;
pub mod grpc;
pub mod keys;
pub mod log;
pub mod merkle;
pub mod retention;
pub mod signer;
pub mod store;
pub mod verify;

use custodia_core::{
    Config, ServiceName,
    server::{Application, Mounted, ServiceContext, ServiceDef},
    storage::Migrations,
};
use custodia_proto::audit::v1::audit_log_service_server::AuditLogServiceServer;
use futures::future::BoxFuture;
use sqlx::migrate::Migrator;

/// This service's migrations on both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};
static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// How the custodia process builds this service.
pub const SERVICE: ServiceDef = ServiceDef {
    name: ServiceName::AuditLog,
    migrations: &MIGRATIONS,
    mount,
};

/// Builds a server hosting only this service (port 0 in tests).
pub async fn application(config: Config) -> anyhow::Result<Application> {
    Application::build(config, &[SERVICE]).await
}

fn mount(ctx: ServiceContext) -> BoxFuture<'static, anyhow::Result<Mounted>> {
    Box::pin(async move {
        let signer = keys::head_signer(&ctx.config)?;
        let log = log::AuditLog::open(
            store::LogStore::new(ctx.db.clone()),
            signer,
            ctx.clock.clone(),
        )
        .await?;
        let server = AuditLogServiceServer::new(grpc::Api::new(ctx.clone(), log.clone()))
            .max_decoding_message_size(ctx.config.server.max_request_bytes);
        Ok(Mounted {
            register: Box::new(move |routes| {
                routes.add_service(server);
            }),
            tasks: vec![Box::pin(log.run_integrator())],
        })
    })
}
