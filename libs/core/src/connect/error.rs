//! Connect errors: the JSON body `{"code", "message", "details"}` and the HTTP
//! status of each code (connectrpc.com/docs/protocol, "Error codes", as amended
//! by RFC 003: `failed_precondition` is 400, `unimplemented` 501). The details
//! are the `google.rpc.Status` details the gRPC side sends (ErrorInfo,
//! BadRequest, RetryInfo), each with its protobuf bytes in `value` and, for
//! callers that cannot decode protobuf (a PHP script), the same as JSON in
//! `debug`.

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use prost::Message;
use tonic::{Code, Status, body::Body};

use super::methods::pool;

/// The Connect name of `code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status of a unary Connect error with `code`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `google.rpc.Status` as sent in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The Connect error object of `status`.
pub fn error_json(status: &Status) -> serde_json::Value {
    let mut error = serde_json::json!({
        "code": code_name(status.code()),
        "message": status.message(),
    });
    let details: Vec<serde_json::Value> = RpcStatus::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default()
        .into_iter()
        .map(|any| {
            let kind = any
                .type_url
                .rsplit_once('/')
                .map_or(any.type_url.as_str(), |(_, t)| t)
                .to_string();
            let mut detail = serde_json::json!({
                "type": kind,
                "value": STANDARD_NO_PAD.encode(&any.value),
            });
            if let Some(desc) = pool().get_message_by_name(&kind)
                && let Ok(message) =
                    prost_reflect::DynamicMessage::decode(desc, any.value.as_slice())
                && let Ok(debug) = serde_json::to_value(&message)
            {
                detail["debug"] = debug;
            }
            detail
        })
        .collect();
    if !details.is_empty() {
        error["details"] = serde_json::Value::Array(details);
    }
    error
}

/// A unary Connect error response for `status`.
pub fn unary_error(status: &Status) -> http::Response<Body> {
    error_response(http_status(status.code()), status)
}

/// A Connect error response with an explicit HTTP status (415, 413, 405, 404).
pub fn error_response(http: StatusCode, status: &Status) -> http::Response<Body> {
    let body = serde_json::to_vec(&error_json(status)).expect("JSON of a JSON value");
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *response.status_mut() = http;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn codes_map_to_the_connect_table() {
        assert_eq!(http_status(Code::InvalidArgument), 400);
        assert_eq!(http_status(Code::FailedPrecondition), 400);
        assert_eq!(http_status(Code::Unauthenticated), 401);
        assert_eq!(http_status(Code::PermissionDenied), 403);
        assert_eq!(http_status(Code::NotFound), 404);
        assert_eq!(http_status(Code::AlreadyExists), 409);
        assert_eq!(http_status(Code::ResourceExhausted), 429);
        assert_eq!(http_status(Code::Unimplemented), 501);
        assert_eq!(http_status(Code::Unavailable), 503);
        assert_eq!(code_name(Code::Cancelled), "canceled");
    }

    #[test]
    fn details_keep_bytes_and_show_json() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("subject.value", "is required");
        details.set_error_info(
            "INVALID_ARGUMENT",
            "custodia",
            std::collections::HashMap::<String, String>::new(),
        );
        let status = Status::with_error_details(Code::InvalidArgument, "bad", details);
        let json = error_json(&status);
        assert_eq!(json["code"], "invalid_argument");
        assert_eq!(json["message"], "bad");
        let list = json["details"].as_array().unwrap();
        let bad = list
            .iter()
            .find(|d| d["type"] == "google.rpc.BadRequest")
            .expect("BadRequest");
        assert_eq!(bad["debug"]["fieldViolations"][0]["field"], "subject.value");
        assert!(
            STANDARD_NO_PAD
                .decode(bad["value"].as_str().unwrap())
                .is_ok()
        );
        assert!(list.iter().any(|d| d["type"] == "google.rpc.ErrorInfo"));
    }
}
