//! `custodia.breach.v1.BreachService`: maps each RPC onto its use case and
//! nothing else. Where each RPC is validated, decided and stored:
//!
//! | RPCs | module |
//! |---|---|
//! | ReportBreach, GetBreach, ListBreaches, UpdateBreach | [`crate::breaches`] |
//! | AssessRisk | [`crate::assessments`] (ENISA method in [`crate::risk`]) |
//! | AssignTeam | [`crate::team`] |
//! | AddTimelineEntry, ListTimelineEntries | [`crate::timeline`] |
//! | RecordAuthorityNotification, RecordSubjectCommunication, RecordCommunicationWaiver | [`crate::notifications`] |
//! | GenerateAuthorityReport | [`crate::report`] |
//! | CloseBreach, DeleteBreach | [`crate::closing`] |
//!
//! The rules on the current record are in [`crate::state`]; every use case
//! stores through [`crate::store`], whose transaction also claims the
//! idempotency key and enqueues the access event.

use custodia_core::auth::CallContext;
use custodia_proto::breach::v1::{self as pb, breach_service_server::BreachService};
use tonic::{Request, Response, Status};

pub use crate::api::{Api, SERVICE_NAME};

type Reply<T> = Result<Response<T>, Status>;

/// Calls use case `$method` with the caller and the request, and wraps its
/// result in `$resp { $field }`.
macro_rules! unary {
    ($self:ident, $request:ident, $method:ident, $resp:ident, $field:ident) => {{
        let call = CallContext::of(&$request)?.clone();
        let out = Api::$method($self, &call, $request.into_inner()).await?;
        Ok(Response::new(pb::$resp { $field: Some(out) }))
    }};
}

/// Calls use case `$method`, whose result is the response.
macro_rules! listing {
    ($self:ident, $request:ident, $method:ident) => {{
        let call = CallContext::of(&$request)?.clone();
        Ok(Response::new(
            Api::$method($self, &call, $request.into_inner()).await?,
        ))
    }};
}

#[tonic::async_trait]
impl BreachService for Api {
    async fn report_breach(
        &self,
        request: Request<pb::ReportBreachRequest>,
    ) -> Reply<pb::ReportBreachResponse> {
        unary!(self, request, report, ReportBreachResponse, breach)
    }

    async fn get_breach(
        &self,
        request: Request<pb::GetBreachRequest>,
    ) -> Reply<pb::GetBreachResponse> {
        unary!(self, request, get, GetBreachResponse, breach)
    }

    async fn list_breaches(
        &self,
        request: Request<pb::ListBreachesRequest>,
    ) -> Reply<pb::ListBreachesResponse> {
        listing!(self, request, list)
    }

    async fn update_breach(
        &self,
        request: Request<pb::UpdateBreachRequest>,
    ) -> Reply<pb::UpdateBreachResponse> {
        unary!(self, request, update, UpdateBreachResponse, breach)
    }

    async fn assess_risk(
        &self,
        request: Request<pb::AssessRiskRequest>,
    ) -> Reply<pb::AssessRiskResponse> {
        unary!(self, request, assess, AssessRiskResponse, breach)
    }

    async fn assign_team(
        &self,
        request: Request<pb::AssignTeamRequest>,
    ) -> Reply<pb::AssignTeamResponse> {
        unary!(self, request, assign, AssignTeamResponse, breach)
    }

    async fn add_timeline_entry(
        &self,
        request: Request<pb::AddTimelineEntryRequest>,
    ) -> Reply<pb::AddTimelineEntryResponse> {
        unary!(self, request, add_entry, AddTimelineEntryResponse, entry)
    }

    async fn list_timeline_entries(
        &self,
        request: Request<pb::ListTimelineEntriesRequest>,
    ) -> Reply<pb::ListTimelineEntriesResponse> {
        listing!(self, request, list_timeline)
    }

    async fn record_authority_notification(
        &self,
        request: Request<pb::RecordAuthorityNotificationRequest>,
    ) -> Reply<pb::RecordAuthorityNotificationResponse> {
        unary!(
            self,
            request,
            record_notification,
            RecordAuthorityNotificationResponse,
            breach
        )
    }

    async fn generate_authority_report(
        &self,
        request: Request<pb::GenerateAuthorityReportRequest>,
    ) -> Reply<pb::GenerateAuthorityReportResponse> {
        unary!(
            self,
            request,
            generate_report,
            GenerateAuthorityReportResponse,
            document
        )
    }

    async fn record_subject_communication(
        &self,
        request: Request<pb::RecordSubjectCommunicationRequest>,
    ) -> Reply<pb::RecordSubjectCommunicationResponse> {
        unary!(
            self,
            request,
            record_communication,
            RecordSubjectCommunicationResponse,
            breach
        )
    }

    async fn record_communication_waiver(
        &self,
        request: Request<pb::RecordCommunicationWaiverRequest>,
    ) -> Reply<pb::RecordCommunicationWaiverResponse> {
        unary!(
            self,
            request,
            record_waiver,
            RecordCommunicationWaiverResponse,
            breach
        )
    }

    async fn close_breach(
        &self,
        request: Request<pb::CloseBreachRequest>,
    ) -> Reply<pb::CloseBreachResponse> {
        unary!(self, request, close, CloseBreachResponse, breach)
    }

    async fn delete_breach(
        &self,
        request: Request<pb::DeleteBreachRequest>,
    ) -> Reply<pb::DeleteBreachResponse> {
        let call = CallContext::of(&request)?.clone();
        Api::delete(self, &call, request.into_inner()).await?;
        Ok(Response::new(pb::DeleteBreachResponse {}))
    }
}
