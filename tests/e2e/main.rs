//! Workspace end-to-end suite: real servers on port 0, real clients, real SQLite
//! and PostgreSQL (a fresh database per test).

mod audit_api;
mod audit_batches;
mod audit_store;
mod breach;
mod connect;
mod connections;
mod connector_sql;
mod consent_records;
mod consent_register;
mod consent_writes;
mod data_dir;
mod dsar;
mod errors;
mod idempotency;
mod identifiers;
mod limits;
mod outbox;
mod platform;
mod quota;
mod schema;
mod storage;

/// All four services, as `custodia serve` runs them by default.
pub fn all_services() -> Vec<custodia_core::server::ServiceDef> {
    vec![
        custodia_audit_log::SERVICE,
        custodia_consent::SERVICE,
        custodia_dsar::SERVICE,
        custodia_breach::SERVICE,
    ]
}
