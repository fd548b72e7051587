//! EraseSubject keeps what the law requires and is idempotent; RestrictSubject
//! flags records so that retention keeps them, and lifts the flag.

use super::*;

custodia_tests::both_backends!(erase_keeps_what_the_law_requires, restrict_and_lift);

async fn erase_keeps_what_the_law_requires(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    let first = crm
        .client
        .erase_subject(erase_request(ada(), "erase-1"))
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
        .erase_subject(erase_request(ada(), "erase-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(crm.count("SELECT COUNT(*) FROM interactions").await, 2);

    // The same request_id for a different request is refused.
    let err = crm
        .client
        .erase_subject(erase_request(
            vec![id("email", "bob@example.edu")],
            "erase-1",
        ))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["request_id"]);

    // A new request finds only what was kept (and the late interaction).
    let second = crm
        .client
        .erase_subject(erase_request(vec![id("crm_contact", "1")], "erase-2"))
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
        .erase_subject(erase_request(ada(), ""))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["request_id"]);
    crm.stop().await;
}

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
        .restrict_subject(restrict(RestrictionAction::Restrict, "restrict-1"))
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
        .apply_retention(ApplyRetentionRequest {
            rule: rule(
                &["interactions"],
                RetentionAction::Delete,
                "2022-01-01T00:00:00Z",
            ),
            dry_run: false,
            request_id: "retention-while-restricted".into(),
        })
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
        .restrict_subject(restrict(RestrictionAction::Lift, "lift-1"))
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
        .restrict_subject(restrict(RestrictionAction::Unspecified, "restrict-2"))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["action"]);
    crm.stop().await;
}
