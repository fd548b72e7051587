//! The breach register through its public gRPC API, on SQLite and PostgreSQL:
//! the report -> assess -> notify -> communicate -> close lifecycle, the
//! 72-hour clock across a DST change, the state machine's refusals, bad input
//! by field, idempotent reports, retention before deletion, and every call as
//! an access event in audit-log. One file per scenario; the helpers below are
//! what they share.

mod clock;
mod lifecycle;
mod register;

use chrono::{DateTime, Utc};
use custodia_proto::breach::v1::{
    AssessRiskRequest, AuthorityNotification, Breach, ClockStatus, CloseBreachRequest,
    CommunicationWaiver, DeleteBreachRequest, EnisaInputs, GetBreachRequest, ListBreachesRequest,
    NotificationPhase, RecordAuthorityNotificationRequest, RecordCommunicationWaiverRequest,
    RecordSubjectCommunicationRequest, ReportBreachRequest, RiskAssessment, RiskLevel,
    SubjectCommunication, WaiverGround,
};
use custodia_tests::ts;
use tonic::Status;

type Client = custodia_tests::BreachClient;

const SERVICE: &str = "custodia.breach.v1.BreachService";

/// 23:30 in Paris on Saturday 28 March 2026; clocks go forward at 02:00 the
/// next night, so the deadline 72 elapsed hours later is 00:30 CEST on 1 April.
const AWARE: &str = "2026-03-28T22:30:00Z";
const DEADLINE: &str = "2026-03-31T22:30:00Z";

/// A breach reported with the least information: a title, a description and
/// when it was detected.
fn minimal(detect: DateTime<Utc>) -> Breach {
    Breach {
        title: "Laptop with exam results stolen".into(),
        description: "A teacher's laptop was stolen from a car".into(),
        detect_time: Some(ts(detect)),
        ..Default::default()
    }
}

async fn report(client: &mut Client, breach: Breach, request_id: &str) -> Result<Breach, Status> {
    client
        .report_breach(ReportBreachRequest {
            breach: Some(breach),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn get(client: &mut Client, name: &str) -> Result<Breach, Status> {
    client
        .get_breach(GetBreachRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn list(client: &mut Client, request: ListBreachesRequest) -> Vec<String> {
    client
        .list_breaches(request)
        .await
        .expect("list")
        .into_inner()
        .breaches
        .into_iter()
        .map(|b| b.name)
        .collect()
}

async fn notify(
    client: &mut Client,
    name: &str,
    phase: NotificationPhase,
    delay_reasons: &str,
) -> Result<Breach, Status> {
    client
        .record_authority_notification(RecordAuthorityNotificationRequest {
            name: name.into(),
            notification: Some(AuthorityNotification {
                phase: phase as i32,
                authority: "CNIL".into(),
                method: "CNIL online notification service".into(),
                delay_reasons: delay_reasons.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn assess(
    client: &mut Client,
    name: &str,
    inputs: EnisaInputs,
    override_level: RiskLevel,
    justification: &str,
) -> Result<Breach, Status> {
    client
        .assess_risk(AssessRiskRequest {
            name: name.into(),
            assessment: Some(RiskAssessment {
                inputs: Some(inputs),
                override_risk_level: override_level as i32,
                override_justification: justification.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

/// Records that the subjects of breach `name` were told through `communication`.
async fn communicate(
    client: &mut Client,
    name: &str,
    communication: SubjectCommunication,
) -> Result<Breach, Status> {
    client
        .record_subject_communication(RecordSubjectCommunicationRequest {
            name: name.into(),
            communication: Some(communication),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

/// Records a waiver of telling the subjects of breach `name`, on `ground`.
async fn waive(
    client: &mut Client,
    name: &str,
    ground: WaiverGround,
    justification: &str,
) -> Result<Breach, Status> {
    client
        .record_communication_waiver(RecordCommunicationWaiverRequest {
            name: name.into(),
            waiver: Some(CommunicationWaiver {
                ground: ground as i32,
                justification: justification.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn close(client: &mut Client, name: &str) -> Result<Breach, Status> {
    client
        .close_breach(CloseBreachRequest {
            name: name.into(),
            lessons_learned: "Encrypt every laptop disk".into(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().breach.expect("breach"))
}

async fn delete(client: &mut Client, name: &str, request_id: &str) -> Result<(), Status> {
    client
        .delete_breach(DeleteBreachRequest {
            name: name.into(),
            request_id: request_id.into(),
        })
        .await
        .map(|_| ())
}

fn high_risk_inputs() -> EnisaInputs {
    // Exam results (DPC 2), named files (EI 1), unknown recipients (0.5), theft (+0.5).
    EnisaInputs {
        data_processing_context: 2,
        data_processing_context_rationale: "exam results: behavioural data".into(),
        ease_of_identification: 1.0,
        confidentiality_loss: 0.5,
        malicious_intent: true,
        ..Default::default()
    }
}

fn clock_status(b: &Breach) -> ClockStatus {
    b.authority_clock.as_ref().expect("clock").status()
}
