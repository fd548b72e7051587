//! The access events of one call about many subjects (issue #24, finding 3):
//! a BatchCheckConsent of 1,000 subjects is one audit entry, each subject
//! sealed under its own key, a small fraction of the bytes of an entry per
//! subject; each subject still finds it ("who saw my data") and can be
//! shredded alone; the log still verifies. Both backends.

use custodia_proto::{
    audit::v1::{
        ListEventsRequest, ListLeavesRequest, ListSubjectAccessesRequest, ShredSubjectRequest,
    },
    common::v1::SubjectRef,
    consent::v1::{BatchCheckConsentRequest, CheckConsentRequest},
};
use custodia_tests::{Backend, TestApp, audit_events_until, newsletter_purpose};

use crate::all_services;

const SUBJECTS: usize = 1_000;

fn email(i: usize) -> SubjectRef {
    SubjectRef {
        r#type: "email".into(),
        value: format!("student-{i}@example.edu"),
    }
}

async fn leaf_len(audit: &mut custodia_tests::AuditClient, seq: i64) -> usize {
    audit
        .list_leaves(ListLeavesRequest {
            start_sequence: seq,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leaves[0]
        .leaf_data
        .len()
}

async fn batch_is_one_entry(backend: Backend) {
    let app = TestApp::spawn(backend, &all_services()).await;
    let mut consent = app.consent().await;
    consent.create_purpose(newsletter_purpose()).await.unwrap();
    consent
        .check_consent(CheckConsentRequest {
            subject: Some(email(0)),
            purpose: "purposes/newsletter".into(),
        })
        .await
        .unwrap();
    let results = consent
        .batch_check_consent(BatchCheckConsentRequest {
            purpose: "purposes/newsletter".into(),
            subjects: (0..SUBJECTS).map(email).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), SUBJECTS);

    let batch = audit_events_until(
        app.channel().await,
        ListEventsRequest {
            service: "custodia.consent.v1.ConsentService".into(),
            ..Default::default()
        },
        |events| events.iter().any(|e| e.method == "BatchCheckConsent"),
    )
    .await;
    let single = batch
        .iter()
        .find(|e| e.method == "CheckConsent")
        .expect("the single check")
        .clone();
    let batch: Vec<_> = batch
        .into_iter()
        .filter(|e| e.method == "BatchCheckConsent")
        .collect();
    assert_eq!(batch.len(), 1, "one entry for the whole call");
    let entry = &batch[0];
    assert_eq!(entry.subjects.len(), SUBJECTS);
    assert!(entry.subject.is_none() && entry.subject_hash.is_empty());
    assert!(
        entry
            .subjects
            .iter()
            .all(|s| s.r#type == "email" && s.subject_hash.len() == 32)
    );

    // Bytes per subject: a small fraction of a single check's entry.
    let mut audit = app.audit().await;
    let per_subject = leaf_len(&mut audit, entry.sequence).await / SUBJECTS;
    let single_len = leaf_len(&mut audit, single.sequence).await;
    assert!(
        per_subject * 4 < single_len,
        "{per_subject} bytes per subject against {single_len} for one entry"
    );

    // Each subject still finds the access...
    let reader = audit.clone();
    let accesses = |i: usize| {
        let mut audit = reader.clone();
        async move {
            audit
                .list_subject_accesses(ListSubjectAccessesRequest {
                    subject_identifiers: vec![email(i)],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .accesses
        }
    };
    let by_consent = |seen: Vec<custodia_proto::audit::v1::SubjectAccess>| {
        seen.into_iter()
            .filter(|a| a.service == "custodia.consent.v1.ConsentService")
            .collect::<Vec<_>>()
    };
    let seen = by_consent(accesses(7).await);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].action, "check");
    assert_eq!(seen[0].access_count, 1);
    let events_of_7 = audit
        .list_events(ListEventsRequest {
            subject: Some(email(7)),
            service: "custodia.consent.v1.ConsentService".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events_of_7.len(), 1);
    assert_eq!(events_of_7[0].sequence, entry.sequence);

    // ...and is shredded alone: the others stay readable.
    audit
        .shred_subject(ShredSubjectRequest {
            subject_identifiers: vec![email(7)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(by_consent(accesses(7).await).is_empty());
    assert_eq!(by_consent(accesses(8).await).len(), 1);
    let after = audit
        .list_events(ListEventsRequest {
            service: "custodia.consent.v1.ConsentService".into(),
            action: "check".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let after = after
        .iter()
        .find(|e| e.sequence == entry.sequence)
        .expect("the batch entry");
    let shredded = after.subjects.iter().filter(|s| s.shredded).count();
    assert_eq!(shredded, 1);
    assert!(after.subjects[7].shredded);
    assert!(after.subjects[7].subject_hash.is_empty());

    let report = custodia_audit_log::verify::verify_database(&app.config, &[])
        .await
        .unwrap();
    assert!(report.is_ok(), "{report}");
    app.stop().await;
}

custodia_tests::both_backends!(batch_is_one_entry);
