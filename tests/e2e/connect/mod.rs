//! JSON over HTTP (issue #26): every RPC answers over Connect (JSON and proto,
//! HTTP/1.1) and gRPC-Web with the results and errors it gives over gRPC, through
//! the same stack (scopes, access events); bad input gets a clear Connect error.
//! mod.rs speaks the wire protocols by hand (so what is tested is the bytes a
//! browser or a PHP client sends); protocols.rs compares them, streams.rs covers
//! server streaming, over_http.rs the HTTP-level refusals, CORS and OpenAPI.

mod over_http;
mod protocols;
mod streams;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use custodia_core::connect::{MethodTable, methods::pool};
use custodia_core::legal_time::Clock;
use custodia_proto::{
    audit::v1::ListEventsRequest,
    consent::v1::{CheckConsentRequest, CheckConsentResponse, ListConsentEventsRequest},
};
use custodia_tests::{ADMIN_TOKEN, Backend, TestApp, audit_events_until, email, grant};
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

/// The path of CheckConsent (a read: GET allowed).
const CHECK: &str = "/custodia.consent.v1.ConsentService/CheckConsent";
/// The path of RecordConsent (a write).
const RECORD: &str = "/custodia.consent.v1.ConsentService/RecordConsent";
