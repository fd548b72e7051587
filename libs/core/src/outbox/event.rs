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

/// Access events of one call that differ only in id and subject (the subjects of
/// a batch check): the shared fields once, then each event's id and subject. The
/// outbox stores them compactly and delivers them as separate events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Every field but the id and the subject.
    shared: AccessEvent,
    members: Vec<BatchMember>,
}

/// The id and subject of one event of an [`EventBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BatchMember {
    #[serde(rename = "i")]
    id: Uuid,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    subject_type: Option<String>,
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    subject_hash: Option<String>,
}

impl EventBatch {
    /// An empty batch of events like `shared` (its id and subject are ignored).
    pub fn new(mut shared: AccessEvent) -> Self {
        shared.subject_type = None;
        shared.subject_hash = None;
        Self {
            shared,
            members: Vec::new(),
        }
    }

    /// Adds the event of one subject, with a fresh time-ordered id.
    pub fn push(&mut self, subject_type: &str, subject_hash: &str) {
        self.members.push(BatchMember {
            id: Uuid::now_v7(),
            subject_type: Some(subject_type.to_string()),
            subject_hash: Some(subject_hash.to_string()),
        });
    }

    /// A batch of the one event `e`.
    pub fn single(e: AccessEvent) -> Self {
        let member = BatchMember {
            id: e.event_id,
            subject_type: e.subject_type.clone(),
            subject_hash: e.subject_hash.clone(),
        };
        Self {
            members: vec![member],
            ..Self::new(e)
        }
    }

    /// `events` as batches: each run of events that differ only in id and subject
    /// becomes one batch, in order.
    pub fn runs(events: &[AccessEvent]) -> Vec<Self> {
        let mut out: Vec<Self> = Vec::new();
        for e in events {
            match out.last_mut() {
                Some(b) if b.fits(e) => b.members.push(BatchMember {
                    id: e.event_id,
                    subject_type: e.subject_type.clone(),
                    subject_hash: e.subject_hash.clone(),
                }),
                _ => out.push(Self::single(e.clone())),
            }
        }
        out
    }

    /// Whether `e` differs from this batch's events at most in id and subject.
    fn fits(&self, e: &AccessEvent) -> bool {
        let a = &self.shared;
        a.time == e.time
            && a.actor == e.actor
            && a.service == e.service
            && a.method == e.method
            && a.action == e.action
            && a.resource == e.resource
            && a.purpose == e.purpose
            && a.outcome == e.outcome
            && a.status_code == e.status_code
            && a.trace_id == e.trace_id
            && a.detail == e.detail
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The fields every event of the batch shares (id and subject unset).
    pub fn shared(&self) -> &AccessEvent {
        &self.shared
    }

    /// Each event's subject `(type, keyed hash)`, when every event has one.
    pub fn subjects(&self) -> Option<Vec<(&str, &str)>> {
        self.members
            .iter()
            .map(|m| Some((m.subject_type.as_deref()?, m.subject_hash.as_deref()?)))
            .collect()
    }

    /// Id of the first event (what the outbox knows a stored batch by).
    pub fn first_id(&self) -> Option<Uuid> {
        self.members.first().map(|m| m.id)
    }

    /// Splits into batches of at most `n` events each.
    pub fn chunks(&self, n: usize) -> impl Iterator<Item = EventBatch> + '_ {
        self.members.chunks(n.max(1)).map(|m| Self {
            shared: self.shared.clone(),
            members: m.to_vec(),
        })
    }

    /// The events, in order.
    pub fn into_events(self) -> Vec<AccessEvent> {
        let shared = self.shared;
        self.members
            .into_iter()
            .map(|m| AccessEvent {
                event_id: m.id,
                subject_type: m.subject_type,
                subject_hash: m.subject_hash,
                ..shared.clone()
            })
            .collect()
    }
}
