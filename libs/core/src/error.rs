//! The one mapping from domain errors to `tonic::Status`, with `google.rpc`
//! details: `ErrorInfo` (reason + domain) always, `BadRequest` field violations for
//! bad input. Internal causes are logged with a reference and never sent.
//!
//! Whatever a handler puts in an error, what leaves is bounded and sanitised
//! ([`crate::echo`]): a resource name is quoted as a short prefix, every text loses
//! invisible characters and email addresses and is cut, and the `grpc-message` and
//! the details stay well under the metadata limits of common clients (a few KB
//! in all, with percent-encoding and base64). A handler quoting a caller's value in
//! a description uses [`crate::echo::echo`] for the same short prefix.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::echo::{bounded, cut, echo};

/// `ErrorInfo.domain` of every custodia error.
pub const ERROR_DOMAIN: &str = "custodia";

/// Most bytes of a `grpc-message` (UTF-8, before percent-encoding).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Most bytes of one description or message text.
const MAX_TEXT_BYTES: usize = 512;
/// Most bytes of one field path.
const MAX_FIELD_BYTES: usize = 128;
/// Most bytes of field violations in the `BadRequest` detail (before base64);
/// the others are counted in `ErrorInfo.metadata["omitted_violations"]`. The
/// details repeat the message, so they stay under ~2.5 KB, ~3.3 KB in base64.
const MAX_VIOLATION_BYTES: usize = 1024;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `subject.value` or `purposes[2]`.
    pub field: String,
    /// What is wrong, in words a caller can act on.
    pub description: String,
}

/// Every error a custodia handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; each violation names its field.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named resource does not exist.
    #[error("{resource} `{name}` not found{}", in_field(field))]
    NotFound {
        /// Kind of resource, e.g. `purpose`.
        resource: &'static str,
        /// Its name or id as the caller gave it.
        name: String,
        /// The request field that named it (`decisions[0].purpose`), if known.
        field: Option<String>,
    },
    /// A resource with that identity already exists.
    #[error("{resource} `{name}` already exists")]
    AlreadyExists {
        /// Kind of resource.
        resource: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The call is valid but the system is not in a state to accept it.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable reason, e.g. `ILLEGAL_TRANSITION`.
        reason: &'static str,
        /// The reason in words, naming the current state.
        message: String,
    },
    /// No credentials, or credentials that do not authenticate.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but the principal lacks the needed scope.
    #[error("{0}")]
    PermissionDenied(String),
    /// A dependency is down; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// A quota is used up; `retry_after` says when the call would fit again
    /// (`RetryInfo`), unset when it never can (the call alone exceeds the quota).
    #[error("{message}")]
    ResourceExhausted {
        /// What is used up, naming the quota.
        message: String,
        /// When to retry.
        retry_after: Option<std::time::Duration>,
    },
    /// Anything else: logged in full, reported to the caller only by reference.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn describe(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// Bad input on a single field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// A resource that does not exist.
    pub fn not_found(resource: &'static str, name: impl Into<String>) -> Self {
        ApiError::NotFound {
            resource,
            name: name.into(),
            field: None,
        }
    }

    /// A NOT_FOUND that also names the request `field` that named the resource;
    /// other errors unchanged.
    pub fn in_field(self, at: impl Into<String>) -> Self {
        match self {
            ApiError::NotFound { resource, name, .. } => ApiError::NotFound {
                resource,
                name,
                field: Some(at.into()),
            },
            other => other,
        }
    }

    /// A call refused in the current state; `message` must name that state.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        ApiError::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    /// Wraps any internal failure (database, I/O, a bug).
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// An internal failure caused by a unique constraint (a key written by a
    /// concurrent or earlier call).
    pub fn is_unique_violation(&self) -> bool {
        let ApiError::Internal(e) = self else {
            return false;
        };
        e.chain().any(|cause| {
            cause
                .downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
                .is_some_and(|d| d.is_unique_violation())
        })
    }

    fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            ApiError::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            ApiError::NotFound { .. } => (Code::NotFound, "NOT_FOUND"),
            ApiError::AlreadyExists { .. } => (Code::AlreadyExists, "ALREADY_EXISTS"),
            ApiError::FailedPrecondition { reason, .. } => (Code::FailedPrecondition, reason),
            ApiError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            ApiError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            ApiError::Unavailable(_) => (Code::Unavailable, "UNAVAILABLE"),
            ApiError::ResourceExhausted { .. } => (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
            ApiError::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }
}

/// ` (field `f`)` after a NOT_FOUND's message, when the field is known.
fn in_field(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!(" (field `{f}`)"))
        .unwrap_or_default()
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let (code, reason) = err.code_and_reason();
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        if let ApiError::ResourceExhausted {
            retry_after: Some(after),
            ..
        } = &err
        {
            details.set_retry_info(Some(*after));
        }
        let message = match err {
            ApiError::Internal(cause) => {
                let reference = uuid::Uuid::new_v4();
                tracing::error!(%reference, error = ?cause, "internal error");
                details.set_error_info(
                    reason,
                    ERROR_DOMAIN,
                    HashMap::from([("reference".to_string(), reference.to_string())]),
                );
                return Status::with_error_details(
                    code,
                    format!("internal error (reference {reference})"),
                    details,
                );
            }
            ApiError::InvalidArgument(violations) => {
                invalid_argument(&violations, &mut details, &mut metadata)
            }
            ApiError::NotFound {
                resource,
                name,
                field,
            } => {
                let name = echo(&name);
                let field = field.map(|f| bounded(&f, MAX_FIELD_BYTES));
                let message = format!("{resource} `{name}` not found{}", in_field(&field));
                metadata.insert("resource".to_string(), resource.to_string());
                metadata.insert("name".to_string(), name);
                if let Some(f) = field {
                    metadata.insert("field".to_string(), f);
                }
                message
            }
            ApiError::AlreadyExists { resource, name } => {
                let name = echo(&name);
                let message = format!("{resource} `{name}` already exists");
                metadata.insert("resource".to_string(), resource.to_string());
                metadata.insert("name".to_string(), name);
                message
            }
            ApiError::FailedPrecondition { message, .. }
            | ApiError::Unauthenticated(message)
            | ApiError::PermissionDenied(message)
            | ApiError::Unavailable(message) => bounded(&message, MAX_TEXT_BYTES),
            ApiError::ResourceExhausted { message, .. } => bounded(&message, MAX_TEXT_BYTES),
        };
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        Status::with_error_details(code, cut(message, MAX_MESSAGE_BYTES), details)
    }
}

/// The message of an INVALID_ARGUMENT, `invalid argument: f: d; g: e`, with as
/// many sanitised violations as fit in [`MAX_MESSAGE_BYTES`] and a count of the
/// others; the `BadRequest` detail gets as many as fit in [`MAX_VIOLATION_BYTES`].
/// The first violation is always shown in both.
fn invalid_argument(
    violations: &[FieldViolation],
    details: &mut ErrorDetails,
    metadata: &mut HashMap<String, String>,
) -> String {
    // Room for "; and 4294967295 more".
    let room = MAX_MESSAGE_BYTES - 24;
    let mut message = String::from("invalid argument: ");
    let mut in_message = 0;
    let mut in_details = 0;
    let mut detail_bytes = 0;
    for (i, v) in violations.iter().enumerate() {
        let (field, description) = (
            bounded(&v.field, MAX_FIELD_BYTES),
            bounded(&v.description, MAX_TEXT_BYTES),
        );
        let piece = format!("{}{field}: {description}", if i == 0 { "" } else { "; " });
        let message_fits = i == 0 || (in_message == i && message.len() + piece.len() <= room);
        detail_bytes += field.len() + description.len();
        let details_fit = i == 0 || (in_details == i && detail_bytes <= MAX_VIOLATION_BYTES);
        if !message_fits && !details_fit {
            break;
        }
        if message_fits {
            message.push_str(&piece);
            in_message += 1;
        }
        if details_fit {
            details.add_bad_request_violation(field, description);
            in_details += 1;
        }
    }
    if in_message < violations.len() {
        message.push_str(&format!("; and {} more", violations.len() - in_message));
    }
    if in_details < violations.len() {
        metadata.insert(
            "omitted_violations".to_string(),
            (violations.len() - in_details).to_string(),
        );
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_field_when_known() {
        let plain: Status = ApiError::not_found("purpose", "purposes/nope").into();
        assert_eq!(plain.code(), Code::NotFound);
        assert_eq!(plain.message(), "purpose `purposes/nope` not found");
        let status: Status = ApiError::not_found("purpose", "purposes/nope")
            .in_field("decisions[0].purpose")
            .into();
        assert_eq!(
            status.message(),
            "purpose `purposes/nope` not found (field `decisions[0].purpose`)"
        );
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.metadata["field"], "decisions[0].purpose");
        assert_eq!(info.metadata["name"], "purposes/nope");
    }

    #[test]
    fn invalid_argument_names_fields_in_message_and_details() {
        let status = Status::from(ApiError::InvalidArgument(vec![
            FieldViolation {
                field: "subject.value".into(),
                description: "must not be empty".into(),
            },
            FieldViolation {
                field: "purposes[1]".into(),
                description: "unknown purpose".into(),
            },
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("subject.value"));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request detail");
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[1].field, "purposes[1]");
        let info = details.error_info().expect("error info");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.reason, "INVALID_ARGUMENT");
    }

    #[test]
    fn internal_causes_never_reach_the_caller() {
        let status = Status::from(ApiError::internal(anyhow::anyhow!(
            "connection to postgres://admin:hunter2@db refused"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
        assert!(status.message().starts_with("internal error (reference "));
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "INTERNAL");
        assert!(info.metadata.contains_key("reference"));
    }

    #[test]
    fn resource_exhausted_says_when_to_retry() {
        let status = Status::from(ApiError::ResourceExhausted {
            message: "quota used up".into(),
            retry_after: Some(std::time::Duration::from_secs(3)),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        let retry = details.retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(std::time::Duration::from_secs(3)));
        assert_eq!(details.error_info().unwrap().reason, "RESOURCE_EXHAUSTED");
        let never = Status::from(ApiError::ResourceExhausted {
            message: "the call alone exceeds the quota".into(),
            retry_after: None,
        });
        assert!(never.get_error_details().retry_info().is_none());
    }

    #[test]
    fn precondition_keeps_reason_and_message() {
        let status = Status::from(ApiError::precondition(
            "ILLEGAL_TRANSITION",
            "request is completed; it cannot be rejected",
        ));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("completed"));
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "ILLEGAL_TRANSITION");
    }

    #[test]
    fn a_long_name_is_quoted_as_a_short_prefix() {
        let long = format!("purposes/{}", "x".repeat(20_000));
        for err in [
            ApiError::not_found("purpose", long.clone()).in_field("purpose"),
            ApiError::AlreadyExists {
                resource: "purpose",
                name: long.clone(),
            },
        ] {
            let status = Status::from(err);
            assert!(status.message().len() < 200, "{}", status.message());
            assert!(
                status.message().contains("`purposes/xxx"),
                "{}",
                status.message()
            );
            assert!(status.message().contains("x…`"), "{}", status.message());
            let info = status.get_error_details().error_info().cloned().unwrap();
            assert_eq!(
                info.metadata["name"].chars().count(),
                crate::echo::MAX_ECHO_CHARS + 1
            );
            assert!(status.details().len() < 400, "{}", status.details().len());
        }
    }

    #[test]
    fn message_and_details_stay_small_whatever_the_violations() {
        let huge = "y".repeat(20_000);
        let many: Vec<FieldViolation> = (0..10_000)
            .map(|i| FieldViolation {
                field: format!("labels[{i}]"),
                description: format!("`{huge}` is not a label"),
            })
            .collect();
        let status = Status::from(ApiError::InvalidArgument(many));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() <= MAX_MESSAGE_BYTES,
            "{}",
            status.message().len()
        );
        assert!(status.message().ends_with("more"), "{}", status.message());
        // A quoted value is cut short; an unquoted one is bounded with its text.
        assert!(!status.message().contains(&huge[..100]));
        let unquoted = Status::from(ApiError::invalid("name", format!("{huge} is wrong")));
        assert!(
            unquoted.message().len() <= 512 + 64,
            "{}",
            unquoted.message().len()
        );
        assert!(
            status.details().len() < 3 * 1024,
            "{}",
            status.details().len()
        );
        let details = status.get_error_details();
        let shown = details.bad_request().unwrap().field_violations.len();
        assert!(shown >= 1);
        let omitted: usize = details.error_info().unwrap().metadata["omitted_violations"]
            .parse()
            .unwrap();
        assert_eq!(shown + omitted, 10_000);
        // One violation, however long, is shown.
        let one = Status::from(ApiError::invalid("name", huge.clone()));
        let bad = one.get_error_details().bad_request().cloned().unwrap();
        assert_eq!(bad.field_violations.len(), 1);
        assert!(bad.field_violations[0].description.len() <= 512);
    }

    #[test]
    fn texts_lose_invisible_characters_and_email_addresses() {
        let status = Status::from(ApiError::precondition(
            "ILLEGAL_TRANSITION",
            "request `requests/ada@example.edu\u{202E}` is\ncompleted",
        ));
        assert_eq!(
            status.message(),
            "request `requests/[email address]` is completed"
        );
        let status = Status::from(ApiError::not_found("purpose", "purposes/ada@example.edu"));
        assert!(!status.message().contains("ada"), "{}", status.message());
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert!(!info.metadata["name"].contains("ada"));
        let status = Status::from(ApiError::invalid(
            "purpose",
            "`bob@example.edu` is not a purpose name",
        ));
        assert!(!status.message().contains("bob"), "{}", status.message());
        let bad = status.get_error_details().bad_request().cloned().unwrap();
        assert!(!bad.field_violations[0].description.contains("bob"));
    }
}
