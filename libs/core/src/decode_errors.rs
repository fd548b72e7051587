//! Turns tonic's decode failures into INVALID_ARGUMENT. tonic reports a request
//! that is not valid protobuf (e.g. a string field that is not UTF-8) as INTERNAL,
//! which tells a caller the fault is ours and names no field; the fault is the
//! caller's, and prost's message names the field.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use crate::error::{ApiError, FieldViolation};

const DECODE_PREFIX: &str = "failed to decode Protobuf message: ";

/// Tower layer mapping request decode errors to INVALID_ARGUMENT with the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeErrorLayer;

impl<S> Layer<S> for DecodeErrorLayer {
    type Service = DecodeErrors<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DecodeErrors { inner }
    }
}

/// The service produced by [`DecodeErrorLayer`].
#[derive(Debug, Clone)]
pub struct DecodeErrors<S> {
    inner: S,
}

/// The INVALID_ARGUMENT that replaces a decode failure `message`, if it is one.
pub fn rewrite(status: &Status) -> Option<Status> {
    if status.code() != Code::Internal {
        return None;
    }
    let detail = status.message().strip_prefix(DECODE_PREFIX)?;
    // prost: "Msg.field: Inner.field: what went wrong"
    let mut parts: Vec<&str> = detail.split(": ").collect();
    let description = parts.pop().unwrap_or("malformed").to_string();
    let field = parts
        .iter()
        .filter_map(|p| p.rsplit('.').next())
        .collect::<Vec<_>>()
        .join(".");
    let field = if field.is_empty() {
        "request".to_string()
    } else {
        field
    };
    Some(
        ApiError::InvalidArgument(vec![FieldViolation {
            field,
            description: format!("{description} (the request is not valid protobuf)"),
        }])
        .into(),
    )
}

impl<S, B> Service<http::Request<B>> for DecodeErrors<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // Decode errors of unary and server-streaming calls come back before any
            // message, as a trailers-only response: the status is in the headers.
            match Status::from_header_map(response.headers()).and_then(|s| rewrite(&s)) {
                Some(status) => Ok(status.into_http()),
                None => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field() {
        let s = Status::internal(
            "failed to decode Protobuf message: AccessEvent.event_id: AppendEventsRequest.events: invalid string value: data is not UTF-8 encoded",
        );
        let r = rewrite(&s).unwrap();
        assert_eq!(r.code(), Code::InvalidArgument);
        assert!(r.message().contains("event_id.events"), "{}", r.message());
        assert!(rewrite(&Status::internal("internal error (reference x)")).is_none());
        assert!(rewrite(&Status::not_found("x")).is_none());
    }
}
