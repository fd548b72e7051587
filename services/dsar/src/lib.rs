//! dsar service: data-subject requests with legal deadlines, fanned out to connected systems.
#![forbid(unsafe_code)]

mod api;
pub mod connector;
mod download;
pub mod export;
pub mod grpc;
mod lifecycle;
pub mod model;
mod recipients;
pub mod register;
mod requests;
pub mod retention;
mod review;
mod source_tasks;
pub mod sources;
mod special;
pub mod state;
pub mod store;
pub mod worker;

use custodia_core::{
    Config, ServiceName,
    server::{Application, Mounted, ServiceContext, ServiceDef},
    storage::Migrations,
};
use std::sync::Arc;

use custodia_proto::dsar::v1::dsar_service_server::DsarServiceServer;
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
    name: ServiceName::Dsar,
    migrations: &MIGRATIONS,
    mount,
};

/// Builds a server hosting only this service (port 0 in tests).
pub async fn application(config: Config) -> anyhow::Result<Application> {
    Application::build(config, &[SERVICE]).await
}

fn mount(ctx: ServiceContext) -> BoxFuture<'static, anyhow::Result<Mounted>> {
    Box::pin(async move {
        let store = store::DsarStore::new(ctx.db.clone(), ctx.outbox.clone());
        let dsar = &ctx.config.dsar;
        let all_in_one = dsar.custodia_endpoint.as_ref();
        let consent_endpoint = dsar
            .consent_endpoint
            .as_ref()
            .or(all_in_one)
            .cloned()
            .unwrap_or_else(|| ctx.self_endpoint.clone());
        let audit_endpoint = dsar
            .audit_endpoint
            .as_ref()
            .or(all_in_one)
            .or(ctx.config.audit.endpoint.as_ref())
            .cloned()
            .unwrap_or_else(|| ctx.self_endpoint.clone());
        let api = grpc::Api {
            store,
            outbox: ctx.outbox.clone(),
            clock: ctx.clock.clone(),
            calendar: ctx.calendar.clone(),
            subjects: ctx.subjects.clone(),
            config: ctx.config.clone(),
            consent_endpoint,
            audit_endpoint,
            custodia_token: ctx
                .config
                .dsar
                .custodia_token
                .clone()
                .or_else(|| ctx.internal_token.clone()),
            wake: Arc::new(tokio::sync::Notify::new()),
            outbound: ctx.outbound.clone(),
        };
        let export_dir = ctx
            .config
            .dsar
            .export_dir
            .clone()
            .unwrap_or_else(|| ctx.config.data_dir.join("dsar-exports"));
        let worker = worker::Worker::new(api.clone(), export_dir, ctx.shutdown.clone());
        let server = DsarServiceServer::new(api)
            .max_decoding_message_size(ctx.config.server.max_request_bytes);
        Ok(Mounted {
            register: Box::new(move |routes| {
                routes.add_service(server);
            }),
            tasks: vec![Box::pin(worker.run())],
        })
    })
}
