//! A second replica on the same database: its checks answer from memory, so it
//! must learn of writes made elsewhere. It tails the change log every 100 ms
//! (`cache::FOLLOW_POLL`) and drops what it holds of the changed subjects, and an
//! erasure anywhere clears its cache.

use custodia_proto::consent::v1::{CheckReason, Decision, EraseSubjectRequest};
use custodia_tests::{Backend, TestApp, email, eventually};

use super::{check, decide, grant, newsletter, withdraw};

/// Measured here: a withdrawal on one replica is seen by the other within 1 s
/// (the obligation), with no write on the other replica itself; an erasure
/// (which deletes the trail) is seen from the erasure epoch.
#[tokio::test]
async fn a_second_replica_sees_withdrawals_and_erasures_postgres() {
    let app = TestApp::spawn(Backend::Postgres, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    c.record_consent(grant(&app, "bob@example.edu", &v1))
        .await
        .unwrap();

    let shared = app.config.database.url.clone();
    let replica = TestApp::spawn_with(Backend::Sqlite, &[custodia_consent::SERVICE], |cfg| {
        cfg.database.url = shared;
        cfg.audit.subject_hash_key = Some("test-subject-hash-key".to_string().into());
    })
    .await;
    let mut r = replica.consent().await;
    // Twice, so the second answer comes from the replica's cache.
    assert!(check(&mut r, "bob@example.edu", "newsletter").await.0);
    assert!(check(&mut r, "bob@example.edu", "newsletter").await.0);
    c.withdraw_consent(withdraw(&app, "bob@example.edu", "newsletter"))
        .await
        .unwrap();
    let acked = std::time::Instant::now();
    // The writing replica itself answers from the new state at once.
    assert_eq!(
        check(&mut c, "bob@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn)
    );
    eventually(|| {
        let mut r = r.clone();
        async move {
            let got = check(&mut r, "bob@example.edu", "newsletter").await;
            (got == (false, CheckReason::Withdrawn)).then_some(())
        }
    })
    .await;
    let seen_after = acked.elapsed();
    assert!(
        seen_after < std::time::Duration::from_secs(1),
        "the other replica saw the withdrawal after {seen_after:?}"
    );

    // Erasure deletes the trail, so the replica learns of it from the erasure
    // epoch, not from the change log.
    c.record_consent(decide(
        &app,
        "cy@example.edu",
        &["newsletter"],
        Decision::Granted,
        &v1,
        "cy-1",
    ))
    .await
    .unwrap();
    eventually(|| {
        let mut r = r.clone();
        async move {
            check(&mut r, "cy@example.edu", "newsletter")
                .await
                .0
                .then_some(())
        }
    })
    .await;
    c.erase_subject(EraseSubjectRequest {
        subject_identifiers: vec![email("cy@example.edu")],
        dsar_request: "requests/r-cy".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually(|| {
        let mut r = r.clone();
        async move {
            let got = check(&mut r, "cy@example.edu", "newsletter").await;
            (got == (false, CheckReason::NoRecord)).then_some(())
        }
    })
    .await;
    replica.stop().await;
    app.stop().await;
}
