//! The reference SQL connector as the institution's "CRM" and "Moodle": two
//! real `custodia connector sql` servers on port 0, each over its own SQLite
//! database, reached with a token that dsar resolves from its configuration
//! (`credentials_ref = "config:..."`), never stored with the source.

use std::io::Read;

use custodia_connector_sql::testing::{
    self, CRM_CONFIG, CRM_SCHEMA, DSAR_TOKEN, MOODLE_CONFIG, MOODLE_SCHEMA,
};
use custodia_proto::{
    common::v1::RetentionGround,
    connector::v1::Capability,
    dsar::v1::{
        DataSource, ExportState, GetExportRequest, RegisterDataSourceRequest, RequestType,
        SourceTaskState,
    },
};
use custodia_tests::{Backend, TestApp};

use super::{
    fanout::{task, wait_for},
    *,
};

custodia_tests::both_backends!(sql_connectors_as_crm_and_moodle);

const CRM_SEED: &str = r#"
INSERT INTO contacts (id, email, first_name, last_name, phone, created_at, updated_at, last_activity_at)
VALUES (1, 'ada@example.edu', 'Ada', 'Lovelace', '+33 6 12 34 56 78', '2020-01-15T10:00:00Z', '2024-05-01T08:30:00Z', '2025-06-01T00:00:00Z'),
       (2, 'bob@example.edu', 'Bob', 'Martin', NULL, '2021-02-01T10:00:00Z', '2021-02-01T10:00:00Z', '2026-01-01T00:00:00Z');
INSERT INTO interactions (contact_id, channel, note, occurred_at)
VALUES (1, 'email', 'enquiry', '2025-03-01T09:00:00Z'), (1, 'phone', 'call', '2025-04-01T09:00:00Z'),
       (2, 'email', 'bob asks', '2025-05-01T09:00:00Z');
INSERT INTO invoices (id, contact_id, billing_email, billing_name, amount_cents, issued_at)
VALUES (10, 1, 'ada@example.edu', 'Ada Lovelace', 120000, '2024-03-01'),
       (12, 2, 'bob@example.edu', 'Bob Martin', 5000, '2025-09-01');
"#;

const MOODLE_SEED: &str = r#"
INSERT INTO mdl_user (id, username, email, idnumber, firstname, lastname, timecreated, timemodified, lastaccess)
VALUES (7, 'ada', 'ada@example.edu', 'AB1234', 'Ada', 'Lovelace', 1700000000, 1700000000, 1760000000);
INSERT INTO mdl_grade_grades (userid, itemname, finalgrade, timecreated, timemodified)
VALUES (7, 'Analytical engines', 19.5, 1700000000, 1700000000), (7, 'Poetry', 17.0, 1700000000, 1700000000);
"#;

async fn register(c: &mut Client, id: &str, endpoint: &str) {
    c.register_data_source(RegisterDataSourceRequest {
        data_source_id: id.into(),
        data_source: Some(DataSource {
            display_name: id.into(),
            endpoint: endpoint.into(),
            credentials_ref: format!("config:{id}"),
            capabilities: [Capability::Export, Capability::Erase]
                .iter()
                .map(|c| *c as i32)
                .collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("register");
}

async fn sql_connectors_as_crm_and_moodle(backend: Backend) {
    let crm = testing::spawn_sqlite(CRM_SCHEMA, CRM_CONFIG)
        .await
        .expect("crm");
    crm.execute(CRM_SEED).await.expect("seed crm");
    let moodle = testing::spawn_sqlite(MOODLE_SCHEMA, MOODLE_CONFIG)
        .await
        .expect("moodle");
    moodle.execute(MOODLE_SEED).await.expect("seed moodle");
    let app = TestApp::spawn_with(backend, SERVICES, |c| {
        c.dsar.poll_interval_ms = 50;
        for id in ["crm", "moodle"] {
            c.dsar
                .credentials
                .insert(id.to_string(), DSAR_TOKEN.to_string().into());
        }
    })
    .await;
    let mut c = client(&app).await;
    register(&mut c, "crm", &crm.endpoint).await;
    register(&mut c, "moodle", &moodle.endpoint).await;

    // Access: both systems exported into one package.
    let r = started(&mut c, RequestType::Access, "ada@example.edu").await;
    let ready = wait_for(&c, &r.name, |r| {
        r.export
            .as_ref()
            .is_some_and(|e| e.state() == ExportState::Ready)
            || r.source_tasks
                .iter()
                .any(|t| t.state() == SourceTaskState::Failed)
    })
    .await;
    for s in ["crm", "moodle"] {
        let t = task(&ready, s);
        assert_eq!(t.state(), SourceTaskState::Succeeded, "{s}: {t:?}");
    }
    assert_eq!(
        task(&ready, "crm").exported_record_count,
        4,
        "contact, 2 interactions, invoice"
    );
    assert_eq!(
        task(&ready, "moodle").exported_record_count,
        3,
        "account and 2 grades"
    );
    let mut stream = c
        .get_export(GetExportRequest {
            name: format!("{}/export", r.name),
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&m.chunk);
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut summary = String::new();
    zip.by_name("summary.md")
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(
        summary.contains("Admissions CRM") || summary.contains("crm"),
        "{summary}"
    );
    assert!(summary.contains("purposes/teaching"), "{summary}");
    let mut grades = String::new();
    zip.by_name("data/moodle.csv")
        .unwrap()
        .read_to_string(&mut grades)
        .unwrap();
    assert!(grades.contains("Analytical engines"), "{grades}");

    // Erasure: Ada's CRM data goes except the invoice the law keeps.
    let r = started(&mut c, RequestType::Erasure, "ada@example.edu").await;
    let done = wait_for(&c, &r.name, |r| {
        r.source_tasks.iter().all(|t| {
            matches!(
                t.state(),
                SourceTaskState::Succeeded | SourceTaskState::Failed
            )
        })
    })
    .await;
    for s in ["crm", "moodle"] {
        assert_eq!(
            task(&done, s).state(),
            SourceTaskState::Succeeded,
            "{s}: {:?}",
            task(&done, s)
        );
    }
    let kept: Vec<_> = done
        .retained
        .iter()
        .filter(|k| k.category == "invoices")
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", done.retained);
    assert_eq!(kept[0].ground(), RetentionGround::LegalObligation);
    assert_eq!(kept[0].record_count, 1);
    assert!(kept[0].retain_until_time.is_some());
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM contacts WHERE id = 1")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM invoices WHERE id = 10")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM contacts WHERE id = 2")
            .await
            .unwrap(),
        1,
        "Bob stays"
    );
    app.stop().await;
    crm.stop().await;
    moodle.stop().await;
}
