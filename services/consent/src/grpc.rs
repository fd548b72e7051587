//! `custodia.consent.v1.ConsentService`: each handler takes the caller and the
//! request and hands them to the use case of the resource's module, where the
//! request is validated (pure `validate_*` functions), decided and stored:
//!
//! | RPCs | module |
//! |---|---|
//! | CreatePurpose, GetPurpose, ListPurposes, UpdatePurpose, ExportRegister | [`crate::purposes`] |
//! | PublishNotice, GetNotice, ListNotices | [`crate::notices`] |
//! | RecordConsent, WithdrawConsent, RecordObjection | [`crate::records`] |
//! | ListConsentEvents, ListSubjectConsents, ListReconsentDue | [`crate::history`] |
//! | CheckConsent, BatchCheckConsent | [`crate::checks`] |
//! | GetReceipt, ListReceiptKeys | [`crate::receipts`] |
//! | EraseSubject | [`crate::erasure`] |
//! | WatchConsentChanges | [`crate::watch`] |

use custodia_core::{ApiError, auth::CallContext};
use custodia_proto::consent::v1::{self as pb, consent_service_server::ConsentService};
use tonic::{Request, Response, Status};

use crate::{api::Api, checks, erasure, history, notices, purposes, receipts, records, watch};

type Reply<T> = Result<Response<T>, Status>;

/// The caller of `request` and its body.
fn parts<T>(request: Request<T>) -> Result<(CallContext, T), Status> {
    let call = CallContext::of(&request)?.clone();
    Ok((call, request.into_inner()))
}

/// The answer of a use case.
fn reply<T>(result: Result<T, ApiError>) -> Reply<T> {
    Ok(Response::new(result?))
}

#[tonic::async_trait]
impl ConsentService for Api {
    type WatchConsentChangesStream = watch::ChangeStream;

    async fn create_purpose(
        &self,
        request: Request<pb::CreatePurposeRequest>,
    ) -> Reply<pb::CreatePurposeResponse> {
        let (call, r) = parts(request)?;
        reply(purposes::create(self, &call, r).await)
    }

    async fn get_purpose(
        &self,
        request: Request<pb::GetPurposeRequest>,
    ) -> Reply<pb::GetPurposeResponse> {
        reply(purposes::get(self, request.into_inner()).await)
    }

    async fn list_purposes(
        &self,
        request: Request<pb::ListPurposesRequest>,
    ) -> Reply<pb::ListPurposesResponse> {
        reply(purposes::list(self, request.into_inner()).await)
    }

    async fn update_purpose(
        &self,
        request: Request<pb::UpdatePurposeRequest>,
    ) -> Reply<pb::UpdatePurposeResponse> {
        let (call, r) = parts(request)?;
        reply(purposes::update(self, &call, r).await)
    }

    async fn publish_notice(
        &self,
        request: Request<pb::PublishNoticeRequest>,
    ) -> Reply<pb::PublishNoticeResponse> {
        let (call, r) = parts(request)?;
        reply(notices::publish(self, &call, r).await)
    }

    async fn get_notice(
        &self,
        request: Request<pb::GetNoticeRequest>,
    ) -> Reply<pb::GetNoticeResponse> {
        reply(notices::get(self, request.into_inner()).await)
    }

    async fn list_notices(
        &self,
        request: Request<pb::ListNoticesRequest>,
    ) -> Reply<pb::ListNoticesResponse> {
        reply(notices::list(self, request.into_inner()).await)
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Reply<pb::RecordConsentResponse> {
        let (call, r) = parts(request)?;
        reply(records::record(self, &call, r).await)
    }

    async fn withdraw_consent(
        &self,
        request: Request<pb::WithdrawConsentRequest>,
    ) -> Reply<pb::WithdrawConsentResponse> {
        let (call, r) = parts(request)?;
        reply(records::withdraw(self, &call, r).await)
    }

    async fn record_objection(
        &self,
        request: Request<pb::RecordObjectionRequest>,
    ) -> Reply<pb::RecordObjectionResponse> {
        let (call, r) = parts(request)?;
        reply(records::object(self, &call, r).await)
    }

    async fn list_consent_events(
        &self,
        request: Request<pb::ListConsentEventsRequest>,
    ) -> Reply<pb::ListConsentEventsResponse> {
        let (call, r) = parts(request)?;
        reply(history::list_events(self, &call, r).await)
    }

    async fn list_subject_consents(
        &self,
        request: Request<pb::ListSubjectConsentsRequest>,
    ) -> Reply<pb::ListSubjectConsentsResponse> {
        let (call, r) = parts(request)?;
        reply(history::list_subject_consents(self, &call, r).await)
    }

    async fn check_consent(
        &self,
        request: Request<pb::CheckConsentRequest>,
    ) -> Reply<pb::CheckConsentResponse> {
        let (call, r) = parts(request)?;
        reply(checks::check_consent(self, &call, r).await)
    }

    async fn batch_check_consent(
        &self,
        request: Request<pb::BatchCheckConsentRequest>,
    ) -> Reply<pb::BatchCheckConsentResponse> {
        let (call, r) = parts(request)?;
        reply(checks::batch_check_consent(self, &call, r).await)
    }

    async fn watch_consent_changes(
        &self,
        request: Request<pb::WatchConsentChangesRequest>,
    ) -> Reply<watch::ChangeStream> {
        let (call, r) = parts(request)?;
        reply(watch::watch_consent_changes(self, &call, r).await)
    }

    async fn list_reconsent_due(
        &self,
        request: Request<pb::ListReconsentDueRequest>,
    ) -> Reply<pb::ListReconsentDueResponse> {
        let (call, r) = parts(request)?;
        reply(history::list_reconsent_due(self, &call, r).await)
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Reply<pb::GetReceiptResponse> {
        let (call, r) = parts(request)?;
        reply(receipts::get(self, &call, r).await)
    }

    async fn list_receipt_keys(
        &self,
        request: Request<pb::ListReceiptKeysRequest>,
    ) -> Reply<pb::ListReceiptKeysResponse> {
        reply(receipts::list_keys(self, request.into_inner()).await)
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Reply<pb::EraseSubjectResponse> {
        let (call, r) = parts(request)?;
        reply(erasure::erase_subject(self, &call, r).await)
    }

    async fn apply_records_retention(
        &self,
        request: Request<pb::ApplyRecordsRetentionRequest>,
    ) -> Reply<pb::ApplyRecordsRetentionResponse> {
        let (call, r) = parts(request)?;
        reply(erasure::apply_records_retention(self, &call, r).await)
    }

    async fn export_register(
        &self,
        request: Request<pb::ExportRegisterRequest>,
    ) -> Reply<pb::ExportRegisterResponse> {
        reply(purposes::export_register(self, request.into_inner()).await)
    }
}
