//! Tests below the API: one service's database opened as the server opens it,
//! and the consent store's write jobs.

use custodia_consent::records::{NewRecord, WriteJob};
use custodia_core::{
    Config, ServiceName,
    idempotency::RequestKey,
    outbox::{AccessEvent, Outcome},
    storage::{self, Db, Migrations},
};
use custodia_proto::consent::v1::{ConsentEvent, ConsentState, RecordConsentRequest};

use crate::{Backend, TestDatabase, email, test_config};

/// One service's database on a backend, with the test configuration that names
/// it; [`TestStore::close`] closes it and drops the PostgreSQL database.
#[derive(Debug)]
pub struct TestStore {
    /// The open database.
    pub db: Db,
    /// The configuration it was opened with (open it again for a second replica).
    pub config: Config,
    _dir: tempfile::TempDir,
    database: Option<TestDatabase>,
}

impl TestStore {
    /// Opens `service`'s database on `backend` as the server would, unmigrated.
    pub async fn open(backend: Backend, service: ServiceName) -> Self {
        let (config, dir, database) = test_config(backend).await;
        let db = storage::open_service(&config, service).await.unwrap();
        Self {
            db,
            config,
            _dir: dir,
            database,
        }
    }

    /// Opens `service`'s database on `backend` and applies `migrations`.
    pub async fn migrated(backend: Backend, service: ServiceName, migrations: &Migrations) -> Self {
        let store = Self::open(backend, service).await;
        store.db.migrate(migrations).await.unwrap();
        store
    }

    /// The consent database on `backend`, migrated.
    pub async fn consent(backend: Backend) -> Self {
        Self::migrated(backend, ServiceName::Consent, &custodia_consent::MIGRATIONS).await
    }

    /// Closes the database and drops the PostgreSQL one.
    pub async fn close(self) {
        self.db.close().await;
        if let Some(database) = self.database {
            database.drop_now().await;
        }
    }
}

/// A consent record of `subject` (a hash) for `purpose` in `state`, decided at
/// 1 ms, under a fresh event name.
pub fn consent_record(subject: &str, purpose: &str, state: ConsentState) -> NewRecord {
    NewRecord {
        subject_hash: subject.into(),
        purpose_id: purpose.into(),
        event: ConsentEvent {
            name: format!("consentEvents/{}", uuid::Uuid::now_v7().simple()),
            purpose: format!("purposes/{purpose}"),
            state: state as i32,
            ..Default::default()
        },
        decision_us: 1_000,
        expire_us: None,
    }
}

/// A write job of principal `test` calling `method` with `request_id` (none when
/// empty), writing `records` at 2 ms.
pub fn consent_job(method: &str, request_id: &str, records: Vec<NewRecord>) -> WriteJob {
    consent_job_with_body(method, request_id, "", records)
}

/// A [`consent_job`] whose request carried `body` (the part of the request its
/// key's fingerprint covers besides the request id).
pub fn consent_job_with_body(
    method: &str,
    request_id: &str,
    body: &str,
    records: Vec<NewRecord>,
) -> WriteJob {
    let request = RecordConsentRequest {
        request_id: request_id.into(),
        subject: Some(email(body)),
        ..Default::default()
    };
    WriteJob {
        key: RequestKey::new("test", method, request_id, &request),
        records,
        receipt: None,
        access: AccessEvent::new(
            chrono::Utc::now(),
            "test",
            "custodia.consent.v1.ConsentService",
            method,
            Outcome::Ok,
        ),
        now_us: 2_000,
    }
}
