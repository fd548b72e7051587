//! Realistic access events: what consent, dsar and breach forwarders send.
//!
//! Field sizes follow what the services record: a UUID event id, a principal, the
//! full gRPC service name, a method, a resource name of ~50 characters, a purpose, a
//! W3C trace id and a small JSON `details` object (~150 bytes). Half of the events
//! concern a data subject identified by an email address (sealed in the entry and
//! indexed by keyed hash); the other half concern none.

use custodia_audit_log::{entry::SubjectFields, store::NewEvent};
use custodia_core::subject::{SubjectHasher, SubjectId};
use custodia_proto::{
    audit::v1::{AccessEvent, AccessOutcome},
    common::v1::{Actor, SubjectRef},
};

/// splitmix64: small, fast and good enough to pick fields and indexes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A random UUID-shaped id (36 characters).
    pub fn uuid(&mut self) -> String {
        let v = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        uuid::Uuid::from_u128(v).hyphenated().to_string()
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The email address of subject `i`.
pub fn email(i: u64) -> String {
    format!("person.{i:07}@mail-{}.example.org", i % 97)
}

const CALLS: &[(&str, &str, &str, &str)] = &[
    (
        "svc-consent",
        "custodia.consent.v1.ConsentService",
        "CheckConsent",
        "check",
    ),
    (
        "svc-consent",
        "custodia.consent.v1.ConsentService",
        "RecordConsent",
        "create",
    ),
    (
        "crm-backend",
        "custodia.consent.v1.ConsentService",
        "ListConsents",
        "list",
    ),
    (
        "svc-dsar",
        "custodia.dsar.v1.DsarService",
        "GetRequest",
        "read",
    ),
    (
        "dpo-console",
        "custodia.dsar.v1.DsarService",
        "ExportSubjectData",
        "read",
    ),
    (
        "svc-breach",
        "custodia.breach.v1.BreachService",
        "UpdateBreach",
        "update",
    ),
];
const PURPOSES: &[&str] = &["newsletter", "billing", "analytics", "support", ""];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
    "grpc-go/1.68.0",
    "custodia-forwarder/0.1.0",
];

/// Fields of one event, shared by the gRPC and the store forms.
struct Shape {
    event_id: String,
    actor: &'static str,
    service: &'static str,
    method: &'static str,
    action: &'static str,
    resource: String,
    purpose: &'static str,
    denied: bool,
    trace_id: String,
    detail: String,
}

fn shape(rng: &mut Rng) -> Shape {
    let (actor, service, method, action) = CALLS[rng.below(CALLS.len() as u64) as usize];
    let denied = rng.below(50) == 0;
    let purpose = rng.pick(PURPOSES);
    // Resources as the services name them: consent calls name the purpose, dsar
    // and breach calls one of many requests or breaches.
    let resource = match service {
        "custodia.consent.v1.ConsentService" if !purpose.is_empty() => {
            format!("purposes/{purpose}")
        }
        "custodia.consent.v1.ConsentService" => String::new(),
        "custodia.dsar.v1.DsarService" => format!("requests/{}", rng.below(10_000)),
        _ => format!("breaches/{}", rng.below(1_000)),
    };
    let trace_id = format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
    let detail = format!(
        r#"{{"client_ip":"203.0.113.{}","request_id":"{}","user_agent":"{}","fields":["email","preferences"]}}"#,
        rng.below(255),
        rng.uuid(),
        rng.pick(AGENTS),
    );
    Shape {
        // Time-ordered (UUIDv7), as every custodia service's forwarder sends them
        // (`AccessEvent::new`), so the event-id index grows at its end.
        event_id: uuid::Uuid::now_v7().hyphenated().to_string(),
        actor,
        service,
        method,
        action,
        resource,
        purpose,
        denied,
        trace_id,
        detail,
    }
}

/// One gRPC `AccessEvent`; `subject` is the index of its email subject, if any.
pub fn access_event(rng: &mut Rng, subject: Option<u64>, time_us: i64) -> AccessEvent {
    let s = shape(rng);
    AccessEvent {
        event_id: s.event_id,
        event_time: Some(prost_types::Timestamp {
            seconds: time_us.div_euclid(1_000_000),
            nanos: (time_us.rem_euclid(1_000_000) * 1000) as i32,
        }),
        actor: Some(Actor {
            principal: s.actor.into(),
            user: String::new(),
        }),
        service: s.service.into(),
        method: s.method.into(),
        action: s.action.into(),
        subject: subject.map(|i| SubjectRef {
            r#type: "email".into(),
            value: email(i),
        }),
        resource: s.resource,
        purpose: s.purpose.into(),
        outcome: if s.denied {
            AccessOutcome::Denied
        } else {
            AccessOutcome::Ok
        } as i32,
        status_code: if s.denied { 7 } else { 0 },
        trace_id: s.trace_id,
        details: custodia_core::json_struct::struct_from_json_text(&s.detail),
        ..Default::default()
    }
}

/// Keyed hash of subject `i`'s email, as the server computes it.
pub fn subject_hash(hasher: &SubjectHasher, i: u64) -> String {
    let id = SubjectId::parse("email", &email(i), "subject").expect("generated emails are valid");
    hasher.hash(&id)
}

/// One event in the store's form; `subject_hash` is its subject's keyed hash, if any.
pub fn new_event(rng: &mut Rng, subject_hash: Option<&str>, time_us: i64) -> NewEvent {
    let s = shape(rng);
    NewEvent {
        event_id: s.event_id,
        time_us,
        actor: s.actor.into(),
        service: s.service.into(),
        method: s.method.into(),
        action: s.action.into(),
        resource: s.resource,
        purpose: s.purpose.into(),
        outcome: if s.denied { "denied" } else { "ok" }.into(),
        status_code: if s.denied { 7 } else { 0 },
        trace_id: s.trace_id,
        detail: s.detail,
        subject: subject_hash.map(|h| SubjectFields {
            subject_type: "email".into(),
            subject_hash: h.to_string(),
            detail: String::new(),
        }),
        members: Vec::new(),
    }
}
