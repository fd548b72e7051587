//! `custodia.consent.v1.ConsentService`: thin handlers. This step serves the
//! register of processing (purposes) and its export; the consent records arrive in
//! the next steps and answer UNIMPLEMENTED until then.

use custodia_core::{
    ApiError,
    auth::CallContext,
    echo::echo,
    idempotency::{self, MAX_REQUEST_ID, RequestKey},
    outbox::OutboxStore,
    pagination,
    server::ServiceContext,
    storage::{from_micros, to_micros},
    validate::{MAX_MASK_PATHS, Validator},
};
use custodia_proto::{
    common::v1::ExportFormat,
    consent::v1::{self as pb, Purpose, PurposeState, consent_service_server::ConsentService},
};
use std::sync::Arc;

use custodia_core::signing::Ed25519Key;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::{
    cache::CheckCache,
    export,
    records::subject_consent,
    register::{self, purpose_id, purpose_name, valid_id},
    store::{ConsentStore, PurposeFilter, StoredPurpose, Written},
    watch,
};

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct Api {
    ctx: ServiceContext,
    store: ConsentStore,
    changed: Arc<Notify>,
    receipts: Ed25519Key,
    /// Whether `receipts` is known to be in the store's receipt keys.
    receipt_key_stored: Arc<std::sync::atomic::AtomicBool>,
    /// What checks read, kept in memory (see [`crate::cache`]).
    pub(crate) cache: Arc<CheckCache>,
}

/// Fields `UpdatePurpose` may change (output-only fields and the name are not).
const UPDATABLE: &[&str] = &[
    "display_name",
    "description",
    "lawful_basis",
    "lawful_basis_details",
    "category",
    "direct_marketing",
    "data_categories",
    "subject_categories",
    "recipients",
    "transfers",
    "retention",
    "reconsent_interval",
    "cookies",
    "cookie_lifetime",
    "digital_consent_age",
    "systems",
    "state",
    "last_review_time",
];

fn apply_mask(current: &mut Purpose, update: &Purpose, path: &str) {
    let u = update.clone();
    match path {
        "display_name" => current.display_name = u.display_name,
        "description" => current.description = u.description,
        "lawful_basis" => current.lawful_basis = u.lawful_basis,
        "lawful_basis_details" => current.lawful_basis_details = u.lawful_basis_details,
        "category" => current.category = u.category,
        "direct_marketing" => current.direct_marketing = u.direct_marketing,
        "data_categories" => current.data_categories = u.data_categories,
        "subject_categories" => current.subject_categories = u.subject_categories,
        "recipients" => current.recipients = u.recipients,
        "transfers" => current.transfers = u.transfers,
        "retention" => current.retention = u.retention,
        "reconsent_interval" => current.reconsent_interval = u.reconsent_interval,
        "cookies" => current.cookies = u.cookies,
        "cookie_lifetime" => current.cookie_lifetime = u.cookie_lifetime,
        "digital_consent_age" => current.digital_consent_age = u.digital_consent_age,
        "systems" => current.systems = u.systems,
        "state" => current.state = u.state,
        "last_review_time" => current.last_review_time = u.last_review_time,
        _ => {}
    }
}

impl Api {
    /// Handlers over `store`.
    pub fn new(
        ctx: ServiceContext,
        store: ConsentStore,
        receipts: Ed25519Key,
        cache: Arc<CheckCache>,
    ) -> Self {
        Self {
            ctx,
            store,
            changed: Arc::new(Notify::new()),
            receipts,
            receipt_key_stored: Arc::default(),
            cache,
        }
    }

    /// Adds the receipt key to the keys ListReceiptKeys hands out before its first
    /// receipt of this process (`now_us`), so that receipts stay verifiable after
    /// the key is rotated.
    pub async fn store_receipt_key(&self, now_us: i64) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering;
        if !self.receipt_key_stored.load(Ordering::Acquire) {
            self.store
                .add_receipt_key(
                    self.receipts.key_id(),
                    self.receipts.public_key().as_bytes(),
                    now_us,
                )
                .await?;
            self.receipt_key_stored.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The receipt signing key.
    pub fn receipt_key(&self) -> &Ed25519Key {
        &self.receipts
    }

    /// Wakes change streams after a committed write.
    pub fn notify_changed(&self) {
        self.changed.notify_waiters();
    }

    /// The service context.
    pub fn ctx(&self) -> &ServiceContext {
        &self.ctx
    }

    /// The store.
    pub fn store(&self) -> &ConsentStore {
        &self.store
    }

    fn output(&self, s: StoredPurpose) -> Purpose {
        let mut p = register::with_outputs(
            s.purpose,
            s.create_us,
            s.update_us,
            &s.etag,
            self.ctx.clock.now(),
        );
        p.name = purpose_name(&s.id);
        p
    }

    async fn purpose_by_id(&self, id: &str) -> Result<Purpose, ApiError> {
        let stored = self
            .store
            .purpose(id)
            .await?
            .ok_or_else(|| ApiError::not_found("purpose", purpose_name(id)))?;
        Ok(self.output(stored))
    }

    async fn written(&self, w: Written) -> Result<Purpose, ApiError> {
        match w {
            Written::Done(s) => Ok(self.output(*s)),
            Written::Replayed(id) => self.purpose_by_id(&id).await,
        }
    }
}

#[tonic::async_trait]
impl ConsentService for Api {
    async fn create_purpose(
        &self,
        request: Request<pb::CreatePurposeRequest>,
    ) -> Result<Response<pb::CreatePurposeResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let key = RequestKey::of(&call, "CreatePurpose", &r.request_id, &r);
        let now = self.ctx.clock.now();
        let mut v = Validator::new();
        v.check(
            valid_id(&r.purpose_id),
            "purpose_id",
            "must be 1-63 lowercase letters, digits or hyphens, starting with a letter",
        );
        v.max_len("request_id", &r.request_id, 128);
        let Some(purpose) = r.purpose else {
            v.add("purpose", "is required");
            v.finish()?;
            unreachable!("finish fails when a violation was added");
        };
        register::validate(&purpose, "purpose.", now, &mut v);
        v.finish()?;
        let mut purpose = register::without_outputs(purpose);
        purpose.name = String::new();
        if purpose.state == PurposeState::Unspecified as i32 {
            purpose.state = PurposeState::Active as i32;
        }
        let now_us = to_micros(now);
        if purpose.last_review_time.is_none() {
            // Entering a purpose in the register is its first review.
            purpose.last_review_time = Some(register::timestamp(now));
        }
        let next = register::next_review_us(&purpose, now_us);
        let written = self
            .store
            .create_purpose(&r.purpose_id, &purpose, next, key.as_ref(), now_us)
            .await?;
        self.cache.forget_register();
        Ok(Response::new(pb::CreatePurposeResponse {
            purpose: Some(self.written(written).await?),
        }))
    }

    async fn get_purpose(
        &self,
        request: Request<pb::GetPurposeRequest>,
    ) -> Result<Response<pb::GetPurposeResponse>, Status> {
        let r = request.into_inner();
        let id = purpose_id(&r.name, "name")?;
        Ok(Response::new(pb::GetPurposeResponse {
            purpose: Some(
                self.purpose_by_id(id)
                    .await
                    .map_err(|e| e.in_field("name"))?,
            ),
        }))
    }

    async fn list_purposes(
        &self,
        request: Request<pb::ListPurposesRequest>,
    ) -> Result<Response<pb::ListPurposesResponse>, Status> {
        let r = request.into_inner();
        let size = pagination::page_size(r.page_size)?;
        let enum_filter = |v: i32, field: &str, valid: bool| -> Result<Option<i32>, ApiError> {
            match v {
                0 => Ok(None),
                _ if valid => Ok(Some(v)),
                _ => Err(ApiError::invalid(field, "is not a known value")),
            }
        };
        let filter = PurposeFilter {
            review_due_before_us: r
                .overdue_for_review
                .then(|| to_micros(self.ctx.clock.now())),
            lawful_basis: enum_filter(
                r.lawful_basis,
                "lawful_basis",
                pb::LawfulBasis::try_from(r.lawful_basis).is_ok(),
            )?,
            category: enum_filter(
                r.category,
                "category",
                pb::PurposeCategory::try_from(r.category).is_ok(),
            )?,
            include_retired: r.show_retired,
        };
        let fingerprint = format!(
            "{:?}{:?}{}{}",
            filter.lawful_basis, filter.category, r.overdue_for_review, r.show_retired
        );
        let after: Option<String> = pagination::decode(&r.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .purposes(&filter, after.as_deref(), size + 1)
            .await?;
        let next =
            (rows.len() > size).then(|| pagination::encode(&rows[size - 1].id, &fingerprint));
        rows.truncate(size);
        Ok(Response::new(pb::ListPurposesResponse {
            purposes: rows.into_iter().map(|s| self.output(s)).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn update_purpose(
        &self,
        request: Request<pb::UpdatePurposeRequest>,
    ) -> Result<Response<pb::UpdatePurposeResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let key = RequestKey::of(&call, "UpdatePurpose", &r.request_id, &r);
        let now = self.ctx.clock.now();
        let update = r
            .purpose
            .ok_or_else(|| ApiError::invalid("purpose", "is required"))?;
        let id = purpose_id(&update.name, "purpose.name")?.to_string();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(ApiError::invalid(
                "update_mask",
                "list the fields to change, e.g. `description`",
            )
            .into());
        }
        let mut v = Validator::new();
        v.max_items("update_mask.paths", paths.len(), MAX_MASK_PATHS);
        for (i, path) in paths.iter().enumerate().take(MAX_MASK_PATHS) {
            if !UPDATABLE.contains(&path.as_str()) {
                v.add(
                    format!("update_mask.paths[{i}]"),
                    format!("`{}` cannot be updated", echo(path)),
                );
            }
        }
        v.max_len("request_id", &r.request_id, 128);
        v.finish()?;
        let current = self.store.purpose(&id).await?.ok_or_else(|| {
            ApiError::not_found("purpose", purpose_name(&id)).in_field("purpose.name")
        })?;
        let mut merged = current.purpose.clone();
        for path in &paths {
            apply_mask(&mut merged, &update, path);
        }
        register::validate(&merged, "purpose.", now, &mut v);
        v.finish()?;
        let etag = (!update.etag.is_empty()).then_some(update.etag.as_str());
        let now_us = to_micros(now);
        let next = register::next_review_us(&merged, current.create_us);
        let written = self
            .store
            .update_purpose(&id, &merged, next, etag, key.as_ref(), now_us)
            .await?;
        self.cache.forget_register();
        Ok(Response::new(pb::UpdatePurposeResponse {
            purpose: Some(self.written(written).await?),
        }))
    }

    async fn publish_notice(
        &self,
        request: Request<pb::PublishNoticeRequest>,
    ) -> Result<Response<pb::PublishNoticeResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let notice = self.publish_notice_op(&call, request.into_inner()).await?;
        Ok(Response::new(pb::PublishNoticeResponse {
            notice: Some(notice),
        }))
    }

    async fn get_notice(
        &self,
        request: Request<pb::GetNoticeRequest>,
    ) -> Result<Response<pb::GetNoticeResponse>, Status> {
        let notice = self.get_notice_op(&request.into_inner().name).await?;
        Ok(Response::new(pb::GetNoticeResponse {
            notice: Some(notice),
        }))
    }

    async fn list_notices(
        &self,
        request: Request<pb::ListNoticesRequest>,
    ) -> Result<Response<pb::ListNoticesResponse>, Status> {
        let r = request.into_inner();
        let size = pagination::page_size(r.page_size)?;
        let notice_id = (!r.notice_id.is_empty()).then_some(r.notice_id.as_str());
        if notice_id.is_some_and(|id| !valid_id(id)) {
            return Err(ApiError::invalid("notice_id", "is not a notice id").into());
        }
        let purpose = match r.purpose.as_str() {
            "" => None,
            p => Some(purpose_id(p, "purpose")?.to_string()),
        };
        let fingerprint = format!("{notice_id:?}{purpose:?}{}", r.latest_only);
        let after: Option<(String, i64)> = pagination::decode(&r.page_token, &fingerprint)?;
        let mut notices = self
            .store
            .notices(notice_id, purpose.as_deref(), after, size + 1)
            .await?;
        let next = (notices.len() > size).then(|| {
            let last = &notices[size - 1];
            let id = last.name.split('/').nth(1).unwrap_or_default().to_string();
            pagination::encode(&(id, i64::from(last.version)), &fingerprint)
        });
        notices.truncate(size);
        if r.latest_only {
            // Keep the highest version of each notice on this page.
            let mut latest: Vec<pb::Notice> = Vec::new();
            for n in notices {
                let id = n.name.split('/').nth(1).unwrap_or_default().to_string();
                match latest.last_mut() {
                    Some(prev) if prev.name.split('/').nth(1) == Some(id.as_str()) => *prev = n,
                    _ => latest.push(n),
                }
            }
            notices = latest;
        }
        Ok(Response::new(pb::ListNoticesResponse {
            notices,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        Ok(Response::new(
            self.record_consent_op(&call, request.into_inner()).await?,
        ))
    }

    async fn withdraw_consent(
        &self,
        request: Request<pb::WithdrawConsentRequest>,
    ) -> Result<Response<pb::WithdrawConsentResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let key = RequestKey::of(&call, "WithdrawConsent", &r.request_id, &r);
        let (events, receipt) = self
            .withdraw_or_object(
                &call,
                "WithdrawConsent",
                r.subject.as_ref(),
                &r.purposes,
                r.all_purposes,
                false,
                r.evidence,
                &r.reason,
                &r.request_id,
                key.as_ref(),
                pb::ConsentState::Withdrawn,
            )
            .await?;
        Ok(Response::new(pb::WithdrawConsentResponse {
            events,
            receipt,
        }))
    }

    async fn record_objection(
        &self,
        request: Request<pb::RecordObjectionRequest>,
    ) -> Result<Response<pb::RecordObjectionResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let key = RequestKey::of(&call, "RecordObjection", &r.request_id, &r);
        let (events, _) = self
            .withdraw_or_object(
                &call,
                "RecordObjection",
                r.subject.as_ref(),
                &r.purposes,
                false,
                r.direct_marketing,
                r.evidence,
                &r.grounds,
                &r.request_id,
                key.as_ref(),
                pb::ConsentState::Objected,
            )
            .await?;
        Ok(Response::new(pb::RecordObjectionResponse { events }))
    }

    async fn list_consent_events(
        &self,
        request: Request<pb::ListConsentEventsRequest>,
    ) -> Result<Response<pb::ListConsentEventsResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let size = pagination::page_size(r.page_size)?;
        let ids = self.subjects(&r.subject_identifiers)?;
        let purpose = match r.purpose.as_str() {
            "" => None,
            p => Some(purpose_id(p, "purpose")?.to_string()),
        };
        let hashes: Vec<String> = ids.iter().map(|(_, h)| h.clone()).collect();
        let fingerprint = format!("{hashes:?}{purpose:?}");
        let after: Option<i64> = pagination::decode(&r.page_token, &fingerprint)?;
        self.ctx.quota.take(call.principal.name(), ids.len())?;
        let mut events = self
            .store
            .events(&hashes, purpose.as_deref(), after, size + 1)
            .await?;
        let next =
            (events.len() > size).then(|| pagination::encode(&events[size - 1].0, &fingerprint));
        events.truncate(size);
        for (id, hash) in &ids {
            let mut access = self.access(&call, "ListConsentEvents", None, "");
            access.subject_type = Some(id.kind().to_string());
            access.subject_hash = Some(hash.clone());
            self.ctx
                .outbox
                .enqueue(&access)
                .await
                .map_err(ApiError::internal)?;
        }
        Ok(Response::new(pb::ListConsentEventsResponse {
            events: events.into_iter().map(|(_, e)| e).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_subject_consents(
        &self,
        request: Request<pb::ListSubjectConsentsRequest>,
    ) -> Result<Response<pb::ListSubjectConsentsResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let size = pagination::page_size_or(r.page_size, 100)?;
        // A token is only good for the subjects it was issued for (their keyed
        // hashes, not the identifiers, are fingerprinted in it). It holds the
        // position (identifier index, purpose id) of the last state returned, so
        // a state written between pages shifts nothing.
        let ids = self.subjects(&r.subject_identifiers)?;
        let filter = ids
            .iter()
            .map(|(_, hash)| hash.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let after: Option<(usize, String)> = pagination::decode(&r.page_token, &filter)?;
        self.ctx.quota.take(call.principal.name(), ids.len())?;
        let mut rest = self
            .subject_consents(&call, &ids)
            .await?
            .into_iter()
            .filter(|(position, _)| after.as_ref().is_none_or(|a| position > a))
            .peekable();
        let mut consents = Vec::new();
        let mut last = None;
        while consents.len() < size {
            let Some((position, consent)) = rest.next() else {
                break;
            };
            consents.push(consent);
            last = Some(position);
        }
        let more = rest.peek().is_some();
        Ok(Response::new(pb::ListSubjectConsentsResponse {
            consents,
            next_page_token: match last {
                Some(position) if more => pagination::encode(&position, &filter),
                _ => String::new(),
            },
        }))
    }

    async fn check_consent(
        &self,
        request: Request<pb::CheckConsentRequest>,
    ) -> Result<Response<pb::CheckConsentResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let result = self
            .check(&call, r.subject.as_ref(), &r.purpose, "CheckConsent")
            .await?;
        Ok(Response::new(pb::CheckConsentResponse {
            result: Some(result),
        }))
    }

    async fn batch_check_consent(
        &self,
        request: Request<pb::BatchCheckConsentRequest>,
    ) -> Result<Response<pb::BatchCheckConsentResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        if r.subjects.is_empty() || r.subjects.len() > 10_000 {
            return Err(ApiError::invalid("subjects", "give between 1 and 10,000 subjects").into());
        }
        let subjects = self.batch_subjects(&r.subjects)?;
        let results = self
            .check_many(&call, &subjects, &r.purpose, "BatchCheckConsent")
            .await?;
        Ok(Response::new(pb::BatchCheckConsentResponse { results }))
    }

    async fn watch_consent_changes(
        &self,
        request: Request<pb::WatchConsentChangesRequest>,
    ) -> Result<Response<watch::ChangeStream>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let mut v = Validator::new();
        v.max_items("purposes", r.purposes.len(), crate::ops::MAX_PURPOSE_FILTER);
        v.finish()?;
        let mut purposes = Vec::new();
        for (i, p) in r.purposes.iter().enumerate() {
            purposes.push(purpose_id(p, &format!("purposes[{i}]"))?.to_string());
        }
        let after = match watch::parse_cursor(&r.cursor)? {
            Some(seq) => seq,
            None => match &r.start_time {
                // Replay from a time: every change recorded at or after it.
                Some(t) => {
                    let from = to_micros(register::from_timestamp(t));
                    self.store
                        .first_change_at_or_after(from)
                        .await?
                        .map_or(i64::MAX, |seq| seq - 1)
                        .min(self.store.last_change().await?)
                }
                None => self.store.last_change().await?,
            },
        };
        let access = self.access(&call, "WatchConsentChanges", None, "");
        self.ctx
            .outbox
            .enqueue(&access)
            .await
            .map_err(ApiError::internal)?;
        Ok(Response::new(watch::stream(
            self.ctx.shutdown.clone(),
            self.store.clone(),
            self.changed.clone(),
            after,
            purposes,
        )))
    }

    async fn list_reconsent_due(
        &self,
        request: Request<pb::ListReconsentDueRequest>,
    ) -> Result<Response<pb::ListReconsentDueResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let pid = purpose_id(&r.purpose, "purpose")?.to_string();
        let before = r
            .expire_before_time
            .as_ref()
            .map(|t| to_micros(register::from_timestamp(t)))
            .ok_or_else(|| ApiError::invalid("expire_before_time", "is required"))?;
        let size = match r.page_size {
            n if n < 0 => return Err(ApiError::invalid("page_size", "must not be negative").into()),
            0 => 1000,
            n => (n as usize).min(10_000),
        };
        if self.store.purpose(&pid).await?.is_none() {
            return Err(ApiError::not_found("purpose", purpose_name(&pid))
                .in_field("purpose")
                .into());
        }
        let now_us = to_micros(self.ctx.clock.now());
        let material = if r.include_reconfirmation_required {
            self.store.material_notice_us(&pid, now_us).await?
        } else {
            None
        };
        let fingerprint = format!("{pid}{before}{material:?}");
        let after: Option<(i64, String)> = pagination::decode(&r.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .reconsent_due(&pid, before, material, after, size + 1)
            .await?;
        let next = (rows.len() > size).then(|| {
            let (exp, hash, _, _) = &rows[size - 1];
            pagination::encode(&(*exp, hash.clone()), &fingerprint)
        });
        rows.truncate(size);
        let mut access = self.access(&call, "ListReconsentDue", None, "");
        access.resource = purpose_name(&pid);
        access.purpose = Some(pid.clone());
        self.ctx
            .outbox
            .enqueue(&access)
            .await
            .map_err(ApiError::internal)?;
        let consents = rows
            .into_iter()
            .map(|(exp, _, decision_us, event)| {
                let expire_us = (exp != i64::MAX).then_some(exp);
                let reconfirm = material.is_some_and(|m| m > decision_us);
                subject_consent(&event, decision_us, expire_us, reconfirm)
            })
            .collect();
        Ok(Response::new(pb::ListReconsentDueResponse {
            consents,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::GetReceiptResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let name = request.into_inner().name;
        let id = crate::receipt::id_of(&name)
            .ok_or_else(|| ApiError::invalid("name", "must be `receipts/{receipt}`"))?;
        let receipt = self
            .store
            .receipt(id)
            .await?
            .ok_or_else(|| ApiError::not_found("receipt", name.clone()).in_field("name"))?;
        let mut access = self.access(&call, "GetReceipt", None, "");
        access.resource = name;
        self.ctx
            .outbox
            .enqueue(&access)
            .await
            .map_err(ApiError::internal)?;
        Ok(Response::new(pb::GetReceiptResponse {
            receipt: Some(receipt),
        }))
    }

    async fn list_receipt_keys(
        &self,
        request: Request<pb::ListReceiptKeysRequest>,
    ) -> Result<Response<pb::ListReceiptKeysResponse>, Status> {
        let r = request.into_inner();
        let size = pagination::page_size_or(r.page_size, 100)?;
        let from: usize = pagination::decode(&r.page_token, "receipt-keys")?.unwrap_or(0);
        let stored = self.store.receipt_keys().await?;
        let current = self.receipts.key_id();
        // The key this process signs with first, until it has signed (then the
        // store has it: create_time is its first receipt).
        // No retire_time: while a rotation rolls out, replicas still on the old
        // key keep signing with it after the new key's first receipt, and no
        // replica knows when the last one stopped.
        let key = |key_id: &str, public_key: &[u8], first_used_us: Option<i64>| {
            custodia_proto::common::v1::PublicKey {
                key_id: key_id.to_string(),
                algorithm: "Ed25519".into(),
                public_key: public_key.to_vec(),
                create_time: first_used_us.map(|us| register::timestamp(from_micros(us))),
                ..Default::default()
            }
        };
        let unsigned = (!stored.iter().any(|(id, ..)| id == current))
            .then(|| key(current, self.receipts.public_key().as_bytes(), None));
        let all: Vec<_> =
            unsigned
                .into_iter()
                .chain(stored.iter().map(|(id, public_key, first_used_us)| {
                    key(id, public_key, Some(*first_used_us))
                }))
                .collect();
        let keys: Vec<_> = all.iter().skip(from).take(size).cloned().collect();
        let next = from + keys.len();
        Ok(Response::new(pb::ListReceiptKeysResponse {
            keys,
            next_page_token: if next < all.len() {
                pagination::encode(&next, "receipt-keys")
            } else {
                String::new()
            },
        }))
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        let call = CallContext::of(&request)?.clone();
        let r = request.into_inner();
        let key = RequestKey::of(&call, "EraseSubject", &r.request_id, &r);
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        v.finish()?;
        let ids = self.subjects(&r.subject_identifiers)?;
        let hashes: Vec<String> = ids.iter().map(|(_, h)| h.clone()).collect();
        // A retry answers what the first call erased (a second erasure finds nothing).
        if let Some(first) = idempotency::kept(&self.ctx.db, key.as_ref()).await? {
            let mut access = self.access(&call, "EraseSubject", None, "");
            access.resource = r.dsar_request.clone();
            access.detail = serde_json::json!({ "replay": true }).to_string();
            self.ctx
                .outbox
                .enqueue(&access)
                .await
                .map_err(ApiError::internal)?;
            return Ok(Response::new(first));
        }
        let (erased, receipts) = self.store.erase(&hashes).await?;
        for hash in &hashes {
            self.cache.forget(hash);
        }
        // The record names the request, not the person just erased.
        let mut access = self.access(&call, "EraseSubject", None, "");
        access.resource = r.dsar_request.clone();
        self.ctx
            .outbox
            .enqueue_durable(&access)
            .await
            .map_err(ApiError::internal)?;
        let response = pb::EraseSubjectResponse {
            erased_event_count: erased,
            erased_receipt_count: receipts,
            retained: Vec::new(),
        };
        let now_us = to_micros(self.ctx.clock.now());
        idempotency::keep(&self.ctx.db, key.as_ref(), &response, now_us).await?;
        Ok(Response::new(response))
    }

    async fn export_register(
        &self,
        request: Request<pb::ExportRegisterRequest>,
    ) -> Result<Response<pb::ExportRegisterResponse>, Status> {
        let r = request.into_inner();
        let format = ExportFormat::try_from(r.format)
            .map_err(|_| ApiError::invalid("format", "is not a known format"))?;
        let filter = PurposeFilter {
            include_retired: r.show_retired,
            ..Default::default()
        };
        let mut purposes = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.purposes(&filter, after.as_deref(), 500).await?;
            let done = page.len() < 500;
            after = page.last().map(|s| s.id.clone());
            purposes.extend(page.into_iter().map(|s| self.output(s)));
            if done {
                break;
            }
        }
        let generated = self.ctx.clock.now().to_rfc3339();
        let document = match format {
            ExportFormat::Unspecified | ExportFormat::Json => {
                export::json_document(&purposes, &generated)
            }
            ExportFormat::Csv => export::csv_document(&purposes, &generated),
            ExportFormat::Markdown => {
                return Err(
                    ApiError::invalid("format", "the register is exported as JSON or CSV").into(),
                );
            }
        };
        Ok(Response::new(pb::ExportRegisterResponse {
            document: Some(document),
        }))
    }
}
