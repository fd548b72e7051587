//! The reference SQL connector (`custodia-connector-sql`): a real gRPC server on
//! port 0, a real tonic client, over a SQLite file and over a fresh PostgreSQL
//! database with native column types (BIGINT, TIMESTAMPTZ, DATE, BOOLEAN). One
//! file per operation of the connector protocol; the seeded CRM stand-in and the
//! helpers below are what they share.

mod config;
mod erase;
mod export;
mod rectify;
mod retention;

use std::{collections::BTreeSet, sync::Arc};

use custodia_connector_sql::{
    ConnectorConfig,
    testing::{self, CRM_CONFIG, CRM_SCHEMA, DSAR_TOKEN, TestConnector},
};
use custodia_core::legal_time::{Clock, ManualClock};
use custodia_proto::{
    common::v1::{RetentionAction, RetentionGround, RetentionPolicy, SpecialCategory, SubjectRef},
    connector::v1::{
        ApplyRetentionRequest, Correction, EraseSubjectRequest, ExportSubjectRequest,
        ExportedRecord, GetCapabilitiesRequest, RectifySubjectRequest, RestrictSubjectRequest,
        RestrictionAction, RetentionRule, data_source_client::DataSourceClient,
    },
};
use custodia_tests::{Authed, Backend, Bearer, TestDatabase, assert_code, authed};
use prost_types::{Value, value::Kind};
use tonic::{Code, transport::Endpoint};

type Client = DataSourceClient<Authed>;

/// A client of the connector at `endpoint`, calling as dsar (`DSAR_TOKEN`).
async fn connect(endpoint: &str) -> Client {
    let channel = Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    DataSourceClient::with_interceptor(channel, Bearer(DSAR_TOKEN))
}

/// The CRM schema with PostgreSQL's own types.
const CRM_SCHEMA_PG: &str = r#"
CREATE TABLE contacts (
    id BIGINT PRIMARY KEY,
    email VARCHAR(320),
    first_name TEXT,
    last_name TEXT,
    phone TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    last_activity_at TIMESTAMPTZ,
    restricted BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE interactions (
    id BIGSERIAL PRIMARY KEY,
    contact_id BIGINT,
    channel TEXT,
    note TEXT,
    occurred_at TIMESTAMPTZ
);
CREATE TABLE invoices (
    id BIGINT PRIMARY KEY,
    contact_id BIGINT,
    billing_email TEXT,
    billing_name TEXT,
    amount_cents INTEGER,
    issued_at DATE
);
"#;

/// Ada (contact 1) and Bob (contact 2); Ada's invoice 10 is from 2024 (kept by
/// law until 2034), invoice 11 from 2010 (its 10 years are over). Invoice 10
/// matches Ada by contact id AND by billing email.
const SEED: &str = r#"
INSERT INTO contacts (id, email, first_name, last_name, phone, created_at, updated_at, last_activity_at)
VALUES (1, ' Ada@Example.EDU', 'Ada', 'Lovelace', '+33 6 12 34 56 78', '2020-01-15T10:00:00Z', '2024-05-01T08:30:00Z', '2021-06-01T00:00:00Z'),
       (2, 'bob@example.edu', 'Bob', 'Martin', NULL, '2021-02-01T10:00:00Z', '2021-02-01T10:00:00Z', '2026-01-01T00:00:00Z');
INSERT INTO invoices (id, contact_id, billing_email, billing_name, amount_cents, issued_at)
VALUES (10, 1, 'ada@example.edu', 'Ada Lovelace', 120000, '2024-03-01'),
       (11, 1, 'ada@example.edu', 'Ada Lovelace', 9000, '2010-01-15'),
       (12, 2, 'bob@example.edu', 'Bob Martin', 5000, '2025-09-01');
INSERT INTO interactions (contact_id, channel, note, occurred_at)
VALUES (1, 'email', 'old enquiry', '2019-03-01T09:00:00Z'),
       (1, 'phone', 'old call', '2019-04-01T09:00:00Z'),
       (1, 'meeting', 'recent visit', '2025-10-01T09:00:00Z'),
       (2, 'email', 'bob asks', '2019-05-01T09:00:00Z');
"#;

/// `n` more interactions of Ada, to make the export stream several batches.
fn many_interactions(n: u32) -> String {
    format!(
        "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n}) \
         INSERT INTO interactions (contact_id, channel, note, occurred_at) \
         SELECT 1, 'web', 'page view', '2025-11-01T09:00:00Z' FROM seq"
    )
}

/// The CRM stand-in (contacts, interactions, invoices), seeded, and a client of it.
struct Crm {
    connector: TestConnector,
    client: Client,
    database: Option<TestDatabase>,
}

impl Crm {
    async fn start(backend: Backend) -> Self {
        Self::start_with(backend, CRM_CONFIG).await
    }

    async fn start_with(backend: Backend, config: &str) -> Self {
        custodia_tests::init_tracing();
        let clock = Arc::new(ManualClock::new("2026-11-02T09:00:00Z".parse().unwrap()));
        let (connector, database) = match backend {
            Backend::Sqlite => (
                testing::spawn_sqlite_with_clock(CRM_SCHEMA, config, clock as Arc<dyn Clock>)
                    .await
                    .expect("connector starts"),
                None,
            ),
            Backend::Postgres => {
                let db = TestDatabase::create().await;
                testing::execute(&db.url, CRM_SCHEMA_PG)
                    .await
                    .expect("schema");
                let config = testing::config_with_url(config, &db.url).expect("config");
                (
                    testing::spawn_with_clock(config, clock as Arc<dyn Clock>)
                        .await
                        .expect("connector starts"),
                    Some(db),
                )
            }
        };
        connector.execute(SEED).await.expect("seed");
        let client = connect(&connector.endpoint).await;
        Self {
            connector,
            client,
            database,
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        self.connector.count(sql).await.expect(sql)
    }

    async fn stop(self) {
        self.connector.stop().await;
        if let Some(db) = self.database {
            db.drop_now().await;
        }
    }
}

fn id(kind: &str, value: &str) -> SubjectRef {
    SubjectRef {
        r#type: kind.into(),
        value: value.into(),
    }
}

fn ada() -> Vec<SubjectRef> {
    vec![id("email", "ADA@example.edu")]
}

fn string(v: &str) -> Option<Value> {
    Some(Value {
        kind: Some(Kind::StringValue(v.into())),
    })
}

fn field<'a>(r: &'a ExportedRecord, name: &str) -> Option<&'a Kind> {
    r.fields.as_ref()?.fields.get(name)?.kind.as_ref()
}

fn counts(list: &[custodia_proto::connector::v1::CategoryCount]) -> Vec<(String, i64)> {
    list.iter().map(|c| (c.category.clone(), c.count)).collect()
}

fn pairs(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

async fn export(client: &mut Client, ids: Vec<SubjectRef>) -> Vec<Vec<ExportedRecord>> {
    let mut stream = client
        .export_subject(ExportSubjectRequest {
            subject_identifiers: ids,
            ..Default::default()
        })
        .await
        .expect("export starts")
        .into_inner();
    let mut batches = Vec::new();
    while let Some(batch) = stream.message().await.expect("batch") {
        batches.push(batch.records);
    }
    batches
}

fn erase_request(ids: Vec<SubjectRef>, request_id: &str) -> EraseSubjectRequest {
    EraseSubjectRequest {
        subject_identifiers: ids,
        dsar_request: "requests/r1".into(),
        categories: vec![],
        request_id: request_id.into(),
    }
}

fn rule(categories: &[&str], action: RetentionAction, cutoff: &str) -> Option<RetentionRule> {
    let cutoff: chrono::DateTime<chrono::Utc> = cutoff.parse().unwrap();
    Some(RetentionRule {
        rule_id: "purposes/admissions".into(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        policy: Some(RetentionPolicy {
            period: "P3Y".into(),
            anchor: "last_activity".into(),
            criteria: String::new(),
            action: action as i32,
        }),
        cutoff_time: Some(prost_types::Timestamp {
            seconds: cutoff.timestamp(),
            nanos: 0,
        }),
    })
}
