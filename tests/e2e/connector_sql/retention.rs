//! ApplyRetention: a dry run counts, a real run deletes, and the law keeps what
//! it requires.

use super::*;

custodia_tests::both_backends!(retention_dry_run_then_real);

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
        .apply_retention(request(true, "ret-dry"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(&dry.matched), pairs(&[("interactions", 3)]));
    assert!(dry.deleted.is_empty() && dry.anonymised.is_empty());
    assert_eq!(crm.count("SELECT COUNT(*) FROM interactions").await, 4);

    let real = crm
        .client
        .apply_retention(request(false, "ret-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(&real.matched), pairs(&[("interactions", 3)]));
    assert_eq!(counts(&real.deleted), pairs(&[("interactions", 3)]));
    assert_eq!(crm.count("SELECT COUNT(*) FROM interactions").await, 1);
    let repeat = crm
        .client
        .apply_retention(request(false, "ret-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repeat, real);

    // Invoices: the billing rule is due for all three, but the law keeps the
    // 2024 and 2025 ones.
    let billing = crm
        .client
        .apply_retention(ApplyRetentionRequest {
            rule: rule(
                &["invoices"],
                RetentionAction::Delete,
                "2026-01-01T00:00:00Z",
            ),
            dry_run: false,
            request_id: "ret-billing".into(),
        })
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
        .apply_retention(ApplyRetentionRequest {
            rule: rule(&[], RetentionAction::Delete, "2022-01-01T00:00:00Z"),
            dry_run: true,
            request_id: "ret-purpose".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counts(&purpose.matched),
        pairs(&[("contacts", 1), ("interactions", 0)])
    );

    let err = crm
        .client
        .apply_retention(ApplyRetentionRequest {
            rule: rule(
                &["contacts"],
                RetentionAction::Unspecified,
                "2022-01-01T00:00:00Z",
            ),
            dry_run: true,
            request_id: "ret-bad".into(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["rule.policy.action"]);

    // Anonymisation named for a table that has none configured.
    let err = crm
        .client
        .apply_retention(ApplyRetentionRequest {
            rule: rule(
                &["contacts"],
                RetentionAction::Anonymise,
                "2022-01-01T00:00:00Z",
            ),
            dry_run: true,
            request_id: "ret-anon".into(),
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, &["contacts"]);
    crm.stop().await;
}
