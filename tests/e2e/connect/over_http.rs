//! What HTTP itself decides: clear Connect errors for bad input, CORS for
//! configured origins only, and the OpenAPI document.

use super::*;

/// Bad input gets a clear Connect error, and nothing is stored.
#[tokio::test]
async fn bad_input_gets_clear_connect_errors() {
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        c.server.max_request_bytes = 4096;
    })
    .await;
    let token = Some(ADMIN_TOKEN);
    let error_of = |a: &Answer| -> serde_json::Value { serde_json::from_slice(&a.body).unwrap() };

    // Malformed JSON.
    let (_, a) = connect_json(&app, RECORD, token, "{not json").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&a)["code"], "invalid_argument");
    // An unknown field, named.
    let (_, a) = connect_json(&app, CHECK, token, r#"{"purpose":"purposes/x","bogus":1}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let e = error_of(&a);
    assert!(e["message"].as_str().unwrap().contains("bogus"), "{e}");
    let bad = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "google.rpc.BadRequest")
        .unwrap();
    assert_eq!(bad["debug"]["fieldViolations"][0]["field"], "bogus");
    assert!(
        STANDARD_NO_PAD
            .decode(bad["value"].as_str().unwrap())
            .is_ok()
    );
    // Original field names are accepted as well as lowerCamelCase.
    let (o, _) = connect_json(
        &app,
        "/custodia.consent.v1.ConsentService/ListPurposes",
        token,
        r#"{"page_size":5}"#,
    )
    .await;
    assert_eq!(o.code, Code::Ok);
    let (o, _) = connect_json(
        &app,
        "/custodia.consent.v1.ConsentService/ListPurposes",
        token,
        r#"{"pageSize":5}"#,
    )
    .await;
    assert_eq!(o.code, Code::Ok);
    // A wrong content type.
    let a = send(
        &http1(),
        request(&app, CHECK, "text/plain", token, Bytes::from("{}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A body over server.max_request_bytes.
    let big = format!(r#"{{"purpose":"{}"}}"#, "x".repeat(8192));
    let (_, a) = connect_json(&app, CHECK, token, &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&a)["code"], "resource_exhausted");
    // GET on a method with side effects.
    let get = Request::get(format!(
        "{}{RECORD}?encoding=json&message=%7B%7D",
        app.endpoint
    ))
    .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
    .body(Full::new(Bytes::new()))
    .unwrap();
    assert_eq!(
        send(&http1(), get).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // An unknown method.
    let (_, a) = connect_json(
        &app,
        "/custodia.consent.v1.ConsentService/Nope",
        token,
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&a)["code"], "unimplemented");

    // Nothing was stored by any of these.
    let mut c = app.consent().await;
    let events = c
        .list_consent_events(ListConsentEventsRequest {
            subject_identifiers: vec![email("ada@example.edu")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(events.is_empty());
    app.stop().await;
}

/// CORS: off by default; for a configured origin the preflight is answered and
/// answers carry the origin; another origin gets no CORS headers.
#[tokio::test]
async fn cors_only_for_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        Request::options(format!("{}{CHECK}", app.endpoint))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let off = TestApp::spawn(Backend::Sqlite, &all_services()).await;
    let a = send(&http1(), preflight(&off, "https://www.example.edu")).await;
    assert!(a.headers.get("access-control-allow-origin").is_none());
    off.stop().await;

    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        c.server.cors.allowed_origins = vec!["https://www.example.edu".into()];
    })
    .await;
    let a = send(&http1(), preflight(&app, "https://www.example.edu")).await;
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://www.example.edu"
    );
    assert!(a.headers.get("access-control-allow-credentials").is_none());
    let a = send(&http1(), preflight(&app, "https://evil.example")).await;
    assert!(a.headers.get("access-control-allow-origin").is_none());
    let mut call = request(
        &app,
        CHECK,
        "application/json",
        Some(ADMIN_TOKEN),
        Bytes::from("{}"),
    );
    call.headers_mut()
        .insert("origin", "https://www.example.edu".parse().unwrap());
    let a = send(&http1(), call).await;
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://www.example.edu"
    );
    app.stop().await;
}

/// The OpenAPI document is served without a token and describes the served
/// RPCs only, each with its scope (validated by a real validator in
/// tests/clients/run.sh).
#[tokio::test]
async fn openapi_document_of_the_served_rpcs() {
    let app = TestApp::spawn(Backend::Sqlite, &[custodia_consent::SERVICE]).await;
    let get = Request::get(format!("{}/openapi.json", app.endpoint))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(&http1(), get).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let check = &doc["paths"]["/custodia.consent.v1.ConsentService/CheckConsent"];
    assert_eq!(check["post"]["x-custodia-scope"], "consent.check");
    assert!(check["get"].is_object());
    assert!(
        doc["paths"]["/custodia.dsar.v1.DsarService/SubmitRequest"].is_null(),
        "dsar is not served here"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    app.stop().await;
}

/// Connect clients compress requests with gzip by default (the official Python
/// client does): a gzip body is read like an identity one, a body that inflates
/// past server.max_request_bytes is refused, another encoding is unimplemented;
/// refusals of the token carry ErrorInfo like every other error.
#[tokio::test]
async fn gzip_requests_are_accepted_and_bounded() {
    use std::io::Write;
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        c.server.max_request_bytes = 4096;
    })
    .await;
    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    };
    let list = "/custodia.consent.v1.ConsentService/ListPurposes";
    let mut r = request(
        &app,
        list,
        "application/json",
        Some(ADMIN_TOKEN),
        gzip(br#"{"pageSize":5}"#),
    );
    r.headers_mut()
        .insert("content-encoding", "gzip".parse().unwrap());
    let a = send(&http1(), r).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // 1 MB of spaces compresses to a few KB but inflates past the limit.
    let bomb = gzip(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 4096);
    let mut r = request(&app, list, "application/json", Some(ADMIN_TOKEN), bomb);
    r.headers_mut()
        .insert("content-encoding", "gzip".parse().unwrap());
    assert_eq!(
        send(&http1(), r).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let mut r = request(
        &app,
        list,
        "application/json",
        Some(ADMIN_TOKEN),
        Bytes::from("{}"),
    );
    r.headers_mut()
        .insert("content-encoding", "br".parse().unwrap());
    assert_eq!(send(&http1(), r).await.status, StatusCode::NOT_IMPLEMENTED);
    // No token: unauthenticated, with ErrorInfo.
    let a = send(
        &http1(),
        request(&app, list, "application/json", None, Bytes::from("{}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let e: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert!(
        e["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["type"] == "google.rpc.ErrorInfo"
                && d["debug"]["reason"] == "UNAUTHENTICATED"),
        "{e}"
    );
    app.stop().await;
}

/// The caller's token is checked before its body is read: an anonymous caller
/// with a malformed or oversized body is refused as unauthenticated (and the
/// body never parsed). (Deadlines in Connect form: a unit test of the layer,
/// with the clock paused.)
#[tokio::test]
async fn auth_is_checked_before_the_body_is_read() {
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        c.server.max_request_bytes = 4096;
    })
    .await;
    let (_, a) = connect_json(&app, RECORD, None, "{not json").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let big = format!(r#"{{"purpose":"{}"}}"#, "x".repeat(8192));
    let (_, a) = connect_json(&app, CHECK, None, &big).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "refused before reading the body"
    );

    app.stop().await;
}
