//! The Connect protocol (connectrpc.com/docs/protocol) on the gRPC port, for
//! callers that cannot speak gRPC: a PHP Moodle plugin with curl, a CRM's JSON
//! webhook glue, a browser.
//!
//! A translation in front of the same tower stack, derived from the descriptor
//! set: a Connect call is turned into the gRPC call it stands for (the message
//! re-encoded as protobuf, framed, `content-type: application/grpc`) and sent
//! through the very services a gRPC caller reaches (auth by proto scope,
//! limits, timeouts, access events, idempotency), and the gRPC answer is turned
//! back. No handler is written twice and no route is written per RPC.
//!
//! - Unary: `POST /pkg.Service/Method` with `application/json` (proto3 JSON
//!   mapping; lowerCamelCase or original field names; unknown fields refused)
//!   or `application/proto`, over HTTP/1.1 or HTTP/2.
//! - Methods marked `idempotency_level = NO_SIDE_EFFECTS` also as `GET
//!   ...?encoding=json&message=...` (`base64=1` for binary).
//! - Server streaming: `application/connect+json` or `+proto`, enveloped
//!   messages and an end-of-stream message carrying the error and trailers.
//! - Errors: `{"code","message","details"}` with the Connect HTTP statuses.
//!
//! gRPC-Web is tonic-web's translation, layered just outside this one.

pub mod error;
pub mod methods;
pub mod openapi;
mod stream;

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::{BoxFuture, Either};
use http::{HeaderMap, HeaderName, HeaderValue, Method as HttpMethod, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

pub use methods::{Method, MethodTable};

use crate::error::ApiError;

/// The message encodings of the Connect protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Proto3 JSON mapping.
    Json,
    /// Protobuf binary.
    Proto,
}

/// Tower layer answering Connect calls (see the module docs); gRPC calls pass
/// through untouched.
#[derive(Clone)]
pub struct ConnectLayer {
    shared: Arc<Shared>,
}

struct Shared {
    methods: MethodTable,
    max_request_bytes: usize,
    /// Longest a call may take (the server's request timeout, a little less so
    /// this layer answers before tonic's own timeout, which answers in gRPC).
    timeout: std::time::Duration,
    /// The auth layer inside, asked before a body is read.
    auth: Option<crate::auth::layer::AuthLayer>,
    /// Documents served at fixed paths (`/openapi.json`).
    documents: Vec<(&'static str, &'static str, Bytes)>,
}

impl std::fmt::Debug for ConnectLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectLayer").finish_non_exhaustive()
    }
}

impl ConnectLayer {
    /// A layer for `methods`, refusing request bodies over `max_request_bytes`.
    pub fn new(
        methods: MethodTable,
        max_request_bytes: usize,
        request_timeout: std::time::Duration,
        auth: Option<crate::auth::layer::AuthLayer>,
    ) -> Self {
        let margin = std::time::Duration::from_millis(100);
        Self {
            shared: Arc::new(Shared {
                methods,
                max_request_bytes,
                timeout: request_timeout.saturating_sub(margin).max(margin),
                auth,
                documents: Vec::new(),
            }),
        }
    }

    /// Also serves `body` (of `content_type`) on `GET path`, without a token.
    pub fn with_document(
        mut self,
        path: &'static str,
        content_type: &'static str,
        body: Bytes,
    ) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("documents are added before the layer is shared")
            .documents
            .push((path, content_type, body));
        self
    }
}

impl<S> Layer<S> for ConnectLayer {
    type Service = Connect<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Connect {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service produced by [`ConnectLayer`].
#[derive(Clone)]
pub struct Connect<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Connect<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect").finish_non_exhaustive()
    }
}

/// What an incoming request is, for this layer.
enum Kind {
    /// gRPC (or anything that is not ours): passed through.
    Grpc,
    /// A document served at a fixed path.
    Document(usize),
    /// A Connect unary call (POST or GET).
    Unary(Arc<Method>, Codec),
    /// A Connect server-streaming call.
    Streaming(Arc<Method>, Codec),
    /// Refused before the services see it.
    Refused(StatusCode, Status),
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The media type without parameters (`; charset=utf-8`), lowercased.
fn media_type(headers: &HeaderMap) -> String {
    content_type(headers)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn refused(http: StatusCode, code: Code, message: impl Into<String>) -> Kind {
    Kind::Refused(http, Status::new(code, message))
}

impl<S> Connect<S> {
    fn classify<B>(&self, request: &http::Request<B>) -> Kind {
        let path = request.uri().path();
        if content_type(request.headers()).starts_with("application/grpc") {
            return Kind::Grpc;
        }
        if request.method() == HttpMethod::GET
            && let Some(i) = self
                .shared
                .documents
                .iter()
                .position(|(p, _, _)| *p == path)
        {
            return Kind::Document(i);
        }
        let Some(method) = self.shared.methods.get(path) else {
            let what = if methods::looks_like_rpc(path) {
                "no such method is served here"
            } else {
                "nothing is served at this path"
            };
            return refused(
                StatusCode::NOT_FOUND,
                Code::Unimplemented,
                format!("{what}: {}", crate::echo::echo(path)),
            );
        };
        if let Some(version) = request.headers().get("connect-protocol-version")
            && version != "1"
        {
            return refused(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                "connect-protocol-version must be 1",
            );
        }
        if method.client_streaming {
            return refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::Unimplemented,
                "client-streaming methods are served over gRPC only",
            );
        }
        match *request.method() {
            HttpMethod::GET => {
                if !method.no_side_effects {
                    return refused(
                        StatusCode::METHOD_NOT_ALLOWED,
                        Code::Unimplemented,
                        format!("{} has side effects: call it with POST", method.name),
                    );
                }
                if method.server_streaming {
                    return refused(
                        StatusCode::METHOD_NOT_ALLOWED,
                        Code::Unimplemented,
                        "streaming methods cannot be called with GET",
                    );
                }
                let query = request.uri().query().unwrap_or_default();
                let encoding = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "encoding")
                    .map(|(_, v)| v.into_owned());
                match encoding.as_deref() {
                    Some("json") => Kind::Unary(method.clone(), Codec::Json),
                    Some("proto") => Kind::Unary(method.clone(), Codec::Proto),
                    _ => refused(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        Code::InvalidArgument,
                        "encoding must be json or proto",
                    ),
                }
            }
            HttpMethod::POST => {
                let streaming = method.server_streaming;
                match (media_type(request.headers()).as_str(), streaming) {
                    ("application/json", false) => Kind::Unary(method.clone(), Codec::Json),
                    ("application/proto", false) => Kind::Unary(method.clone(), Codec::Proto),
                    ("application/connect+json", true) => {
                        Kind::Streaming(method.clone(), Codec::Json)
                    }
                    ("application/connect+proto", true) => {
                        Kind::Streaming(method.clone(), Codec::Proto)
                    }
                    (other, streaming) => refused(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        Code::InvalidArgument,
                        format!(
                            "content type {} is not accepted here: use {}",
                            crate::echo::echo(other),
                            if streaming {
                                "application/connect+json or application/connect+proto"
                            } else {
                                "application/json or application/proto"
                            }
                        ),
                    ),
                }
            }
            _ => refused(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                "use POST (or GET for reads)",
            ),
        }
    }
}

impl<S, E> Service<http::Request<Body>> for Connect<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = E>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    E: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = E;
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, E>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let kind = self.classify(&request);
        if matches!(kind, Kind::Grpc) {
            return Either::Left(self.inner.call(request));
        }
        // The clone that was polled ready is the one we call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Either::Right(Box::pin(async move {
            let mut response = match kind {
                Kind::Grpc => unreachable!("passed through above"),
                Kind::Document(i) => {
                    let (_, content_type, body) = &shared.documents[i];
                    let mut response =
                        http::Response::new(Body::new(http_body_util::Full::new(body.clone())));
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                    response
                }
                Kind::Refused(http, status) => error::error_response(http, &status),
                Kind::Unary(method, codec) => unary(inner, &shared, method, codec, request).await?,
                Kind::Streaming(method, codec) => {
                    stream::call(inner, &shared, method, codec, request).await?
                }
            };
            // Answers hold personal data: no cache keeps them (GET calls included).
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }))
    }
}

/// Reads the request body, at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, (StatusCode, Status)> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            Status::resource_exhausted(format!(
                "the request body is over {limit} bytes (server.max_request_bytes)"
            )),
        )),
        Err(_) => Err((
            StatusCode::BAD_REQUEST,
            Status::invalid_argument("the request body could not be read"),
        )),
    }
}

/// The protobuf bytes of a request `message` sent in `codec`.
fn to_protobuf(input: &MessageDescriptor, codec: Codec, message: &[u8]) -> Result<Bytes, Status> {
    match codec {
        Codec::Proto => Ok(Bytes::copy_from_slice(message)),
        Codec::Json => {
            if message.iter().all(u8::is_ascii_whitespace) {
                return Ok(Bytes::new());
            }
            let mut de = serde_json::Deserializer::from_slice(message);
            let options = DeserializeOptions::new().deny_unknown_fields(true);
            let parsed = DynamicMessage::deserialize_with_options(input.clone(), &mut de, &options)
                .and_then(|m| de.end().map(|()| m));
            match parsed {
                Ok(m) => Ok(Bytes::from(m.encode_to_vec())),
                Err(e) => {
                    // "unrecognized field name 'x' at line 1 column 8": name the field.
                    let text = e.to_string();
                    let field = text
                        .split_once("unrecognized field name '")
                        .and_then(|(_, rest)| rest.split_once('\''))
                        .map_or("request".to_string(), |(name, _)| name.to_string());
                    Err(ApiError::invalid(
                        field,
                        format!("is not a valid {} in JSON: {text}", input.full_name()),
                    )
                    .into())
                }
            }
        }
    }
}

/// A response message's bytes in `codec`.
fn from_protobuf(
    output: &MessageDescriptor,
    codec: Codec,
    message: Bytes,
) -> Result<Bytes, Status> {
    match codec {
        Codec::Proto => Ok(message),
        Codec::Json => {
            let decoded = DynamicMessage::decode(output.clone(), message)
                .map_err(|e| ApiError::internal(anyhow::anyhow!("answer does not decode: {e}")))?;
            serde_json::to_vec(&decoded)
                .map(Bytes::from)
                .map_err(|e| ApiError::internal(anyhow::anyhow!("answer to JSON: {e}")).into())
        }
    }
}

/// One gRPC length-prefixed message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// Request headers a Connect call carries that mean nothing to gRPC.
const CONNECT_ONLY: &[&str] = &[
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
    "accept-encoding",
    "content-encoding",
    "content-length",
    "content-type",
    "accept",
];

/// The gRPC request a Connect call stands for: the same path, headers (token,
/// trace context, ...) and extensions (the connection), `message` framed.
fn grpc_request(parts: http::request::Parts, message: Bytes) -> http::Request<Body> {
    let mut parts = parts;
    for name in CONNECT_ONLY {
        parts.headers.remove(*name);
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert(header::TE, HeaderValue::from_static("trailers"));
    parts.method = HttpMethod::POST;
    // What gRPC runs on; the gRPC-Web layer inside passes HTTP/2 through.
    parts.version = http::Version::HTTP_2;
    parts.uri = parts
        .uri
        .path()
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    http::Request::from_parts(
        parts,
        Body::new(http_body_util::Full::new(grpc_frame(&message))),
    )
}

/// The request message of a Connect call: the body of a POST, the `message`
/// query parameter of a GET.
async fn request_message(
    parts: &http::request::Parts,
    body: Body,
    limit: usize,
) -> Result<Bytes, (StatusCode, Status)> {
    if parts.method != HttpMethod::GET {
        let encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
        let body = read_body(body, limit).await?;
        return decompress(encoding.as_deref(), body, limit);
    }
    let query = parts.uri.query().unwrap_or_default();
    if query.len() > limit {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            Status::resource_exhausted("the request is over server.max_request_bytes"),
        ));
    }
    let mut message = None;
    let mut base64 = false;
    let mut compression = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "message" => message = Some(v.into_owned()),
            "base64" => base64 = v == "1",
            "compression" => compression = Some(v.to_ascii_lowercase()),
            _ => {}
        }
    }
    let message = message.unwrap_or_default();
    let message = if base64 {
        use base64::Engine;
        let trimmed = message.trim_end_matches('=');
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(trimmed)
            .map(Bytes::from)
            .map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    Status::invalid_argument("message is not base64url"),
                )
            })?
    } else {
        Bytes::from(message)
    };
    decompress(compression.as_deref(), message, limit)
}

/// `body` decoded from `encoding`: identity or gzip (what Connect clients send by
/// default), at most `limit` bytes once inflated, so a small compressed body
/// cannot unfold into a large one.
pub(crate) fn decompress(
    encoding: Option<&str>,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, (StatusCode, Status)> {
    match encoding {
        None | Some("identity") => Ok(body),
        Some("gzip") => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        Status::invalid_argument("the request body is not valid gzip"),
                    )
                })?;
            if out.len() > limit {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Status::resource_exhausted(format!(
                        "the request inflates to over {limit} bytes (server.max_request_bytes)"
                    )),
                ));
            }
            Ok(Bytes::from(out))
        }
        Some(_) => Err((
            StatusCode::NOT_IMPLEMENTED,
            Status::unimplemented("request compression must be identity or gzip"),
        )),
    }
}

/// The grpc-status carried by `trailers`, or by the headers of a
/// trailers-only answer.
fn status_of(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Status {
    trailers
        .and_then(Status::from_header_map)
        .or_else(|| Status::from_header_map(headers))
        .unwrap_or_else(|| Status::internal("the answer carried no status"))
}

/// How long a call may take: the caller's `connect-timeout-ms`, at most the
/// server's limit.
fn deadline(shared: &Shared, headers: &HeaderMap) -> std::time::Duration {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(shared.timeout, |ms| {
            shared.timeout.min(std::time::Duration::from_millis(ms))
        })
}

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call did not finish in time")
}

/// The request message in protobuf, or (for a caller the auth layer would
/// refuse) nothing: the body is then not read, and the call goes on to be
/// refused by the stack itself.
async fn admitted_message(
    shared: &Shared,
    method: &Method,
    codec: Codec,
    parts: &http::request::Parts,
    read: impl Future<Output = Result<Bytes, (StatusCode, Status)>>,
) -> Result<Bytes, (StatusCode, Status)> {
    if let Some(auth) = &shared.auth
        && !auth.admits(parts.uri.path(), &parts.headers).await
    {
        return Ok(Bytes::new());
    }
    let message = read.await?;
    to_protobuf(&method.input, codec, &message).map_err(|s| (http_of(&s), s))
}

fn http_of(status: &Status) -> StatusCode {
    error::http_status(status.code())
}

/// Headers of a gRPC answer that are gRPC's own, not the application's.
fn is_grpc_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("grpc-") || n == "content-type" || n == "te" || n == "trailer"
}

/// A Connect unary call: translated to gRPC, answered, translated back.
async fn unary<S, E>(
    mut inner: S,
    shared: &Shared,
    method: Arc<Method>,
    codec: Codec,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, E>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = E>,
{
    let (parts, body) = request.into_parts();
    let read = request_message(&parts, body, shared.max_request_bytes);
    let message = match admitted_message(shared, &method, codec, &parts, read).await {
        Ok(m) => m,
        Err((http, status)) => return Ok(error::error_response(http, &status)),
    };
    let within = deadline(shared, &parts.headers);
    let answered = tokio::time::timeout(within, async {
        let response = inner.call(grpc_request(parts, message)).await?;
        let (parts, body) = response.into_parts();
        Ok::<_, E>((parts, body.collect().await))
    })
    .await;
    let (parts, collected) = match answered {
        Ok(r) => r?,
        Err(_) => return Ok(error::unary_error(&deadline_exceeded())),
    };
    let collected = match collected {
        Ok(c) => c,
        Err(status) => return Ok(error::unary_error(&status)),
    };
    let trailers = collected.trailers().cloned();
    let status = status_of(&parts.headers, trailers.as_ref());
    if status.code() != Code::Ok {
        return Ok(error::unary_error(&status));
    }
    let data = collected.to_bytes();
    let framed_len = (data.len() >= 5)
        .then(|| u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize);
    if data.first() != Some(&0) || framed_len.map(|n| n + 5) != Some(data.len()) {
        return Ok(error::unary_error(&Status::internal(
            "the answer was not one uncompressed message",
        )));
    }
    let message = data.slice(5..);
    let body = match from_protobuf(&method.output, codec, message) {
        Ok(b) => b,
        Err(status) => return Ok(error::unary_error(&status)),
    };
    let mut out = http::Response::new(Body::new(http_body_util::Full::new(body)));
    for (name, value) in &parts.headers {
        if !is_grpc_header(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    if let Some(trailers) = &trailers {
        for (name, value) in trailers {
            if !is_grpc_header(name)
                && let Ok(name) = HeaderName::from_bytes(format!("trailer-{name}").as_bytes())
            {
                out.headers_mut().append(name, value.clone());
            }
        }
    }
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match codec {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        }),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use super::*;

    /// A stand-in for the gRPC stack that never answers.
    fn never() -> impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<http::Response<Body>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|_: http::Request<Body>| futures::future::pending())
    }

    fn layer() -> Connect<
        impl Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static,
    > {
        let methods = MethodTable::new(methods::pool(), &["custodia.consent.v1.ConsentService"]);
        ConnectLayer::new(methods, 1 << 20, Duration::from_secs(30), None).layer(never())
    }

    fn call(path: &str, content_type: &str, timeout_ms: Option<&str>) -> http::Request<Body> {
        let mut b = http::Request::post(path).header(header::CONTENT_TYPE, content_type);
        if let Some(ms) = timeout_ms {
            b = b.header("connect-timeout-ms", ms);
        }
        b.body(Body::new(http_body_util::Full::new(Bytes::from_static(
            b"{}",
        ))))
        .unwrap()
    }

    async fn body_json(response: http::Response<Body>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A Connect JSON CheckConsent (with `connect-timeout-ms`, if given) to a
    /// stack that never answers: the answer, and how long it took.
    async fn check_that_never_answers(
        timeout_ms: Option<&str>,
    ) -> (http::Response<Body>, Duration) {
        let started = tokio::time::Instant::now();
        let answer = layer()
            .call(call(
                "/custodia.consent.v1.ConsentService/CheckConsent",
                "application/json",
                timeout_ms,
            ))
            .await
            .unwrap();
        (answer, started.elapsed())
    }

    /// A unary call past the caller's `connect-timeout-ms` answers
    /// deadline_exceeded in Connect form (HTTP 504), not an empty 200 and not
    /// a gRPC status.
    #[tokio::test(start_paused = true)]
    async fn unary_call_past_its_deadline_answers_deadline_exceeded() {
        let (answer, waited) = check_that_never_answers(Some("250")).await;
        assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(waited, Duration::from_millis(250));
        assert_eq!(body_json(answer).await["code"], "deadline_exceeded");
    }

    /// Without a caller deadline, the server's request timeout (less a margin,
    /// so this layer answers before tonic's own timeout does in gRPC form).
    #[tokio::test(start_paused = true)]
    async fn without_a_caller_deadline_the_server_timeout_applies() {
        let (answer, waited) = check_that_never_answers(None).await;
        assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(waited, Duration::from_millis(29_900));
    }

    /// A streaming call whose answer does not start in time ends with an
    /// end-of-stream message carrying deadline_exceeded.
    #[tokio::test(start_paused = true)]
    async fn streaming_call_past_its_deadline_ends_with_deadline_exceeded() {
        let mut svc = layer();
        let mut request = call(
            "/custodia.consent.v1.ConsentService/WatchConsentChanges",
            "application/connect+json",
            Some("100"),
        );
        let mut framed = vec![0u8, 0, 0, 0, 2];
        framed.extend_from_slice(b"{}");
        *request.body_mut() = Body::new(http_body_util::Full::new(Bytes::from(framed)));
        let answer = svc.call(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes[0], 0b10, "an end-of-stream message");
        let end: serde_json::Value = serde_json::from_slice(&bytes[5..]).unwrap();
        assert_eq!(end["error"]["code"], "deadline_exceeded");
    }
}
