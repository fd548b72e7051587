//! kill -9 of the consent service in a loop during writes: every acknowledged
//! consent and withdrawal survives, and the state equals the last acknowledged
//! write of each subject.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use custodia_core::ServiceName;
use custodia_proto::{
    common::v1::SubjectRef,
    consent::v1::{
        CheckConsentRequest, ConsentChannel, Decision, Evidence, ListConsentEventsRequest, Notice,
        PublishNoticeRequest, PurposeDecision, RecordConsentRequest, WithdrawConsentRequest,
        consent_service_client::ConsentServiceClient, notice::Content,
    },
};
use custodia_tests::{TestDatabase, authed, newsletter_purpose};

use crate::crash::{TOKEN, connect_service, free_port, start_service, start_service_with};

fn email(i: usize) -> SubjectRef {
    SubjectRef {
        r#type: "email".into(),
        value: format!("student{i}@example.edu"),
    }
}

fn evidence(notice: &str) -> Evidence {
    Evidence {
        collect_time: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        channel: ConsentChannel::WebForm as i32,
        notice: notice.into(),
        ..Default::default()
    }
}

/// Creates the consent-based purpose `purposes/newsletter`.
async fn create_newsletter(c: &mut ConsentServiceClient<tonic::transport::Channel>) {
    c.create_purpose(authed(newsletter_purpose(), TOKEN))
        .await
        .unwrap();
}

/// Subject index -> (acknowledged event names, whether the last acknowledged write granted).
type Acked = HashMap<usize, (Vec<String>, bool)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_consent_writes_loses_no_acknowledged_write() {
    kill_9_during_consent_writes(&[]).await;
}

/// The same against PostgreSQL: an acknowledgement means the transaction
/// committed there, whatever happens to the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_consent_writes_loses_no_acknowledged_write_postgres() {
    let pg = TestDatabase::create().await;
    kill_9_during_consent_writes(&[
        ("CUSTODIA__DATABASE__URL".into(), pg.url.clone()),
        (
            "CUSTODIA__AUDIT__SUBJECT_HASH_KEY".into(),
            "crash-test-subject-hash-key".into(),
        ),
        (
            "CUSTODIA__CONSENT__RECEIPT_SIGNING_KEY".into(),
            "24".repeat(32),
        ),
    ])
    .await;
    pg.drop_now().await;
}

/// Three rounds of writers killed with SIGKILL (on SQLite in the data dir, or
/// where `env` points), then every acknowledged event is read back.
async fn kill_9_during_consent_writes(env: &[(String, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut notice = String::new();

    for round in 0..3 {
        let mut child = start_service_with(dir.path(), port, "consent", env);
        let channel = connect_service(port, ServiceName::Consent).await;
        if round == 0 {
            let mut c = ConsentServiceClient::new(channel.clone());
            create_newsletter(&mut c).await;
            notice = c
                .publish_notice(authed(
                    PublishNoticeRequest {
                        notice_id: "privacy".into(),
                        notice: Some(Notice {
                            content: Some(Content::Text("policy".into())),
                            purposes: vec!["purposes/newsletter".into()],
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    },
                    TOKEN,
                ))
                .await
                .unwrap()
                .into_inner()
                .notice
                .unwrap()
                .name;
        }
        // Four writers, each owning four subjects, alternate grants and withdrawals.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let mut c = ConsentServiceClient::new(channel.clone());
                let acked = acked.clone();
                let notice = notice.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        let subject = w * 4 + n % 4;
                        let grant = (n / 4 + round) % 2 == 0;
                        let events = if grant {
                            c.record_consent(authed(
                                RecordConsentRequest {
                                    subject: Some(email(subject)),
                                    decisions: vec![PurposeDecision {
                                        purpose: "purposes/newsletter".into(),
                                        decision: Decision::Granted as i32,
                                    }],
                                    evidence: Some(evidence(&notice)),
                                    ..Default::default()
                                },
                                TOKEN,
                            ))
                            .await
                            .map(|r| r.into_inner().events)
                        } else {
                            c.withdraw_consent(authed(
                                WithdrawConsentRequest {
                                    subject: Some(email(subject)),
                                    purposes: vec!["purposes/newsletter".into()],
                                    evidence: Some(evidence("")),
                                    ..Default::default()
                                },
                                TOKEN,
                            ))
                            .await
                            .map(|r| r.into_inner().events)
                        };
                        match events {
                            Ok(events) => {
                                let mut acked = acked.lock().unwrap();
                                let entry = acked.entry(subject).or_default();
                                entry.0.extend(events.into_iter().map(|e| e.name));
                                entry.1 = grant;
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        let target = (round + 1) * 60;
        while acked
            .lock()
            .unwrap()
            .values()
            .map(|v| v.0.len())
            .sum::<usize>()
            < target
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
    }

    let mut child = start_service_with(dir.path(), port, "consent", env);
    let mut c = ConsentServiceClient::new(connect_service(port, ServiceName::Consent).await);
    let acked = acked.lock().unwrap().clone();
    for (subject, (names, last_granted)) in &acked {
        let trail = c
            .list_consent_events(authed(
                ListConsentEventsRequest {
                    subject_identifiers: vec![email(*subject)],
                    page_size: 1000,
                    ..Default::default()
                },
                TOKEN,
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        let stored: Vec<_> = trail.iter().map(|e| e.name.clone()).collect();
        for name in names {
            assert!(
                stored.contains(name),
                "acknowledged {name} of subject {subject} kept"
            );
        }
        // An unacknowledged write may have landed after the last acknowledged one,
        // so the state is that of the trail's last event; when that event was
        // acknowledged, it is the last acknowledged write.
        let last = trail.last().unwrap();
        if names.last() == Some(&last.name) {
            let allowed = c
                .check_consent(authed(
                    CheckConsentRequest {
                        subject: Some(email(*subject)),
                        purpose: "purposes/newsletter".into(),
                    },
                    TOKEN,
                ))
                .await
                .unwrap()
                .into_inner()
                .result
                .unwrap()
                .allowed;
            assert_eq!(allowed, *last_granted, "subject {subject}");
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The backend was the one asked for: no SQLite file unless SQLite.
    assert_eq!(
        dir.path().join("consent.db").exists(),
        env.is_empty(),
        "consent.db in the data dir"
    );
}

/// kill -9 right after CheckConsent answers, while the checks' access events are
/// still in the read-event journal only (not yet in the outbox table): on restart
/// every answered check has its event in the outbox, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_checks_loses_no_check_event() {
    use custodia_core::outbox::{OutboxStore, Outcome, SqlOutbox};

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let journal = dir.path().join("consent.db-read-events");
    let mut child = start_service(dir.path(), port, "consent");
    let mut c = ConsentServiceClient::new(connect_service(port, ServiceName::Consent).await);
    create_newsletter(&mut c).await;
    // Check until answered checks are seen waiting in the journal (the service
    // moves it into the table every 200 ms), then kill at once.
    let mut answered = 0;
    loop {
        c.check_consent(authed(
            CheckConsentRequest {
                subject: Some(email(answered)),
                purpose: "purposes/newsletter".into(),
            },
            TOKEN,
        ))
        .await
        .unwrap();
        answered += 1;
        let waiting = std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0);
        if (waiting && answered >= 20) || answered == 5_000 {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    // The restarted service moves what the journal held into the outbox table.
    let mut child = start_service(dir.path(), port, "consent");
    connect_service(port, ServiceName::Consent).await;
    let db = custodia_core::storage::connect(
        &custodia_core::storage::sqlite_file_url(&dir.path().join("consent.db")).into(),
        "consent",
        1,
    )
    .await
    .unwrap();
    let outbox = SqlOutbox::new(db.clone());
    let checks = custodia_tests::eventually(|| async {
        let events = outbox.peek(100_000).await.unwrap();
        let checks: Vec<_> = events
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.method == "CheckConsent" && e.outcome == Outcome::Ok)
            .collect();
        (checks.len() >= answered).then_some(checks)
    })
    .await;
    let ids: std::collections::HashSet<_> = checks.iter().map(|e| e.event_id).collect();
    assert_eq!(checks.len(), answered, "one event per answered check");
    assert_eq!(ids.len(), answered, "each stored once");
    db.close().await;
    child.kill().unwrap();
    child.wait().unwrap();
}
