//! RecordRecipientNotification: the recipients of the subject's data are told
//! of a rectification, erasure or restriction, or why they could not be
//! (Art. 19).

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::{enum_value, optional_time},
    idempotency::RequestKey,
    proto_time::timestamp,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    consent::v1::Purpose,
    dsar::v1::{self as pb, ActionResult, RecipientNotificationOutcome, RequestState, RequestType},
};

use crate::{
    api::Api,
    lifecycle::Register,
    model::{self, action, named_change},
    state::{refuse, require},
    store::Changes,
};

/// Checks a RecordRecipientNotification at `now`: the request's id, the
/// notification and its outcome, its time set (now when unset).
pub(crate) fn validate_notify_recipient(
    r: &pb::RecordRecipientNotificationRequest,
    now: DateTime<Utc>,
) -> Result<
    (
        String,
        pb::RecipientNotification,
        RecipientNotificationOutcome,
    ),
    ApiError,
> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    let Some(mut n) = r.notification.clone() else {
        v.add("notification", "is required");
        v.finish()?;
        unreachable!("finish fails with a violation");
    };
    v.required("notification.recipient", &n.recipient, MAX_ID);
    let outcome = enum_value(
        &mut v,
        "notification.outcome",
        n.outcome,
        RecipientNotificationOutcome::Unspecified,
        "NOTIFIED, IMPOSSIBLE, DISPROPORTIONATE_EFFORT",
    );
    if matches!(
        outcome,
        Some(
            RecipientNotificationOutcome::Impossible
                | RecipientNotificationOutcome::DisproportionateEffort
        )
    ) {
        v.required("notification.details", &n.details, MAX_TEXT);
    } else {
        v.max_len("notification.details", &n.details, MAX_TEXT);
    }
    v.max_len("notification.method", &n.method, MAX_ID);
    let sent = optional_time(
        &mut v,
        "notification.notify_time",
        n.notify_time.as_ref(),
        Some(now),
    );
    v.finish()?;
    n.notify_time = Some(timestamp(sent.unwrap_or(now)));
    Ok((id.unwrap_or_default(), n, outcome.unwrap_or_default()))
}

impl Api {
    /// Each purpose's recipients in the register, for the purposes the enabled
    /// `sources` declare: what StartProcessing derives the recipients to tell
    /// from (Art. 19). UNAVAILABLE when the register cannot be read.
    pub(crate) async fn register_recipients(
        &self,
        sources: &[pb::DataSource],
    ) -> Result<Register, ApiError> {
        let enabled: Vec<&pb::DataSource> = sources
            .iter()
            .filter(|s| s.state() != pb::DataSourceState::Disabled)
            .collect();
        let purposes = self.register_purposes(&enabled).await.map_err(|why| {
            tracing::warn!(reason = %why, "reading the register for Art. 19 recipients");
            ApiError::Unavailable(
                "the register of processing (consent) could not be read to derive the \
                 recipients to tell (Art. 19); retry"
                    .into(),
            )
        })?;
        Ok(purposes
            .into_iter()
            .map(|(name, p)| {
                let recipients = p
                    .map(|p| p.recipients.into_iter().map(|r| r.name).collect())
                    .unwrap_or_default();
                (name, recipients)
            })
            .collect())
    }

    /// The register's entries of the purposes `sources` declare (read from
    /// custodia's consent service); why not, when it cannot be read.
    pub(crate) async fn register_purposes(
        &self,
        sources: &[&pb::DataSource],
    ) -> Result<std::collections::HashMap<String, Option<Purpose>>, String> {
        let mut purposes: Vec<String> = sources
            .iter()
            .flat_map(|s| s.purposes.iter().cloned())
            .collect();
        purposes.sort();
        purposes.dedup();
        if purposes.is_empty() {
            return Ok(Default::default());
        }
        let (target, _) = self
            .target(model::BUILTIN_CONSENT)
            .await
            .map_err(|f| f.message)?;
        crate::connector::register_purposes(&target, &purposes)
            .await
            .map_err(|f| f.message)
    }

    /// RecordRecipientNotification.
    pub(crate) async fn notify_recipient(
        &self,
        call: &CallContext,
        r: pb::RecordRecipientNotificationRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "RecordRecipientNotification", &r.request_id, &r);
        let now = self.clock.now();
        let (id, mut n, outcome) = validate_notify_recipient(&r, now)?;
        let principal = call.principal.name().to_string();
        n.actor = Some(model::actor(&principal));
        self.change(call, "RecordRecipientNotification", &id, key.as_ref(), move |l| {
            require(
                l,
                &[RequestState::InProgress, RequestState::Completed],
                "record a recipient notification",
            )?;
            if !matches!(
                l.record.r#type(),
                RequestType::Rectification | RequestType::Erasure | RequestType::Restriction
            ) {
                return Err(refuse(
                    l,
                    "NOT_APPLICABLE",
                    "recipients are told of rectification, erasure or restriction only (Art. 19)",
                ));
            }
            let text = format!(
                "Recipient {}: {}{}",
                n.recipient,
                outcome
                    .as_str_name()
                    .trim_start_matches("RECIPIENT_NOTIFICATION_OUTCOME_"),
                if n.details.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", n.details)
                }
            );
            Ok(Changes {
                notifications: vec![n],
                actions: vec![action(
                    now,
                    &principal,
                    "recipient_notified",
                    ActionResult::Succeeded,
                    text,
                    "",
                )],
                ..Default::default()
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::fields::violated_fields;

    use super::*;

    use crate::api::test_now as now;

    #[test]
    fn a_notification_that_could_not_be_made_says_why() {
        let mut r = pb::RecordRecipientNotificationRequest {
            name: "requests/abc".into(),
            notification: Some(pb::RecipientNotification {
                recipient: "payroll".into(),
                outcome: RecipientNotificationOutcome::Impossible as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_notify_recipient(&r, now())),
            ["notification.details"]
        );
        let n = r.notification.as_mut().unwrap();
        n.outcome = RecipientNotificationOutcome::Notified as i32;
        let (id, n, outcome) = validate_notify_recipient(&r, now()).unwrap();
        assert_eq!(
            (id.as_str(), outcome),
            ("abc", RecipientNotificationOutcome::Notified)
        );
        assert_eq!(n.notify_time, Some(timestamp(now())), "unset means now");
        r.notification = None;
        assert_eq!(
            violated_fields(&validate_notify_recipient(&r, now())),
            ["notification"]
        );
    }
}
