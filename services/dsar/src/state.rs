//! The request state machine and the rules that gate each change.
//!
//! ```text
//!   SubmitRequest ──> RECEIVED ──VerifyIdentity──> IDENTITY_VERIFICATION
//!        (VerifyIdentity again while there; VERIFIED unlocks StartProcessing)
//!   IDENTITY_VERIFICATION ──StartProcessing──> IN_PROGRESS ──CompleteRequest──> COMPLETED
//!   any state before a terminal one ──RejectRequest──> REJECTED
//!                                   ──CancelRequest──> CANCELLED
//! ```
//!
//! Being extended is a flag with its own dates, allowed once, before the
//! original deadline, in any non-terminal state. Every refusal is
//! FAILED_PRECONDITION and names the current state.

use custodia_core::ApiError;
use custodia_proto::dsar::v1::RequestState;

use crate::store::{Loaded, state_str};

/// Whether `s` is final.
pub fn is_terminal(s: RequestState) -> bool {
    matches!(
        s,
        RequestState::Completed | RequestState::Rejected | RequestState::Cancelled
    )
}

/// A refusal naming the request's current state.
pub fn refuse(l: &Loaded, reason: &'static str, why: impl std::fmt::Display) -> ApiError {
    ApiError::precondition(
        reason,
        format!(
            "request `requests/{}` is {}; {why}",
            l.id,
            state_str(l.state())
        ),
    )
}

/// `l` must be in one of `allowed` to `change`.
pub fn require(l: &Loaded, allowed: &[RequestState], change: &str) -> Result<(), ApiError> {
    if allowed.contains(&l.state()) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(|s| state_str(*s)).collect();
        Err(refuse(
            l,
            "ILLEGAL_TRANSITION",
            format!("it can {change} only when {}", names.join(" or ")),
        ))
    }
}

/// States a request can still be changed in.
pub const OPEN: &[RequestState] = &[
    RequestState::Received,
    RequestState::IdentityVerification,
    RequestState::InProgress,
];
