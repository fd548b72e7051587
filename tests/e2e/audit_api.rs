//! The audit log through its public gRPC API: access events from the other
//! services arrive (denials included), proofs and signed heads verify with an
//! independent verifier, bad input is refused by field, shredding hides the
//! subject without breaking verification, and an outage of audit-log delays
//! events without losing or duplicating them.

use std::{collections::HashSet, time::Duration};

use custodia_audit_log::merkle::{Hash, verify_consistency, verify_inclusion};
use custodia_core::ServiceName;
use custodia_proto::{
    audit::v1::{
        AccessEvent, AccessOutcome, AppendEventsRequest, GetConsistencyProofRequest,
        GetInclusionProofRequest, GetSignedTreeHeadRequest, ListEventsRequest,
        ListSigningKeysRequest, ListSubjectAccessesRequest, ShredSubjectRequest,
        WatchEventsRequest,
    },
    common::v1::{Actor, SubjectRef},
    consent::v1::{ListPurposesRequest, consent_service_client::ConsentServiceClient},
};
use custodia_tests::{ADMIN_TOKEN, Backend, TestApp, email, eventually};
use tonic::Code;

use crate::all_services;

type Client = custodia_tests::AuditClient;

fn access(id: &str, subject: Option<SubjectRef>) -> AccessEvent {
    AccessEvent {
        event_id: id.into(),
        event_time: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        actor: Some(Actor {
            principal: "moodle".into(),
            user: String::new(),
        }),
        service: "moodle".into(),
        method: "ExportGrades".into(),
        action: "read".into(),
        subject,
        purpose: "teaching".into(),
        outcome: AccessOutcome::Ok as i32,
        ..Default::default()
    }
}

async fn head_of_at_least(
    client: &mut Client,
    size: i64,
) -> custodia_proto::audit::v1::SignedTreeHead {
    eventually(|| {
        let mut c = client.clone();
        async move {
            let head = c
                .get_signed_tree_head(GetSignedTreeHeadRequest { tree_size: 0 })
                .await
                .ok()?
                .into_inner()
                .head?;
            (head.tree_size >= size).then_some(head)
        }
    })
    .await
}

fn hash(bytes: &[u8]) -> Hash {
    bytes.try_into().expect("32-byte hash")
}

async fn audit_api(backend: Backend) {
    let app = TestApp::spawn(backend, &all_services()).await;
    let mut audit = app.audit().await;

    // Bad input is refused naming the field, and nothing is appended.
    let err = audit
        .append_events(AppendEventsRequest {
            events: vec![access("ok-1", None), access("", None)],
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("events[1].event_id"),
        "{}",
        err.message()
    );
    let err = audit
        .append_events(AppendEventsRequest {
            events: vec![access("bad-subject", Some(email("not an email")))],
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("events[0].subject.value"),
        "{}",
        err.message()
    );

    // Appends return durable sequence numbers; a retry is recognised.
    let events = vec![
        access("m-1", Some(email("Ada@Example.edu"))),
        access("m-2", Some(email("bob@example.edu"))),
        access("m-3", Some(email("ada@example.edu"))),
    ];
    let first = audit
        .append_events(AppendEventsRequest {
            events: events.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let retry = audit
        .append_events(AppendEventsRequest {
            events,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        first.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        retry.iter().map(|r| r.sequence).collect::<Vec<_>>()
    );
    assert!(first.iter().all(|r| !r.duplicate) && retry.iter().all(|r| r.duplicate));

    // Search by subject (normalised, hashed); "who saw my data".
    let ada = audit
        .list_events(ListEventsRequest {
            subject: Some(email("ada@example.edu")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(
        ada.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
        ["m-1", "m-3"]
    );
    assert!(
        ada.iter()
            .all(|e| e.subject.as_ref().unwrap().value.is_empty()),
        "raw identifiers are never stored"
    );
    let seen = audit
        .list_subject_accesses(ListSubjectAccessesRequest {
            subject_identifiers: vec![email("ada@example.edu")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .accesses;
    // Moodle's two reads; the admin's own search above may also show up (audit-log
    // logs its reads too, delivered asynchronously).
    let moodle = seen
        .iter()
        .find(|a| a.actor.as_ref().unwrap().principal == "moodle")
        .expect("moodle listed");
    assert_eq!(
        (moodle.purpose.as_str(), moodle.access_count),
        ("teaching", 2)
    );
    assert!(
        seen.iter().all(|a| {
            ["moodle", "admin"].contains(&a.actor.as_ref().unwrap().principal.as_str())
        })
    );

    // Signed heads, inclusion and consistency proofs check out independently.
    let last = first.iter().map(|r| r.sequence).max().unwrap();
    let head = head_of_at_least(&mut audit, last + 1).await;
    let keys = audit
        .list_signing_keys(ListSigningKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&keys[0].public_key.clone().try_into().unwrap())
            .unwrap();
    assert_eq!(keys[0].key_id, head.key_id);
    key.verify_strict(
        &head.signed_payload,
        &ed25519_dalek::Signature::from_slice(&head.signature).unwrap(),
    )
    .expect("head signature verifies with the published key");
    for r in &first {
        let proof = audit
            .get_inclusion_proof(GetInclusionProofRequest {
                sequence: r.sequence,
                tree_size: head.tree_size,
            })
            .await
            .unwrap()
            .into_inner();
        let path: Vec<Hash> = proof.hashes.iter().map(|h| hash(h)).collect();
        verify_inclusion(
            &hash(&proof.leaf_hash),
            r.sequence as u64,
            head.tree_size as u64,
            &path,
            &hash(&head.root_hash),
        )
        .expect("inclusion proof verifies");
    }
    audit
        .append_events(AppendEventsRequest {
            events: vec![access("m-4", None)],
            request_id: String::new(),
        })
        .await
        .unwrap();
    let later = head_of_at_least(&mut audit, head.tree_size + 1).await;
    let consistency = audit
        .get_consistency_proof(GetConsistencyProofRequest {
            first_tree_size: head.tree_size,
            second_tree_size: later.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    let path: Vec<Hash> = consistency.hashes.iter().map(|h| hash(h)).collect();
    verify_consistency(
        head.tree_size as u64,
        later.tree_size as u64,
        &hash(&head.root_hash),
        &hash(&later.root_hash),
        &path,
    )
    .expect("consistency proof verifies");
    let err = audit
        .get_inclusion_proof(GetInclusionProofRequest {
            sequence: 10_000,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Shredding: ada disappears from search; her entries stay, sealed; the log verifies.
    let shred = audit
        .shred_subject(ShredSubjectRequest {
            subject_identifiers: vec![email("ada@example.edu")],
            dsar_request: "requests/1".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // moodle's two reads, plus the admin's searches for ada above once delivered.
    assert_eq!(shred.shredded_key_count, 1);
    assert!((2..=4).contains(&shred.affected_event_count), "{shred:?}");
    let after = audit
        .list_events(ListEventsRequest {
            subject: Some(email("ada@example.edu")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(after.is_empty());
    let all = audit
        .list_events(ListEventsRequest {
            actor: "moodle".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let shredded: Vec<_> = all
        .iter()
        .filter(|e| e.shredded)
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(shredded, ["m-1", "m-3"]);
    assert!(
        all.iter()
            .filter(|e| e.shredded)
            .all(|e| e.subject.is_none() && e.subject_hash.is_empty())
    );
    head_of_at_least(&mut audit, later.tree_size).await;
    let report = custodia_audit_log::verify::verify_database(&app.config, &[])
        .await
        .unwrap();
    assert!(report.is_ok(), "{report}");
    // The same check against the running service, with the key we trust.
    let trusted = format!("{}={}", keys[0].key_id, hex::encode(&keys[0].public_key));
    let remote = custodia_audit_log::verify::verify_remote(&app.endpoint, ADMIN_TOKEN, &[trusted])
        .await
        .unwrap();
    assert!(remote.is_ok(), "{remote}");
    assert!(remote.entries >= report.entries);

    app.stop().await;
}

custodia_tests::both_backends!(audit_api);

/// Reads `n` events of `service` from a WatchEvents stream started at sequence 0.
async fn watch_n(client: &mut Client, service: &str, n: usize) -> Vec<AccessEvent> {
    let mut stream = client
        .watch_events(WatchEventsRequest {
            start_sequence: Some(0),
            service: service.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("events arrive within 15 s")
            .unwrap()
            .expect("stream open");
        out.push(next.event.unwrap());
    }
    out
}

#[tokio::test]
async fn denied_calls_reach_the_log_and_an_outage_loses_nothing() {
    // audit-log's future address: reserve a free port, then release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let consent = TestApp::spawn_with(Backend::Sqlite, &[custodia_consent::SERVICE], |c| {
        c.audit.endpoint = Some(format!("http://127.0.0.1:{port}"));
    })
    .await;
    let mut client = ConsentServiceClient::new(consent.channel().await);

    // audit-log is down: the service keeps answering (here: refusing) at once.
    for _ in 0..5 {
        let err = client
            .list_purposes(ListPurposesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    // audit-log comes up: every queued event arrives, exactly once.
    let audit = TestApp::spawn_with(Backend::Sqlite, &[custodia_audit_log::SERVICE], |c| {
        c.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    let mut audit_client = audit.audit().await;
    let arrived = watch_n(&mut audit_client, ServiceName::Consent.grpc_name(), 5).await;
    let ids: HashSet<_> = arrived.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), 5, "no duplicates");
    for e in &arrived {
        assert_eq!(e.outcome, AccessOutcome::Denied as i32);
        assert_eq!(e.service, ServiceName::Consent.grpc_name());
        assert_eq!(e.method, "ListPurposes");
        assert_eq!(e.actor.as_ref().unwrap().principal, "anonymous");
    }
    // The consent outbox is empty once delivered.
    let db = custodia_core::storage::open_service(&consent.config, ServiceName::Consent)
        .await
        .unwrap();
    let outbox = custodia_core::outbox::SqlOutbox::new(db.clone());
    eventually(|| {
        let outbox = outbox.clone();
        async move {
            use custodia_core::outbox::OutboxStore;
            (outbox.pending().await.ok()? == 0).then_some(())
        }
    })
    .await;
    db.close().await;
    let total = audit_client
        .list_events(ListEventsRequest {
            service: ServiceName::Consent.grpc_name().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(total.len(), 5);
    consent.stop().await;
    audit.stop().await;
}

#[tokio::test]
async fn two_replicas_on_one_postgres_share_one_log() {
    // Replica A creates the database; replica B joins the same one.
    let a = TestApp::spawn(Backend::Postgres, &[custodia_audit_log::SERVICE]).await;
    let shared = a.config.database.url.clone();
    let b = TestApp::spawn_with(Backend::Sqlite, &[custodia_audit_log::SERVICE], |c| {
        c.database.url = shared;
        c.audit.subject_hash_key = Some("test-subject-hash-key".to_string().into());
        c.audit.signing_key = Some("42".repeat(32).into());
    })
    .await;
    let mut ca = a.audit().await;
    let mut cb = b.audit().await;
    let batch = |prefix: &str| AppendEventsRequest {
        events: (0..50)
            .map(|i| access(&format!("{prefix}-{i}"), Some(email("ada@example.edu"))))
            .collect(),
        request_id: String::new(),
    };
    let (ra, rb) = tokio::join!(ca.append_events(batch("a")), cb.append_events(batch("b")),);
    let mut seqs: Vec<i64> = ra
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .chain(rb.unwrap().into_inner().results)
        .map(|r| r.sequence)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        100,
        "both replicas append, numbers never collide"
    );
    // One head covers both replicas' entries, whichever replica signed it, and
    // both serve proofs for it.
    let max = *seqs.last().unwrap();
    let head = head_of_at_least(&mut cb, max + 1).await;
    for client in [&mut ca, &mut cb] {
        let proof = client
            .get_inclusion_proof(GetInclusionProofRequest {
                sequence: seqs[0],
                tree_size: head.tree_size,
            })
            .await
            .unwrap()
            .into_inner();
        let path: Vec<Hash> = proof.hashes.iter().map(|h| hash(h)).collect();
        verify_inclusion(
            &hash(&proof.leaf_hash),
            seqs[0] as u64,
            head.tree_size as u64,
            &path,
            &hash(&head.root_hash),
        )
        .expect("inclusion proof verifies on either replica");
    }
    let report = custodia_audit_log::verify::verify_database(&a.config, &[])
        .await
        .unwrap();
    assert!(report.is_ok(), "{report}");
    b.stop().await;
    a.stop().await;
}

/// ListSigningKeys pages like the other listings (issue 24, finding 7): after a
/// rotation (the log reopened with another key) it lists both keys, one per page
/// with page_size 1, and refuses a page_token it did not issue.
async fn signing_keys_page(backend: Backend) {
    use custodia_audit_log::signer::HeadSigner;
    let (old_seed, new_seed) = ("42".repeat(32), "43".repeat(32));
    let shared = tempfile::tempdir().unwrap();
    let first = TestApp::spawn_with(backend, &[custodia_audit_log::SERVICE], |c| {
        c.data_dir = shared.path().to_path_buf();
        c.audit.signing_key = Some(old_seed.clone().into());
    })
    .await;
    // SQLite: the same files after a restart; PostgreSQL: a replica with the new
    // key joins the same database (the first one's stop would drop it).
    let (first, url) = match backend {
        Backend::Sqlite => {
            first.stop().await;
            (None, None)
        }
        Backend::Postgres => {
            let url = first.config.database.url.clone();
            (Some(first), url)
        }
    };
    let second = TestApp::spawn_with(Backend::Sqlite, &[custodia_audit_log::SERVICE], |c| {
        c.data_dir = shared.path().to_path_buf();
        c.audit.signing_key = Some(new_seed.clone().into());
        if url.is_some() {
            c.database.url = url;
            c.audit.subject_hash_key = Some("test-subject-hash-key".to_string().into());
        }
    })
    .await;
    let mut audit = second.audit().await;
    let page = |page_token: String| ListSigningKeysRequest {
        page_size: 1,
        page_token,
    };
    let one = audit
        .list_signing_keys(page(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.keys.len(), 1);
    assert!(!one.next_page_token.is_empty());
    let two = audit
        .list_signing_keys(page(one.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.keys.len(), 1);
    assert!(two.next_page_token.is_empty(), "two keys, two pages");
    let listed: HashSet<(String, Vec<u8>)> = [&one.keys[0], &two.keys[0]]
        .into_iter()
        .map(|k| (k.key_id.clone(), k.public_key.clone()))
        .collect();
    let expected: HashSet<(String, Vec<u8>)> = [old_seed, new_seed]
        .iter()
        .map(|seed| {
            let signer = HeadSigner::from_seed_text(seed).unwrap();
            (
                signer.key_id().to_string(),
                signer.public_key().as_bytes().to_vec(),
            )
        })
        .collect();
    assert_eq!(listed, expected);
    assert!(one.keys[0].create_time.is_some());

    // The whole list in one page by default.
    let all = audit
        .list_signing_keys(ListSigningKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.keys.len(), all.next_page_token.as_str()), (2, ""));

    let err = audit
        .list_signing_keys(page("not-a-token".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("page_token"), "{}", err.message());
    second.stop().await;
    if let Some(first) = first {
        first.stop().await;
    }
}

custodia_tests::both_backends!(signing_keys_page);
