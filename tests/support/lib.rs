//! Test support for the workspace end-to-end suite (tests/e2e) and the load
//! generator (tests/loadgen): a real custodia server on port 0 over a fresh
//! database (SQLite in a temp dir, or a new PostgreSQL database per test), typed
//! clients of it, and the small values and assertions every scenario needs.
//!
//! | module | what it holds |
//! |---|---|
//! | `app` | [`TestApp`] (spawn, stop, channel, the injected clock), [`test_config`], [`TestDatabase`] |
//! | `clients` | admin clients of a [`TestApp`]: `app.consent()`, `app.dsar()`, `app.breach()`, `app.audit()` |
//! | `backends` | [`both_backends!`]: one test body, run as `<name>::sqlite` and `<name>::postgres` |
//! | `store` | [`TestStore`]: one service's migrated database, for tests below the API |
//! | `consent` | the newsletter purpose and notice most consent scenarios start from, checks and trails |
//! | `subject` | subject identifiers: [`email`], [`subject`], [`subjects`] |
//! | `time` | [`at`], [`ts`], [`time_of`]: RFC 3339 text, `DateTime` and protobuf timestamps |
//! | `status` | [`assert_code`]: an error's code and what its message names |
//! | `wait` | [`eventually`], [`audit_events_until`]: waiting for background work |
//! | `files` | [`assert_owner_only`]: data-directory permissions |
#![forbid(unsafe_code)]

mod app;
mod backends;
mod clients;
mod consent;
mod files;
mod status;
mod store;
mod subject;
mod time;
mod wait;

use tonic::{Request, metadata::MetadataValue};

pub use app::{Backend, TestApp, TestDatabase, postgres_admin_url, test_config};
pub use clients::{ADMIN, AuditClient, Authed, Bearer, BreachClient, ConsentClient, DsarClient};
pub use consent::{check, events_of, grant, newsletter_purpose, publish_privacy_notice};
#[cfg(unix)]
pub use files::assert_owner_only;
pub use status::assert_code;
pub use store::{TestStore, consent_job, consent_job_with_body, consent_record};
pub use subject::{email, subject, subjects};
pub use time::{at, time_of, ts};
pub use wait::{audit_events_until, eventually};

/// Token of the admin principal in test servers.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Wraps `message` in a request carrying `token` as a bearer token.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Logs for the failing test, once per process, when `TEST_LOG` is set.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = custodia_core::telemetry::init(&Default::default());
        }
    });
}
