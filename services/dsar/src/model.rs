//! Resource names, validation of shared input shapes and
//! the assembly of the API's `Request` from what is stored.

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    echo::echo,
    fields::{absorb, resource_id},
    idempotency::MAX_REQUEST_ID,
    proto_time::{instant, timestamp},
    validate::{MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::{Actor, RetainedData},
    dsar::v1::{self as pb, ActionEntry, ActionResult, SourceTaskState},
};

use crate::store::Loaded;

/// The principal recorded for the fan-out custodia performs itself.
pub const SYSTEM_PRINCIPAL: &str = "custodia";
/// Built-in source: custodia's own consent records.
pub const BUILTIN_CONSENT: &str = "custodia-consent";
/// Built-in source: custodia's own access log.
pub const BUILTIN_AUDIT: &str = "custodia-audit-log";

/// `requests/{id}`.
pub fn request_name(id: &str) -> String {
    format!("requests/{id}")
}

/// The `{id}` of `requests/{id}` (empty when not one).
pub fn request_id_of(name: &str) -> &str {
    name.strip_prefix("requests/").unwrap_or_default()
}

/// `dataSources/{id}`.
pub fn source_name(id: &str) -> String {
    format!("dataSources/{id}")
}

/// The `{id}` of `dataSources/{id}` (empty when not one).
pub fn source_id_of(name: &str) -> &str {
    name.strip_prefix("dataSources/").unwrap_or_default()
}

fn is_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The id in `requests/{id}`, or a violation of `field`.
pub fn parse_request_name(field: &str, name: &str) -> Result<String, ApiError> {
    resource_id(
        field,
        name,
        "requests/",
        "request",
        "requests/{request}",
        |id| is_id(id, 64),
    )
}

/// The id in `dataSources/{id}`, or a violation of `field`.
pub fn parse_source_name(field: &str, name: &str) -> Result<String, ApiError> {
    resource_id(
        field,
        name,
        "dataSources/",
        "data source",
        "dataSources/{data_source}",
        |id| is_id(id, 63),
    )
}

/// The request a change names and the length of its idempotency key, the
/// first checks of every change of a request: the request's id.
pub fn named_change(v: &mut Validator, name: &str, request_id: &str) -> Option<String> {
    let id = absorb(v, parse_request_name("name", name));
    v.max_len("request_id", request_id, MAX_REQUEST_ID);
    id
}

/// Validates `purposes/{purpose}`.
pub fn check_purpose(v: &mut Validator, field: &str, p: &str) {
    let id = p.strip_prefix("purposes/").unwrap_or_default();
    if id.is_empty()
        || id.len() > 63
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        v.add(
            field,
            format!(
                "`{}` is not a purpose name (`purposes/{{purpose}}`)",
                echo(p)
            ),
        );
    }
}

/// Whether `id` is a valid new data source id (`[a-z0-9-]{1,63}`).
pub fn valid_source_id(id: &str) -> bool {
    is_id(id, 63) && !id.starts_with('-')
}

/// An actor for `principal`.
pub fn actor(principal: &str) -> Actor {
    Actor {
        principal: principal.to_string(),
        user: String::new(),
    }
}

/// One action entry.
pub fn action(
    now: DateTime<Utc>,
    principal: &str,
    what: &str,
    result: ActionResult,
    description: impl Into<String>,
    data_source: &str,
) -> ActionEntry {
    ActionEntry {
        time: Some(timestamp(now)),
        actor: Some(actor(principal)),
        action: what.to_string(),
        result: result as i32,
        description: description.into(),
        data_source: data_source.to_string(),
    }
}

/// The record as stored: without the parts kept in their own tables and the
/// fields computed on read.
pub fn bare(r: &pb::Request) -> pb::Request {
    pb::Request {
        actions: Vec::new(),
        source_tasks: Vec::new(),
        recipient_notifications: Vec::new(),
        export: None,
        overdue: false,
        retained: Vec::new(),
        ..r.clone()
    }
}

/// The API form of a stored request at `now`.
pub fn to_proto(l: &Loaded, now: DateTime<Utc>) -> pb::Request {
    let mut r = l.record.clone();
    r.overdue = !crate::state::is_terminal(r.state())
        && r.due_time
            .as_ref()
            .and_then(instant)
            .is_some_and(|due| now > due);
    r.actions = l.actions.clone();
    r.source_tasks = l.tasks.clone();
    r.recipient_notifications = l.notifications.clone();
    r.export = l.export.as_ref().map(|e| e.package.clone());
    r.retained = l
        .tasks
        .iter()
        .flat_map(|t| t.retained.iter().cloned())
        .collect();
    r
}

/// Whether a task no longer blocks completion.
pub fn task_settled(t: &pb::SourceTask) -> bool {
    matches!(
        t.state(),
        SourceTaskState::Succeeded | SourceTaskState::HandledManually
    )
}

/// Most retained-data entries of one source or request.
const MAX_RETAINED: usize = 100;
/// Most per-category counts of one source.
const MAX_COUNTS: usize = 1000;

/// Validates a list of retained-data entries (from a caller or a connector).
pub fn validate_retained(v: &mut Validator, field: &str, list: &[RetainedData]) {
    if list.len() > MAX_RETAINED {
        v.add(field, "has more than 100 entries");
    }
    for (i, r) in list.iter().enumerate().take(MAX_RETAINED) {
        let f = |n: &str| format!("{field}[{i}].{n}");
        v.required(&f("category"), &r.category, 128);
        if r.ground == 0 || custodia_proto::common::v1::RetentionGround::try_from(r.ground).is_err()
        {
            v.add(
                f("ground"),
                "must name the legal ground for keeping the data",
            );
        }
        if r.record_count < 0 {
            v.add(f("record_count"), "must not be negative");
        }
        v.max_len(&f("description"), &r.description, MAX_TEXT);
        v.max_len(&f("legal_reference"), &r.legal_reference, MAX_TEXT);
        v.max_len(&f("reason"), &r.reason, MAX_TEXT);
        if let Some(t) = &r.retain_until_time
            && instant(t).is_none()
        {
            v.add(f("retain_until_time"), "is not a valid timestamp");
        }
    }
}

/// Validates per-category counts.
pub fn validate_counts(
    v: &mut Validator,
    field: &str,
    list: &[custodia_proto::connector::v1::CategoryCount],
) {
    if list.len() > MAX_COUNTS {
        v.add(field, "has more than 1000 entries");
    }
    for (i, c) in list.iter().enumerate().take(MAX_COUNTS) {
        v.required(&format!("{field}[{i}].category"), &c.category, 128);
        if c.count < 0 {
            v.add(format!("{field}[{i}].count"), "must not be negative");
        }
    }
}
