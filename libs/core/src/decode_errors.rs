//! Turns tonic's decode failures into errors that name the caller's fault.
//!
//! - A request that is not valid protobuf (e.g. a string field that is not
//!   UTF-8): tonic says INTERNAL, which tells a caller the fault is ours and
//!   names no field. It becomes INVALID_ARGUMENT naming the proto field path,
//!   outermost first (`subject.type`); prost reports the path innermost first
//!   with Rust names (`SubjectRef.r#type: RecordConsentRequest.subject: ...`).
//! - A message over the decoding limit (`server.max_request_bytes`): tonic says
//!   OUT_OF_RANGE, which means "iterate no further". It becomes
//!   RESOURCE_EXHAUSTED with an `ErrorInfo` (`REQUEST_TOO_LARGE`) naming the limit.

use std::{
    collections::HashMap,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tonic::{Code, Status, body::Body};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::error::{ApiError, ERROR_DOMAIN, FieldViolation};

/// How prost's decode errors begin (tonic-prost passes prost's text on).
const DECODE_PREFIX: &str = "failed to decode Protobuf message: ";
/// How tonic's codec reports a message over `max_decoding_message_size`.
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large: ";
/// The setting that sets the decoding limit of custodia's services.
const LIMIT_SETTING: &str = "server.max_request_bytes";

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

/// The status that replaces `status` if it is a decode failure of the request.
pub fn rewrite(status: &Status) -> Option<Status> {
    match status.code() {
        Code::Internal => not_protobuf(status.message()),
        Code::OutOfRange => too_large(status.message()),
        _ => None,
    }
}

/// INVALID_ARGUMENT for prost's "Inner.field: Outer.field: what went wrong".
fn not_protobuf(message: &str) -> Option<Status> {
    let detail = message.strip_prefix(DECODE_PREFIX)?;
    // The stack entries come first, each `Message.field`; the description may hold
    // ": " itself ("invalid string value: data is not UTF-8 encoded").
    let mut fields = Vec::new();
    let mut rest = detail;
    while let Some((entry, tail)) = rest.split_once(": ") {
        let Some(field) = stack_field(entry) else {
            break;
        };
        fields.push(field);
        rest = tail;
    }
    fields.reverse();
    let field = if fields.is_empty() {
        "request".to_string()
    } else {
        fields.join(".")
    };
    Some(
        ApiError::InvalidArgument(vec![FieldViolation {
            field,
            description: format!("{rest} (the request is not valid protobuf)"),
        }])
        .into(),
    )
}

/// The proto name of the field of a prost stack entry `Message.field` (`r#type`
/// is `type`), or `None` if `entry` is not one.
fn stack_field(entry: &str) -> Option<&str> {
    let (message, field) = entry.split_once('.')?;
    let field = field.strip_prefix("r#").unwrap_or(field);
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (ident(message) && ident(field)).then_some(field)
}

/// RESOURCE_EXHAUSTED for tonic's "decoded message length too large: found N
/// bytes, the limit is: L bytes".
fn too_large(message: &str) -> Option<Status> {
    let detail = message.strip_prefix(TOO_LARGE_PREFIX)?;
    let number_after = |label: &str| -> Option<String> {
        let (_, tail) = detail.split_once(label)?;
        let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        (!digits.is_empty()).then_some(digits)
    };
    let size = number_after("found ")?;
    let limit = number_after("the limit is: ")?;
    let details = ErrorDetails::with_error_info(
        "REQUEST_TOO_LARGE",
        ERROR_DOMAIN,
        HashMap::from([
            ("limit".to_string(), LIMIT_SETTING.to_string()),
            ("limit_bytes".to_string(), limit.clone()),
            ("size_bytes".to_string(), size.clone()),
        ]),
    );
    Some(Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "the request message is {size} bytes; the server accepts at most {limit} \
             ({LIMIT_SETTING})"
        ),
        details,
    ))
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
    use prost::Message;

    use super::*;

    /// The status tonic-prost makes of a real prost decode error of `bytes` as `M`.
    fn decode_failure<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> Status {
        let error = M::decode(bytes).expect_err("not valid protobuf");
        Status::internal(error.to_string())
    }

    fn violation(status: &Status) -> (String, String) {
        let bad = status.get_error_details().bad_request().cloned().unwrap();
        let v = &bad.field_violations[0];
        (v.field.clone(), v.description.clone())
    }

    #[test]
    fn names_the_proto_field_path_outermost_first() {
        // RecordConsentRequest.subject (1) = SubjectRef { type (1) = 0xFF 0xFE }
        let s = decode_failure::<custodia_proto::consent::v1::RecordConsentRequest>(&[
            0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe,
        ]);
        assert!(
            s.message()
                .contains("SubjectRef.r#type: RecordConsentRequest.subject: "),
            "prost's own order, innermost first: {}",
            s.message()
        );
        let r = rewrite(&s).unwrap();
        assert_eq!(r.code(), Code::InvalidArgument);
        let (field, description) = violation(&r);
        assert_eq!(field, "subject.type");
        assert!(
            description.starts_with("invalid string value: data is not UTF-8 encoded"),
            "{description}"
        );
        assert!(r.message().contains("subject.type"), "{}", r.message());

        // AppendEventsRequest.events (1, repeated) = AccessEvent { event_id (1) = 0xFF }
        let s = decode_failure::<custodia_proto::audit::v1::AppendEventsRequest>(&[
            0x0a, 0x03, 0x0a, 0x01, 0xff,
        ]);
        assert_eq!(violation(&rewrite(&s).unwrap()).0, "events.event_id");

        // Broken before any field (a key with wire type 7): the request as a whole.
        let s = decode_failure::<custodia_proto::audit::v1::AppendEventsRequest>(&[0x0f]);
        let (field, description) = violation(&rewrite(&s).unwrap());
        assert_eq!(field, "request", "{description}");

        assert!(rewrite(&Status::internal("internal error (reference x)")).is_none());
        assert!(rewrite(&Status::not_found("x")).is_none());
    }

    #[test]
    fn an_over_limit_message_is_resource_exhausted_naming_the_limit() {
        // tonic's codec: a message length over max_decoding_message_size.
        let s = Status::out_of_range(
            "Error, decoded message length too large: found 4106 bytes, the limit is: 2048 bytes",
        );
        let r = rewrite(&s).unwrap();
        assert_eq!(r.code(), Code::ResourceExhausted);
        assert!(
            r.message().contains("server.max_request_bytes"),
            "{}",
            r.message()
        );
        let info = r.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "REQUEST_TOO_LARGE");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["limit"], "server.max_request_bytes");
        assert_eq!(info.metadata["limit_bytes"], "2048");
        assert_eq!(info.metadata["size_bytes"], "4106");
        // Other OUT_OF_RANGE errors (a page past the end, say) are left alone.
        assert!(rewrite(&Status::out_of_range("page 9 is past the end")).is_none());
    }
}
