//! Connection hygiene (issue #24, finding 2): connections that never send a
//! call, or stop sending, are closed; a flood of them cannot keep a health
//! check out; a connection with a call in flight is never evicted; the server
//! advertises MAX_CONCURRENT_STREAMS and pings idle peers.
//!
//! The timeouts here are the server's own (tokio) timers, configured short;
//! each test waits for an event (a close, an answer) with a bound, it never
//! sleeps a fixed time to make something happen.

use std::time::Duration;

use bytes::Bytes;
use custodia_proto::consent::v1::{
    WatchConsentChangesRequest, consent_service_client::ConsentServiceClient,
};
use custodia_tests::{ADMIN_TOKEN, Backend, TestApp, authed};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn spawn(adjust: impl FnOnce(&mut custodia_core::Config)) -> TestApp {
    TestApp::spawn_with(
        Backend::Sqlite,
        &[custodia_audit_log::SERVICE, custodia_consent::SERVICE],
        adjust,
    )
    .await
}

fn addr(app: &TestApp) -> String {
    app.endpoint.trim_start_matches("http://").to_string()
}

/// Reads (and drops) whatever the server sends until it closes the connection;
/// whether that happened within `bound`.
async fn closes_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, read_all).await.is_ok()
}

/// Panics unless the server closes `stream` within `bound`.
async fn closed_within(stream: &mut TcpStream, bound: Duration) {
    assert!(
        closes_within(stream, bound).await,
        "the server kept the connection open for {bound:?}"
    );
}

async fn serving(app: &TestApp) -> bool {
    let mut health = HealthClient::new(app.channel().await);
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
        .unwrap_or(false)
}

#[tokio::test]
async fn connections_without_a_call_are_closed() {
    let app = spawn(|c| {
        c.server.handshake_timeout_ms = 200;
        c.server.idle_timeout_ms = 200;
    })
    .await;
    // A silent TCP connection, and one that sent only the HTTP/2 preface.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    let mut preface = TcpStream::connect(addr(&app)).await.unwrap();
    preface.write_all(PREFACE).await.unwrap();
    preface.write_all(SETTINGS).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(10)).await;
    closed_within(&mut preface, Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_call_whose_body_never_comes_ends_and_its_connection_closes() {
    let app = spawn(|c| {
        c.server.request_timeout_secs = 1;
        c.server.idle_timeout_ms = 200;
    })
    .await;
    let tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/custodia.consent.v1.ConsentService/CheckConsent",
            app.endpoint
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(())
        .unwrap();
    // Headers, then half a message: a length prefix of 100 bytes and 3 of them.
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 100, 1, 2, 3]), false)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the call ends")
        .unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(status.is_some(), "trailers-only answer: {response:?}");
    assert_ne!(status.as_deref(), Some("0"), "the call did not succeed");
    // With nothing in flight any more, the idle timeout closes the connection.
    tokio::time::timeout(Duration::from_secs(10), &mut connection)
        .await
        .expect("the server closed the connection")
        .unwrap()
        .ok();
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_idle_connections_cannot_keep_health_out() {
    let app = spawn(|c| {
        c.server.max_connections = 20;
    })
    .await;
    // A call in flight the whole time (a change stream), opened first.
    let mut watcher = ConsentServiceClient::new(app.channel().await);
    let mut changes = watcher
        .watch_consent_changes(authed(WatchConsentChangesRequest::default(), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    // Five times the cap in silent connections, each evicting an idle one.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    // Health still answers on a fresh connection...
    let answered = tokio::time::timeout(Duration::from_secs(10), serving(&app))
        .await
        .expect("health answers in time");
    assert!(answered, "health answers SERVING");
    // ...most of the flood was closed to make room...
    let mut closed = 0;
    for stream in &mut flood {
        if closes_within(stream, Duration::from_millis(50)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 80,
        "only {closed} of 100 idle connections were closed"
    );
    // ...and the busy stream was not: it is still open (no error, no end).
    let still_open = tokio::time::timeout(Duration::from_millis(100), changes.message()).await;
    assert!(
        still_open.is_err(),
        "the change stream ended: {still_open:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn when_every_connection_is_busy_a_new_one_is_refused_at_once() {
    let app = spawn(|c| {
        c.server.max_connections = 1;
    })
    .await;
    let mut watcher = ConsentServiceClient::new(app.channel().await);
    let _changes = watcher
        .watch_consent_changes(authed(WatchConsentChangesRequest::default(), ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let mut refused = TcpStream::connect(addr(&app)).await.unwrap();
    closed_within(&mut refused, Duration::from_secs(2)).await;
    app.stop().await;
}

#[tokio::test]
async fn max_concurrent_streams_is_advertised_and_silent_peers_are_pinged_out() {
    let app = spawn(|c| {
        c.server.max_concurrent_streams = 7;
        c.server.handshake_timeout_ms = 600_000;
        c.server.keepalive_interval_secs = 1;
        c.server.keepalive_timeout_secs = 1;
    })
    .await;
    let tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // One exchange, so the server's SETTINGS have been read.
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{}/grpc.health.v1.Health/Check", app.endpoint))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    response.await.unwrap();
    assert_eq!(client.current_max_send_streams(), 7);
    // A peer that never answers the server's pings is closed after the
    // keepalive interval and timeout, long before the handshake timeout.
    let mut mute = TcpStream::connect(addr(&app)).await.unwrap();
    mute.write_all(PREFACE).await.unwrap();
    mute.write_all(SETTINGS).await.unwrap();
    closed_within(&mut mute, Duration::from_secs(15)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_a_connection_busy() {
    let app = spawn(|c| {
        c.server.max_connections = 1;
        c.server.idle_timeout_ms = 300;
    })
    .await;
    // A window of 0: the server cannot send the answer's body, so the call
    // stays in flight as long as the client likes.
    let tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("{}/openapi.json", app.endpoint))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let _held = response.await.unwrap();
    // Once it has not moved for an idle period, a newcomer may take its place.
    let mut served = false;
    for _ in 0..100 {
        if let Ok(true) = tokio::time::timeout(Duration::from_secs(2), serving(&app)).await {
            served = true;
            break;
        }
    }
    assert!(served, "health never got in past the stalled connection");
    app.stop().await;
}
