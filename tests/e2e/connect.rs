//! JSON over HTTP (issue #26): every RPC answers over Connect (JSON and proto,
//! HTTP/1.1) and gRPC-Web with the results and errors it gives over gRPC, through
//! the same stack (scopes, access events); bad input gets a clear Connect error.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use custodia_core::connect::{MethodTable, methods::pool};
use custodia_proto::{
    audit::v1::ListEventsRequest,
    consent::v1::{
        CheckConsentRequest, ConsentChannel, Decision, Evidence, Notice, PublishNoticeRequest,
        PurposeDecision, RecordConsentRequest, WatchConsentChangesRequest,
        consent_service_client::ConsentServiceClient, notice::Content,
    },
};
use custodia_tests::{
    ADMIN_TOKEN, Backend, TestApp, audit_events_until, authed, newsletter_purpose,
};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost::Message;
use tonic::Code;

use crate::all_services;

type Http = Client<HttpConnector, Full<Bytes>>;

fn http1() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

fn http2() -> Http {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// An answer as the wire gave it.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

async fn send(client: &Http, request: Request<Full<Bytes>>) -> Answer {
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("an answer in time")
        .expect("an HTTP answer");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("the body");
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// What a call came to, whatever the protocol: the gRPC code, the message, the
/// ErrorInfo reason, and the answer's protobuf bytes when it succeeded.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    code: Code,
    message: String,
    reason: String,
    message_bytes: Option<Bytes>,
}

fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

fn of_status(status: tonic::Status, body: Option<Bytes>) -> Outcome {
    let reason = tonic_types::StatusExt::get_details_error_info(&status)
        .map(|i| i.reason)
        .unwrap_or_default();
    Outcome {
        code: status.code(),
        message: status.message().to_string(),
        reason,
        message_bytes: body,
    }
}

fn request(
    app: &TestApp,
    path: &str,
    content_type: &str,
    token: Option<&str>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut r = Request::post(format!("{}{path}", app.endpoint))
        .header("content-type", content_type)
        .header("te", "trailers");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Full::new(body)).unwrap()
}

async fn grpc(app: &TestApp, path: &str, token: Option<&str>, message: &[u8]) -> Outcome {
    let a = send(
        &http2(),
        request(app, path, "application/grpc", token, frame(message)),
    )
    .await;
    let status = a
        .trailers
        .as_ref()
        .and_then(tonic::Status::from_header_map)
        .or_else(|| tonic::Status::from_header_map(&a.headers))
        .expect("a grpc-status");
    let body = (status.code() == Code::Ok).then(|| a.body.slice(5..));
    of_status(status, body)
}

fn code_of(name: &str) -> Code {
    (0..17)
        .map(Code::from)
        .find(|c| custodia_core::connect::error::code_name(*c) == name)
        .unwrap_or(Code::Unknown)
}

/// A Connect unary answer as an outcome.
fn connect_outcome(a: &Answer, json: bool) -> Outcome {
    if a.status == StatusCode::OK {
        let bytes = if json { Bytes::new() } else { a.body.clone() };
        return Outcome {
            code: Code::Ok,
            message: String::new(),
            reason: String::new(),
            message_bytes: Some(bytes),
        };
    }
    assert_eq!(
        a.headers["content-type"], "application/json",
        "Connect errors are JSON"
    );
    let error: serde_json::Value = serde_json::from_slice(&a.body).expect("a JSON error");
    let code = code_of(error["code"].as_str().unwrap());
    // Refusals of the HTTP request itself have their own statuses (413, 415,
    // 405, 404); every other error has its code's.
    let http_level = [413, 415, 405, 404].contains(&a.status.as_u16());
    assert!(
        http_level || a.status == custodia_core::connect::error::http_status(code),
        "HTTP status {} of {error}",
        a.status
    );
    let reason = error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["type"] == "google.rpc.ErrorInfo")
        .map(|d| {
            d["debug"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    Outcome {
        code,
        message: error["message"].as_str().unwrap_or_default().to_string(),
        reason,
        message_bytes: None,
    }
}

async fn connect_proto(app: &TestApp, path: &str, token: Option<&str>, message: &[u8]) -> Outcome {
    let a = send(
        &http1(),
        request(
            app,
            path,
            "application/proto",
            token,
            Bytes::copy_from_slice(message),
        ),
    )
    .await;
    connect_outcome(&a, false)
}

async fn connect_json(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    json: &str,
) -> (Outcome, Answer) {
    let a = send(
        &http1(),
        request(
            app,
            path,
            "application/json",
            token,
            Bytes::from(json.to_string()),
        ),
    )
    .await;
    (connect_outcome(&a, true), a)
}

async fn grpc_web(app: &TestApp, path: &str, token: Option<&str>, message: &[u8]) -> Outcome {
    let a = send(
        &http1(),
        request(
            app,
            path,
            "application/grpc-web+proto",
            token,
            frame(message),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    // Data frames, then a trailer frame (flag 0x80) holding `name: value` lines.
    let mut body = a.body.clone();
    let mut message = None;
    let mut trailers = HeaderMap::new();
    while body.len() >= 5 {
        let flag = body.get_u8();
        let len = body.get_u32() as usize;
        let chunk = body.split_to(len);
        if flag & 0x80 != 0 {
            for line in String::from_utf8_lossy(&chunk).split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.insert(
                        http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                        v.trim().parse().unwrap(),
                    );
                }
            }
        } else {
            message = Some(chunk);
        }
    }
    let status = tonic::Status::from_header_map(&trailers)
        .or_else(|| tonic::Status::from_header_map(&a.headers))
        .expect("a grpc-status");
    let ok = status.code() == Code::Ok;
    of_status(status, message.filter(|_| ok))
}

/// Every unary RPC of every service, without a token and then with an empty
/// message: the same code, message and ErrorInfo reason over gRPC, Connect
/// proto, Connect JSON and gRPC-Web.
#[tokio::test]
async fn every_rpc_answers_alike_over_every_protocol() {
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        // Access events stay queued, so the log (and what its reads answer)
        // does not change between the four calls of one comparison.
        c.audit.endpoint = Some("http://127.0.0.1:1".into());
    })
    .await;
    let services: Vec<&str> = custodia_core::ServiceName::ALL
        .iter()
        .map(|s| s.grpc_name())
        .collect();
    let table = MethodTable::new(pool(), &services);
    let mut checked = 0;
    for method in table.all() {
        if method.server_streaming {
            continue;
        }
        for token in [None, Some(ADMIN_TOKEN)] {
            let path = &method.path;
            let g = grpc(&app, path, token, &[]).await;
            let p = connect_proto(&app, path, token, &[]).await;
            let (j, _) = connect_json(&app, path, token, "{}").await;
            let w = grpc_web(&app, path, token, &[]).await;
            let strip = |o: &Outcome| Outcome {
                message_bytes: None,
                ..o.clone()
            };
            assert_eq!(
                strip(&g),
                strip(&p),
                "{path} {token:?}: gRPC vs Connect proto"
            );
            assert_eq!(
                strip(&g),
                strip(&j),
                "{path} {token:?}: gRPC vs Connect JSON"
            );
            assert_eq!(strip(&g), strip(&w), "{path} {token:?}: gRPC vs gRPC-Web");
            if token.is_none() {
                assert_eq!(g.code, Code::Unauthenticated, "{path}");
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} calls compared");
    app.stop().await;
}

async fn consent_with_notice(
    app: &TestApp,
) -> (ConsentServiceClient<tonic::transport::Channel>, String) {
    let mut c = ConsentServiceClient::new(app.channel().await);
    c.create_purpose(authed(newsletter_purpose(), ADMIN_TOKEN))
        .await
        .unwrap();
    let notice = c
        .publish_notice(authed(
            PublishNoticeRequest {
                notice_id: "privacy".into(),
                notice: Some(Notice {
                    title: "Privacy".into(),
                    content: Some(Content::Text("Monthly newsletter.".into())),
                    purposes: vec!["purposes/newsletter".into()],
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
        .name;
    (c, notice)
}

const CHECK: &str = "/custodia.consent.v1.ConsentService/CheckConsent";
const RECORD: &str = "/custodia.consent.v1.ConsentService/RecordConsent";

/// A consent recorded in JSON is what gRPC then reads, a check answers the same
/// in JSON (POST and GET) as over gRPC, and the JSON call is an access event.
async fn json_calls_are_calls(backend: Backend) {
    let app = TestApp::spawn(backend, &all_services()).await;
    let (mut c, notice) = consent_with_notice(&app).await;
    let collect = {
        let t = custodia_core::legal_time::Clock::now(&*app.clock);
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    let record = serde_json::json!({
        "subject": {"type": "email", "value": "ada@example.edu"},
        "decisions": [{"purpose": "purposes/newsletter", "decision": "DECISION_GRANTED"}],
        "evidence": {"collectTime": collect, "channel": "CONSENT_CHANNEL_WEB_FORM", "notice": notice},
        "request_id": "php-1",
    });
    let (outcome, answer) =
        connect_json(&app, RECORD, Some(ADMIN_TOKEN), &record.to_string()).await;
    assert_eq!(
        outcome.code,
        Code::Ok,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let recorded: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(recorded["events"][0]["state"], "CONSENT_STATE_GRANTED");
    assert_eq!(answer.headers["cache-control"], "no-store");

    // gRPC sees it.
    let check = CheckConsentRequest {
        subject: Some(custodia_proto::common::v1::SubjectRef {
            r#type: "email".into(),
            value: "ada@example.edu".into(),
        }),
        purpose: "purposes/newsletter".into(),
    };
    let over_grpc = c
        .check_consent(authed(check.clone(), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(over_grpc.result.as_ref().unwrap().allowed);

    // The same check over Connect proto: the same answer but its check time.
    let p = connect_proto(&app, CHECK, Some(ADMIN_TOKEN), &check.encode_to_vec()).await;
    let mut over_connect =
        custodia_proto::consent::v1::CheckConsentResponse::decode(p.message_bytes.unwrap())
            .unwrap();
    over_connect.result.as_mut().unwrap().check_time =
        over_grpc.result.as_ref().unwrap().check_time;
    assert_eq!(over_connect, over_grpc);

    // GET, for a read: JSON in the query.
    let message = serde_json::json!({
        "subject": {"type": "email", "value": "ada@example.edu"},
        "purpose": "purposes/newsletter",
    })
    .to_string();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("encoding", "json")
        .append_pair("message", &message)
        .finish();
    let get = Request::get(format!("{}{CHECK}?{query}", app.endpoint))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&http1(), get).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["result"]["allowed"], true);
    assert_eq!(json["result"]["reason"], "CHECK_REASON_GRANTED");

    // ...and binary, base64url in the query.
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("encoding", "proto")
        .append_pair("base64", "1")
        .append_pair(
            "message",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(check.encode_to_vec()),
        )
        .finish();
    let get = Request::get(format!("{}{CHECK}?{query}", app.endpoint))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&http1(), get).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        custodia_proto::consent::v1::CheckConsentResponse::decode(answer.body)
            .unwrap()
            .result
            .unwrap()
            .allowed
    );

    // The JSON write is an access event like any other.
    audit_events_until(
        app.channel().await,
        ListEventsRequest {
            service: "custodia.consent.v1.ConsentService".into(),
            ..Default::default()
        },
        |events| events.iter().any(|e| e.method == "RecordConsent"),
    )
    .await;
    app.stop().await;
}

custodia_tests::both_backends!(json_calls_are_calls);

/// Server streaming over Connect: a change recorded after the stream opened
/// arrives as an enveloped JSON message; a refused stream ends with the error in
/// its end-of-stream message.
#[tokio::test]
async fn streams_over_connect() {
    let app = TestApp::spawn(Backend::Sqlite, &all_services()).await;
    let (mut c, notice) = consent_with_notice(&app).await;
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

    c.record_consent(authed(
        RecordConsentRequest {
            subject: Some(custodia_proto::common::v1::SubjectRef {
                r#type: "email".into(),
                value: "bob@example.edu".into(),
            }),
            decisions: vec![PurposeDecision {
                purpose: "purposes/newsletter".into(),
                decision: Decision::Granted as i32,
            }],
            evidence: Some(Evidence {
                collect_time: Some(prost_types::Timestamp {
                    seconds: custodia_core::legal_time::Clock::now(&*app.clock).timestamp(),
                    nanos: 0,
                }),
                channel: ConsentChannel::WebForm as i32,
                notice,
                ..Default::default()
            }),
            ..Default::default()
        },
        ADMIN_TOKEN,
    ))
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
    drop(WatchConsentChangesRequest::default());
    app.stop().await;
}

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
    let mut c = ConsentServiceClient::new(app.channel().await);
    let events = c
        .list_consent_events(authed(
            custodia_proto::consent::v1::ListConsentEventsRequest {
                subject_identifiers: vec![custodia_proto::common::v1::SubjectRef {
                    r#type: "email".into(),
                    value: "ada@example.edu".into(),
                }],
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
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
