//! Consent receipts: a grant's receipt is signed and verifies offline with the
//! published key, a retry returns it unchanged, and receipts signed before a
//! key rotation still verify.

use custodia_proto::consent::v1::{
    CheckReason, ConsentState, Decision, GetReceiptRequest, ListReceiptKeysRequest,
};
use custodia_tests::{Backend, TestApp};

use super::{Client, check, decide, events_of, grant, newsletter};

custodia_tests::both_backends!(
    a_grant_is_receipted_and_a_retry_changes_nothing,
    receipt_keys_survive_rotation
);

/// A grant with evidence: the IP is stored truncated and the caller recorded as
/// collector; its receipt is signed, verifies offline with the published key,
/// and is the one GetReceipt returns; the retry with the same request_id
/// returns the same event and receipt and stores nothing.
async fn a_grant_is_receipted_and_a_retry_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let request = decide(
        &app,
        "Ada@Example.edu",
        &["newsletter"],
        Decision::Granted,
        &v1,
        "r-1",
    );
    let recorded = c
        .record_consent(request.clone())
        .await
        .unwrap()
        .into_inner();
    let e = &recorded.events[0];
    assert_eq!(e.state, ConsentState::Granted as i32);
    let ev = e.evidence.as_ref().unwrap();
    assert_eq!(ev.source_ip, "203.0.113.0/24", "IP stored truncated");
    assert_eq!(ev.collector.as_ref().unwrap().principal, "admin");
    assert!(
        e.expire_time.is_some(),
        "re-consent interval sets an expiry"
    );

    // The receipt is signed and verifies offline with the published key.
    let receipt = recorded.receipt.clone().expect("a consent receipt");
    assert_eq!(e.receipt, receipt.name);
    let keys = c
        .list_receipt_keys(ListReceiptKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys[0].key_id, receipt.key_id);
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&keys[0].public_key.clone().try_into().unwrap())
            .unwrap();
    key.verify_strict(
        &receipt.payload,
        &ed25519_dalek::Signature::from_slice(&receipt.signature).unwrap(),
    )
    .expect("receipt signature verifies");
    let doc: serde_json::Value = serde_json::from_slice(&receipt.payload).unwrap();
    assert_eq!(doc["version"], "KI-CR-v1.1.0");
    // The subject is named by the keyed hash events hold, not the address (#27).
    let principal = doc["piiPrincipalId"].as_str().unwrap();
    let hash = principal
        .strip_prefix("email:hmac-sha256:")
        .expect(principal);
    assert_eq!(hash.len(), 64, "{principal}");
    assert!(!receipt.payload.windows(4).any(|w| w == b"ada@"));
    let subject = receipt.subject.as_ref().unwrap();
    assert_eq!(subject.value, format!("hmac-sha256:{hash}"));
    assert_eq!(doc["notice"], v1.as_str());
    assert_eq!(doc["services"][0]["purposes"][0]["decision"], "granted");
    let fetched = c
        .get_receipt(GetReceiptRequest {
            name: receipt.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(fetched, receipt, "the receipt returned is the one stored");
    // A retry sends the same bytes; the key is bound to them (issue #24).
    let retry = c.record_consent(request).await.unwrap().into_inner();
    assert_eq!(retry.events[0].name, e.name);
    assert_eq!(
        retry.receipt.unwrap(),
        receipt,
        "a retry returns the first receipt"
    );
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (true, CheckReason::Granted)
    );
    assert_eq!(
        events_of(&mut c, "ada@example.edu").await.len(),
        1,
        "the retry stored nothing"
    );
    app.stop().await;
}

/// The receipt-signing key is rotated (a process over the same data signs with a
/// new key): ListReceiptKeys hands out both, newest first (by first receipt),
/// so receipts signed before the rotation still verify offline. Before any
/// receipt, the current key alone.
async fn receipt_keys_survive_rotation(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let list = async |c: &mut Client, page_size: i32, page_token: String| {
        c.list_receipt_keys(ListReceiptKeysRequest {
            page_size,
            page_token,
        })
        .await
        .unwrap()
        .into_inner()
    };
    let before = list(&mut c, 0, String::new()).await.keys;
    assert_eq!(before.len(), 1);
    assert!(before[0].create_time.is_none() && before[0].retire_time.is_none());
    let old = c
        .record_consent(grant(&app, "ada@example.edu", &v1))
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(old.key_id, before[0].key_id);

    let (data_dir, url) = (app.config.data_dir.clone(), app.config.database.url.clone());
    let hash_key = app.config.audit.subject_hash_key.clone();
    let rotated = TestApp::spawn_with(Backend::Sqlite, &[custodia_consent::SERVICE], |cfg| {
        cfg.data_dir = data_dir;
        cfg.database.url = url;
        cfg.audit.subject_hash_key = hash_key;
        cfg.consent.receipt_signing_key = Some("57".repeat(32).into());
    })
    .await;
    rotated.clock.advance(chrono::Duration::hours(1));
    let mut r = rotated.consent().await;
    let new = r
        .record_consent(grant(&rotated, "bob@example.edu", &v1))
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_ne!(new.key_id, old.key_id);

    let keys = list(&mut r, 0, String::new()).await;
    assert!(keys.next_page_token.is_empty());
    let ids: Vec<&str> = keys.keys.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(ids, [new.key_id.as_str(), old.key_id.as_str()]);
    let (current, retired) = (&keys.keys[0], &keys.keys[1]);
    assert!(retired.create_time.unwrap().seconds < current.create_time.unwrap().seconds);
    for (receipt, key) in [(&old, retired), (&new, current)] {
        ed25519_dalek::VerifyingKey::from_bytes(&key.public_key.clone().try_into().unwrap())
            .unwrap()
            .verify_strict(
                &receipt.payload,
                &ed25519_dalek::Signature::from_slice(&receipt.signature).unwrap(),
            )
            .expect("the receipt verifies with the key of its key_id");
    }
    // One key per page.
    let first = list(&mut r, 1, String::new()).await;
    assert_eq!(first.keys[0].key_id, new.key_id);
    let second = list(&mut r, 1, first.next_page_token).await;
    assert_eq!(second.keys[0].key_id, old.key_id);
    assert!(second.next_page_token.is_empty());
    rotated.stop().await;
    app.stop().await;
}
