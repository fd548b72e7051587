//! Connect server streaming: one enveloped request message in, enveloped
//! response messages out, then an end-of-stream message (flag 0x02) carrying
//! the error, if any, and the trailers as `metadata`. The HTTP status is 200;
//! errors travel in the end-of-stream message.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::Frame;
use prost_reflect::MessageDescriptor;
use tonic::{Code, Status, body::Body};
use tower::Service;

use super::{
    Codec, Method, Shared, admitted_message, deadline, deadline_exceeded, decompress, error,
    from_protobuf, grpc_request, is_grpc_header, read_body,
};

/// Envelope flag of compressed data.
const COMPRESSED: u8 = 0x01;
/// Envelope flag of the end-of-stream message.
const END_STREAM: u8 = 0x02;

fn envelope(flags: u8, message: &[u8], out: &mut BytesMut) {
    out.put_u8(flags);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
}

/// The end-of-stream message: `{"error": ..., "metadata": ...}`.
fn end_stream(status: Option<&Status>, trailers: &HeaderMap) -> Bytes {
    let mut end = serde_json::Map::new();
    if let Some(status) = status.filter(|s| s.code() != Code::Ok) {
        end.insert("error".into(), error::error_json(status));
    }
    let mut metadata = serde_json::Map::new();
    for (name, value) in trailers {
        if is_grpc_header(name) {
            continue;
        }
        let entry = metadata
            .entry(name.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let (serde_json::Value::Array(list), Ok(v)) = (entry, value.to_str()) {
            list.push(v.into());
        }
    }
    if !metadata.is_empty() {
        end.insert("metadata".into(), serde_json::Value::Object(metadata));
    }
    let json = serde_json::to_vec(&serde_json::Value::Object(end)).expect("JSON of a JSON value");
    let mut out = BytesMut::new();
    envelope(END_STREAM, &json, &mut out);
    out.freeze()
}

fn response(codec: Codec, body: Body) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match codec {
            Codec::Json => "application/connect+json",
            Codec::Proto => "application/connect+proto",
        }),
    );
    response
}

/// A stream that ends at once with `status`.
fn failed(codec: Codec, status: &Status) -> http::Response<Body> {
    response(
        codec,
        Body::new(http_body_util::Full::new(end_stream(
            Some(status),
            &HeaderMap::new(),
        ))),
    )
}

/// A Connect server-streaming call: translated to gRPC, its answer streamed back.
pub(super) async fn call<S, E>(
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
    let encoding = parts
        .headers
        .get("connect-content-encoding")
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    let read = async {
        let mut body = read_body(body, shared.max_request_bytes).await?;
        if body.len() < 5 {
            return Err((
                http::StatusCode::BAD_REQUEST,
                Status::invalid_argument("the request is not one enveloped message"),
            ));
        }
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        if body.len() != len {
            return Err((
                http::StatusCode::BAD_REQUEST,
                Status::invalid_argument("the request must be exactly one enveloped message"),
            ));
        }
        if flags & COMPRESSED != 0 {
            decompress(encoding.as_deref(), body, shared.max_request_bytes)
        } else {
            Ok(body)
        }
    };
    let message = match admitted_message(shared, &method, codec, &parts, read).await {
        Ok(m) => m,
        Err((_, status)) => return Ok(failed(codec, &status)),
    };
    let within = deadline(shared, &parts.headers);
    let answer = match tokio::time::timeout(within, inner.call(grpc_request(parts, message))).await
    {
        Ok(answer) => answer?,
        Err(_) => return Ok(failed(codec, &deadline_exceeded())),
    };
    let (parts, body) = answer.into_parts();
    // A trailers-only answer (refused before any message): the status is in the headers.
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return Ok(failed(codec, &status));
    }
    let mut out = response(
        codec,
        Body::new(Translated {
            inner: body,
            codec,
            output: method.output.clone(),
            buf: BytesMut::new(),
            done: false,
        }),
    );
    for (name, value) in &parts.headers {
        if !is_grpc_header(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(out)
}

/// A gRPC response body read as Connect envelopes.
struct Translated {
    inner: Body,
    codec: Codec,
    output: MessageDescriptor,
    /// Bytes of a gRPC message not complete yet.
    buf: BytesMut,
    done: bool,
}

impl Translated {
    /// The complete messages in `buf`, as envelopes.
    fn drain(&mut self) -> Result<BytesMut, Status> {
        let mut out = BytesMut::new();
        while self.buf.len() >= 5 {
            let len =
                u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if self.buf.len() < 5 + len {
                break;
            }
            let mut frame = self.buf.split_to(5 + len);
            if frame[0] != 0 {
                return Err(Status::internal("a compressed message in the answer"));
            }
            frame.advance(5);
            let message = from_protobuf(&self.output, self.codec, frame.freeze())?;
            envelope(0, &message, &mut out);
        }
        Ok(out)
    }

    fn finish(&mut self, status: Option<&Status>, trailers: &HeaderMap) -> Frame<Bytes> {
        self.done = true;
        Frame::data(end_stream(status, trailers))
    }
}

impl http_body::Body for Translated {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let status = Status::internal("the stream ended without a status");
                    return Poll::Ready(Some(Ok(this.finish(Some(&status), &HeaderMap::new()))));
                }
                Poll::Ready(Some(Err(status))) => {
                    return Poll::Ready(Some(Ok(this.finish(Some(&status), &HeaderMap::new()))));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        match this.drain() {
                            Ok(out) if out.is_empty() => continue,
                            Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out.freeze())))),
                            Err(status) => {
                                return Poll::Ready(Some(Ok(
                                    this.finish(Some(&status), &HeaderMap::new())
                                )));
                            }
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        let status = Status::from_header_map(&trailers);
                        return Poll::Ready(Some(Ok(this.finish(status.as_ref(), &trailers))));
                    }
                },
            }
        }
    }
}
