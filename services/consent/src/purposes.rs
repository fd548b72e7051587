//! The register of processing over the API: CreatePurpose, GetPurpose,
//! ListPurposes, UpdatePurpose and ExportRegister. What a purpose must hold is
//! in [`crate::register`].

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    echo::echo,
    idempotency::{MAX_REQUEST_ID, RequestKey},
    pagination,
    storage::to_micros,
    validate::{MAX_MASK_PATHS, Validator},
};
use custodia_proto::{
    common::v1::ExportFormat,
    consent::v1::{self as pb, Purpose, PurposeState},
};

use crate::{
    api::Api,
    export,
    register::{self, purpose_id, purpose_name},
    store::{PurposeFilter, StoredPurpose, Written},
};

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
    "special_categories",
    "article9_condition",
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
        "special_categories" => current.special_categories = u.special_categories,
        "article9_condition" => current.article9_condition = u.article9_condition,
        _ => {}
    }
}

/// A CreatePurposeRequest, validated: the purpose id and the purpose as stored
/// (output-only fields cleared, ACTIVE unless a state is given, reviewed `now`
/// unless a review time is given).
fn validate_create(
    r: pb::CreatePurposeRequest,
    now: DateTime<Utc>,
) -> Result<(String, Purpose), ApiError> {
    let mut v = Validator::new();
    register::check_id(&mut v, "purpose_id", &r.purpose_id);
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
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
    if purpose.last_review_time.is_none() {
        // Entering a purpose in the register is its first review.
        purpose.last_review_time = Some(register::timestamp(now));
    }
    Ok((r.purpose_id, purpose))
}

/// CreatePurpose.
pub(crate) async fn create(
    api: &Api,
    call: &CallContext,
    r: pb::CreatePurposeRequest,
) -> Result<pb::CreatePurposeResponse, ApiError> {
    let key = RequestKey::of(call, "CreatePurpose", &r.request_id, &r);
    let now = api.ctx.clock.now();
    let (id, purpose) = validate_create(r, now)?;
    let now_us = to_micros(now);
    let next = register::next_review_us(&purpose, now_us);
    let written = api
        .store
        .create_purpose(&id, &purpose, next, key.as_ref(), now_us)
        .await?;
    Ok(pb::CreatePurposeResponse {
        purpose: Some(registered(api, written).await?),
    })
}

/// GetPurpose.
pub(crate) async fn get(
    api: &Api,
    r: pb::GetPurposeRequest,
) -> Result<pb::GetPurposeResponse, ApiError> {
    let id = purpose_id(&r.name, "name")?;
    Ok(pb::GetPurposeResponse {
        purpose: Some(
            purpose_by_id(api, id)
                .await
                .map_err(|e| e.in_field("name"))?,
        ),
    })
}

/// The filters of a ListPurposesRequest (`now` for the overdue filter).
fn list_filter(r: &pb::ListPurposesRequest, now: DateTime<Utc>) -> Result<PurposeFilter, ApiError> {
    let enum_filter = |v: i32, field: &str, valid: bool| -> Result<Option<i32>, ApiError> {
        match v {
            0 => Ok(None),
            _ if valid => Ok(Some(v)),
            _ => Err(ApiError::invalid(field, "is not a known value")),
        }
    };
    Ok(PurposeFilter {
        review_due_before_us: r.overdue_for_review.then(|| to_micros(now)),
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
    })
}

/// ListPurposes.
pub(crate) async fn list(
    api: &Api,
    r: pb::ListPurposesRequest,
) -> Result<pb::ListPurposesResponse, ApiError> {
    let size = pagination::page_size(r.page_size)?;
    let filter = list_filter(&r, api.ctx.clock.now())?;
    let fingerprint = format!(
        "{:?}{:?}{}{}",
        filter.lawful_basis, filter.category, r.overdue_for_review, r.show_retired
    );
    let after: Option<String> = pagination::decode(&r.page_token, &fingerprint)?;
    let mut rows = api
        .store
        .purposes(&filter, after.as_deref(), size + 1)
        .await?;
    let next = (rows.len() > size).then(|| pagination::encode(&rows[size - 1].id, &fingerprint));
    rows.truncate(size);
    Ok(pb::ListPurposesResponse {
        purposes: with_notices(api, rows.into_iter().map(|s| output(api, s)).collect()).await?,
        next_page_token: next.unwrap_or_default(),
    })
}

/// An UpdatePurposeRequest's own checks: the purpose id, the changes and the
/// fields to take from them.
fn validate_update(
    r: pb::UpdatePurposeRequest,
) -> Result<(String, Purpose, Vec<String>), ApiError> {
    let update = r
        .purpose
        .ok_or_else(|| ApiError::invalid("purpose", "is required"))?;
    let id = purpose_id(&update.name, "purpose.name")?.to_string();
    let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(ApiError::invalid(
            "update_mask",
            "list the fields to change, e.g. `description`",
        ));
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
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
    v.finish()?;
    Ok((id, update, paths))
}

/// `current` with the `paths` of `update` applied, validated as a whole.
fn merge(
    current: &Purpose,
    update: &Purpose,
    paths: &[String],
    now: DateTime<Utc>,
) -> Result<Purpose, ApiError> {
    let mut merged = current.clone();
    for path in paths {
        apply_mask(&mut merged, update, path);
    }
    let mut v = Validator::new();
    register::validate(&merged, "purpose.", now, &mut v);
    v.finish()?;
    Ok(merged)
}

/// UpdatePurpose.
pub(crate) async fn update(
    api: &Api,
    call: &CallContext,
    r: pb::UpdatePurposeRequest,
) -> Result<pb::UpdatePurposeResponse, ApiError> {
    let key = RequestKey::of(call, "UpdatePurpose", &r.request_id, &r);
    let now = api.ctx.clock.now();
    let (id, update, paths) = validate_update(r)?;
    let current = api.store.purpose(&id).await?.ok_or_else(|| {
        ApiError::not_found("purpose", purpose_name(&id)).in_field("purpose.name")
    })?;
    let merged = merge(&current.purpose, &update, &paths, now)?;
    let etag = (!update.etag.is_empty()).then_some(update.etag.as_str());
    let now_us = to_micros(now);
    let next = register::next_review_us(&merged, current.create_us);
    let written = api
        .store
        .update_purpose(&id, &merged, next, etag, key.as_ref(), now_us)
        .await?;
    Ok(pb::UpdatePurposeResponse {
        purpose: Some(registered(api, written).await?),
    })
}

/// ExportRegister.
pub(crate) async fn export_register(
    api: &Api,
    r: pb::ExportRegisterRequest,
) -> Result<pb::ExportRegisterResponse, ApiError> {
    let format = ExportFormat::try_from(r.format)
        .map_err(|_| ApiError::invalid("format", "is not a known format"))?;
    let filter = PurposeFilter {
        include_retired: r.show_retired,
        ..Default::default()
    };
    let mut purposes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = api.store.purposes(&filter, after.as_deref(), 500).await?;
        let done = page.len() < 500;
        after = page.last().map(|s| s.id.clone());
        purposes
            .extend(with_notices(api, page.into_iter().map(|s| output(api, s)).collect()).await?);
        if done {
            break;
        }
    }
    let generated = api.ctx.clock.now().to_rfc3339();
    let document = match format {
        ExportFormat::Unspecified | ExportFormat::Json => {
            export::json_document(&purposes, &generated)
        }
        ExportFormat::Csv => export::csv_document(&purposes, &generated),
        ExportFormat::Markdown => {
            return Err(ApiError::invalid(
                "format",
                "the register is exported as JSON or CSV",
            ));
        }
    };
    Ok(pb::ExportRegisterResponse {
        document: Some(document),
    })
}

/// A stored purpose as the API shows it (output-only fields filled for now).
fn output(api: &Api, s: StoredPurpose) -> Purpose {
    let mut p = register::with_outputs(
        s.purpose,
        s.create_us,
        s.update_us,
        &s.etag,
        api.ctx.clock.now(),
    );
    p.name = purpose_name(&s.id);
    p
}

async fn purpose_by_id(api: &Api, id: &str) -> Result<Purpose, ApiError> {
    let stored = api
        .store
        .purpose(id)
        .await?
        .ok_or_else(|| ApiError::not_found("purpose", purpose_name(id)))?;
    one_with_notice(api, output(api, stored)).await
}

/// `purposes` with `notice` set: the latest notice version in force that covers
/// each (an output field the register does not store).
async fn with_notices(api: &Api, mut purposes: Vec<Purpose>) -> Result<Vec<Purpose>, ApiError> {
    let ids: Vec<String> = purposes
        .iter()
        .map(|p| crate::register::purpose_id(&p.name, "name").map(str::to_string))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let now = custodia_core::storage::to_micros(api.ctx.clock.now());
    let latest = api.store.latest_notices(&refs, now).await?;
    for (p, id) in purposes.iter_mut().zip(&ids) {
        p.notice = latest.get(id).cloned().unwrap_or_default();
    }
    Ok(purposes)
}

async fn one_with_notice(api: &Api, p: Purpose) -> Result<Purpose, ApiError> {
    Ok(with_notices(api, vec![p]).await?.remove(0))
}

/// What a create or update answers once the register changed (the check
/// cache forgets it): the purpose written, or the one a retry's first call
/// wrote.
async fn registered(api: &Api, w: Written) -> Result<Purpose, ApiError> {
    api.cache.forget_register();
    match w {
        Written::Done(s) => one_with_notice(api, output(api, *s)).await,
        Written::Replayed(id) => purpose_by_id(api, &id).await,
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::fields;
    use prost_types::FieldMask;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn valid_purpose() -> Purpose {
        Purpose {
            display_name: "Newsletter".into(),
            lawful_basis: pb::LawfulBasis::Consent as i32,
            category: pb::PurposeCategory::Marketing as i32,
            ..Default::default()
        }
    }

    #[test]
    fn create_requires_an_id_and_a_purpose() {
        let r = pb::CreatePurposeRequest {
            purpose_id: "News".into(),
            ..Default::default()
        };
        assert_eq!(
            fields(validate_create(r, now()).unwrap_err()),
            ["purpose_id", "purpose"]
        );
    }

    #[test]
    fn create_stores_an_active_purpose_reviewed_now() {
        let r = pb::CreatePurposeRequest {
            purpose_id: "newsletter".into(),
            purpose: Some(Purpose {
                name: "purposes/other".into(),
                etag: "x".into(),
                ..valid_purpose()
            }),
            ..Default::default()
        };
        let (id, p) = validate_create(r, now()).unwrap();
        assert_eq!(id, "newsletter");
        assert_eq!(p.name, "");
        assert_eq!(p.etag, "");
        assert_eq!(p.state, PurposeState::Active as i32);
        assert_eq!(p.last_review_time, Some(register::timestamp(now())));
    }

    #[test]
    fn update_names_a_purpose_and_updatable_fields() {
        let request = |name: &str, paths: &[&str]| pb::UpdatePurposeRequest {
            purpose: Some(Purpose {
                name: name.into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(validate_update(pb::UpdatePurposeRequest::default()).unwrap_err()),
            ["purpose"]
        );
        assert_eq!(
            fields(validate_update(request("newsletter", &["description"])).unwrap_err()),
            ["purpose.name"]
        );
        assert_eq!(
            fields(validate_update(request("purposes/newsletter", &[])).unwrap_err()),
            ["update_mask"]
        );
        assert_eq!(
            fields(
                validate_update(request("purposes/newsletter", &["description", "etag"]))
                    .unwrap_err()
            ),
            ["update_mask.paths[1]"]
        );
        let (id, _, paths) =
            validate_update(request("purposes/newsletter", &["description"])).unwrap();
        assert_eq!(
            (id.as_str(), paths),
            ("newsletter", vec!["description".to_string()])
        );
    }

    #[test]
    fn merge_takes_only_the_masked_fields_and_validates_the_result() {
        let current = valid_purpose();
        let update = Purpose {
            description: "weekly".into(),
            display_name: String::new(),
            ..Default::default()
        };
        let merged = merge(&current, &update, &["description".into()], now()).unwrap();
        assert_eq!(merged.description, "weekly");
        assert_eq!(merged.display_name, "Newsletter");
        let cleared = merge(&current, &update, &["display_name".into()], now());
        assert_eq!(fields(cleared.unwrap_err()), ["purpose.display_name"]);
    }

    #[test]
    fn list_filters_take_known_values_only() {
        let r = pb::ListPurposesRequest {
            lawful_basis: pb::LawfulBasis::Consent as i32,
            overdue_for_review: true,
            ..Default::default()
        };
        let f = list_filter(&r, now()).unwrap();
        assert_eq!(f.lawful_basis, Some(pb::LawfulBasis::Consent as i32));
        assert_eq!(f.category, None);
        assert_eq!(f.review_due_before_us, Some(to_micros(now())));
        let r = pb::ListPurposesRequest {
            category: 999,
            ..Default::default()
        };
        assert_eq!(fields(list_filter(&r, now()).unwrap_err()), ["category"]);
    }
}
