//! The one mapping from domain errors to `tonic::Status`, with `google.rpc`
//! details: `ErrorInfo` (reason + domain) always, `BadRequest` field violations for
//! bad input. Internal causes are logged with a reference and never sent.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every custodia error.
pub const ERROR_DOMAIN: &str = "custodia";

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
        if let ApiError::ResourceExhausted {
            retry_after: Some(after),
            ..
        } = &err
        {
            details.set_retry_info(Some(*after));
        }
        let message = match &err {
            ApiError::Internal(cause) => {
                let reference = uuid::Uuid::new_v4();
                tracing::error!(%reference, error = ?cause, "internal error");
                details.set_error_info(
                    reason,
                    ERROR_DOMAIN,
                    std::collections::HashMap::from([(
                        "reference".to_string(),
                        reference.to_string(),
                    )]),
                );
                return Status::with_error_details(
                    code,
                    format!("internal error (reference {reference})"),
                    details,
                );
            }
            ApiError::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                err.to_string()
            }
            _ => err.to_string(),
        };
        let metadata: std::collections::HashMap<String, String> = match &err {
            ApiError::NotFound {
                resource,
                name,
                field,
            } => [
                ("resource".to_string(), resource.to_string()),
                ("name".to_string(), name.clone()),
            ]
            .into_iter()
            .chain(field.iter().map(|f| ("field".to_string(), f.clone())))
            .collect(),
            ApiError::AlreadyExists { resource, name } => [
                ("resource".to_string(), resource.to_string()),
                ("name".to_string(), name.clone()),
            ]
            .into_iter()
            .collect(),
            _ => Default::default(),
        };
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
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
}
