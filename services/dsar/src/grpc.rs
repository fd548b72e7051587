//! `custodia.dsar.v1.DsarService`: maps each RPC onto its use case and
//! nothing else. Where each RPC is validated, decided and stored:
//!
//! | RPCs | module |
//! |---|---|
//! | SubmitRequest, GetRequest, ListRequests | [`crate::requests`] |
//! | VerifyIdentity, StartProcessing, ExtendDeadline, RejectRequest, CancelRequest, CompleteRequest | [`crate::lifecycle`] (rules in [`crate::state`]) |
//! | MarkSourceHandledManually, RetrySource | [`crate::source_tasks`] |
//! | RecordRecipientNotification | [`crate::recipients`] |
//! | GetExport | [`crate::download`] |
//! | ExportRegister | [`crate::register`] |
//! | RegisterDataSource, GetDataSource, ListDataSources, UpdateDataSource | [`crate::sources`] |
//! | ApplyRetention, GetRetentionRun, ListRetentionRuns | [`crate::retention`] |
//!
//! Every use case stores through [`crate::store`], whose transaction also
//! claims the idempotency key and enqueues the access event.

use custodia_core::auth::CallContext;
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
impl DsarService for Api {
    async fn submit_request(
        &self,
        request: Request<pb::SubmitRequestRequest>,
    ) -> Reply<pb::SubmitRequestResponse> {
        unary!(self, request, submit, SubmitRequestResponse, request)
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Reply<pb::GetRequestResponse> {
        unary!(self, request, get, GetRequestResponse, request)
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Reply<pb::ListRequestsResponse> {
        listing!(self, request, list)
    }

    async fn verify_identity(
        &self,
        request: Request<pb::VerifyIdentityRequest>,
    ) -> Reply<pb::VerifyIdentityResponse> {
        unary!(self, request, verify, VerifyIdentityResponse, request)
    }

    async fn start_processing(
        &self,
        request: Request<pb::StartProcessingRequest>,
    ) -> Reply<pb::StartProcessingResponse> {
        unary!(self, request, start, StartProcessingResponse, request)
    }

    async fn extend_deadline(
        &self,
        request: Request<pb::ExtendDeadlineRequest>,
    ) -> Reply<pb::ExtendDeadlineResponse> {
        unary!(self, request, extend, ExtendDeadlineResponse, request)
    }

    async fn reject_request(
        &self,
        request: Request<pb::RejectRequestRequest>,
    ) -> Reply<pb::RejectRequestResponse> {
        unary!(self, request, reject, RejectRequestResponse, request)
    }

    async fn cancel_request(
        &self,
        request: Request<pb::CancelRequestRequest>,
    ) -> Reply<pb::CancelRequestResponse> {
        unary!(self, request, cancel, CancelRequestResponse, request)
    }

    async fn complete_request(
        &self,
        request: Request<pb::CompleteRequestRequest>,
    ) -> Reply<pb::CompleteRequestResponse> {
        unary!(self, request, complete, CompleteRequestResponse, request)
    }

    async fn mark_source_handled_manually(
        &self,
        request: Request<pb::MarkSourceHandledManuallyRequest>,
    ) -> Reply<pb::MarkSourceHandledManuallyResponse> {
        unary!(
            self,
            request,
            mark_manual,
            MarkSourceHandledManuallyResponse,
            request
        )
    }

    async fn retry_source(
        &self,
        request: Request<pb::RetrySourceRequest>,
    ) -> Reply<pb::RetrySourceResponse> {
        unary!(self, request, retry, RetrySourceResponse, request)
    }

    async fn record_recipient_notification(
        &self,
        request: Request<pb::RecordRecipientNotificationRequest>,
    ) -> Reply<pb::RecordRecipientNotificationResponse> {
        unary!(
            self,
            request,
            notify_recipient,
            RecordRecipientNotificationResponse,
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
        unary!(
            self,
            request,
            export_register,
            ExportRegisterResponse,
            document
        )
    }

    async fn register_data_source(
        &self,
        request: Request<pb::RegisterDataSourceRequest>,
    ) -> Reply<pb::RegisterDataSourceResponse> {
        unary!(
            self,
            request,
            register_source,
            RegisterDataSourceResponse,
            data_source
        )
    }

    async fn get_data_source(
        &self,
        request: Request<pb::GetDataSourceRequest>,
    ) -> Reply<pb::GetDataSourceResponse> {
        unary!(
            self,
            request,
            get_source,
            GetDataSourceResponse,
            data_source
        )
    }

    async fn list_data_sources(
        &self,
        request: Request<pb::ListDataSourcesRequest>,
    ) -> Reply<pb::ListDataSourcesResponse> {
        listing!(self, request, list_sources)
    }

    async fn update_data_source(
        &self,
        request: Request<pb::UpdateDataSourceRequest>,
    ) -> Reply<pb::UpdateDataSourceResponse> {
        unary!(
            self,
            request,
            update_source,
            UpdateDataSourceResponse,
            data_source
        )
    }

    async fn apply_retention(
        &self,
        request: Request<pb::ApplyRetentionRequest>,
    ) -> Reply<pb::ApplyRetentionResponse> {
        unary!(
            self,
            request,
            apply_retention_rpc,
            ApplyRetentionResponse,
            run
        )
    }

    async fn get_retention_run(
        &self,
        request: Request<pb::GetRetentionRunRequest>,
    ) -> Reply<pb::GetRetentionRunResponse> {
        unary!(self, request, get_run, GetRetentionRunResponse, run)
    }

    async fn list_retention_runs(
        &self,
        request: Request<pb::ListRetentionRunsRequest>,
    ) -> Reply<pb::ListRetentionRunsResponse> {
        listing!(self, request, list_runs)
    }
}
