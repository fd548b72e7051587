use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Result of the call an access event describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call succeeded.
    Ok,
    /// Refused: UNAUTHENTICATED or PERMISSION_DENIED.
    Denied,
    /// Failed after it was authorised.
    Error,
}

/// One access to (or attempt on) personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// Unique id; audit-log appends each id once.
    pub event_id: Uuid,
    /// When the access happened.
    pub time: DateTime<Utc>,
    /// Authenticated principal, or `anonymous` for unauthenticated calls.
    pub actor: String,
    /// gRPC service that served the call, e.g. `custodia.consent.v1.ConsentService`.
    pub service: String,
    /// gRPC method, e.g. `CheckConsent`.
    pub method: String,
    /// What was done: `read`, `list`, `check`, `create`, `update`, `delete`,
    /// `export`, `erase`, `restrict`, `rectify` (derived from the method by default).
    pub action: String,
    /// Subject identifier type (`email`, ...), when the call concerns one subject.
    pub subject_type: Option<String>,
    /// Keyed hash of the normalised subject identifier.
    pub subject_hash: Option<String>,
    /// Resource name touched, e.g. `purposes/newsletter`.
    pub resource: String,
    /// Purpose of the processing, where known.
    pub purpose: Option<String>,
    /// Result of the call.
    pub outcome: Outcome,
    /// gRPC status code returned (0 = OK).
    pub status_code: i32,
    /// W3C trace id of the call, for correlation with traces and logs.
    pub trace_id: String,
    /// Details as a JSON object ("" when none), e.g. the denial reason.
    pub detail: String,
}

impl AccessEvent {
    /// An event with a fresh time-ordered id; fill in the optional fields after.
    pub fn new(
        time: DateTime<Utc>,
        actor: impl Into<String>,
        service: impl Into<String>,
        method: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        let method = method.into();
        Self {
            event_id: Uuid::now_v7(),
            time,
            actor: actor.into(),
            service: service.into(),
            action: action_of(&method).to_string(),
            method,
            subject_type: None,
            subject_hash: None,
            resource: String::new(),
            purpose: None,
            outcome,
            status_code: 0,
            trace_id: String::new(),
            detail: String::new(),
        }
    }
}

/// The action verb of a gRPC method name, by its leading word.
pub fn action_of(method: &str) -> &'static str {
    const VERBS: &[(&str, &str)] = &[
        ("Get", "read"),
        ("Watch", "read"),
        ("Generate", "read"),
        ("List", "list"),
        ("Check", "check"),
        ("BatchCheck", "check"),
        ("Export", "export"),
        ("Erase", "erase"),
        ("Shred", "erase"),
        ("Restrict", "restrict"),
        ("Rectify", "rectify"),
        ("Delete", "delete"),
        ("Withdraw", "update"),
        ("Update", "update"),
        ("Create", "create"),
        ("Record", "create"),
        ("Submit", "create"),
        ("Report", "create"),
        ("Register", "create"),
        ("Publish", "create"),
        ("Append", "create"),
        ("Add", "create"),
    ];
    VERBS
        .iter()
        .filter(|(prefix, _)| method.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or("other", |(_, verb)| verb)
}
