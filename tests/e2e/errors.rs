//! What errors send back, through a real server (issue 24, "errors echo input"):
//! a caller's long value is never repeated whole, personal data in the wrong field
//! is not repeated at all, decode errors name the proto field path, and an
//! over-limit message answers RESOURCE_EXHAUSTED.

use custodia_proto::{
    breach::v1::{GetBreachRequest, breach_service_client::BreachServiceClient},
    common::v1::SubjectRef,
    consent::v1::{
        Purpose, RecordConsentRequest, UpdatePurposeRequest,
        consent_service_client::ConsentServiceClient,
    },
    dsar::v1::{GetRequestRequest, dsar_service_client::DsarServiceClient},
};
use custodia_tests::{ADMIN, Backend, TestApp};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::all_services;

/// Most bytes of `grpc-message` and of `grpc-status-details-bin` (before
/// base64) we accept: standard clients fail on metadata of a few KB.
const MAX_MESSAGE: usize = 1024;
const MAX_DETAILS: usize = 3 * 1024;

/// Calls that quote a name field the caller sent, each with `value` in it.
async fn name_errors(channel: Channel, value: &str) -> Vec<(&'static str, Status)> {
    let mut breach = BreachServiceClient::with_interceptor(channel.clone(), ADMIN);
    let mut dsar = DsarServiceClient::with_interceptor(channel.clone(), ADMIN);
    let mut consent = ConsentServiceClient::with_interceptor(channel, ADMIN);
    vec![
        (
            "GetBreach",
            breach
                .get_breach(GetBreachRequest {
                    name: format!("breaches/{value}"),
                })
                .await
                .unwrap_err(),
        ),
        (
            "GetRequest",
            dsar.get_request(GetRequestRequest {
                name: format!("requests/{value}"),
            })
            .await
            .unwrap_err(),
        ),
        (
            "UpdatePurpose",
            consent
                .update_purpose(UpdatePurposeRequest {
                    purpose: Some(Purpose {
                        name: "purposes/newsletter".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![value.to_string()],
                    }),
                    request_id: String::new(),
                })
                .await
                .unwrap_err(),
        ),
    ]
}

fn details_contain(status: &Status, needle: &str) -> bool {
    status
        .details()
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_long_value_is_not_echoed_and_the_error_stays_small() {
    let app = TestApp::spawn(Backend::Sqlite, &all_services()).await;
    let long = "n".repeat(20 * 1024);
    for (rpc, err) in name_errors(app.channel().await, &long).await {
        assert_eq!(err.code(), Code::InvalidArgument, "{rpc}: {err:?}");
        assert!(
            err.message().len() <= MAX_MESSAGE,
            "{rpc}: grpc-message is {} bytes",
            err.message().len()
        );
        assert!(
            err.details().len() <= MAX_DETAILS,
            "{rpc}: details are {} bytes",
            err.details().len()
        );
        // A short prefix at most, in the message and in the details.
        let echoed = &long[..100];
        assert!(!err.message().contains(echoed), "{rpc}: {}", err.message());
        assert!(!details_contain(&err, echoed), "{rpc}");
        let bad = err.get_error_details().bad_request().cloned();
        let bad = bad.unwrap_or_else(|| panic!("{rpc}: no BadRequest"));
        assert!(!bad.field_violations.is_empty(), "{rpc}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_email_in_a_field_that_is_no_identifier_is_not_sent_back() {
    let app = TestApp::spawn(Backend::Sqlite, &all_services()).await;
    let email = "ada.lovelace@example.edu";
    for (rpc, err) in name_errors(app.channel().await, email).await {
        assert_eq!(err.code(), Code::InvalidArgument, "{rpc}: {err:?}");
        assert!(
            !err.message().contains("lovelace"),
            "{rpc}: {}",
            err.message()
        );
        assert!(!details_contain(&err, "lovelace"), "{rpc}");
    }
    // An identifier field names itself, never its value.
    let mut consent = app.consent().await;
    let err = consent
        .record_consent(RecordConsentRequest {
            subject: Some(SubjectRef {
                r#type: "email".into(),
                value: "ada.lovelace@example".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("subject.value"), "{}", err.message());
    assert!(!err.message().contains("lovelace"), "{}", err.message());
    assert!(!details_contain(&err, "lovelace"));
    app.stop().await;
}

/// A RecordConsentRequest whose subject's `type` is not UTF-8 (prost would
/// refuse to build it, so the bytes are laid out by hand).
#[derive(Clone, PartialEq, prost::Message)]
struct RawRecordConsent {
    #[prost(bytes = "vec", tag = "1")]
    subject: Vec<u8>,
}

#[tokio::test]
async fn a_decode_error_names_the_proto_field_path() {
    let app = TestApp::spawn(Backend::Sqlite, &all_services()).await;
    // subject.type (field 1 of SubjectRef, length-delimited) = 0xFF 0xFE
    let err = app
        .call_raw::<_, custodia_proto::consent::v1::RecordConsentResponse>(
            "/custodia.consent.v1.ConsentService/RecordConsent",
            RawRecordConsent {
                subject: vec![0x0a, 0x02, 0xff, 0xfe],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let bad = err.get_error_details().bad_request().cloned().unwrap();
    assert_eq!(bad.field_violations[0].field, "subject.type");
    assert!(err.message().contains("subject.type"), "{}", err.message());
    assert!(!err.message().contains("r#"), "{}", err.message());
    app.stop().await;
}
