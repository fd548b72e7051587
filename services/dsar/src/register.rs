//! ExportRegister: the register of data-subject requests (D-3) rendered for
//! an audit, one row per request with its dates, state and outcome. Subject
//! identifiers are left out: the register documents the handling, not the
//! people.

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::optional_time,
    proto_time::{instant, micros_of},
    storage::to_micros,
    validate::Validator,
};
use custodia_proto::{
    common::v1::{Document, ExportFormat},
    dsar::v1 as pb,
};
use serde_json::{Value, json};

use crate::{api::Api, model, requests::list_position, store::RequestFilter};

/// Requests read per page while gathering the register.
const PAGE: usize = 500;

/// An ExportRegister that passed validation: JSON (else CSV), and the
/// receive times it covers.
#[derive(Debug, PartialEq)]
pub(crate) struct ValidRegister {
    pub json: bool,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Checks an ExportRegister.
pub(crate) fn validate_register(r: &pb::ExportRegisterRequest) -> Result<ValidRegister, ApiError> {
    let mut v = Validator::new();
    let json = match ExportFormat::try_from(r.format) {
        Ok(ExportFormat::Unspecified | ExportFormat::Csv) => false,
        Ok(ExportFormat::Json) => true,
        _ => {
            v.add("format", "must be CSV or JSON");
            false
        }
    };
    let from = optional_time(&mut v, "start_time", r.start_time.as_ref(), None);
    let until = optional_time(&mut v, "end_time", r.end_time.as_ref(), None);
    if let (Some(a), Some(b)) = (from, until)
        && b <= a
    {
        v.add("end_time", "must be after start_time");
    }
    v.finish()?;
    Ok(ValidRegister { json, from, until })
}

impl Api {
    /// ExportRegister: every request received in the period, oldest first.
    pub(crate) async fn export_register(
        &self,
        call: &CallContext,
        r: pb::ExportRegisterRequest,
    ) -> Result<Document, ApiError> {
        let now = self.clock.now();
        let valid = validate_register(&r)?;
        let filter = RequestFilter {
            received_from_us: valid.from.map(to_micros),
            received_before_us: valid.until.map(to_micros),
            ..Default::default()
        };
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.list(&filter, after.take(), PAGE).await?;
            let done = page.len() < PAGE;
            after = page.last().map(list_position);
            all.extend(page.iter().map(|l| model::to_proto(l, now)));
            if done {
                break;
            }
        }
        all.sort_by(|a, b| {
            let key = |r: &pb::Request| r.receive_time.as_ref().map(micros_of);
            key(a).cmp(&key(b)).then(a.name.cmp(&b.name))
        });
        let date = self.calendar.local_date(now);
        let document = if valid.json {
            Document {
                content_type: "application/json".into(),
                filename: format!("dsar-register-{date}.json"),
                content: serde_json::to_vec_pretty(&json(&all)).map_err(ApiError::internal)?,
            }
        } else {
            Document {
                content_type: "text/csv".into(),
                filename: format!("dsar-register-{date}.csv"),
                content: csv(&all).into_bytes(),
            }
        };
        self.record_read(self.event(call, "ExportRegister", String::new(), None))
            .await?;
        Ok(document)
    }
}

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

/// The register as CSV with a header row (formulas defused, see
/// [`custodia_core::csv_out`]).
pub fn csv(requests: &[pb::Request]) -> String {
    let rows = requests.iter().map(|r| {
        row(r).into_iter().map(|(_, v)| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
    });
    custodia_core::csv_out::document(COLUMNS, rows)
}

#[cfg(test)]
mod tests {
    use custodia_core::proto_time::timestamp;

    use super::*;

    #[test]
    fn registers_are_csv_or_json_over_a_forward_period() {
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let mut r = pb::ExportRegisterRequest {
            format: ExportFormat::Json as i32,
            start_time: Some(timestamp(at(1_000))),
            end_time: Some(timestamp(at(2_000))),
        };
        assert_eq!(
            validate_register(&r).unwrap(),
            ValidRegister {
                json: true,
                from: Some(at(1_000)),
                until: Some(at(2_000)),
            }
        );
        r.format = ExportFormat::Markdown as i32;
        r.end_time = Some(timestamp(at(1_000)));
        match validate_register(&r) {
            Err(ApiError::InvalidArgument(list)) => {
                let fields: Vec<_> = list.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(fields, ["format", "end_time"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
