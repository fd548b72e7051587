//! The breach state machine and the rules that gate each change.
//!
//! ```text
//!   ReportBreach ──> OPEN ──CloseBreach──> CLOSED ──DeleteBreach (after retention)──> gone
//! ```
//!
//! While OPEN: UpdateBreach, AssessRisk, AssignTeam, AddTimelineEntry,
//! RecordAuthorityNotification, RecordSubjectCommunication and
//! RecordCommunicationWaiver. CloseBreach needs an assessment; a RISK breach
//! needs an authority notification and a HIGH_RISK breach also a subject
//! communication or a waiver. A CLOSED breach only changes by DeleteBreach,
//! once `retain_until` has passed. Every refusal is FAILED_PRECONDITION and
//! names the current state.

use chrono::{DateTime, Utc};
use custodia_core::{ApiError, storage::from_micros};
use custodia_proto::breach::v1::{
    BreachState, ClockStatus, CommunicationChannel, NotificationPhase, RiskLevel, WaiverGround,
};

use crate::store::Stored;

/// Years a closed breach is kept (B-5). There is no configuration key for it
/// yet; the requirement's minimum applies.
pub const RETENTION_YEARS: u32 = 5;

/// The lifecycle state of a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Being handled.
    #[default]
    Open,
    /// Closed with lessons learned; kept until its retention end.
    Closed,
}

impl State {
    /// Stored and displayed form (`OPEN`, `CLOSED`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "OPEN",
            State::Closed => "CLOSED",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "OPEN" => Ok(State::Open),
            "CLOSED" => Ok(State::Closed),
            other => anyhow::bail!("unknown stored breach state {other:?}"),
        }
    }

    /// The API enum.
    pub fn to_proto(self) -> BreachState {
        match self {
            State::Open => BreachState::Open,
            State::Closed => BreachState::Closed,
        }
    }
}

fn refuse(b: &Stored, reason: &'static str, why: impl std::fmt::Display) -> ApiError {
    ApiError::precondition(
        reason,
        format!("breach `breaches/{}` is {}; {why}", b.id, b.state.as_str()),
    )
}

/// Changes other than deletion need an OPEN breach.
pub fn require_open(b: &Stored, change: &str) -> Result<(), ApiError> {
    match b.state {
        State::Open => Ok(()),
        State::Closed => Err(refuse(
            b,
            "ILLEGAL_TRANSITION",
            format!("a closed breach cannot {change}"),
        )),
    }
}

/// Whether a new authority notification of `phase` sent at `send` may be
/// recorded (Art. 33(1), 33(4)).
pub fn check_notification(
    b: &Stored,
    phase: NotificationPhase,
    send: DateTime<Utc>,
    delay_reasons: &str,
) -> Result<(), ApiError> {
    require_open(b, "record an authority notification")?;
    let phases: Vec<NotificationPhase> = b.notifications.iter().map(|n| n.phase()).collect();
    if phases.contains(&NotificationPhase::Final) {
        return Err(refuse(
            b,
            "ILLEGAL_TRANSITION",
            "its final authority notification is already recorded",
        ));
    }
    match (phase, phases.is_empty()) {
        (NotificationPhase::Initial, false) => {
            return Err(refuse(
                b,
                "ILLEGAL_TRANSITION",
                "its initial authority notification is already recorded; record a \
                 FOLLOW_UP or FINAL phase",
            ));
        }
        (NotificationPhase::FollowUp | NotificationPhase::Final, true) => {
            return Err(refuse(
                b,
                "ILLEGAL_TRANSITION",
                "no authority notification is recorded yet; the INITIAL phase comes first",
            ));
        }
        _ => {}
    }
    let deadline = from_micros(b.deadline_us);
    if phase == NotificationPhase::Initial && send > deadline && delay_reasons.trim().is_empty() {
        let late = send - deadline;
        return Err(refuse(
            b,
            "NOTIFICATION_LATE",
            format!(
                "the authority deadline {} passed {} min before this notification; a late \
                 notification must carry delay_reasons (Art. 33(1))",
                deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                late.num_minutes().max(1),
            ),
        ));
    }
    Ok(())
}

/// Whether a waiver on `ground` may be recorded (Art. 34(3)).
pub fn check_waiver(b: &Stored, ground: WaiverGround) -> Result<(), ApiError> {
    require_open(b, "record a communication waiver")?;
    if ground == WaiverGround::DisproportionateEffort
        && !b
            .communications
            .iter()
            .any(|c| c.channel() == CommunicationChannel::Public)
    {
        return Err(refuse(
            b,
            "PUBLIC_COMMUNICATION_REQUIRED",
            "a waiver for disproportionate effort needs a PUBLIC subject communication \
             recorded first (Art. 34(3)(c))",
        ));
    }
    Ok(())
}

/// Whether the breach may be closed now.
pub fn check_close(b: &Stored) -> Result<(), ApiError> {
    require_open(b, "be closed again")?;
    match b.risk_level {
        RiskLevel::Unspecified => Err(refuse(
            b,
            "NOT_ASSESSED",
            "its risk has not been assessed; call AssessRisk before closing",
        )),
        RiskLevel::Risk | RiskLevel::HighRisk if b.notifications.is_empty() => Err(refuse(
            b,
            "AUTHORITY_NOT_NOTIFIED",
            format!(
                "its risk level is {} and no authority notification is recorded",
                risk_name(b.risk_level)
            ),
        )),
        RiskLevel::HighRisk if b.communications.is_empty() && b.waiver.is_none() => Err(refuse(
            b,
            "SUBJECTS_NOT_TOLD",
            "its risk level is HIGH_RISK and neither a subject communication nor a \
                 communication waiver is recorded (Art. 34)",
        )),
        _ => Ok(()),
    }
}

/// Whether the breach may be deleted at `now` (B-5).
pub fn check_delete(b: &Stored, now: DateTime<Utc>) -> Result<(), ApiError> {
    if b.state != State::Closed {
        return Err(refuse(
            b,
            "ILLEGAL_TRANSITION",
            "only a closed breach can be deleted, after its retention period",
        ));
    }
    let until = from_micros(b.retain_until_us.unwrap_or(i64::MAX));
    if now < until {
        return Err(refuse(
            b,
            "RETENTION_PERIOD",
            format!(
                "it must be kept until {} ({RETENTION_YEARS} years after closing, B-5)",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ));
    }
    Ok(())
}

/// Where the 72-hour clock stands at `now`.
pub fn clock_status(b: &Stored, now: DateTime<Utc>) -> ClockStatus {
    match b.first_notice_us {
        Some(sent) if sent <= b.deadline_us => ClockStatus::NotifiedInTime,
        Some(_) => ClockStatus::NotifiedLate,
        None if b.risk_level == RiskLevel::NoRisk => ClockStatus::NotRequired,
        None if now > from_micros(b.deadline_us) => ClockStatus::Overdue,
        None => ClockStatus::Running,
    }
}

/// The API name of a risk level.
pub fn risk_name(r: RiskLevel) -> &'static str {
    match r {
        RiskLevel::Unspecified => "UNSPECIFIED",
        RiskLevel::NoRisk => "NO_RISK",
        RiskLevel::Risk => "RISK",
        RiskLevel::HighRisk => "HIGH_RISK",
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::storage::to_micros;
    use custodia_proto::breach::v1::{AuthorityNotification, CommunicationWaiver};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn open() -> Stored {
        Stored {
            id: "b1".into(),
            deadline_us: to_micros(at("2026-03-31T22:30:00Z")),
            ..Default::default()
        }
    }

    fn message(e: ApiError) -> String {
        match e {
            ApiError::FailedPrecondition { message, .. } => message,
            other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
        }
    }

    #[test]
    fn late_initial_notification_needs_reasons() {
        let b = open();
        let late = at("2026-03-31T22:31:00Z");
        let err =
            message(check_notification(&b, NotificationPhase::Initial, late, "").unwrap_err());
        assert!(
            err.contains("is OPEN") && err.contains("2026-03-31T22:30:00Z"),
            "{err}"
        );
        check_notification(&b, NotificationPhase::Initial, late, "weekend").unwrap();
        check_notification(
            &b,
            NotificationPhase::Initial,
            at("2026-03-31T22:30:00Z"),
            "",
        )
        .unwrap();
    }

    #[test]
    fn initial_comes_first_and_final_last() {
        let mut b = open();
        assert!(
            check_notification(
                &b,
                NotificationPhase::FollowUp,
                at("2026-03-30T00:00:00Z"),
                ""
            )
            .is_err()
        );
        b.notifications.push(AuthorityNotification {
            phase: NotificationPhase::Initial as i32,
            ..Default::default()
        });
        assert!(
            check_notification(
                &b,
                NotificationPhase::Initial,
                at("2026-03-30T00:00:00Z"),
                ""
            )
            .is_err()
        );
        // A follow-up after the deadline needs no reasons: the clock was met.
        check_notification(
            &b,
            NotificationPhase::FollowUp,
            at("2026-04-30T00:00:00Z"),
            "",
        )
        .unwrap();
        b.notifications.push(AuthorityNotification {
            phase: NotificationPhase::Final as i32,
            ..Default::default()
        });
        assert!(
            check_notification(
                &b,
                NotificationPhase::FollowUp,
                at("2026-05-01T00:00:00Z"),
                ""
            )
            .is_err()
        );
    }

    #[test]
    fn closing_rules() {
        let mut b = open();
        assert!(message(check_close(&b).unwrap_err()).contains("not been assessed"));
        b.risk_level = RiskLevel::NoRisk;
        check_close(&b).unwrap();
        b.risk_level = RiskLevel::HighRisk;
        assert!(message(check_close(&b).unwrap_err()).contains("no authority notification"));
        b.notifications.push(AuthorityNotification::default());
        let err = message(check_close(&b).unwrap_err());
        assert!(
            err.contains("is OPEN") && err.contains("HIGH_RISK"),
            "{err}"
        );
        b.waiver = Some(CommunicationWaiver::default());
        check_close(&b).unwrap();
        b.state = State::Closed;
        assert!(message(check_close(&b).unwrap_err()).contains("is CLOSED"));
    }

    #[test]
    fn deletion_waits_for_retention() {
        let mut b = open();
        assert!(
            message(check_delete(&b, at("2040-01-01T00:00:00Z")).unwrap_err()).contains("is OPEN")
        );
        b.state = State::Closed;
        b.retain_until_us = Some(to_micros(at("2031-04-01T10:00:00Z")));
        let err = message(check_delete(&b, at("2031-04-01T09:59:59Z")).unwrap_err());
        assert!(err.contains("2031-04-01T10:00:00Z"), "{err}");
        check_delete(&b, at("2031-04-01T10:00:00Z")).unwrap();
    }

    #[test]
    fn clock_statuses() {
        let mut b = open();
        assert_eq!(
            clock_status(&b, at("2026-03-31T22:30:00Z")),
            ClockStatus::Running
        );
        assert_eq!(
            clock_status(&b, at("2026-03-31T22:30:01Z")),
            ClockStatus::Overdue
        );
        b.risk_level = RiskLevel::NoRisk;
        assert_eq!(
            clock_status(&b, at("2026-04-30T00:00:00Z")),
            ClockStatus::NotRequired
        );
        b.first_notice_us = Some(b.deadline_us + 1);
        assert_eq!(
            clock_status(&b, at("2026-04-30T00:00:00Z")),
            ClockStatus::NotifiedLate
        );
        b.first_notice_us = Some(b.deadline_us);
        assert_eq!(
            clock_status(&b, at("2026-04-30T00:00:00Z")),
            ClockStatus::NotifiedInTime
        );
    }

    #[test]
    fn disproportionate_effort_needs_a_public_communication() {
        let mut b = open();
        assert!(check_waiver(&b, WaiverGround::DisproportionateEffort).is_err());
        check_waiver(&b, WaiverGround::DataUnintelligible).unwrap();
        b.communications
            .push(custodia_proto::breach::v1::SubjectCommunication {
                channel: CommunicationChannel::Public as i32,
                ..Default::default()
            });
        check_waiver(&b, WaiverGround::DisproportionateEffort).unwrap();
    }
}
