//! The tasks a request sets each data source: MarkSourceHandledManually
//! settles one by hand, RetrySource asks a failed one again.

use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::absorb,
    idempotency::RequestKey,
    proto_time::timestamp,
    validate::{MAX_TEXT, Validator},
};
use custodia_proto::dsar::v1::{self as pb, ActionResult, RequestState, SourceTaskState};

use crate::{
    api::Api,
    model::{self, action},
    state::{refuse, require},
    store::{Changes, Loaded},
};

/// Checks the request and source a task change names: their ids.
fn named_task(
    v: &mut Validator,
    name: &str,
    data_source: &str,
    request_id: &str,
) -> (Option<String>, Option<String>) {
    let id = absorb(v, model::parse_request_name("name", name));
    let source = absorb(v, model::parse_source_name("data_source", data_source));
    v.max_len(
        "request_id",
        request_id,
        custodia_core::idempotency::MAX_REQUEST_ID,
    );
    (id, source)
}

/// Checks a MarkSourceHandledManually: the request's and the source's ids.
pub(crate) fn validate_mark_manual(
    r: &pb::MarkSourceHandledManuallyRequest,
) -> Result<(String, String), ApiError> {
    let mut v = Validator::new();
    let (id, source) = named_task(&mut v, &r.name, &r.data_source, &r.request_id);
    v.required("reason", &r.reason, MAX_TEXT);
    v.max_len("description", &r.description, MAX_TEXT);
    model::validate_counts(&mut v, "affected", &r.affected);
    model::validate_retained(&mut v, "retained", &r.retained);
    v.finish()?;
    Ok((id.unwrap_or_default(), source.unwrap_or_default()))
}

/// Checks a RetrySource: the request's and the source's ids.
pub(crate) fn validate_retry(r: &pb::RetrySourceRequest) -> Result<(String, String), ApiError> {
    let mut v = Validator::new();
    let (id, source) = named_task(&mut v, &r.name, &r.data_source, &r.request_id);
    v.finish()?;
    Ok((id.unwrap_or_default(), source.unwrap_or_default()))
}

/// The task of `source` in request `l`, or NOT_FOUND naming `data_source`.
fn task_of(l: &Loaded, source: &str, data_source: &str) -> Result<pb::SourceTask, ApiError> {
    l.task(source).cloned().ok_or_else(|| {
        ApiError::not_found(
            "source task",
            format!("{}/{}", model::request_name(&l.id), data_source),
        )
    })
}

fn state_name(t: &pb::SourceTask) -> &'static str {
    t.state()
        .as_str_name()
        .trim_start_matches("SOURCE_TASK_STATE_")
}

impl Api {
    /// MarkSourceHandledManually: a source answered outside custodia.
    pub(crate) async fn mark_manual(
        &self,
        call: &CallContext,
        r: pb::MarkSourceHandledManuallyRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "MarkSourceHandledManually", &r.request_id, &r);
        let now = self.clock.now();
        let (id, source) = validate_mark_manual(&r)?;
        let principal = call.principal.name().to_string();
        self.change(
            call,
            "MarkSourceHandledManually",
            &id,
            key.as_ref(),
            move |l| {
                require(
                    l,
                    &[RequestState::InProgress],
                    "have a source handled by hand",
                )?;
                let mut task = task_of(l, &source, &r.data_source)?;
                if model::task_settled(&task) {
                    return Err(refuse(
                        l,
                        "TASK_SETTLED",
                        format!(
                            "its task for {} is already {}",
                            r.data_source,
                            state_name(&task)
                        ),
                    ));
                }
                task.state = SourceTaskState::HandledManually as i32;
                task.next_attempt_time = None;
                task.affected = r.affected.clone();
                task.retained = r.retained.clone();
                task.complete_time = Some(timestamp(now));
                task.manual_handling = Some(pb::ManualHandling {
                    reason: r.reason.clone(),
                    description: r.description.clone(),
                    handle_time: Some(timestamp(now)),
                    actor: Some(model::actor(&principal)),
                });
                Ok(Changes {
                    tasks: vec![task],
                    actions: vec![action(
                        now,
                        &principal,
                        "source_handled_manually",
                        ActionResult::Succeeded,
                        format!("Handled by hand: {}. {}", r.reason, r.description),
                        &r.data_source,
                    )],
                    ..Default::default()
                })
            },
        )
        .await
    }

    /// RetrySource: a FAILED or UNSUPPORTED task is asked again now.
    pub(crate) async fn retry(
        &self,
        call: &CallContext,
        r: pb::RetrySourceRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "RetrySource", &r.request_id, &r);
        let now = self.clock.now();
        let (id, source) = validate_retry(&r)?;
        let principal = call.principal.name().to_string();
        let out = self
            .change(call, "RetrySource", &id, key.as_ref(), move |l| {
                require(l, &[RequestState::InProgress], "retry a source")?;
                let mut task = task_of(l, &source, &r.data_source)?;
                if !matches!(
                    task.state(),
                    SourceTaskState::Failed | SourceTaskState::Unsupported
                ) {
                    return Err(refuse(
                        l,
                        "TASK_NOT_FAILED",
                        format!(
                            "its task for {} is {}; only a FAILED or UNSUPPORTED task is retried",
                            r.data_source,
                            state_name(&task)
                        ),
                    ));
                }
                task.state = SourceTaskState::Pending as i32;
                task.next_attempt_time = Some(timestamp(now));
                Ok(Changes {
                    tasks: vec![task],
                    actions: vec![action(
                        now,
                        &principal,
                        "source_retry_requested",
                        ActionResult::Succeeded,
                        "Retry asked for now",
                        &r.data_source,
                    )],
                    ..Default::default()
                })
            })
            .await?;
        self.wake.notify_one();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::fields::violated_fields;
    use custodia_proto::connector::v1::CategoryCount;

    use super::*;

    #[test]
    fn handling_by_hand_says_why_and_counts_nothing_negative() {
        let mut r = pb::MarkSourceHandledManuallyRequest {
            name: "requests/abc".into(),
            data_source: "dataSources/crm".into(),
            affected: vec![CategoryCount {
                category: "contact".into(),
                count: -1,
            }],
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_mark_manual(&r)),
            ["reason", "affected[0].count"]
        );
        r.reason = "paper files".into();
        r.affected.clear();
        assert_eq!(
            validate_mark_manual(&r).unwrap(),
            ("abc".into(), "crm".into())
        );
    }

    #[test]
    fn retries_name_a_request_and_a_source() {
        let r = pb::RetrySourceRequest {
            name: "requests/abc".into(),
            data_source: "crm".into(),
            ..Default::default()
        };
        assert_eq!(violated_fields(&validate_retry(&r)), ["data_source"]);
    }
}
