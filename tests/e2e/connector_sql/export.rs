//! ExportSubject: every record of a subject found by any of its identifiers,
//! once, in batches.

use super::*;

custodia_tests::both_backends!(
    export_by_two_identifiers,
    export_finds_an_internationalised_domain_however_spelled,
    export_finds_a_phone_number_however_written
);

async fn export_by_two_identifiers(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    crm.connector
        .execute(&many_interactions(2500))
        .await
        .expect("seed");

    let caps = crm
        .client
        .get_capabilities(GetCapabilitiesRequest {})
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
        .export_subject(ExportSubjectRequest {
            subject_identifiers: vec![id("email", "not-an-email")],
            categories: vec!["nope".into()],
            ..Default::default()
        })
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
        let contacts = contacts_found(&mut crm, "email", spelling).await;
        assert_eq!(contacts, ["3"], "{spelling:?}");
    }
    crm.stop().await;
}

/// A phone number is found however it is stored (national or international
/// format) and however the request spells it: custodia's E.164 normal form
/// matches both.
async fn export_finds_a_phone_number_however_written(backend: Backend) {
    let config = CRM_CONFIG.replacen(
        r#"identifiers = { email = "email", crm_contact = "id" }"#,
        r#"identifiers = { email = "email", crm_contact = "id", phone = "phone" }"#,
        1,
    );
    assert_ne!(config, CRM_CONFIG);
    let mut crm = Crm::start_with(backend, &config).await;
    crm.connector
        .execute(
            "INSERT INTO contacts (id, email, first_name, last_name, phone) \
             VALUES (4, 'pat@example.edu', 'Pat', 'Doe', '06 98 76 54 32')",
        )
        .await
        .expect("seed");
    // Pat's number is stored nationally, Ada's (the seed) internationally.
    for (spelling, who) in [
        ("+33 6 98 76 54 32", "4"),
        ("0698765432", "4"),
        ("+33698765432", "4"),
        ("06 12 34 56 78", "1"),
    ] {
        let contacts = contacts_found(&mut crm, "phone", spelling).await;
        assert_eq!(contacts, [who], "{spelling:?}");
    }
    crm.stop().await;
}

/// The ids of the contacts an export by `kind` identifier `value` returns.
async fn contacts_found(crm: &mut Crm, kind: &str, value: &str) -> Vec<String> {
    export(&mut crm.client, vec![id(kind, value)])
        .await
        .into_iter()
        .flatten()
        .filter(|r| r.category == "contacts")
        .map(|r| r.record_id)
        .collect()
}
