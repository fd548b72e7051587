//! A lean gRPC client for unary calls: requests encoded before the clock starts,
//! sent over raw HTTP/2 (the `h2` crate, which tonic uses underneath) from one
//! thread with a scheduler of its own, without tonic's channel, buffer and codec
//! layers. Like h2load it costs the machine little per call, so the server gets
//! the cores; unlike h2load every call can carry a different message (random
//! subjects), and every answer is decoded and checked.

use std::{
    cell::RefCell,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream::FuturesUnordered};
use http::{HeaderValue, Method, Request, Uri, header};

use crate::stats::Latencies;

/// What the calls of one run did.
pub struct Outcome {
    pub latencies: Latencies,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// One unary method, what to send it, and how hard.
pub struct Calls {
    /// `http://host:port`.
    pub endpoint: String,
    /// `/package.Service/Method`.
    pub path: String,
    pub bearer: String,
    /// gRPC-framed request messages (see [`frame`]).
    pub messages: Vec<Bytes>,
    /// Checks the answer (the protobuf, without the gRPC frame) to message `i`.
    pub check: fn(usize, &[u8]) -> Result<(), String>,
    /// HTTP/2 connections the calls in flight share, round robin.
    pub connections: u64,
    /// Calls in flight: loops that each send a call and wait for its answer.
    pub concurrency: u64,
    pub seconds: u64,
    /// The message loop `s` sends as its `n`-th call: `pick(s, n, messages.len())`.
    pub pick: fn(u64, u64, usize) -> usize,
}

/// A protobuf message in a gRPC frame: uncompressed flag, big-endian length, bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(5 + message.len());
    body.extend_from_slice(&[0]);
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body.freeze()
}

/// Runs `calls` on a thread of its own (one scheduler, no other work): the
/// outcome and the time it took.
pub fn run(calls: Calls) -> anyhow::Result<(Outcome, Duration)> {
    let thread = std::thread::Builder::new()
        .name("loadgen-lean".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drive(&calls))
        })?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the lean client's thread panicked"))?
}

async fn drive(calls: &Calls) -> anyhow::Result<(Outcome, Duration)> {
    let uri: Uri = format!("{}{}", calls.endpoint, calls.path).parse()?;
    let addr: SocketAddr = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("endpoint without host:port: {}", calls.endpoint))?
        .as_str()
        .parse()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", calls.bearer))?;
    let mut senders = Vec::new();
    for _ in 0..calls.connections.max(1) {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        senders.push(sender);
    }
    let out = RefCell::new(Outcome {
        latencies: Latencies::new(),
        ok: 0,
        errors: 0,
        first_error: None,
    });
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(calls.seconds);
    // The loops run on this thread, polled together: no task hand-offs.
    let mut loops: FuturesUnordered<_> = (0..calls.concurrency)
        .map(|s| {
            let sender = &senders[(s % senders.len() as u64) as usize];
            let (out, uri, bearer) = (&out, &uri, &bearer);
            async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let i = (calls.pick)(s, n, calls.messages.len());
                    n += 1;
                    let t = Instant::now();
                    let answer = call(sender.clone(), uri, bearer, calls.messages[i].clone())
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|answer| (calls.check)(i, &answer));
                    let mut out = out.borrow_mut();
                    match answer {
                        Ok(()) => {
                            out.ok += 1;
                            out.latencies.record(t.elapsed());
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(e);
                        }
                    }
                }
            }
        })
        .collect();
    while loops.next().await.is_some() {}
    drop(loops);
    Ok((out.into_inner(), t0.elapsed()))
}

/// One unary call: the answer's message, or why there is none (an HTTP status
/// other than 200, a gRPC status other than OK, a missing or torn message).
async fn call(
    sender: h2::client::SendRequest<Bytes>,
    uri: &Uri,
    bearer: &HeaderValue,
    message: Bytes,
) -> anyhow::Result<Bytes> {
    let mut sender = sender.ready().await?;
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(header::AUTHORIZATION, bearer.clone());
    let (response, mut send) = sender.send_request(request, false)?;
    send.send_data(message, true)?;
    let response = response.await?;
    anyhow::ensure!(
        response.status() == http::StatusCode::OK,
        "HTTP status {}",
        response.status()
    );
    let (head, mut body) = response.into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    // A trailers-only answer (an error) carries grpc-status in the headers.
    let trailers = body.trailers().await?.unwrap_or(head.headers);
    let status = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing");
    if status != "0" {
        let message = trailers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        anyhow::bail!("gRPC status {status}: {message}");
    }
    anyhow::ensure!(data.len() >= 5, "answer without a message");
    let length = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    anyhow::ensure!(
        data[0] == 0 && data.len() == 5 + length,
        "answer is not one uncompressed message"
    );
    Ok(data.freeze().slice(5..))
}
