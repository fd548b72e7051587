//! breach service: breach register, risk assessment, the 72-hour clock and notifications.
#![forbid(unsafe_code)]

mod api;
mod assessments;
mod breaches;
mod closing;
pub mod grpc;
pub mod model;
mod notifications;
pub mod report;
pub mod risk;
pub mod state;
pub mod store;
mod team;
mod timeline;

use custodia_core::{
    Config, ServiceName,
    server::{Application, Mounted, ServiceContext, ServiceDef},
    storage::Migrations,
};
use custodia_proto::breach::v1::breach_service_server::BreachServiceServer;
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
    name: ServiceName::Breach,
    migrations: &MIGRATIONS,
    mount,
};

/// Builds a server hosting only this service (port 0 in tests).
pub async fn application(config: Config) -> anyhow::Result<Application> {
    Application::build(config, &[SERVICE]).await
}

fn mount(ctx: ServiceContext) -> BoxFuture<'static, anyhow::Result<Mounted>> {
    Box::pin(async move {
        let store = store::BreachStore::new(ctx.db.clone(), ctx.outbox.clone());
        let api = grpc::Api::new(store, ctx.outbox.clone(), ctx.clock.clone());
        let server = BreachServiceServer::new(api)
            .max_decoding_message_size(ctx.config.server.max_request_bytes);
        Ok(Mounted {
            register: Box::new(move |routes| {
                routes.add_service(server);
            }),
            tasks: Vec::new(),
        })
    })
}
