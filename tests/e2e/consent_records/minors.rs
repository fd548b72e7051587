//! Minors (Art. 8): under the digital age of consent a grant needs a guardian's,
//! and that age depends on the subject's country.

use custodia_proto::consent::v1::{AgeAttestation, GuardianConsent, age_attestation::Age};
use custodia_tests::{Backend, TestApp, email};
use tonic::Code;

use super::{check, grant, newsletter};

custodia_tests::both_backends!(a_child_needs_a_guardian, minors_by_country);

/// 14 in France needs a guardian; with one, the grant is stored linked to the
/// guardian and the check allows.
async fn a_child_needs_a_guardian(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let mut child = grant(&app, "dan@example.edu", &v1);
    child.age = Some(AgeAttestation {
        age: Some(Age::AgeYears(14)),
        country_code: "FR".into(),
    });
    let err = c.record_consent(child.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("guardian"), "{}", err.message());
    child.guardian = Some(GuardianConsent {
        guardian: Some(email("parent@example.org")),
        relationship: "mother".into(),
        verification: "signed form".into(),
    });
    let ok = c.record_consent(child).await.unwrap().into_inner();
    assert_eq!(
        ok.events[0].guardian.as_ref().unwrap().relationship,
        "mother"
    );
    assert!(check(&mut c, "dan@example.edu", "newsletter").await.0);

    app.stop().await;
}

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
        let mut r = grant(&app, who, &v1);
        r.age = Some(AgeAttestation {
            age: Some(Age::AgeYears(years)),
            country_code: country.into(),
        });
        c.record_consent(r).await
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
