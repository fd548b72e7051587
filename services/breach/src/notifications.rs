//! What the breach's authority and subjects were told: RecordAuthorityNotification
//! (Art. 33, the 72-hour clock), RecordSubjectCommunication (Art. 34) and
//! RecordCommunicationWaiver (Art. 34(3)). The rules on phases, delays and
//! waivers are in [`crate::state`].

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::{enum_value, optional_time},
    idempotency::RequestKey,
    proto_time::timestamp,
    storage::{from_micros, to_micros},
    validate::{MAX_ID, MAX_TEXT},
};
use custodia_proto::breach::v1::{
    self as pb, CommunicationChannel, NotificationPhase, WaiverGround,
};

use crate::{
    api::{Api, and_entry, named_change, required, rfc3339},
    model::actor,
    state,
    store::Write,
};

/// Longest message to subjects accepted.
const MAX_MESSAGE: usize = 16 * 1024;

/// Checks a RecordAuthorityNotification at `now`: the breach's id, the
/// notification, its phase and when it was sent (now when unset).
pub(crate) fn validate_notification(
    r: &pb::RecordAuthorityNotificationRequest,
    now: DateTime<Utc>,
) -> Result<
    (
        String,
        pb::AuthorityNotification,
        NotificationPhase,
        DateTime<Utc>,
    ),
    ApiError,
> {
    let (id, mut v) = named_change("name", &r.name, &r.request_id)?;
    let n = required(&r.notification, "notification")?;
    let phase = enum_value(
        &mut v,
        "notification.phase",
        n.phase,
        NotificationPhase::Unspecified,
        "INITIAL, FOLLOW_UP, FINAL",
    );
    v.required("notification.authority", &n.authority, MAX_ID);
    let send = optional_time(
        &mut v,
        "notification.send_time",
        n.send_time.as_ref(),
        Some(now),
    );
    v.max_len(
        "notification.authority_reference",
        &n.authority_reference,
        MAX_ID,
    );
    v.max_len("notification.method", &n.method, MAX_ID);
    v.max_len("notification.summary", &n.summary, MAX_TEXT);
    v.max_len("notification.delay_reasons", &n.delay_reasons, MAX_TEXT);
    v.finish()?;
    Ok((
        id,
        n.clone(),
        phase.unwrap_or_default(),
        send.unwrap_or(now),
    ))
}

/// Checks a RecordSubjectCommunication at `now`: the breach's id, the
/// communication, its channel and when it was sent (now when unset).
pub(crate) fn validate_communication(
    r: &pb::RecordSubjectCommunicationRequest,
    now: DateTime<Utc>,
) -> Result<
    (
        String,
        pb::SubjectCommunication,
        CommunicationChannel,
        DateTime<Utc>,
    ),
    ApiError,
> {
    let (id, mut v) = named_change("name", &r.name, &r.request_id)?;
    let c = required(&r.communication, "communication")?;
    let channel = enum_value(
        &mut v,
        "communication.channel",
        c.channel,
        CommunicationChannel::Unspecified,
        "EMAIL, LETTER, SMS, PHONE, PORTAL, PUBLIC, OTHER",
    );
    let send = optional_time(
        &mut v,
        "communication.send_time",
        c.send_time.as_ref(),
        Some(now),
    );
    if c.reached_count < 0 {
        v.add("communication.reached_count", "must not be negative");
    }
    v.required("communication.message", &c.message, MAX_MESSAGE);
    v.max_len("communication.language", &c.language, 35);
    v.finish()?;
    Ok((
        id,
        c.clone(),
        channel.unwrap_or_default(),
        send.unwrap_or(now),
    ))
}

/// Checks a RecordCommunicationWaiver: the breach's id, the waiver and its ground.
pub(crate) fn validate_waiver(
    r: &pb::RecordCommunicationWaiverRequest,
) -> Result<(String, pb::CommunicationWaiver, WaiverGround), ApiError> {
    let (id, mut v) = named_change("name", &r.name, &r.request_id)?;
    let w = required(&r.waiver, "waiver")?;
    let ground = enum_value(
        &mut v,
        "waiver.ground",
        w.ground,
        WaiverGround::Unspecified,
        "DATA_UNINTELLIGIBLE, SUBSEQUENT_MEASURES, DISPROPORTIONATE_EFFORT",
    );
    v.required("waiver.justification", &w.justification, MAX_TEXT);
    v.finish()?;
    Ok((id, w.clone(), ground.unwrap_or_default()))
}

/// The writes of a notification of `b`, checked against its awareness time
/// and the rules of its phase.
fn notified(
    b: &crate::store::Stored,
    notification: pb::AuthorityNotification,
    phase: NotificationPhase,
    send: DateTime<Utc>,
    principal: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Write>, ApiError> {
    if send < from_micros(b.awareness_us) {
        return Err(ApiError::invalid(
            "notification.send_time",
            format!(
                "must not be before the awareness time {}",
                rfc3339(from_micros(b.awareness_us))
            ),
        ));
    }
    state::check_notification(b, phase, send, &notification.delay_reasons)?;
    let text = format!(
        "{} notification to {} sent at {}{}",
        phase
            .as_str_name()
            .trim_start_matches("NOTIFICATION_PHASE_"),
        notification.authority,
        rfc3339(send),
        if send > from_micros(b.deadline_us) && phase == NotificationPhase::Initial {
            " (after the 72-hour deadline, with reasons for the delay)"
        } else {
            ""
        }
    );
    Ok(and_entry(
        Write::Notification(Box::new(notification), to_micros(send)),
        now,
        principal,
        text,
    ))
}

impl Api {
    /// RecordAuthorityNotification.
    pub(crate) async fn record_notification(
        &self,
        call: &CallContext,
        r: pb::RecordAuthorityNotificationRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "RecordAuthorityNotification", &r.request_id, &r);
        let now = self.clock.now();
        let (id, n, phase, send) = validate_notification(&r, now)?;
        let principal = call.principal.name().to_string();
        let notification = pb::AuthorityNotification {
            send_time: Some(timestamp(send)),
            actor: Some(actor(&principal)),
            ..n
        };
        self.change(
            call,
            "RecordAuthorityNotification",
            &id,
            key.as_ref(),
            now,
            move |b| notified(b, notification, phase, send, &principal, now),
        )
        .await
    }

    /// RecordSubjectCommunication.
    pub(crate) async fn record_communication(
        &self,
        call: &CallContext,
        r: pb::RecordSubjectCommunicationRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "RecordSubjectCommunication", &r.request_id, &r);
        let now = self.clock.now();
        let (id, c, channel, send) = validate_communication(&r, now)?;
        let principal = call.principal.name().to_string();
        let text = format!(
            "Subjects told by {} at {} ({} reached)",
            channel
                .as_str_name()
                .trim_start_matches("COMMUNICATION_CHANNEL_"),
            rfc3339(send),
            c.reached_count
        );
        let communication = pb::SubjectCommunication {
            send_time: Some(timestamp(send)),
            actor: Some(actor(&principal)),
            ..c
        };
        self.change(
            call,
            "RecordSubjectCommunication",
            &id,
            key.as_ref(),
            now,
            move |b| {
                state::require_open(b, "record a subject communication")?;
                Ok(and_entry(
                    Write::Communication(Box::new(communication)),
                    now,
                    &principal,
                    text,
                ))
            },
        )
        .await
    }

    /// RecordCommunicationWaiver.
    pub(crate) async fn record_waiver(
        &self,
        call: &CallContext,
        r: pb::RecordCommunicationWaiverRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "RecordCommunicationWaiver", &r.request_id, &r);
        let now = self.clock.now();
        let (id, w, ground) = validate_waiver(&r)?;
        let principal = call.principal.name().to_string();
        let waiver = pb::CommunicationWaiver {
            ground: ground as i32,
            justification: w.justification,
            waive_time: Some(timestamp(now)),
            actor: Some(actor(&principal)),
        };
        let text = format!(
            "Communication to subjects waived: {} (Art. 34(3))",
            ground.as_str_name().trim_start_matches("WAIVER_GROUND_")
        );
        self.change(
            call,
            "RecordCommunicationWaiver",
            &id,
            key.as_ref(),
            now,
            move |b| {
                state::check_waiver(b, ground)?;
                Ok(and_entry(
                    Write::Waiver(Box::new(waiver)),
                    now,
                    &principal,
                    text,
                ))
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::fields::violated_fields;

    use super::*;

    use crate::api::test_now as now;

    #[test]
    fn notifications_have_a_phase_an_authority_and_a_past_send_time() {
        let mut r = pb::RecordAuthorityNotificationRequest {
            name: "breaches/abc".into(),
            notification: Some(pb::AuthorityNotification {
                send_time: Some(timestamp(now() + chrono::Duration::minutes(1))),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_notification(&r, now())),
            [
                "notification.phase",
                "notification.authority",
                "notification.send_time"
            ]
        );
        let n = r.notification.as_mut().unwrap();
        n.phase = NotificationPhase::Initial as i32;
        n.authority = "CNIL".into();
        n.send_time = None;
        let (_, _, phase, send) = validate_notification(&r, now()).unwrap();
        assert_eq!((phase, send), (NotificationPhase::Initial, now()));
    }

    #[test]
    fn communications_carry_a_message_and_count_nothing_negative() {
        let r = pb::RecordSubjectCommunicationRequest {
            name: "breaches/abc".into(),
            communication: Some(pb::SubjectCommunication {
                channel: CommunicationChannel::Email as i32,
                reached_count: -1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_communication(&r, now())),
            ["communication.reached_count", "communication.message"]
        );
    }

    #[test]
    fn waivers_name_a_ground_and_justify_it() {
        let mut r = pb::RecordCommunicationWaiverRequest {
            name: "breaches/abc".into(),
            waiver: Some(pb::CommunicationWaiver::default()),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_waiver(&r)),
            ["waiver.ground", "waiver.justification"]
        );
        r.waiver = None;
        assert_eq!(violated_fields(&validate_waiver(&r)), ["waiver"]);
    }
}
