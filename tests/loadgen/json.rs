//! The lean client's JSON twin: unary Connect calls (`application/json`) over
//! HTTP/1.1 keep-alive, one connection per call in flight (HTTP/1.1 does not
//! multiplex), from one thread with a scheduler of its own, bodies prepared
//! before the clock starts, every answer checked. What a PHP or Python
//! integrator's HTTP client costs the server, measured beside the gRPC
//! phases of the same run.

use std::{
    cell::RefCell,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::{lean::Outcome, stats::Latencies};

/// One unary method over Connect JSON, what to send it, and how hard.
pub struct Calls {
    /// `http://host:port`.
    pub endpoint: String,
    /// `/package.Service/Method`.
    pub path: String,
    pub bearer: String,
    /// JSON request bodies.
    pub messages: Vec<Bytes>,
    /// Checks the JSON answer to message `i`.
    pub check: fn(usize, &[u8]) -> Result<(), String>,
    /// Calls in flight, each on a keep-alive connection of its own.
    pub concurrency: u64,
    pub seconds: u64,
    /// The message loop `s` sends as its `n`-th call.
    pub pick: fn(u64, u64, usize) -> usize,
}

/// Runs `calls` on a thread of its own: the outcome and the time it took.
pub fn run(calls: Calls) -> anyhow::Result<(Outcome, Duration)> {
    let thread = std::thread::Builder::new()
        .name("loadgen-json".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // The connections' tasks are local to this thread.
            tokio::task::LocalSet::new().block_on(&runtime, drive(&calls))
        })?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the JSON client's thread panicked"))?
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn drive(calls: &Calls) -> anyhow::Result<(Outcome, Duration)> {
    let uri: http::Uri = format!("{}{}", calls.endpoint, calls.path).parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("endpoint without host:port"))?
        .clone();
    let addr: SocketAddr = authority.as_str().parse()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", calls.bearer))?;
    let mut senders = Vec::new();
    for _ in 0..calls.concurrency {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::task::spawn_local(async move {
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
    let mut loops: FuturesUnordered<_> = senders
        .into_iter()
        .enumerate()
        .map(|(slot, mut sender)| {
            let (out, uri, bearer, authority) = (&out, &uri, &bearer, &authority);
            async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let j = (calls.pick)(slot as u64, n, calls.messages.len());
                    n += 1;
                    let t = Instant::now();
                    let answer = call(
                        &mut sender,
                        uri,
                        authority,
                        bearer,
                        calls.messages[j].clone(),
                    )
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|body| (calls.check)(j, &body));
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

async fn call(
    sender: &mut Sender,
    uri: &http::Uri,
    authority: &http::uri::Authority,
    bearer: &HeaderValue,
    body: Bytes,
) -> anyhow::Result<Bytes> {
    sender.ready().await?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.path())
        .header(header::HOST, authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, bearer.clone())
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status == http::StatusCode::OK,
        "HTTP status {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}
