//! consent service: the register of processing, notices, consent with evidence, withdrawal and checks.
//!
//! Where things are: `grpc.rs` maps each RPC to the use case of its resource
//! (its header has the table), in `purposes`, `notices`, `records`, `history`,
//! `checks`, `receipts`, `erasure` and `watch`; each use case validates its
//! request with pure functions beside it (`rules` and `evidence` hold what a
//! decision must meet), decides, and calls the store. [`store::ConsentStore`]
//! is the one storage interface, its backend paths in `store/postgres.rs` and
//! `store/sqlite.rs`, its group commit in `store/group_commit.rs`. Checks read
//! through the [`cache`] and its [`index`]; [`decision`] decides them.
#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod checks;
pub mod decision;
pub mod erasure;
pub mod evidence;
pub mod export;
pub mod grpc;
pub mod history;
pub mod index;
pub mod notices;
mod par;
pub mod presets;
pub mod purposes;
pub mod receipt;
pub mod receipts;
pub mod records;
pub mod register;
pub mod rules;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod watch;

use std::sync::Arc;

use custodia_core::{
    Config, ServiceName,
    server::{Application, Mounted, ServiceContext, ServiceDef},
    storage::Migrations,
};
use custodia_proto::consent::v1::consent_service_server::ConsentServiceServer;
use futures::future::BoxFuture;
use sqlx::migrate::Migrator;

/// This service's migrations on both backends.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};
static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// Subjects whose check state a replica keeps in memory (about 300 bytes each).
const CHECK_CACHE_SUBJECTS: usize = 500_000;

/// How the custodia process builds this service.
pub const SERVICE: ServiceDef = ServiceDef {
    name: ServiceName::Consent,
    migrations: &MIGRATIONS,
    mount,
};

/// Builds a server hosting only this service (port 0 in tests).
pub async fn application(config: Config) -> anyhow::Result<Application> {
    Application::build(config, &[SERVICE]).await
}

fn mount(ctx: ServiceContext) -> BoxFuture<'static, anyhow::Result<Mounted>> {
    Box::pin(async move {
        let store = store::ConsentStore::new(ctx.db.clone());
        let receipts = receipt::signing_key(&ctx.config)?;
        let cache = Arc::new(cache::CheckCache::new(
            CHECK_CACHE_SUBJECTS,
            ctx.config.consent.state_index_max_rows,
        ));
        let follower = cache::follow(cache.clone(), store.clone(), ctx.shutdown.clone());
        let api = api::Api::new(ctx.clone(), store, receipts, cache);
        let server = ConsentServiceServer::new(api)
            .max_decoding_message_size(ctx.config.server.max_request_bytes);
        Ok(Mounted {
            register: Box::new(move |routes| {
                routes.add_service(server);
            }),
            tasks: vec![Box::pin(follower)],
        })
    })
}
