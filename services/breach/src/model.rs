//! Conversions between the stored breach and the API messages, and the
//! validation of the breach record (B-1, B-2).

use chrono::{DateTime, Utc};
use custodia_core::{
    fields::optional_time,
    proto_time::{timestamp, timestamp_micros},
    storage::from_micros,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    breach::v1::{self as pb, BreachNature, NotificationClock},
    common::v1::{Actor, Contact},
};

use crate::{state, store::Stored};

/// A `Duration` from a chrono duration (non-negative).
pub fn duration(d: chrono::Duration) -> prost_types::Duration {
    let d = d.max(chrono::Duration::zero());
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: d.subsec_nanos(),
    }
}

/// An actor for `principal`.
pub fn actor(principal: &str) -> Actor {
    Actor {
        principal: principal.to_string(),
        user: String::new(),
    }
}

/// Checks a contact's fields under `field`.
pub fn validate_contact(v: &mut Validator, field: &str, c: &Contact) {
    v.max_len(&format!("{field}.display_name"), &c.display_name, MAX_ID);
    v.max_len(&format!("{field}.email"), &c.email, MAX_ID);
    if !c.email.is_empty() && (!c.email.contains('@') || c.email.contains(char::is_whitespace)) {
        v.add(format!("{field}.email"), "is not an email address");
    }
    v.max_len(&format!("{field}.phone"), &c.phone, 64);
    v.max_len(
        &format!("{field}.postal_address"),
        &c.postal_address,
        MAX_TEXT,
    );
}

/// Most natures of a breach: each at most once makes three, and room for new ones.
const MAX_NATURES: usize = 10;
/// Most affected countries: every country and territory of ISO 3166-1 (249).
const MAX_COUNTRIES: usize = 250;

fn list(v: &mut Validator, field: &str, values: &[String]) {
    if values.len() > 100 {
        v.add(field, "has more than 100 entries");
    }
    for (i, s) in values.iter().enumerate().take(100) {
        v.required(&format!("{field}[{i}]"), s, MAX_ID);
    }
}

/// Checks the input fields of `b` (the whole record, as it would be stored),
/// naming fields under `prefix` (`breach`). Returns the awareness instant.
pub fn validate_record(
    v: &mut Validator,
    prefix: &str,
    b: &pb::Breach,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let f = |name: &str| format!("{prefix}.{name}");
    v.max_len(&f("title"), &b.title, MAX_ID);
    v.required(&f("description"), &b.description, MAX_TEXT);
    let detect = optional_time(v, &f("detect_time"), b.detect_time.as_ref(), Some(now));
    if b.detect_time.is_none() {
        v.add(f("detect_time"), "is required");
    }
    let aware = optional_time(
        v,
        &f("awareness_time"),
        b.awareness_time.as_ref(),
        Some(now),
    );
    let start = optional_time(v, &f("start_time"), b.start_time.as_ref(), Some(now));
    let end = optional_time(v, &f("end_time"), b.end_time.as_ref(), Some(now));
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        v.add(f("end_time"), "must not be before start_time");
    }
    if let Some(c) = &b.reporter_contact {
        validate_contact(v, &f("reporter_contact"), c);
    }
    if let Some(c) = &b.dpo_contact {
        validate_contact(v, &f("dpo_contact"), c);
    }
    v.max_items(&f("natures"), b.natures.len(), MAX_NATURES);
    for (i, n) in b.natures.iter().enumerate().take(MAX_NATURES) {
        match BreachNature::try_from(*n) {
            Ok(BreachNature::Unspecified) | Err(_) => v.add(
                format!("{prefix}.natures[{i}]"),
                "must be CONFIDENTIALITY, INTEGRITY or AVAILABILITY",
            ),
            Ok(_) => {}
        }
    }
    let mut natures = b.natures.clone();
    natures.sort_unstable();
    natures.dedup();
    if natures.len() != b.natures.len() {
        v.add(f("natures"), "lists a nature twice");
    }
    v.max_len(&f("cause"), &b.cause, MAX_TEXT);
    list(v, &f("data_categories"), &b.data_categories);
    list(v, &f("subject_categories"), &b.subject_categories);
    list(v, &f("systems"), &b.systems);
    v.max_items(
        &f("affected_countries"),
        b.affected_countries.len(),
        MAX_COUNTRIES,
    );
    for (i, c) in b.affected_countries.iter().enumerate().take(MAX_COUNTRIES) {
        if !(c.len() == 2 && c.chars().all(|x| x.is_ascii_uppercase())) {
            v.add(
                format!("{prefix}.affected_countries[{i}]"),
                "must be an ISO 3166-1 alpha-2 code such as FR",
            );
        }
    }
    if b.approximate_subject_count.is_some_and(|n| n < 0) {
        v.add(f("approximate_subject_count"), "must not be negative");
    }
    if b.approximate_record_count.is_some_and(|n| n < 0) {
        v.add(f("approximate_record_count"), "must not be negative");
    }
    for (name, value) in [
        ("likely_consequences", &b.likely_consequences),
        ("measures_taken", &b.measures_taken),
        ("measures_proposed", &b.measures_proposed),
    ] {
        v.max_len(&f(name), value, MAX_TEXT);
    }
    aware.or(detect)
}

/// The input fields of `b` only (output fields cleared), as stored.
pub fn input_fields(b: &pb::Breach) -> pb::Breach {
    pb::Breach {
        name: String::new(),
        title: b.title.clone(),
        description: b.description.clone(),
        detect_time: b.detect_time,
        awareness_time: b.awareness_time,
        start_time: b.start_time,
        end_time: b.end_time,
        reporter_contact: b.reporter_contact.clone(),
        natures: b.natures.clone(),
        cause: b.cause.clone(),
        data_categories: b.data_categories.clone(),
        subject_categories: b.subject_categories.clone(),
        approximate_subject_count: b.approximate_subject_count,
        approximate_record_count: b.approximate_record_count,
        affected_countries: b.affected_countries.clone(),
        systems: b.systems.clone(),
        likely_consequences: b.likely_consequences.clone(),
        measures_taken: b.measures_taken.clone(),
        measures_proposed: b.measures_proposed.clone(),
        dpo_contact: b.dpo_contact.clone(),
        ..Default::default()
    }
}

/// The paths UpdateBreach accepts in its mask.
pub const UPDATABLE: &[&str] = &[
    "title",
    "description",
    "detect_time",
    "awareness_time",
    "start_time",
    "end_time",
    "reporter_contact",
    "natures",
    "cause",
    "data_categories",
    "subject_categories",
    "approximate_subject_count",
    "approximate_record_count",
    "affected_countries",
    "systems",
    "likely_consequences",
    "measures_taken",
    "measures_proposed",
    "dpo_contact",
];

/// Copies field `path` of `from` into `to` (`path` is one of [`UPDATABLE`]).
pub fn copy_field(to: &mut pb::Breach, from: &pb::Breach, path: &str) {
    match path {
        "title" => to.title = from.title.clone(),
        "description" => to.description = from.description.clone(),
        "detect_time" => to.detect_time = from.detect_time,
        "awareness_time" => to.awareness_time = from.awareness_time,
        "start_time" => to.start_time = from.start_time,
        "end_time" => to.end_time = from.end_time,
        "reporter_contact" => to.reporter_contact = from.reporter_contact.clone(),
        "natures" => to.natures = from.natures.clone(),
        "cause" => to.cause = from.cause.clone(),
        "data_categories" => to.data_categories = from.data_categories.clone(),
        "subject_categories" => to.subject_categories = from.subject_categories.clone(),
        "approximate_subject_count" => {
            to.approximate_subject_count = from.approximate_subject_count
        }
        "approximate_record_count" => to.approximate_record_count = from.approximate_record_count,
        "affected_countries" => to.affected_countries = from.affected_countries.clone(),
        "systems" => to.systems = from.systems.clone(),
        "likely_consequences" => to.likely_consequences = from.likely_consequences.clone(),
        "measures_taken" => to.measures_taken = from.measures_taken.clone(),
        "measures_proposed" => to.measures_proposed = from.measures_proposed.clone(),
        "dpo_contact" => to.dpo_contact = from.dpo_contact.clone(),
        _ => {}
    }
}

/// The authority clock of `b` evaluated at `now`.
pub fn clock(b: &Stored, now: DateTime<Utc>) -> NotificationClock {
    let deadline = from_micros(b.deadline_us);
    let left = deadline - now;
    NotificationClock {
        deadline_time: Some(timestamp_micros(b.deadline_us)),
        evaluate_time: Some(timestamp(now)),
        remaining: Some(duration(left)),
        overdue: Some(duration(-left)),
        status: state::clock_status(b, now) as i32,
    }
}

/// The API view of `b` at `now`.
pub fn to_proto(b: &Stored, now: DateTime<Utc>) -> pb::Breach {
    let mut out = b.record.clone();
    out.name = format!("breaches/{}", b.id);
    out.state = b.state.to_proto() as i32;
    out.awareness_time = Some(timestamp_micros(b.awareness_us));
    out.reporter = Some(actor(&b.reporter));
    out.risk_assessments = b.assessments.clone();
    out.risk_level = b.risk_level as i32;
    out.team = b.team.clone();
    out.authority_clock = Some(clock(b, now));
    out.authority_notifications = b.notifications.clone();
    out.subject_communications = b.communications.clone();
    out.communication_waiver = b.waiver.clone();
    out.lessons_learned = b.lessons_learned.clone();
    out.close_time = b.close_us.map(timestamp_micros);
    out.retain_until_time = b.retain_until_us.map(timestamp_micros);
    out.create_time = Some(timestamp_micros(b.create_us));
    out.update_time = Some(timestamp_micros(b.update_us));
    out.etag = format!("\"{}\"", b.version);
    out
}

#[cfg(test)]
mod tests {
    use custodia_core::{ApiError, storage::to_micros};

    use super::*;

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidArgument(list) => list.into_iter().map(|f| f.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-03-28T22:30:00Z".parse().unwrap()
    }

    #[test]
    fn a_minimal_report_is_enough_and_awareness_defaults_to_detection() {
        let b = pb::Breach {
            description: "Laptop stolen".into(),
            detect_time: Some(timestamp(now())),
            ..Default::default()
        };
        let mut v = Validator::new();
        assert_eq!(validate_record(&mut v, "breach", &b, now()), Some(now()));
        v.finish().unwrap();
    }

    #[test]
    fn every_bad_field_is_named() {
        let later = timestamp_micros(to_micros(now()) + 1);
        let b = pb::Breach {
            detect_time: Some(later),
            natures: vec![1, 0, 9],
            data_categories: vec!["grades".into(), " ".into()],
            affected_countries: vec!["fr".into()],
            approximate_subject_count: Some(-1),
            dpo_contact: Some(Contact {
                email: "not an email".into(),
                ..Default::default()
            }),
            start_time: Some(timestamp_micros(10)),
            end_time: Some(timestamp_micros(5)),
            ..Default::default()
        };
        let mut v = Validator::new();
        validate_record(&mut v, "breach", &b, now());
        assert_eq!(
            fields(v.finish().unwrap_err()),
            [
                "breach.description",
                "breach.detect_time",
                "breach.end_time",
                "breach.dpo_contact.email",
                "breach.natures[1]",
                "breach.natures[2]",
                "breach.data_categories[1]",
                "breach.affected_countries[0]",
                "breach.approximate_subject_count",
            ]
        );
    }

    #[test]
    fn update_masks_copy_only_named_fields() {
        let mut to = pb::Breach {
            title: "old".into(),
            cause: "theft".into(),
            ..Default::default()
        };
        let from = pb::Breach {
            title: "new".into(),
            cause: String::new(),
            ..Default::default()
        };
        copy_field(&mut to, &from, "title");
        assert_eq!((to.title.as_str(), to.cause.as_str()), ("new", "theft"));
        for path in UPDATABLE {
            copy_field(&mut to, &from, path);
        }
        assert_eq!(to, input_fields(&from));
    }
}
