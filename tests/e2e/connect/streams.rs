//! Server streaming over Connect.

use super::*;

/// Server streaming over Connect: a change recorded after the stream opened
/// arrives as an enveloped JSON message; a refused stream ends with the error in
/// its end-of-stream message.
#[tokio::test]
async fn streams_over_connect() {
    let app = TestApp::spawn(Backend::Sqlite, &all_services()).await;
    let notice = app.newsletter_notice().await;
    let mut c = app.consent().await;
    let mut envelope = BytesMut::new();
    let body = serde_json::to_vec(&serde_json::json!({})).unwrap();
    envelope.put_u8(0);
    envelope.put_u32(body.len() as u32);
    envelope.put_slice(&body);
    let watch = request(
        &app,
        "/custodia.consent.v1.ConsentService/WatchConsentChanges",
        "application/connect+json",
        Some(ADMIN_TOKEN),
        envelope.freeze(),
    );
    let response = http1().request(watch).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/connect+json"
    );
    let mut body = response.into_body();

    c.record_consent(grant(&app, "bob@example.edu", &notice))
        .await
        .unwrap();

    let mut buf = BytesMut::new();
    let message = loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() >= 5 + len {
                assert_eq!(buf[0], 0, "a message, not the end");
                break serde_json::from_slice::<serde_json::Value>(&buf[5..5 + len]).unwrap();
            }
        }
        let frame = tokio::time::timeout(Duration::from_secs(15), body.frame())
            .await
            .expect("a change in time")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    };
    assert_eq!(
        message["consent"]["state"], "CONSENT_STATE_GRANTED",
        "{message}"
    );
    assert!(message["cursor"].is_string(), "a cursor to resume from");

    // Refused (no token): 200, and the end-of-stream message carries the error.
    let mut envelope = BytesMut::new();
    envelope.put_u8(0);
    envelope.put_u32(2);
    envelope.put_slice(b"{}");
    let refused = send(
        &http1(),
        request(
            &app,
            "/custodia.consent.v1.ConsentService/WatchConsentChanges",
            "application/connect+json",
            None,
            envelope.freeze(),
        ),
    )
    .await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(refused.body[0], 0x02, "end-of-stream flag");
    let end: serde_json::Value = serde_json::from_slice(&refused.body[5..]).unwrap();
    assert_eq!(end["error"]["code"], "unauthenticated");
    app.stop().await;
}
