//! The connector's configuration and authentication: identifiers checked at
//! start-up, tokens and scopes enforced, and the Moodle stand-in.

use super::*;

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
    let e = with(
        r#"name = "interactions""#,
        "name = \"interactions\"\nspecial_category = \"medical\"",
    );
    assert!(e.contains("medical") && e.contains("health"), "{e}");

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
    let mut anonymous = DataSourceClient::connect(crm.connector.endpoint.clone())
        .await
        .unwrap();
    let err = anonymous
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
    let mut client = connect(&moodle.endpoint).await;
    let records: Vec<ExportedRecord> = export(&mut client, vec![id("student_number", " s1234 ")])
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(records.len(), 4);
    let account = records.iter().find(|r| r.category == "accounts").unwrap();
    assert_eq!(account.create_time.as_ref().unwrap().seconds, 1_600_000_000);
    let erased = client
        .erase_subject(erase_request(
            vec![id("email", "ada@example.edu")],
            "erase-m",
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

/// A table declared as holding a special category (Art. 9) says so in the
/// connector's capabilities, which dsar checks against the register (R-4).
#[tokio::test]
async fn a_special_category_is_declared_in_the_capabilities() {
    let text = CRM_CONFIG.replacen(
        r#"name = "interactions""#,
        "name = \"interactions\"\nspecial_category = \"health\"",
        1,
    );
    let mut crm = Crm::start_with(Backend::Sqlite, &text).await;
    let caps = crm
        .client
        .get_capabilities(GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let special: Vec<(&str, i32)> = caps
        .categories
        .iter()
        .map(|c| (c.category.as_str(), c.special_category))
        .collect();
    assert_eq!(
        special,
        [
            ("contacts", 0),
            ("interactions", SpecialCategory::Health as i32),
            ("invoices", 0)
        ]
    );
    crm.stop().await;
}
