//! `custodia.dsar.v1.DsarService`: maps each RPC onto its use case and
//! nothing else. Where each RPC is validated, decided and stored:
//!
//! | RPCs | module |
//! |---|---|
//! | SubmitRequest, GetRequest, ListRequests | [`crate::requests`] |
//! | VerifyIdentity, StartProcessing, ExtendDeadline, RejectRequest, CancelRequest, CompleteRequest | [`crate::lifecycle`] (rules in [`crate::state`]) |
//! | MarkSourceHandledManually, RetrySource | [`crate::source_tasks`] |
//! | RecordRecipientNotification | [`crate::recipients`] |
//! | RecordHumanReview | [`crate::review`] |
//! | RecordDestruction | [`crate::special`] |
//! | GetExport | [`crate::download`] |
//! | ExportRegister | [`crate::register`] |
//! | RegisterDataSource, GetDataSource, ListDataSources, UpdateDataSource | [`crate::sources`] |
//! | ApplyRetention, GetRetentionRun, ListRetentionRuns | [`crate::retention`] |
//!
//! Every use case stores through [`crate::store`], whose transaction also
//! claims the idempotency key and enqueues the access event.

use custodia_core::{auth::CallContext, listing_rpc, unary_rpc};
use custodia_proto::dsar::v1::{self as pb, dsar_service_server::DsarService};
use tonic::{Request, Response, Status};

pub use crate::{
    api::{Api, SERVICE_NAME},
    lifecycle::{exports, operation_for},
};
/// Longest idempotency key accepted.
pub use custodia_core::idempotency::MAX_REQUEST_ID;

use crate::download::{ExportStream, stream_file};

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl DsarService for Api {
    type GetExportStream = ExportStream;

    async fn submit_request(
        &self,
        request: Request<pb::SubmitRequestRequest>,
    ) -> Reply<pb::SubmitRequestResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            submit,
            pb::SubmitRequestResponse,
            request
        )
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Reply<pb::GetRequestResponse> {
        unary_rpc!(Api, self, request, get, pb::GetRequestResponse, request)
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Reply<pb::ListRequestsResponse> {
        listing_rpc!(Api, self, request, list)
    }

    async fn verify_identity(
        &self,
        request: Request<pb::VerifyIdentityRequest>,
    ) -> Reply<pb::VerifyIdentityResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            verify,
            pb::VerifyIdentityResponse,
            request
        )
    }

    async fn start_processing(
        &self,
        request: Request<pb::StartProcessingRequest>,
    ) -> Reply<pb::StartProcessingResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            start,
            pb::StartProcessingResponse,
            request
        )
    }

    async fn extend_deadline(
        &self,
        request: Request<pb::ExtendDeadlineRequest>,
    ) -> Reply<pb::ExtendDeadlineResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            extend,
            pb::ExtendDeadlineResponse,
            request
        )
    }

    async fn reject_request(
        &self,
        request: Request<pb::RejectRequestRequest>,
    ) -> Reply<pb::RejectRequestResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            reject,
            pb::RejectRequestResponse,
            request
        )
    }

    async fn cancel_request(
        &self,
        request: Request<pb::CancelRequestRequest>,
    ) -> Reply<pb::CancelRequestResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            cancel,
            pb::CancelRequestResponse,
            request
        )
    }

    async fn complete_request(
        &self,
        request: Request<pb::CompleteRequestRequest>,
    ) -> Reply<pb::CompleteRequestResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            complete,
            pb::CompleteRequestResponse,
            request
        )
    }

    async fn mark_source_handled_manually(
        &self,
        request: Request<pb::MarkSourceHandledManuallyRequest>,
    ) -> Reply<pb::MarkSourceHandledManuallyResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            mark_manual,
            pb::MarkSourceHandledManuallyResponse,
            request
        )
    }

    async fn retry_source(
        &self,
        request: Request<pb::RetrySourceRequest>,
    ) -> Reply<pb::RetrySourceResponse> {
        unary_rpc!(Api, self, request, retry, pb::RetrySourceResponse, request)
    }

    async fn record_recipient_notification(
        &self,
        request: Request<pb::RecordRecipientNotificationRequest>,
    ) -> Reply<pb::RecordRecipientNotificationResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            notify_recipient,
            pb::RecordRecipientNotificationResponse,
            request
        )
    }

    async fn record_human_review(
        &self,
        request: Request<pb::RecordHumanReviewRequest>,
    ) -> Reply<pb::RecordHumanReviewResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            record_review,
            pb::RecordHumanReviewResponse,
            request
        )
    }

    async fn record_destruction(
        &self,
        request: Request<pb::RecordDestructionRequest>,
    ) -> Reply<pb::RecordDestructionResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            record_destruction,
            pb::RecordDestructionResponse,
            request
        )
    }

    async fn get_export(&self, request: Request<pb::GetExportRequest>) -> Reply<ExportStream> {
        let call = CallContext::of(&request)?.clone();
        let (package, path) = Api::open_export(self, &call, request.into_inner()).await?;
        Ok(Response::new(stream_file(package, path)))
    }

    async fn export_register(
        &self,
        request: Request<pb::ExportRegisterRequest>,
    ) -> Reply<pb::ExportRegisterResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            export_register,
            pb::ExportRegisterResponse,
            document
        )
    }

    async fn register_data_source(
        &self,
        request: Request<pb::RegisterDataSourceRequest>,
    ) -> Reply<pb::RegisterDataSourceResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            register_source,
            pb::RegisterDataSourceResponse,
            data_source
        )
    }

    async fn get_data_source(
        &self,
        request: Request<pb::GetDataSourceRequest>,
    ) -> Reply<pb::GetDataSourceResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            get_source,
            pb::GetDataSourceResponse,
            data_source
        )
    }

    async fn list_data_sources(
        &self,
        request: Request<pb::ListDataSourcesRequest>,
    ) -> Reply<pb::ListDataSourcesResponse> {
        listing_rpc!(Api, self, request, list_sources)
    }

    async fn update_data_source(
        &self,
        request: Request<pb::UpdateDataSourceRequest>,
    ) -> Reply<pb::UpdateDataSourceResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            update_source,
            pb::UpdateDataSourceResponse,
            data_source
        )
    }

    async fn apply_retention(
        &self,
        request: Request<pb::ApplyRetentionRequest>,
    ) -> Reply<pb::ApplyRetentionResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            apply_retention_rpc,
            pb::ApplyRetentionResponse,
            run
        )
    }

    async fn get_retention_run(
        &self,
        request: Request<pb::GetRetentionRunRequest>,
    ) -> Reply<pb::GetRetentionRunResponse> {
        unary_rpc!(
            Api,
            self,
            request,
            get_run,
            pb::GetRetentionRunResponse,
            run
        )
    }

    async fn list_retention_runs(
        &self,
        request: Request<pb::ListRetentionRunsRequest>,
    ) -> Reply<pb::ListRetentionRunsResponse> {
        listing_rpc!(Api, self, request, list_runs)
    }
}
