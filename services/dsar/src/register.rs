//! The register of data-subject requests (D-3) rendered for an audit: one
//! row per request with its dates, state and outcome. Subject identifiers are
//! left out: the register documents the handling, not the people.

use custodia_proto::dsar::v1 as pb;
use serde_json::{Value, json};

use crate::model::instant;

const COLUMNS: &[&str] = &[
    "name",
    "type",
    "state",
    "channel",
    "requester_role",
    "receive_time",
    "original_due_time",
    "due_time",
    "extended",
    "extension_months",
    "extension_reasons",
    "overdue",
    "identity_method",
    "identity_outcome",
    "rejection_reason",
    "response_time",
    "source_count",
    "sources_handled_manually",
    "retained_count",
    "recipient_notifications",
    "action_count",
];

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(instant)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn strip(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_string()
}

fn row(r: &pb::Request) -> Vec<(&'static str, Value)> {
    let ext = r.extension.clone().unwrap_or_default();
    let idv = r.identity_verification.clone().unwrap_or_default();
    let values: Vec<Value> = vec![
        json!(r.name),
        json!(strip(r.r#type().as_str_name(), "REQUEST_TYPE_")),
        json!(strip(r.state().as_str_name(), "REQUEST_STATE_")),
        json!(strip(r.channel().as_str_name(), "REQUEST_CHANNEL_")),
        json!(strip(
            r.requester.clone().unwrap_or_default().role().as_str_name(),
            "REQUESTER_ROLE_"
        )),
        json!(time(&r.receive_time)),
        json!(time(&r.original_due_time)),
        json!(time(&r.due_time)),
        json!(r.extended),
        json!(ext.months),
        json!(ext.reasons),
        json!(r.overdue),
        json!(if r.identity_verification.is_some() {
            strip(idv.method().as_str_name(), "IDENTITY_VERIFICATION_METHOD_")
        } else {
            String::new()
        }),
        json!(if r.identity_verification.is_some() {
            strip(
                idv.outcome().as_str_name(),
                "IDENTITY_VERIFICATION_OUTCOME_",
            )
        } else {
            String::new()
        }),
        json!(
            r.rejection
                .as_ref()
                .map(|x| strip(x.reason().as_str_name(), "REJECTION_REASON_"))
                .unwrap_or_default()
        ),
        json!(time(&r.completion.as_ref().and_then(|c| c.response_time))),
        json!(r.source_tasks.len()),
        json!(
            r.source_tasks
                .iter()
                .filter(|t| t.state() == pb::SourceTaskState::HandledManually)
                .count()
        ),
        json!(r.retained.iter().map(|x| x.record_count).sum::<i64>()),
        json!(r.recipient_notifications.len()),
        json!(r.actions.len()),
    ];
    COLUMNS.iter().copied().zip(values).collect()
}

/// The register as a JSON document.
pub fn json(requests: &[pb::Request]) -> Value {
    json!({
        "requests": requests
            .iter()
            .map(|r| Value::Object(row(r).into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
            .collect::<Vec<_>>(),
    })
}

/// One CSV field (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The register as CSV with a header row.
pub fn csv(requests: &[pb::Request]) -> String {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    for r in requests {
        let cells: Vec<String> = row(r)
            .into_iter()
            .map(|(_, v)| match v {
                Value::String(s) => csv_field(&s),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}
