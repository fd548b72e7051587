//! The reference SQL connector (`custodia-connector-sql`): a real gRPC server on
//! port 0, a real tonic client, over a SQLite file and over a fresh PostgreSQL
//! database with native column types (BIGINT, TIMESTAMPTZ, DATE, BOOLEAN).

use std::{collections::BTreeSet, sync::Arc};

use custodia_connector_sql::{
    ConnectorConfig,
    testing::{self, CRM_CONFIG, CRM_SCHEMA, DSAR_TOKEN, TestConnector},
};
use custodia_core::legal_time::{Clock, ManualClock};
use custodia_proto::{
    common::v1::{RetentionAction, RetentionGround, RetentionPolicy, SubjectRef},
    connector::v1::{
        ApplyRetentionRequest, Correction, EraseSubjectRequest, ExportSubjectRequest,
        ExportedRecord, GetCapabilitiesRequest, RectifySubjectRequest, RestrictSubjectRequest,
        RestrictionAction, RetentionRule, data_source_client::DataSourceClient,
    },
};
use custodia_tests::{Backend, TestDatabase, assert_code, authed};
use prost_types::{Value, value::Kind};
use tonic::{Code, transport::Channel};

type Client = DataSourceClient<Channel>;

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
        let client = DataSourceClient::connect(connector.endpoint.clone())
            .await
            .expect("connects");
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
        .export_subject(authed(
            ExportSubjectRequest {
                subject_identifiers: ids,
                ..Default::default()
            },
            DSAR_TOKEN,
        ))
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

// ------------------------------------------------------------------ export

async fn export_by_two_identifiers(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    crm.connector
        .execute(&many_interactions(2500))
        .await
        .expect("seed");

    let caps = crm
        .client
        .get_capabilities(authed(GetCapabilitiesRequest {}, DSAR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.display_name, "Admissions CRM");
    assert_eq!(caps.identifier_types, ["crm_contact", "email"]);
    assert_eq!(caps.categories.len(), 3);
    assert_eq!(caps.capabilities.len(), 5);

    // Email (stored in another case, with a space) and the CRM contact id: the
    // invoice matching both is exported once.
    let batches = export(
        &mut crm.client,
        vec![id("email", "ada@example.edu"), id("crm_contact", "1")],
    )
    .await;
    assert!(batches.len() >= 3, "2,500+ records come in several batches");
    assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 1000));
    let records: Vec<ExportedRecord> = batches.into_iter().flatten().collect();
    let keys: BTreeSet<(String, String)> = records
        .iter()
        .map(|r| (r.category.clone(), r.record_id.clone()))
        .collect();
    assert_eq!(keys.len(), records.len(), "every record once");
    let per = |c: &str| records.iter().filter(|r| r.category == c).count();
    assert_eq!(per("contacts"), 1);
    assert_eq!(per("invoices"), 2);
    assert_eq!(per("interactions"), 3 + 2500);

    let contact = records.iter().find(|r| r.category == "contacts").unwrap();
    assert_eq!(contact.record_id, "1");
    assert_eq!(
        field(contact, "last_name"),
        Some(&Kind::StringValue("Lovelace".into()))
    );
    assert_eq!(field(contact, "id"), Some(&Kind::NumberValue(1.0)));
    assert_eq!(
        contact.create_time.as_ref().map(|t| t.seconds),
        Some(1_579_082_400),
        "2020-01-15T10:00:00Z"
    );
    assert!(contact.update_time.is_some());
    let invoice = records
        .iter()
        .find(|r| r.category == "invoices" && r.record_id == "10")
        .unwrap();
    assert_eq!(
        field(invoice, "amount_cents"),
        Some(&Kind::NumberValue(120000.0))
    );
    assert!(
        records
            .iter()
            .all(|r| !(r.category == "invoices" && r.record_id == "12")),
        "not Bob's"
    );

    // Found by email alone, through the contact row: the same records.
    let by_email: usize = export(&mut crm.client, ada())
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(by_email, records.len());
    // An identifier type the source does not know finds nothing, without error.
    let none = export(&mut crm.client, vec![id("student_number", "S1")]).await;
    assert!(none.is_empty());

    // Bad input names the field.
    let err = crm
        .client
        .export_subject(authed(
            ExportSubjectRequest {
                subject_identifiers: vec![id("email", "not-an-email")],
                categories: vec!["nope".into()],
                ..Default::default()
            },
            DSAR_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["subject_identifiers[0].value"],
    );
    assert!(err.message().contains("categories[0]"), "{err:?}");
    crm.stop().await;
}

custodia_tests::both_backends!(export_by_two_identifiers);

/// A contact stored as typed, with its domain in Unicode, is found by any spelling
/// of the address: the one in IDNA ASCII form too (custodia's normal form).
async fn export_finds_an_internationalised_domain_however_spelled(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    crm.connector
        .execute(
            "INSERT INTO contacts (id, email, first_name, last_name) \
             VALUES (3, '\u{E9}l\u{E8}ve@\u{E9}cole.fr', 'El', 'Eve')",
        )
        .await
        .expect("seed");
    for spelling in [
        "\u{E9}l\u{E8}ve@xn--cole-9oa.fr",
        "\u{C9}l\u{E8}ve@\u{C9}cole.FR",
        "e\u{301}le\u{300}ve@e\u{301}cole.fr",
    ] {
        let records: Vec<ExportedRecord> = export(&mut crm.client, vec![id("email", spelling)])
            .await
            .into_iter()
            .flatten()
            .collect();
        let contacts: Vec<&str> = records
            .iter()
            .filter(|r| r.category == "contacts")
            .map(|r| r.record_id.as_str())
            .collect();
        assert_eq!(contacts, ["3"], "{spelling:?}");
    }
    crm.stop().await;
}

custodia_tests::both_backends!(export_finds_an_internationalised_domain_however_spelled);

// ------------------------------------------------------------------ erase

async fn erase_keeps_what_the_law_requires(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    let first = crm
        .client
        .erase_subject(authed(erase_request(ada(), "erase-1"), DSAR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counts(&first.erased),
        pairs(&[("contacts", 1), ("interactions", 3), ("invoices", 1)])
    );
    assert_eq!(first.retained.len(), 1);
    let kept = &first.retained[0];
    assert_eq!(kept.category, "invoices");
    assert_eq!(kept.record_count, 1);
    assert_eq!(kept.ground, RetentionGround::LegalObligation as i32);
    assert_eq!(kept.legal_reference, "Code de commerce, art. L123-22");
    assert!(kept.reason.contains("10 years"));
    let until = kept.retain_until_time.as_ref().expect("until");
    assert_eq!(
        chrono::DateTime::from_timestamp(until.seconds, 0)
            .unwrap()
            .to_rfc3339(),
        "2034-03-01T00:00:00+00:00"
    );
    assert_eq!(crm.count("SELECT COUNT(*) FROM contacts").await, 1);
    assert_eq!(crm.count("SELECT COUNT(*) FROM interactions").await, 1);
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM invoices WHERE id IN (10, 12)")
            .await,
        2
    );

    // dsar retries after a crash: same answer, nothing erased or counted twice.
    crm.connector
        .execute("INSERT INTO interactions (contact_id, channel, note, occurred_at) VALUES (1, 'web', 'late', '2026-10-01T00:00:00Z')")
        .await
        .unwrap();
    let again = crm
        .client
        .erase_subject(authed(erase_request(ada(), "erase-1"), DSAR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(crm.count("SELECT COUNT(*) FROM interactions").await, 2);

    // The same request_id for a different request is refused.
    let err = crm
        .client
        .erase_subject(authed(
            erase_request(vec![id("email", "bob@example.edu")], "erase-1"),
            DSAR_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["request_id"]);

    // A new request finds only what was kept (and the late interaction).
    let second = crm
        .client
        .erase_subject(authed(
            erase_request(vec![id("crm_contact", "1")], "erase-2"),
            DSAR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counts(&second.erased),
        pairs(&[("contacts", 0), ("interactions", 1), ("invoices", 0)])
    );
    assert_eq!(second.retained[0].record_count, 1);

    // Missing request_id names the field.
    let err = crm
        .client
        .erase_subject(authed(erase_request(ada(), ""), DSAR_TOKEN))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["request_id"]);
    crm.stop().await;
}

custodia_tests::both_backends!(erase_keeps_what_the_law_requires);

// ------------------------------------------------------------------ restrict

async fn restrict_and_lift(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    let restrict = |action: RestrictionAction, request_id: &str| RestrictSubjectRequest {
        subject_identifiers: ada(),
        dsar_request: "requests/r2".into(),
        action: action as i32,
        categories: vec![],
        reason: "accuracy contested, Art. 18(1)(a)".into(),
        request_id: request_id.into(),
    };
    let done = crm
        .client
        .restrict_subject(authed(
            restrict(RestrictionAction::Restrict, "restrict-1"),
            DSAR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counts(&done.affected),
        pairs(&[("contacts", 1), ("interactions", 3), ("invoices", 2)])
    );
    let flagged = "SELECT COUNT(*) FROM contacts WHERE CAST(restricted AS INTEGER) = 1";
    assert_eq!(crm.count(flagged).await, 1);
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM custodia_connector_restrictions")
            .await,
        5
    );

    // Restricted records are stored only: retention keeps them and says why.
    let dry = crm
        .client
        .apply_retention(authed(
            ApplyRetentionRequest {
                rule: rule(
                    &["interactions"],
                    RetentionAction::Delete,
                    "2022-01-01T00:00:00Z",
                ),
                dry_run: false,
                request_id: "retention-while-restricted".into(),
            },
            DSAR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(&dry.matched), pairs(&[("interactions", 3)]));
    assert_eq!(counts(&dry.deleted), pairs(&[("interactions", 1)]), "Bob's");
    assert_eq!(dry.retained.len(), 1);
    assert_eq!(dry.retained[0].record_count, 2);
    assert!(dry.retained[0].legal_reference.contains("Art. 18"));

    let lifted = crm
        .client
        .restrict_subject(authed(
            restrict(RestrictionAction::Lift, "lift-1"),
            DSAR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counts(&lifted.affected),
        pairs(&[("contacts", 1), ("interactions", 3), ("invoices", 2)])
    );
    assert_eq!(crm.count(flagged).await, 0);
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM custodia_connector_restrictions")
            .await,
        0
    );

    let err = crm
        .client
        .restrict_subject(authed(
            restrict(RestrictionAction::Unspecified, "restrict-2"),
            DSAR_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["action"]);
    crm.stop().await;
}

custodia_tests::both_backends!(restrict_and_lift);

// ------------------------------------------------------------------ rectify

async fn rectify(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    let correction =
        |category: &str, field: &str, record_id: &str, value: Option<Value>| Correction {
            category: category.into(),
            field: field.into(),
            record_id: record_id.into(),
            value,
        };
    let request = RectifySubjectRequest {
        subject_identifiers: ada(),
        dsar_request: "requests/r3".into(),
        corrections: vec![
            correction("contacts", "last_name", "", string("King")),
            correction("contacts", "shoe_size", "", string("38")),
            correction("contacts", "created_at", "", string("2020-01-01T00:00:00Z")),
            correction("courses", "name", "", string("x")),
            correction("contacts", "phone", "2", string("+33000000000")),
            correction("contacts", "email", "", string("ada.king@example.edu")),
            correction("contacts", "first_name", "1", None),
        ],
        request_id: "rectify-1".into(),
    };
    let results = crm
        .client
        .rectify_subject(authed(request.clone(), DSAR_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .results;
    let applied: Vec<(bool, i64)> = results
        .iter()
        .map(|r| (r.applied, r.record_count))
        .collect();
    assert_eq!(
        applied,
        [
            (true, 1),
            (false, 0),
            (false, 0),
            (false, 0),
            (false, 0),
            (true, 1),
            (true, 1)
        ]
    );
    assert!(results[1].message.contains("unknown field"), "{results:?}");
    assert!(results[2].message.contains("cannot be rectified"));
    assert!(results[3].message.contains("unknown category"));
    assert!(results[4].message.contains("does not belong"));
    assert!(results.iter().enumerate().all(|(i, r)| r.index == i as i32));
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM contacts WHERE last_name = 'King' AND email = 'ada.king@example.edu' AND first_name IS NULL")
            .await,
        1
    );
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM contacts WHERE last_name = 'Martin'")
            .await,
        1,
        "Bob untouched"
    );

    // A repeat answers the same, and the new email finds the subject.
    let again = crm
        .client
        .rectify_subject(authed(request, DSAR_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(again, results);
    let found: usize = export(&mut crm.client, vec![id("email", "ada.king@example.edu")])
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(found, 1 + 3 + 2);

    let err = crm
        .client
        .rectify_subject(authed(
            RectifySubjectRequest {
                subject_identifiers: ada(),
                corrections: vec![correction("contacts", "", "", None)],
                request_id: "rectify-2".into(),
                ..Default::default()
            },
            DSAR_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["corrections[0].field"]);
    crm.stop().await;
}

custodia_tests::both_backends!(rectify);

// ------------------------------------------------------------------ retention

async fn retention_dry_run_then_real(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    let request = |dry_run: bool, request_id: &str| ApplyRetentionRequest {
        rule: rule(
            &["interactions"],
            RetentionAction::Delete,
            "2022-01-01T00:00:00Z",
        ),
        dry_run,
        request_id: request_id.into(),
    };
    let dry = crm
        .client
        .apply_retention(authed(request(true, "ret-dry"), DSAR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(&dry.matched), pairs(&[("interactions", 3)]));
    assert!(dry.deleted.is_empty() && dry.anonymised.is_empty());
    assert_eq!(crm.count("SELECT COUNT(*) FROM interactions").await, 4);

    let real = crm
        .client
        .apply_retention(authed(request(false, "ret-1"), DSAR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(&real.matched), pairs(&[("interactions", 3)]));
    assert_eq!(counts(&real.deleted), pairs(&[("interactions", 3)]));
    assert_eq!(crm.count("SELECT COUNT(*) FROM interactions").await, 1);
    let repeat = crm
        .client
        .apply_retention(authed(request(false, "ret-1"), DSAR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repeat, real);

    // Invoices: the billing rule is due for all three, but the law keeps the
    // 2024 and 2025 ones.
    let billing = crm
        .client
        .apply_retention(authed(
            ApplyRetentionRequest {
                rule: rule(
                    &["invoices"],
                    RetentionAction::Delete,
                    "2026-01-01T00:00:00Z",
                ),
                dry_run: false,
                request_id: "ret-billing".into(),
            },
            DSAR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(&billing.matched), pairs(&[("invoices", 3)]));
    assert_eq!(counts(&billing.deleted), pairs(&[("invoices", 1)]));
    assert_eq!(billing.retained[0].record_count, 2);
    assert_eq!(crm.count("SELECT COUNT(*) FROM invoices").await, 2);

    // Rules naming no categories apply to the tables of their purpose.
    let purpose = crm
        .client
        .apply_retention(authed(
            ApplyRetentionRequest {
                rule: rule(&[], RetentionAction::Delete, "2022-01-01T00:00:00Z"),
                dry_run: true,
                request_id: "ret-purpose".into(),
            },
            DSAR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counts(&purpose.matched),
        pairs(&[("contacts", 1), ("interactions", 0)])
    );

    let err = crm
        .client
        .apply_retention(authed(
            ApplyRetentionRequest {
                rule: rule(
                    &["contacts"],
                    RetentionAction::Unspecified,
                    "2022-01-01T00:00:00Z",
                ),
                dry_run: true,
                request_id: "ret-bad".into(),
            },
            DSAR_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["rule.policy.action"]);

    // Anonymisation named for a table that has none configured.
    let err = crm
        .client
        .apply_retention(authed(
            ApplyRetentionRequest {
                rule: rule(
                    &["contacts"],
                    RetentionAction::Anonymise,
                    "2022-01-01T00:00:00Z",
                ),
                dry_run: true,
                request_id: "ret-anon".into(),
            },
            DSAR_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["contacts"]);
    crm.stop().await;
}

custodia_tests::both_backends!(retention_dry_run_then_real);

// ------------------------------------------------------------------ config and auth

#[tokio::test]
async fn bad_config_identifiers_are_rejected() {
    let url = "sqlite::memory:";
    let with = |from: &str, to: &str| {
        let text = CRM_CONFIG.replacen(from, to, 1);
        testing::config_with_url(&text, url)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_else(|| panic!("{to} accepted"))
    };
    let e = with(r#"name = "contacts""#, r#"name = "contacts; DROP TABLE x""#);
    assert!(e.contains("tables[0].name"), "{e}");
    let e = with(r#"email = "email""#, r#"email = "email\" OR 1=1 --""#);
    assert!(e.contains("tables[0].identifiers.email"), "{e}");
    let e = with(r#"primary_key = "id""#, r#"primary_key = "t.id""#);
    assert!(e.contains("tables[0].primary_key"), "{e}");
    let e = with(
        r#"anchor_column = "occurred_at""#,
        r#"anchor_column = "occurred at""#,
    );
    assert!(e.contains("tables[1].retention.anchor_column"), "{e}");
    let e = with(
        r#"name = "contacts""#,
        r#"name = "custodia_connector_requests""#,
    );
    assert!(e.contains("belong to the connector"), "{e}");
    let e = with(r#"period = "P10Y""#, r#"period = "ten years""#);
    assert!(e.contains("retained_by_law.period"), "{e}");
    let e = with("display_name", "display_nam");
    assert!(e.contains("display_nam"), "{e}");

    // Plain identifiers that the database lacks fail at start-up.
    let text = CRM_CONFIG.replacen(r#"phone", "email"]"#, r#"phone", "emial"]"#, 1);
    let err = testing::spawn_sqlite(CRM_SCHEMA, &text).await.unwrap_err();
    let e = format!("{err:#}");
    assert!(
        e.contains("tables[0].rectifiable") && e.contains("emial"),
        "{e}"
    );
    let text = CRM_CONFIG.replacen(r#"name = "invoices""#, r#"name = "bills""#, 1);
    let err = testing::spawn_sqlite(CRM_SCHEMA, &text).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("bills does not exist"),
        "{err:#}"
    );

    // Anonymising must overwrite every identifier column.
    let text = CRM_CONFIG.replacen(
        "restriction = { column = \"restricted\" }",
        "restriction = { column = \"restricted\" }\nerase = \"anonymise\"\nanonymise = { set_null = [\"phone\"] }",
        1,
    );
    let err =
        ConnectorConfig::from_toml_str(&format!("database_url = \"{url}\"\n{text}")).unwrap_err();
    assert!(format!("{err:#}").contains("email"), "{err:#}");
}

#[tokio::test]
async fn tokens_and_scopes_are_enforced() {
    const READER: &str = "test-reader-token-0123456789";
    // Principals must come before the [[tables]] array in TOML.
    let (head, tables) = CRM_CONFIG.split_once("[[tables]]").unwrap();
    let config = format!(
        "{head}\n[auth.principals.reader]\ntoken = \"{READER}\"\nscopes = [\"connector.read\"]\n\n[[tables]]{tables}"
    );
    let mut crm = Crm::start_with(Backend::Sqlite, &config).await;

    let err = crm
        .client
        .get_capabilities(authed(GetCapabilitiesRequest {}, "wrong-token-0123456789"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = crm
        .client
        .get_capabilities(GetCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // connector.read may export, not erase.
    crm.client
        .get_capabilities(authed(GetCapabilitiesRequest {}, READER))
        .await
        .expect("read scope");
    let err = crm
        .client
        .erase_subject(authed(erase_request(ada(), "erase-denied"), READER))
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, &["connector.write"]);
    assert_eq!(crm.count("SELECT COUNT(*) FROM contacts").await, 2);
    crm.stop().await;
}

#[tokio::test]
async fn moodle_stand_in_anonymises_accounts() {
    let moodle = testing::spawn_moodle().await.expect("moodle starts");
    moodle
        .execute(
            "INSERT INTO mdl_user (id, username, email, idnumber, firstname, lastname, timecreated, timemodified, lastaccess) \
             VALUES (7, 'ada', 'ada@example.edu', 'S1234', 'Ada', 'Lovelace', 1600000000, 1700000000, 1700000000); \
             INSERT INTO mdl_grade_grades (userid, itemname, finalgrade, timecreated, timemodified) \
             VALUES (7, 'Analysis I', 17.5, 1650000000, 1650000000), (7, 'Algebra', 15, 1650000000, 1650000000); \
             INSERT INTO mdl_logstore_standard_log (userid, eventname, timecreated) VALUES (7, 'login', 1690000000);",
        )
        .await
        .unwrap();
    let mut client = DataSourceClient::connect(moodle.endpoint.clone())
        .await
        .unwrap();
    let records: Vec<ExportedRecord> = export(&mut client, vec![id("student_number", " s1234 ")])
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(records.len(), 4);
    let account = records.iter().find(|r| r.category == "accounts").unwrap();
    assert_eq!(account.create_time.as_ref().unwrap().seconds, 1_600_000_000);
    let erased = client
        .erase_subject(authed(
            erase_request(vec![id("email", "ada@example.edu")], "erase-m"),
            DSAR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counts(&erased.erased),
        pairs(&[("accounts", 1), ("grades", 2), ("activity_log", 1)])
    );
    assert_eq!(
        moodle
            .count("SELECT COUNT(*) FROM mdl_user WHERE id = 7 AND email IS NULL AND username = 'deleted'")
            .await
            .unwrap(),
        1
    );
    moodle.stop().await;
}
