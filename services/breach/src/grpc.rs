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

use custodia_core::{auth::CallContext, listing_rpc, unary_rpc};
use custodia_proto::breach::v1::{self as pb, breach_service_server::BreachService};
use tonic::{Request, Response, Status};

pub use crate::api::{Api, SERVICE_NAME};

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl BreachService for Api {
    async fn report_breach(
        &self,
        request: Request<pb::ReportBreachRequest>,
    ) -> Reply<pb::ReportBreachResponse> {
        unary_rpc!(Api, self, request, report, pb::ReportBreachResponse, breach)
    }

    async fn get_breach(
        &self,
        request: Request<pb::GetBreachRequest>,
    ) -> Reply<pb::GetBreachResponse> {
        unary_rpc!(Api, self, request, get, pb::GetBreachResponse, breach)
    }

    async fn list_breaches(
        &self,
        request: Request<pb::ListBreachesRequest>,
    ) -> Reply<pb::ListBreachesResponse> {
        listing_rpc!(Api, self, request, list)
    }

    async fn update_breach(
        &self,
        request: Request<pb::UpdateBreachRequest>,
    ) -> Reply<pb::UpdateBreachResponse> {
        unary_rpc!(Api, self, request, update, pb::UpdateBreachResponse, breach)
    }

    async fn assess_risk(
        &self,
        request: Request<pb::AssessRiskRequest>,
    ) -> Reply<pb::AssessRiskResponse> {
        unary_rpc!(Api, self, request, assess, pb::AssessRiskResponse, breach)
    }

    async fn assign_team(
        &self,
        request: Request<pb::AssignTeamRequest>,
    ) -> Reply<pb::AssignTeamResponse> {
        unary_rpc!(Api, self, request, assign, pb::AssignTeamResponse, breach)
    }

    async fn add_timeline_entry(
        &self,
        request: Request<pb::AddTimelineEntryRequest>,
    ) -> Reply<pb::AddTimelineEntryResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            add_entry,
            pb::AddTimelineEntryResponse,
            entry
        )
    }

    async fn list_timeline_entries(
        &self,
        request: Request<pb::ListTimelineEntriesRequest>,
    ) -> Reply<pb::ListTimelineEntriesResponse> {
        listing_rpc!(Api, self, request, list_timeline)
    }

    async fn record_authority_notification(
        &self,
        request: Request<pb::RecordAuthorityNotificationRequest>,
    ) -> Reply<pb::RecordAuthorityNotificationResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            record_notification,
            pb::RecordAuthorityNotificationResponse,
            breach
        )
    }

    async fn generate_authority_report(
        &self,
        request: Request<pb::GenerateAuthorityReportRequest>,
    ) -> Reply<pb::GenerateAuthorityReportResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            generate_report,
            pb::GenerateAuthorityReportResponse,
            document
        )
    }

    async fn record_subject_communication(
        &self,
        request: Request<pb::RecordSubjectCommunicationRequest>,
    ) -> Reply<pb::RecordSubjectCommunicationResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            record_communication,
            pb::RecordSubjectCommunicationResponse,
            breach
        )
    }

    async fn record_communication_waiver(
        &self,
        request: Request<pb::RecordCommunicationWaiverRequest>,
    ) -> Reply<pb::RecordCommunicationWaiverResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            record_waiver,
            pb::RecordCommunicationWaiverResponse,
            breach
        )
    }

    async fn close_breach(
        &self,
        request: Request<pb::CloseBreachRequest>,
    ) -> Reply<pb::CloseBreachResponse> {
        unary_rpc!(Api, self, request, close, pb::CloseBreachResponse, breach)
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
