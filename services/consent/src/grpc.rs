//! `custodia.consent.v1.ConsentService`: thin handlers. This step serves the
//! register of processing (purposes) and its export; the consent records arrive in
//! the next steps and answer UNIMPLEMENTED until then.

use custodia_core::{
    ApiError, pagination, server::ServiceContext, storage::to_micros, validate::Validator,
};
use custodia_proto::{
    common::v1::ExportFormat,
    consent::v1::{self as pb, Purpose, PurposeState, consent_service_server::ConsentService},
};
use tonic::{Request, Response, Status};

use crate::{
    export,
    register::{self, purpose_id, purpose_name, valid_id},
    store::{ConsentStore, PurposeFilter, StoredPurpose, Written},
};

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct Api {
    ctx: ServiceContext,
    store: ConsentStore,
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
    pub fn new(ctx: ServiceContext, store: ConsentStore) -> Self {
        Self { ctx, store }
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
            .await
            .map_err(ApiError::internal)?
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
        let r = request.into_inner();
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
            .create_purpose(&r.purpose_id, &purpose, next, &r.request_id, now_us)
            .await?;
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
            purpose: Some(self.purpose_by_id(id).await?),
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
            .await
            .map_err(ApiError::internal)?;
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
        let r = request.into_inner();
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
        for (i, path) in paths.iter().enumerate() {
            if !UPDATABLE.contains(&path.as_str()) {
                v.add(
                    format!("update_mask.paths[{i}]"),
                    format!("`{path}` cannot be updated"),
                );
            }
        }
        v.max_len("request_id", &r.request_id, 128);
        v.finish()?;
        let current = self
            .store
            .purpose(&id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found("purpose", purpose_name(&id)))?;
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
            .update_purpose(&id, &merged, next, etag, &r.request_id, now_us)
            .await?;
        Ok(Response::new(pb::UpdatePurposeResponse {
            purpose: Some(self.written(written).await?),
        }))
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
            let page = self
                .store
                .purposes(&filter, after.as_deref(), 500)
                .await
                .map_err(ApiError::internal)?;
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
