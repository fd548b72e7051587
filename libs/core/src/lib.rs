//! What every custodia service shares: configuration, telemetry, authentication,
//! the error table, storage, legal time, subject identifiers, the access-event
//! outbox and the gRPC server bootstrap. Each module has one job.
#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod config;
pub mod connect;
pub mod connections;
pub mod csv_out;
pub mod decode_errors;
pub mod echo;
pub mod erasure_ledger;
pub mod error;
pub mod fields;
pub mod group_commit;
pub mod handler_macros;
pub mod idempotency;
pub mod invisible;
pub mod json_struct;
pub mod keys;
pub mod legal_time;
pub mod outbound;
pub mod outbox;
pub mod pagination;
pub mod private_files;
pub mod proto_time;
pub mod quota;
pub mod recorded_write;
pub mod reflection;
pub mod server;
pub mod signing;
pub mod storage;
pub mod subject;
pub mod telemetry;
pub mod validate;

pub use config::Config;
pub use error::ApiError;

/// The four services custodia serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    /// custodia.consent.v1.ConsentService
    Consent,
    /// custodia.dsar.v1.DsarService
    Dsar,
    /// custodia.breach.v1.BreachService
    Breach,
    /// custodia.audit.v1.AuditLogService
    AuditLog,
}

impl ServiceName {
    /// Every service, in start-up order (audit-log first: the others feed it).
    pub const ALL: [ServiceName; 4] = [
        ServiceName::AuditLog,
        ServiceName::Consent,
        ServiceName::Dsar,
        ServiceName::Breach,
    ];

    /// Name used on the command line and in config (`audit-log`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Consent => "consent",
            ServiceName::Dsar => "dsar",
            ServiceName::Breach => "breach",
            ServiceName::AuditLog => "audit-log",
        }
    }

    /// Identifier safe for file names and SQL schemas (`audit_log`).
    pub fn ident(self) -> &'static str {
        match self {
            ServiceName::AuditLog => "audit_log",
            other => other.as_str(),
        }
    }

    /// Fully-qualified gRPC service name.
    pub fn grpc_name(self) -> &'static str {
        match self {
            ServiceName::Consent => "custodia.consent.v1.ConsentService",
            ServiceName::Dsar => "custodia.dsar.v1.DsarService",
            ServiceName::Breach => "custodia.breach.v1.BreachService",
            ServiceName::AuditLog => "custodia.audit.v1.AuditLogService",
        }
    }

    /// The service owning a gRPC path like `/custodia.consent.v1.ConsentService/CheckConsent`.
    pub fn from_grpc_path(path: &str) -> Option<Self> {
        let service = path.trim_start_matches('/').split('/').next()?;
        Self::ALL.into_iter().find(|s| s.grpc_name() == service)
    }
}

impl std::str::FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s || n.ident() == s)
            .ok_or_else(|| {
                format!("unknown service `{s}` (expected consent, dsar, breach or audit-log)")
            })
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
