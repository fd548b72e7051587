//! Consent records through the API, on both backends: decisions with evidence,
//! checks with every reason, withdrawal and objection effective for the very next
//! check, material notice changes, minors, history, idempotency, bad input, and
//! races between grants and withdrawals.

use custodia_proto::{
    audit::v1::{ListEventsRequest, audit_log_service_client::AuditLogServiceClient},
    common::v1::SubjectRef,
    consent::v1::{
        AgeAttestation, BatchCheckConsentRequest, CheckConsentRequest, CheckReason, ConsentChannel,
        ConsentState, CreatePurposeRequest, Decision, Evidence, GuardianConsent, LawfulBasis,
        ListConsentEventsRequest, ListSubjectConsentsRequest, Notice, PublishNoticeRequest,
        Purpose, PurposeCategory, PurposeDecision, PurposeState, RecordConsentRequest,
        RecordObjectionRequest, UpdatePurposeRequest, WithdrawConsentRequest, age_attestation::Age,
        consent_service_client::ConsentServiceClient, notice::Content,
    },
};
use custodia_tests::{
    ADMIN_TOKEN, Backend, TestApp, audit_events_until, authed, email, eventually,
};
use tonic::{Code, transport::Channel};

type Client = ConsentServiceClient<Channel>;

fn evidence(app: &TestApp, notice: &str) -> Evidence {
    Evidence {
        collect_time: Some(app.timestamp()),
        channel: ConsentChannel::WebForm as i32,
        notice: notice.into(),
        source_ip: "203.0.113.77".into(),
        user_agent: "Mozilla/5.0".into(),
        form_id: "newsletter-footer".into(),
        ..Default::default()
    }
}

async fn purpose(c: &mut Client, id: &str, basis: LawfulBasis, dm: bool, reconsent: &str) {
    c.create_purpose(authed(
        CreatePurposeRequest {
            purpose_id: id.into(),
            purpose: Some(Purpose {
                display_name: id.into(),
                lawful_basis: basis as i32,
                category: PurposeCategory::Communication as i32,
                direct_marketing: dm,
                reconsent_interval: reconsent.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
}

async fn publish(c: &mut Client, text: &str, material: bool) -> String {
    c.publish_notice(authed(
        PublishNoticeRequest {
            notice_id: "privacy".into(),
            notice: Some(Notice {
                title: "Privacy policy".into(),
                content: Some(Content::Text(text.into())),
                purposes: vec!["purposes/newsletter".into()],
                material_change: material,
                ..Default::default()
            }),
            request_id: String::new(),
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap()
    .into_inner()
    .notice
    .unwrap()
    .name
}

/// A client of `app`, with the consent-based direct-marketing purpose
/// `newsletter` (re-consent every year) and notice v1 covering it.
async fn newsletter(app: &TestApp) -> (Client, String) {
    let mut c = ConsentServiceClient::new(app.channel().await);
    purpose(&mut c, "newsletter", LawfulBasis::Consent, true, "P1Y").await;
    let v1 = publish(&mut c, "We send a monthly newsletter.", false).await;
    (c, v1)
}

/// Retires purpose `id` (new grants are refused from then on).
async fn retire(c: &mut Client, id: &str) {
    c.update_purpose(authed(
        UpdatePurposeRequest {
            purpose: Some(Purpose {
                name: format!("purposes/{id}"),
                state: PurposeState::Retired as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["state".into()],
            }),
            request_id: String::new(),
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
}

/// The consent trail of subject `who` (up to 1,000 events).
async fn events_of(c: &mut Client, who: &str) -> Vec<custodia_proto::consent::v1::ConsentEvent> {
    c.list_consent_events(authed(
        ListConsentEventsRequest {
            subject_identifiers: vec![email(who)],
            page_size: 1_000,
            ..Default::default()
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap()
    .into_inner()
    .events
}

fn grant(
    app: &TestApp,
    who: &str,
    purposes: &[&str],
    decision: Decision,
    notice: &str,
    request_id: &str,
) -> RecordConsentRequest {
    RecordConsentRequest {
        subject: Some(email(who)),
        decisions: purposes
            .iter()
            .map(|p| PurposeDecision {
                purpose: format!("purposes/{p}"),
                decision: decision as i32,
            })
            .collect(),
        evidence: Some(evidence(app, notice)),
        request_id: request_id.into(),
        ..Default::default()
    }
}

async fn check(c: &mut Client, who: &str, p: &str) -> (bool, CheckReason) {
    let r = c
        .check_consent(authed(
            CheckConsentRequest {
                subject: Some(email(who)),
                purpose: format!("purposes/{p}"),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    (r.allowed, CheckReason::try_from(r.reason).unwrap())
}

fn withdraw(app: &TestApp, who: &str, p: &str) -> WithdrawConsentRequest {
    WithdrawConsentRequest {
        subject: Some(email(who)),
        purposes: vec![format!("purposes/{p}")],
        evidence: Some(Evidence {
            channel: ConsentChannel::EmailLink as i32,
            ..evidence(app, "")
        }),
        reason: "unsubscribe link".into(),
        ..Default::default()
    }
}

async fn records(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = ConsentServiceClient::new(app.channel().await);
    purpose(&mut c, "newsletter", LawfulBasis::Consent, true, "P1Y").await;
    purpose(&mut c, "enrolment", LawfulBasis::Contract, false, "").await;
    let v1 = publish(&mut c, "We send a monthly newsletter.", false).await;
    assert_eq!(v1, "notices/privacy/versions/1");

    // Bad input names the field and stores nothing.
    let mut bad = grant(&app, "", &["newsletter"], Decision::Granted, &v1, "");
    let err = c
        .record_consent(authed(bad.clone(), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert!(err.message().contains("subject.value"), "{}", err.message());
    bad.subject = Some(email("ada@example.edu"));
    bad.evidence.as_mut().unwrap().collect_time = Some(prost_types::Timestamp {
        seconds: app.timestamp().seconds + 3600,
        nanos: 0,
    });
    let err = c
        .record_consent(authed(bad.clone(), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("evidence.collect_time"),
        "{}",
        err.message()
    );
    let err = c
        .record_consent(authed(
            grant(
                &app,
                "ada@example.edu",
                &["newsletter"],
                Decision::Granted,
                "",
                "",
            ),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("evidence.notice"),
        "{}",
        err.message()
    );
    let err = c
        .record_consent(authed(
            grant(
                &app,
                "ada@example.edu",
                &["nope"],
                Decision::Granted,
                &v1,
                "",
            ),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .record_consent(authed(
            grant(
                &app,
                "ada@example.edu",
                &["newsletter"],
                Decision::Granted,
                "notices/privacy/versions/9",
                "",
            ),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::NoRecord)
    );

    // A grant with evidence; the retry with the same request_id changes nothing.
    let recorded = c
        .record_consent(authed(
            grant(
                &app,
                "Ada@Example.edu",
                &["newsletter"],
                Decision::Granted,
                &v1,
                "r-1",
            ),
            ADMIN_TOKEN,
        ))
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
        .list_receipt_keys(authed(
            custodia_proto::consent::v1::ListReceiptKeysRequest::default(),
            ADMIN_TOKEN,
        ))
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
    assert_eq!(doc["piiPrincipalId"], "email:ada@example.edu");
    assert_eq!(doc["notice"], v1.as_str());
    assert_eq!(doc["services"][0]["purposes"][0]["decision"], "granted");
    let fetched = c
        .get_receipt(authed(
            custodia_proto::consent::v1::GetReceiptRequest {
                name: receipt.name.clone(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(fetched, receipt, "the receipt returned is the one stored");
    // A retry sends the same bytes; the key is bound to them (issue #24).
    let retry = c
        .record_consent(authed(
            grant(
                &app,
                "Ada@Example.edu",
                &["newsletter"],
                Decision::Granted,
                &v1,
                "r-1",
            ),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
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

    // Withdrawal wins at once.
    c.withdraw_consent(authed(
        withdraw(&app, "ada@example.edu", "newsletter"),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn)
    );

    // Not consent-based: allowed unless an objection exists.
    assert_eq!(
        check(&mut c, "bob@example.edu", "enrolment").await,
        (true, CheckReason::NotConsentBased)
    );
    c.record_objection(authed(
        RecordObjectionRequest {
            subject: Some(email("bob@example.edu")),
            purposes: vec!["purposes/enrolment".into()],
            grounds: "particular situation".into(),
            evidence: Some(evidence(&app, "")),
            ..Default::default()
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    assert_eq!(
        check(&mut c, "bob@example.edu", "enrolment").await,
        (false, CheckReason::Objected)
    );

    // Objection to direct marketing is absolute.
    c.record_consent(authed(
        grant(
            &app,
            "bob@example.edu",
            &["newsletter"],
            Decision::Granted,
            &v1,
            "",
        ),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    assert!(check(&mut c, "bob@example.edu", "newsletter").await.0);
    c.record_objection(authed(
        RecordObjectionRequest {
            subject: Some(email("bob@example.edu")),
            direct_marketing: true,
            evidence: Some(evidence(&app, "")),
            ..Default::default()
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    assert_eq!(
        check(&mut c, "bob@example.edu", "newsletter").await,
        (false, CheckReason::Objected)
    );

    // A material notice change requires re-confirmation; a new grant under it is valid.
    c.record_consent(authed(
        grant(
            &app,
            "cleo@example.edu",
            &["newsletter"],
            Decision::Granted,
            &v1,
            "",
        ),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    app.clock.advance(chrono::Duration::minutes(1));
    let v2 = publish(&mut c, "We now also send SMS.", true).await;
    app.clock.advance(chrono::Duration::minutes(1));
    assert_eq!(
        check(&mut c, "cleo@example.edu", "newsletter").await,
        (false, CheckReason::NoticeChanged)
    );
    // A grant collected now under v1 (a page still showing the old notice) is
    // refused, and nothing is stored; one collected before v2 took effect (an
    // import of older records) is kept, and needs re-confirmation like cleo's.
    let before = events_of(&mut c, "cleo@example.edu").await.len();
    let err = c
        .record_consent(authed(
            grant(
                &app,
                "cleo@example.edu",
                &["newsletter"],
                Decision::Granted,
                &v1,
                "",
            ),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&v1) && err.message().contains("superseded"),
        "{}",
        err.message()
    );
    assert_eq!(events_of(&mut c, "cleo@example.edu").await.len(), before);
    let mut import = grant(
        &app,
        "gus@example.edu",
        &["newsletter"],
        Decision::Granted,
        &v1,
        "",
    );
    let evidence = import.evidence.as_mut().unwrap();
    evidence.channel = ConsentChannel::CrmImport as i32;
    evidence.collect_time.as_mut().unwrap().seconds -= 90;
    c.record_consent(authed(import, ADMIN_TOKEN)).await.unwrap();
    assert_eq!(
        check(&mut c, "gus@example.edu", "newsletter").await,
        (false, CheckReason::NoticeChanged)
    );
    // A material change of another notice covering the purpose does not
    // supersede the privacy notice: a grant under its current version stands.
    c.publish_notice(authed(
        PublishNoticeRequest {
            notice_id: "sms-terms".into(),
            notice: Some(Notice {
                content: Some(Content::Text("SMS terms.".into())),
                purposes: vec!["purposes/newsletter".into()],
                material_change: true,
                ..Default::default()
            }),
            request_id: String::new(),
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    app.clock.advance(chrono::Duration::minutes(1));
    c.record_consent(authed(
        grant(
            &app,
            "ivy@example.edu",
            &["newsletter"],
            Decision::Granted,
            &v2,
            "",
        ),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    assert_eq!(
        check(&mut c, "ivy@example.edu", "newsletter").await,
        (true, CheckReason::Granted)
    );
    let state = c
        .list_subject_consents(authed(
            ListSubjectConsentsRequest {
                subject_identifiers: vec![email("cleo@example.edu")],
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert!(state[0].reconfirmation_required);
    c.record_consent(authed(
        grant(
            &app,
            "cleo@example.edu",
            &["newsletter"],
            Decision::Granted,
            &v2,
            "",
        ),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    assert_eq!(
        check(&mut c, "cleo@example.edu", "newsletter").await,
        (true, CheckReason::Granted)
    );

    // Expiry after the re-consent interval (the clock is injected).
    app.clock.advance(chrono::Duration::days(366));
    assert_eq!(
        check(&mut c, "cleo@example.edu", "newsletter").await,
        (false, CheckReason::Expired)
    );
    let v2_now = c
        .get_notice(authed(
            custodia_proto::consent::v1::GetNoticeRequest {
                name: "notices/privacy/versions/latest".into(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .notice
        .unwrap();
    assert_eq!(v2_now.name, v2);

    // Minors (Art. 8): 14 in France needs a guardian; with one, the grant is stored linked.
    let mut child = grant(
        &app,
        "dan@example.edu",
        &["newsletter"],
        Decision::Granted,
        &v2,
        "",
    );
    child.age = Some(AgeAttestation {
        age: Some(Age::AgeYears(14)),
        country_code: "FR".into(),
    });
    let err = c
        .record_consent(authed(child.clone(), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("guardian"), "{}", err.message());
    child.guardian = Some(GuardianConsent {
        guardian: Some(email("parent@example.org")),
        relationship: "mother".into(),
        verification: "signed form".into(),
    });
    let ok = c
        .record_consent(authed(child, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ok.events[0].guardian.as_ref().unwrap().relationship,
        "mother"
    );
    assert!(check(&mut c, "dan@example.edu", "newsletter").await.0);

    // The trail is complete and in order; nothing was overwritten.
    let trail = c
        .list_consent_events(authed(
            ListConsentEventsRequest {
                subject_identifiers: vec![email("ada@example.edu")],
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let states: Vec<i32> = trail.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [ConsentState::Granted as i32, ConsentState::Withdrawn as i32]
    );
    assert!(
        trail
            .iter()
            .all(|e| e.subject.as_ref().unwrap().value.is_empty()),
        "raw identifiers are not stored"
    );

    // Races: after each acknowledged withdrawal no check says ALLOWED; under
    // concurrent writes the state is that of the last event in the trail.
    for _ in 0..10 {
        c.record_consent(authed(
            grant(
                &app,
                "eve@example.edu",
                &["newsletter"],
                Decision::Granted,
                &v2,
                "",
            ),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap();
        c.withdraw_consent(authed(
            withdraw(&app, "eve@example.edu", "newsletter"),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap();
        assert_eq!(
            check(&mut c, "eve@example.edu", "newsletter").await,
            (false, CheckReason::Withdrawn)
        );
    }
    let writes: Vec<_> = (0..16)
        .map(|i| {
            let mut c = c.clone();
            let g = grant(
                &app,
                "fay@example.edu",
                &["newsletter"],
                Decision::Granted,
                &v2,
                "",
            );
            let w = withdraw(&app, "fay@example.edu", "newsletter");
            tokio::spawn(async move {
                if i % 2 == 0 {
                    c.record_consent(authed(g, ADMIN_TOKEN)).await.map(|_| ())
                } else {
                    c.withdraw_consent(authed(w, ADMIN_TOKEN)).await.map(|_| ())
                }
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let trail = c
        .list_consent_events(authed(
            ListConsentEventsRequest {
                subject_identifiers: vec![email("fay@example.edu")],
                page_size: 100,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(trail.len(), 16);
    let last_granted = trail.last().unwrap().state == ConsentState::Granted as i32;
    assert_eq!(
        check(&mut c, "fay@example.edu", "newsletter").await.0,
        last_granted
    );

    app.stop().await;
}

custodia_tests::both_backends!(records);

async fn next_change(
    stream: &mut tonic::Streaming<custodia_proto::consent::v1::WatchConsentChangesResponse>,
) -> custodia_proto::consent::v1::WatchConsentChangesResponse {
    tokio::time::timeout(std::time::Duration::from_secs(15), stream.message())
        .await
        .expect("a change within 15 s")
        .unwrap()
        .expect("stream open")
}

async fn watch_and_erase(backend: Backend) {
    use custodia_proto::consent::v1::{EraseSubjectRequest, WatchConsentChangesRequest};
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;

    // A newsletter sender follows changes from now on.
    let mut stream = c
        .watch_consent_changes(authed(WatchConsentChangesRequest::default(), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let granted = c
        .record_consent(authed(
            grant(
                &app,
                "ada@example.edu",
                &["newsletter"],
                Decision::Granted,
                &v1,
                "",
            ),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next_change(&mut stream).await;
    assert_eq!(first.consent.unwrap().state, ConsentState::Granted as i32);
    let withdrawn = c
        .withdraw_consent(authed(
            withdraw(&app, "ada@example.edu", "newsletter"),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let ada_receipts = [granted.receipt, withdrawn.receipt].map(|r| r.unwrap().name);
    let second = next_change(&mut stream).await;
    assert_eq!(
        second.consent.unwrap().state,
        ConsentState::Withdrawn as i32
    );
    drop(stream);

    // While it is disconnected, more changes happen; resuming misses none of them.
    let mut others = Vec::new();
    for who in ["bob@example.edu", "cleo@example.edu"] {
        let r = c
            .record_consent(authed(
                grant(&app, who, &["newsletter"], Decision::Granted, &v1, ""),
                ADMIN_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        others.push(r.receipt.unwrap().name);
    }
    let mut resumed = c
        .watch_consent_changes(authed(
            WatchConsentChangesRequest {
                cursor: second.cursor.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let a = next_change(&mut resumed).await;
    let b = next_change(&mut resumed).await;
    assert_eq!(a.event.unwrap().state, ConsentState::Granted as i32);
    assert_ne!(a.cursor, b.cursor);
    let bad = c
        .watch_consent_changes(authed(
            WatchConsentChangesRequest {
                cursor: "nonsense".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert!(bad.message().contains("cursor"), "{}", bad.message());

    // Erasure removes the subject's records everywhere in consent.
    let erased = c
        .erase_subject(authed(
            EraseSubjectRequest {
                subject_identifiers: vec![email("ada@example.edu")],
                dsar_request: "requests/7".into(),
                request_id: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.erased_event_count, 2);
    assert_eq!(
        erased.erased_receipt_count, 2,
        "the grant's and the withdrawal's receipts"
    );
    let receipt = |name: &String| {
        let mut c = c.clone();
        let request = custodia_proto::consent::v1::GetReceiptRequest { name: name.clone() };
        async move { c.get_receipt(authed(request, ADMIN_TOKEN)).await }
    };
    for name in &ada_receipts {
        let gone = receipt(name).await.unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound, "{name}: {gone:?}");
    }
    for name in &others {
        receipt(name).await.expect("other subjects' receipts stay");
    }
    assert_eq!(
        check(&mut c, "ada@example.edu", "newsletter").await,
        (false, CheckReason::NoRecord)
    );
    let trail = c
        .list_consent_events(authed(
            ListConsentEventsRequest {
                subject_identifiers: vec![email("ada@example.edu")],
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(trail.is_empty());

    // A second replica on the same database: its checks answer from memory, so it
    // must learn of writes made elsewhere. It tails the change log every 100 ms
    // (`cache::FOLLOW_POLL`) and drops what it holds of the changed subjects, and an
    // erasure anywhere clears its cache. Measured here: the withdrawal is seen
    // within 1 s (the obligation), with no write on the replica itself.
    if backend == Backend::Postgres {
        let shared = app.config.database.url.clone();
        let replica = TestApp::spawn_with(Backend::Sqlite, &[custodia_consent::SERVICE], |cfg| {
            cfg.database.url = shared;
            cfg.audit.subject_hash_key = Some("test-subject-hash-key".to_string().into());
        })
        .await;
        let mut r = ConsentServiceClient::new(replica.channel().await);
        // Twice, so the second answer comes from the replica's cache.
        assert!(check(&mut r, "bob@example.edu", "newsletter").await.0);
        assert!(check(&mut r, "bob@example.edu", "newsletter").await.0);
        c.withdraw_consent(authed(
            withdraw(&app, "bob@example.edu", "newsletter"),
            ADMIN_TOKEN,
        ))
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
        c.record_consent(authed(
            grant(
                &app,
                "cy@example.edu",
                &["newsletter"],
                Decision::Granted,
                &v1,
                "cy-1",
            ),
            ADMIN_TOKEN,
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
        c.erase_subject(authed(
            EraseSubjectRequest {
                subject_identifiers: vec![email("cy@example.edu")],
                dsar_request: "requests/r-cy".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
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
    }
    app.stop().await;
}

custodia_tests::both_backends!(watch_and_erase);

async fn reconsent_due(backend: Backend) {
    use custodia_proto::consent::v1::ListReconsentDueRequest;
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = ConsentServiceClient::new(app.channel().await);
    purpose(&mut c, "newsletter", LawfulBasis::Consent, false, "P1Y").await;
    let v1 = publish(&mut c, "Monthly news.", false).await;
    let t0 = app.timestamp().seconds;
    c.record_consent(authed(
        grant(
            &app,
            "ada@example.edu",
            &["newsletter"],
            Decision::Granted,
            &v1,
            "",
        ),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    app.clock.advance(chrono::Duration::days(1));
    c.record_consent(authed(
        grant(
            &app,
            "bob@example.edu",
            &["newsletter"],
            Decision::Granted,
            &v1,
            "",
        ),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    let due = |before_secs: i64, page_size: i32, page_token: String, reconfirm: bool| {
        ListReconsentDueRequest {
            purpose: "purposes/newsletter".into(),
            expire_before_time: Some(prost_types::Timestamp {
                seconds: before_secs,
                nanos: 0,
            }),
            include_reconfirmation_required: reconfirm,
            page_size,
            page_token,
        }
    };
    let year = 365 * 24 * 3600;
    let soon = c
        .list_reconsent_due(authed(
            due(t0 + year + 12 * 3600, 0, String::new(), false),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        soon.consents.len(),
        1,
        "only ada's grant expires before then"
    );
    let page1 = c
        .list_reconsent_due(authed(
            due(t0 + 2 * year, 1, String::new(), false),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.consents.len(), 1);
    let page2 = c
        .list_reconsent_due(authed(
            due(t0 + 2 * year, 1, page1.next_page_token.clone(), false),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.consents.len(), 1);
    assert!(
        page1.consents[0].expire_time.unwrap().seconds
            < page2.consents[0].expire_time.unwrap().seconds
    );
    assert_ne!(
        page1.consents[0].consent_event,
        page2.consents[0].consent_event
    );
    // After a material notice change both need re-confirmation, whatever their expiry.
    app.clock.advance(chrono::Duration::minutes(1));
    publish(&mut c, "Monthly news and SMS.", true).await;
    app.clock.advance(chrono::Duration::minutes(1));
    let all = c
        .list_reconsent_due(authed(due(t0, 0, String::new(), true), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.consents.len(), 2);
    assert!(all.consents.iter().all(|s| s.reconfirmation_required));
    app.stop().await;
}

custodia_tests::both_backends!(reconsent_due);

/// BatchCheckConsent answers per subject, in order, with the same reasons as
/// CheckConsent, and logs one access event per subject (delivered to audit-log
/// from the outbox, where the events of one call are stored together).
async fn batch_check(backend: Backend) {
    let app = TestApp::spawn(
        backend,
        &[custodia_consent::SERVICE, custodia_audit_log::SERVICE],
    )
    .await;
    let (mut c, v1) = newsletter(&app).await;
    for (who, decision) in [
        ("ada@example.edu", Decision::Granted),
        ("bob@example.edu", Decision::Denied),
        ("cy@example.edu", Decision::Granted),
    ] {
        c.record_consent(authed(
            grant(&app, who, &["newsletter"], decision, &v1, ""),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap();
    }
    c.withdraw_consent(authed(
        withdraw(&app, "cy@example.edu", "newsletter"),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();

    let batch = |subjects: Vec<SubjectRef>, purpose: &str| BatchCheckConsentRequest {
        purpose: purpose.into(),
        subjects,
    };
    // Bad input names the field; unknown purposes are NOT_FOUND.
    let err = c
        .batch_check_consent(authed(batch(vec![], "purposes/newsletter"), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("subjects"), "{}", err.message());
    let too_many = (0..10_001)
        .map(|i| email(&format!("s{i}@example.edu")))
        .collect();
    let err = c
        .batch_check_consent(authed(batch(too_many, "purposes/newsletter"), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let bad = vec![
        email("ada@example.edu"),
        email("bob@example.edu"),
        email(""),
    ];
    let err = c
        .batch_check_consent(authed(batch(bad, "purposes/newsletter"), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("subjects[2]"), "{}", err.message());
    let err = c
        .batch_check_consent(authed(
            batch(vec![email("ada@example.edu")], "purposes/nope"),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Big enough to be split over threads (2,000 and up): the first bad subject
    // is still the one named.
    let mut bad: Vec<_> = (0..3_000)
        .map(|i| email(&format!("b{i}@example.edu")))
        .collect();
    bad[1_600] = email("not an address");
    bad[2_900] = email("");
    let err = c
        .batch_check_consent(authed(batch(bad, "purposes/newsletter"), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("subjects[1600]"),
        "{}",
        err.message()
    );

    // 3,000 subjects (split over threads): two known ones first, people with no
    // record, and the withdrawn one last.
    let mut subjects = vec![email("ada@example.edu"), email("bob@example.edu")];
    subjects.extend((2..2_999).map(|i| email(&format!("p{i}@example.edu"))));
    subjects.push(email("cy@example.edu"));
    let results = c
        .batch_check_consent(authed(batch(subjects, "purposes/newsletter"), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 3_000);
    // In the request's order; only the identifier's type comes back.
    let verdict = |i: usize| {
        let subject = results[i].subject.as_ref().unwrap();
        assert_eq!(
            (subject.r#type.as_str(), subject.value.as_str()),
            ("email", "")
        );
        assert_eq!(results[i].purpose, "purposes/newsletter");
        (
            results[i].allowed,
            CheckReason::try_from(results[i].reason).unwrap(),
        )
    };
    assert_eq!(verdict(0), (true, CheckReason::Granted));
    assert_eq!(verdict(1), (false, CheckReason::Denied));
    assert_eq!(verdict(1_500), (false, CheckReason::NoRecord));
    assert_eq!(verdict(2_999), (false, CheckReason::Withdrawn));
    // The same answers as one-by-one checks.
    assert_eq!(
        check(&mut c, "cy@example.edu", "newsletter").await,
        (false, CheckReason::Withdrawn)
    );

    // Every subject of the batch is in the audit log once, as a BatchCheckConsent.
    // (The last subject's event arrives last: the outbox delivers in order.)
    for who in [
        "ada@example.edu",
        "p3@example.edu",
        "p1499@example.edu",
        "cy@example.edu",
    ] {
        let events = audit_events_until(
            app.channel().await,
            ListEventsRequest {
                subject: Some(email(who)),
                ..Default::default()
            },
            |events| events.iter().any(|e| e.method == "BatchCheckConsent"),
        )
        .await;
        let batch_events: Vec<_> = events
            .iter()
            .filter(|e| e.method == "BatchCheckConsent")
            .collect();
        assert_eq!(batch_events.len(), 1, "{who}: {events:?}");
        let e = batch_events[0];
        assert_eq!(e.resource, "purposes/newsletter");
        assert_eq!(e.action, "check");
        // One entry for the call, each subject in it by type and keyed hash only
        // (issue #24: a batch is stored compactly).
        assert!(e.subject.is_none() && e.subject_hash.is_empty());
        assert!(
            e.subjects
                .iter()
                .all(|s| s.r#type == "email" && s.subject_hash.len() == 32),
            "searchable by keyed hash only"
        );
    }
    let mut audit = AuditLogServiceClient::new(app.channel().await);
    let mut total = 0;
    let mut token = String::new();
    loop {
        let page = audit
            .list_events(authed(
                ListEventsRequest {
                    action: "check".into(),
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                },
                ADMIN_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        total += page
            .events
            .iter()
            .filter(|e| e.method == "BatchCheckConsent")
            .map(|e| e.subjects.len())
            .sum::<usize>();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(total, 3_000, "every subject, each once");
    app.stop().await;
}

custodia_tests::both_backends!(batch_check);

/// Decisions the register forbids are refused before anything is written: a purpose
/// decided twice in one call, a strictly necessary purpose denied (K-1), a retired
/// purpose granted.
async fn refused_decisions(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = ConsentServiceClient::new(app.channel().await);
    purpose(&mut c, "newsletter", LawfulBasis::Consent, true, "P1Y").await;
    c.create_purpose(authed(
        CreatePurposeRequest {
            purpose_id: "session-cookies".into(),
            purpose: Some(Purpose {
                display_name: "Session cookies".into(),
                lawful_basis: LawfulBasis::LegitimateInterests as i32,
                category: PurposeCategory::StrictlyNecessary as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    purpose(&mut c, "old-survey", LawfulBasis::Consent, false, "").await;
    retire(&mut c, "old-survey").await;
    let v1 = publish(&mut c, "We send a monthly newsletter.", false).await;
    let who = "hal@example.edu";

    let mut twice = grant(
        &app,
        who,
        &["newsletter", "newsletter"],
        Decision::Granted,
        &v1,
        "",
    );
    twice.decisions[1].decision = Decision::Denied as i32;
    let err = c
        .record_consent(authed(twice, ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("decisions[1].purpose"),
        "{}",
        err.message()
    );

    // Denying every cookie category at once still cannot refuse the necessary ones.
    let mut deny_all = grant(
        &app,
        who,
        &["newsletter", "session-cookies"],
        Decision::Denied,
        &v1,
        "",
    );
    deny_all.request_id = "banner-reject-all".into();
    let err = c
        .record_consent(authed(deny_all, ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("decisions[1].decision")
            && err.message().contains("strictly necessary"),
        "{}",
        err.message()
    );

    let err = c
        .record_consent(authed(
            grant(
                &app,
                who,
                &["newsletter", "old-survey"],
                Decision::Granted,
                &v1,
                "",
            ),
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("retired"), "{}", err.message());

    // None of the refused calls stored anything, not even the valid decisions.
    let trail = events_of(&mut c, who).await;
    assert!(trail.is_empty(), "{trail:?}");
    assert_eq!(
        check(&mut c, who, "newsletter").await,
        (false, CheckReason::NoRecord)
    );
    // A retired purpose may still be denied, and the necessary one granted.
    c.record_consent(authed(
        grant(&app, who, &["old-survey"], Decision::Denied, &v1, ""),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    c.record_consent(authed(
        grant(&app, who, &["session-cookies"], Decision::Granted, &v1, ""),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    // Three states now, listed two per page; a token is only good for its subject.
    c.record_consent(authed(
        grant(&app, who, &["newsletter"], Decision::Granted, &v1, ""),
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    let page = async |c: &mut Client, who: &str, page_token: String| {
        c.list_subject_consents(authed(
            ListSubjectConsentsRequest {
                subject_identifiers: vec![email(who)],
                page_size: 2,
                page_token,
            },
            ADMIN_TOKEN,
        ))
        .await
    };
    let first = page(&mut c, who, String::new()).await.unwrap().into_inner();
    assert_eq!(first.consents.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = page(&mut c, who, first.next_page_token.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.consents.len(), 1);
    assert!(second.next_page_token.is_empty());
    let mut purposes: Vec<_> = first
        .consents
        .iter()
        .chain(&second.consents)
        .map(|s| s.purpose.clone())
        .collect();
    purposes.sort();
    assert_eq!(
        purposes,
        [
            "purposes/newsletter",
            "purposes/old-survey",
            "purposes/session-cookies"
        ]
    );
    let err = page(&mut c, "ines@example.edu", first.next_page_token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"), "{}", err.message());
    // Nor can a strictly necessary purpose be withdrawn from or objected to; a
    // withdrawal from everything leaves it out.
    let err = c
        .withdraw_consent(authed(withdraw(&app, who, "session-cookies"), ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("purposes[0]"), "{}", err.message());
    let err = c
        .record_objection(authed(
            RecordObjectionRequest {
                subject: Some(email(who)),
                purposes: vec!["purposes/session-cookies".into()],
                evidence: Some(evidence(&app, "")),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut everything = withdraw(&app, who, "newsletter");
    everything.purposes.clear();
    everything.all_purposes = true;
    let withdrawn = c
        .withdraw_consent(authed(everything, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .events;
    let mut names: Vec<_> = withdrawn.iter().map(|e| e.purpose.as_str()).collect();
    names.sort();
    assert_eq!(names, ["purposes/newsletter", "purposes/old-survey"]);
    assert_eq!(
        check(&mut c, who, "session-cookies").await,
        (true, CheckReason::NotConsentBased)
    );
    // A retry of a grant recorded before its purpose was retired gets the first
    // call's answer (idempotency), not PURPOSE_RETIRED; a new call is refused.
    purpose(&mut c, "poll", LawfulBasis::Consent, false, "").await;
    let mut poll = grant(&app, who, &["poll"], Decision::Granted, &v1, "poll-1");
    let first = c
        .record_consent(authed(poll.clone(), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    retire(&mut c, "poll").await;
    let retried = c
        .record_consent(authed(poll.clone(), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.events, first.events);
    assert_eq!(
        retried.receipt.as_ref().map(|r| &r.name),
        first.receipt.as_ref().map(|r| &r.name)
    );
    poll.request_id = "poll-2".into();
    let err = c
        .record_consent(authed(poll, ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.stop().await;
}

custodia_tests::both_backends!(refused_decisions);

/// Grants and withdrawals race on one subject while checkers check it without
/// pause. Each round ends with a withdrawal; every check that started after that
/// withdrawal was acknowledged, and answered before the next round sent a grant,
/// must say not allowed. After all rounds the state is the last acknowledged
/// write (a withdrawal) and the trail's last event agrees.
async fn checks_racing_withdrawals(backend: Backend) {
    use std::{
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::Instant,
    };
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let who = "race@example.edu";

    let stop = Arc::new(AtomicBool::new(false));
    // (started, answered, allowed) of every concurrent check.
    let seen = Arc::new(Mutex::new(Vec::<(Instant, Instant, bool)>::new()));
    let checkers: Vec<_> = (0..4)
        .map(|_| {
            let (mut c, stop, seen) = (c.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (allowed, _) = check(&mut c, who, "newsletter").await;
                    seen.lock()
                        .unwrap()
                        .push((started, Instant::now(), allowed));
                }
            })
        })
        .collect();

    // (withdrawal acknowledged, next grant sent) per round.
    let mut windows: Vec<(Instant, Instant)> = Vec::new();
    let mut own_checks = 0;
    for round in 0..12 {
        let grants_from = Instant::now();
        if let Some(w) = windows.last_mut() {
            *w = (w.0, grants_from);
        }
        let writes: Vec<_> = (0..6)
            .map(|i| {
                let mut c = c.clone();
                let g = grant(&app, who, &["newsletter"], Decision::Granted, &v1, "");
                let w = withdraw(&app, who, "newsletter");
                tokio::spawn(async move {
                    if (i + round) % 2 == 0 {
                        c.record_consent(authed(g, ADMIN_TOKEN)).await.map(|_| ())
                    } else {
                        c.withdraw_consent(authed(w, ADMIN_TOKEN)).await.map(|_| ())
                    }
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        c.withdraw_consent(authed(withdraw(&app, who, "newsletter"), ADMIN_TOKEN))
            .await
            .unwrap();
        let acked = Instant::now();
        windows.push((acked, acked));
        // At least these checks fall in the window, beside the checkers'.
        for _ in 0..3 {
            let started = Instant::now();
            let (allowed, reason) = check(&mut c, who, "newsletter").await;
            assert!(
                !allowed,
                "round {round}: ALLOWED ({reason:?}) after a withdrawal's ack"
            );
            seen.lock()
                .unwrap()
                .push((started, Instant::now(), allowed));
            own_checks += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for checker in checkers {
        checker.await.unwrap();
    }
    let end = Instant::now();
    if let Some(w) = windows.last_mut() {
        *w = (w.0, end);
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let in_windows: Vec<_> = seen
        .iter()
        .filter(|(started, answered, _)| {
            windows
                .iter()
                .any(|(acked, next)| started > acked && answered < next)
        })
        .collect();
    assert!(
        in_windows.len() >= own_checks,
        "{} checks in the windows",
        in_windows.len()
    );
    assert!(
        in_windows.iter().all(|(_, _, allowed)| !allowed),
        "a check after a withdrawal's ack said ALLOWED"
    );

    let trail = events_of(&mut c, who).await;
    assert_eq!(trail.len(), 12 * 7);
    assert_eq!(trail.last().unwrap().state, ConsentState::Withdrawn as i32);
    assert_eq!(
        check(&mut c, who, "newsletter").await,
        (false, CheckReason::Withdrawn)
    );
    app.stop().await;
}

custodia_tests::both_backends!(checks_racing_withdrawals);

/// The digital age of consent (Art. 8(1)) comes from the subject's country:
/// configured (`consent.digital_consent_ages`), else the member states' laws,
/// else 16; without a country, the institution's jurisdiction (France here).
async fn minors_by_country(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[custodia_consent::SERVICE], |config| {
        config.consent.digital_consent_ages = [("DE".to_string(), 14)].into();
    })
    .await;
    let (mut c, v1) = newsletter(&app).await;
    let mut record = async |who: &str, years: i32, country: &str| {
        let mut r = grant(&app, who, &["newsletter"], Decision::Granted, &v1, "");
        r.age = Some(AgeAttestation {
            age: Some(Age::AgeYears(years)),
            country_code: country.into(),
        });
        c.record_consent(authed(r, ADMIN_TOKEN)).await
    };
    record("ines@example.edu", 15, "").await.unwrap();
    let err = record("jo@example.edu", 15, "LU").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("(16)"), "{}", err.message());
    record("kai@example.edu", 14, "DE").await.unwrap();
    let err = record("lea@example.edu", 13, "de").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("(14)"), "{}", err.message());
    app.stop().await;
}

custodia_tests::both_backends!(minors_by_country);

/// The receipt-signing key is rotated (a process over the same data signs with a
/// new key): ListReceiptKeys hands out both, newest first (by first receipt),
/// so receipts signed before the rotation still verify offline. Before any
/// receipt, the current key alone.
async fn receipt_keys_survive_rotation(backend: Backend) {
    use custodia_proto::consent::v1::ListReceiptKeysRequest;
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let list = async |c: &mut Client, page_size: i32, page_token: String| {
        c.list_receipt_keys(authed(
            ListReceiptKeysRequest {
                page_size,
                page_token,
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
    };
    let before = list(&mut c, 0, String::new()).await.keys;
    assert_eq!(before.len(), 1);
    assert!(before[0].create_time.is_none() && before[0].retire_time.is_none());
    let old = c
        .record_consent(authed(
            grant(
                &app,
                "ada@example.edu",
                &["newsletter"],
                Decision::Granted,
                &v1,
                "",
            ),
            ADMIN_TOKEN,
        ))
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
    let mut r = ConsentServiceClient::new(rotated.channel().await);
    let new = r
        .record_consent(authed(
            grant(
                &rotated,
                "bob@example.edu",
                &["newsletter"],
                Decision::Granted,
                &v1,
                "",
            ),
            ADMIN_TOKEN,
        ))
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

custodia_tests::both_backends!(receipt_keys_survive_rotation);

/// A RecordConsentRequest whose subject's value is not UTF-8 (prost would refuse
/// to build it, so the bytes are laid out by hand): field 1, the subject, holds
/// `type = "email"` and `value = 0xFF 0xFE`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawRecordConsent {
    #[prost(bytes = "vec", tag = "1")]
    subject: Vec<u8>,
}

/// Bad input to every RPC that takes a subject, a purpose, evidence or a name:
/// INVALID_ARGUMENT naming the field, or NOT_FOUND naming what is missing; and
/// nothing of the refused calls is stored.
async fn bad_input_names_the_field(backend: Backend) {
    use custodia_proto::{
        common::v1::Document,
        consent::v1::{GetReceiptRequest, ListNoticesRequest, ListReconsentDueRequest},
    };
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let who = "zed@example.edu";
    let expect = |what: &str, r: Result<(), tonic::Status>, code: Code, names: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(names), "{what}: {}", err.message());
    };
    let future = prost_types::Timestamp {
        seconds: app.timestamp().seconds + 3600,
        nanos: 0,
    };

    // RecordConsent.
    let ok = || grant(&app, who, &["newsletter"], Decision::Granted, &v1, "");
    let mut r = ok();
    r.evidence.as_mut().unwrap().collect_time = Some(future);
    let mut long_agent = ok();
    long_agent.evidence.as_mut().unwrap().user_agent = "x".repeat(2048);
    let mut big_proof = ok();
    big_proof.evidence.as_mut().unwrap().proof = Some(Document {
        content: vec![b'x'; 65 * 1024],
        ..Default::default()
    });
    let mut long_key = ok();
    long_key.request_id = "k".repeat(200);
    let mut bad_ip = ok();
    bad_ip.evidence.as_mut().unwrap().source_ip = "somewhere".into();
    for (what, request, names) in [
        ("future evidence", r, "evidence.collect_time"),
        ("long user agent", long_agent, "evidence.user_agent"),
        ("big proof", big_proof, "evidence.proof.content"),
        ("long request id", long_key, "request_id"),
        ("bad source ip", bad_ip, "evidence.source_ip"),
        (
            "empty subject",
            grant(&app, "", &["newsletter"], Decision::Granted, &v1, ""),
            "subject",
        ),
    ] {
        let r = c.record_consent(authed(request, ADMIN_TOKEN)).await;
        expect(what, r.map(|_| ()), Code::InvalidArgument, names);
    }
    let r = c
        .record_consent(authed(
            grant(&app, who, &["nope"], Decision::Granted, &v1, ""),
            ADMIN_TOKEN,
        ))
        .await;
    expect(
        "unknown purpose",
        r.map(|_| ()),
        Code::NotFound,
        "`purposes/nope` not found (field `decisions[0].purpose`)",
    );
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.unwrap();
    let r = grpc
        .unary::<_, custodia_proto::consent::v1::RecordConsentResponse, _>(
            authed(
                RawRecordConsent {
                    subject: [&[0x0a, 0x05][..], b"email", &[0x12, 0x02, 0xff, 0xfe]].concat(),
                },
                ADMIN_TOKEN,
            ),
            "/custodia.consent.v1.ConsentService/RecordConsent"
                .parse()
                .unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    expect(
        "invalid UTF-8",
        r.map(|_| ()),
        Code::InvalidArgument,
        "value",
    );

    // WithdrawConsent and RecordObjection.
    let mut future_withdrawal = withdraw(&app, who, "newsletter");
    future_withdrawal.evidence.as_mut().unwrap().collect_time = Some(future);
    let mut no_purposes = withdraw(&app, who, "newsletter");
    no_purposes.purposes.clear();
    for (what, request, code, names) in [
        (
            "future withdrawal",
            future_withdrawal,
            Code::InvalidArgument,
            "evidence.collect_time",
        ),
        (
            "no purposes",
            no_purposes,
            Code::InvalidArgument,
            "purposes",
        ),
        (
            "withdrawal without subject",
            withdraw(&app, "", "newsletter"),
            Code::InvalidArgument,
            "subject",
        ),
        (
            "withdrawal of unknown purpose",
            withdraw(&app, who, "nope"),
            Code::NotFound,
            "`purposes/nope` not found (field `purposes[0]`)",
        ),
    ] {
        let r = c.withdraw_consent(authed(request, ADMIN_TOKEN)).await;
        expect(what, r.map(|_| ()), code, names);
    }
    let objection = |subject: &str, purpose: &str| RecordObjectionRequest {
        subject: Some(email(subject)),
        purposes: vec![format!("purposes/{purpose}")],
        grounds: "particular situation".into(),
        evidence: Some(evidence(&app, "")),
        ..Default::default()
    };
    let r = c
        .record_objection(authed(objection("", "newsletter"), ADMIN_TOKEN))
        .await;
    expect(
        "objection without subject",
        r.map(|_| ()),
        Code::InvalidArgument,
        "subject",
    );
    let r = c
        .record_objection(authed(objection(who, "nope"), ADMIN_TOKEN))
        .await;
    expect(
        "objection to unknown purpose",
        r.map(|_| ()),
        Code::NotFound,
        "`purposes/nope` not found (field `purposes[0]`)",
    );

    // PublishNotice.
    let notice = |id: &str, content: Option<Content>, purposes: &[&str]| PublishNoticeRequest {
        notice_id: id.into(),
        notice: Some(Notice {
            content,
            purposes: purposes.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let text = || Some(Content::Text("Terms.".into()));
    for (what, request, code, names) in [
        (
            "empty notice id",
            notice("", text(), &["purposes/newsletter"]),
            Code::InvalidArgument,
            "notice_id",
        ),
        (
            "no content",
            notice("privacy", None, &["purposes/newsletter"]),
            Code::InvalidArgument,
            "notice.content",
        ),
        (
            "no purposes",
            notice("privacy", text(), &[]),
            Code::InvalidArgument,
            "notice.purposes",
        ),
        (
            "text over 1 MiB",
            notice(
                "privacy",
                Some(Content::Text("x".repeat((1 << 20) + 1))),
                &["purposes/newsletter"],
            ),
            Code::InvalidArgument,
            "notice.text",
        ),
        (
            "unknown purpose",
            notice("privacy", text(), &["purposes/nope"]),
            Code::InvalidArgument,
            "notice.purposes[0]",
        ),
    ] {
        let r = c.publish_notice(authed(request, ADMIN_TOKEN)).await;
        expect(what, r.map(|_| ()), code, names);
    }

    // Reads.
    let r = c
        .check_consent(authed(
            CheckConsentRequest {
                subject: Some(email("")),
                purpose: "purposes/newsletter".into(),
            },
            ADMIN_TOKEN,
        ))
        .await;
    expect(
        "check without subject",
        r.map(|_| ()),
        Code::InvalidArgument,
        "subject",
    );
    let r = c
        .check_consent(authed(
            CheckConsentRequest {
                subject: Some(email(who)),
                purpose: String::new(),
            },
            ADMIN_TOKEN,
        ))
        .await;
    expect(
        "check without purpose",
        r.map(|_| ()),
        Code::InvalidArgument,
        "purpose",
    );
    let r = c
        .list_consent_events(authed(ListConsentEventsRequest::default(), ADMIN_TOKEN))
        .await;
    expect(
        "events of nobody",
        r.map(|_| ()),
        Code::InvalidArgument,
        "subject_identifiers",
    );
    let r = c
        .list_consent_events(authed(
            ListConsentEventsRequest {
                subject_identifiers: vec![email(who)],
                page_size: -1,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await;
    expect(
        "negative page size",
        r.map(|_| ()),
        Code::InvalidArgument,
        "page_size",
    );
    let r = c
        .list_subject_consents(authed(ListSubjectConsentsRequest::default(), ADMIN_TOKEN))
        .await;
    expect(
        "states of nobody",
        r.map(|_| ()),
        Code::InvalidArgument,
        "subject_identifiers",
    );
    let r = c
        .list_reconsent_due(authed(
            ListReconsentDueRequest {
                purpose: "purposes/newsletter".into(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await;
    expect(
        "reconsent due without a date",
        r.map(|_| ()),
        Code::InvalidArgument,
        "expire_before_time",
    );
    let r = c
        .get_receipt(authed(GetReceiptRequest { name: "42".into() }, ADMIN_TOKEN))
        .await;
    expect("receipt name", r.map(|_| ()), Code::InvalidArgument, "name");
    let r = c
        .get_receipt(authed(
            GetReceiptRequest {
                name: "receipts/0123456789abcdef".into(),
            },
            ADMIN_TOKEN,
        ))
        .await;
    expect(
        "unknown receipt",
        r.map(|_| ()),
        Code::NotFound,
        "`receipts/0123456789abcdef` not found (field `name`)",
    );

    // Nothing of the refused calls was stored.
    let trail = events_of(&mut c, who).await;
    assert!(trail.is_empty(), "{trail:?}");
    let notices = c
        .list_notices(authed(ListNoticesRequest::default(), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .notices;
    assert_eq!(notices.len(), 1, "only v1");
    app.stop().await;
}

custodia_tests::both_backends!(bad_input_names_the_field);
