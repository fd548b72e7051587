//! Lists at their maximum are served, through the API and in the store.

use custodia_consent::store::ConsentStore;
use custodia_proto::audit::v1::ListSubjectAccessesRequest;
use custodia_proto::consent::v1::{
    ConsentEvent, ConsentState, ListConsentEventsRequest, WatchConsentChangesRequest,
    WithdrawConsentRequest,
};
use custodia_tests::{
    Backend, TestApp, TestStore, consent_job, consent_record, newsletter_purpose, subject, subjects,
};
use tokio_stream::StreamExt;

use super::{evidence, purposes};

custodia_tests::both_backends!(
    lists_at_their_maximum_are_served,
    store_reads_lists_longer_than_a_statement_binds_in_chunks
);

/// ListConsentEvents with 100 identifiers, WatchConsentChanges with 1,000
/// purposes and ListSubjectAccesses with 100 identifiers answer as with one.
async fn lists_at_their_maximum_are_served(backend: Backend) {
    let services = crate::all_services();
    let app = TestApp::spawn(backend, &services).await;
    let mut consent = app.consent().await;
    let audit = app.audit().await;
    consent.create_purpose(newsletter_purpose()).await.unwrap();
    let mut filter = purposes(999);
    filter.push("purposes/newsletter".into());
    let mut changes = consent
        .watch_consent_changes(WatchConsentChangesRequest {
            purposes: filter,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // The last of 100 identifiers withdraws (recorded even without a grant).
    consent
        .withdraw_consent(WithdrawConsentRequest {
            subject: Some(subject(99)),
            purposes: vec!["purposes/newsletter".into()],
            evidence: Some(evidence(&app)),
            ..Default::default()
        })
        .await
        .unwrap();
    let change = changes.next().await.expect("a change").unwrap();
    let event = change.event.expect("an event, not a heartbeat");
    assert_eq!(event.purpose, "purposes/newsletter");
    assert_eq!(event.state, ConsentState::Withdrawn as i32);

    let events = consent
        .list_consent_events(ListConsentEventsRequest {
            subject_identifiers: subjects(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name, event.name);

    // The withdrawal's access event, naming subject 99, is found among 100.
    let accesses = custodia_tests::eventually(|| {
        let mut audit = audit.clone();
        async move {
            let accesses = audit
                .list_subject_accesses(ListSubjectAccessesRequest {
                    subject_identifiers: subjects(100),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .accesses;
            // (The reads' own access events come in too: wait for the write's.)
            accesses
                .iter()
                .any(|a| a.action == "update")
                .then_some(accesses)
        }
    })
    .await;
    let withdrawal = accesses.iter().find(|a| a.action == "update").unwrap();
    assert_eq!(withdrawal.service, "custodia.consent.v1.ConsentService");
    assert_eq!(withdrawal.purpose, "newsletter");
    assert_eq!(withdrawal.access_count, 1, "{accesses:?}");
    drop(changes);
    app.stop().await;
}

/// Records `state` of `subject` (a hash) for `purpose` through the store; the
/// event's name.
async fn record(store: &ConsentStore, subject: &str, purpose: &str, state: ConsentState) -> String {
    let record = consent_record(subject, purpose, state);
    let name = record.event.name.clone();
    store
        .record_all(vec![consent_job("RecordConsent", "", vec![record])])
        .await
        .unwrap()[0]
        .as_ref()
        .expect("recorded");
    name
}

/// The consent store's reads over a list of values (a subject's trail, the
/// change feed for some purposes) stay under SQLite's 32,766 and PostgreSQL's
/// 65,535 parameters of a statement whatever the list's length: 70,000 values
/// are read in chunks, the rows the chunks find merged in change order.
async fn store_reads_lists_longer_than_a_statement_binds_in_chunks(backend: Backend) {
    let fixture = TestStore::consent(backend).await;
    let store = ConsentStore::new(fixture.db.clone());
    let first = record(&store, "ada", "newsletter", ConsentState::Granted).await;
    let second = record(&store, "bob", "alumni", ConsentState::Granted).await;
    record(&store, "cy", "other", ConsentState::Granted).await;
    let third = record(&store, "ada", "alumni", ConsentState::Withdrawn).await;
    let names = |rows: Vec<ConsentEvent>| rows.into_iter().map(|e| e.name).collect::<Vec<_>>();

    // ada and bob far apart among 70,000 subjects, ada given twice.
    let mut subjects: Vec<String> = (0..70_000).map(|i| format!("h{i}")).collect();
    subjects[1] = "ada".into();
    subjects[69_998] = "bob".into();
    subjects.push("ada".into());
    let events = store
        .events(&subjects, None, None, 1000)
        .await
        .expect("70,000 subjects are read in chunks");
    assert_eq!(
        names(events.into_iter().map(|(_, e)| e).collect()),
        [first.clone(), second.clone(), third.clone()],
        "in change order, each once"
    );
    let events = store.events(&subjects, None, None, 2).await.unwrap();
    assert_eq!(
        names(events.into_iter().map(|(_, e)| e).collect()),
        [first.clone(), second.clone()],
        "the limit holds across chunks"
    );

    let mut filter: Vec<String> = (0..70_000).map(|i| format!("p{i}")).collect();
    filter[2] = "newsletter".into();
    filter[69_999] = "alumni".into();
    let changes = store
        .changes(0, &filter, 500)
        .await
        .expect("70,000 purposes are read in chunks");
    assert_eq!(
        names(changes.into_iter().map(|c| c.3).collect()),
        [first.clone(), second.clone(), third.clone()]
    );
    fixture.close().await;
}
