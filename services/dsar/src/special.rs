//! Special categories of data (Art. 9, R-4: "not collected; any received is
//! destroyed"): a source that answers a request with records of a special
//! category the register does not allow it (no purpose it declares names that
//! category) gets a finding on the request; RecordDestruction records that
//! they were destroyed, and the request cannot be completed before.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    idempotency::RequestKey,
    proto_time::timestamp,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::SpecialCategory,
    dsar::v1::{self as pb, ActionResult, RequestState},
};

use crate::{
    api::Api,
    model::{self, action, named_change},
    state::{OPEN, refuse, require},
    store::{Changes, Loaded},
};

/// A special category in words (`health`).
pub fn words(c: SpecialCategory) -> String {
    c.as_str_name()
        .trim_start_matches("SPECIAL_CATEGORY_")
        .to_ascii_lowercase()
        .replace('_', " ")
}

impl Api {
    /// The special categories the register allows source `source_id` to hold:
    /// those of the purposes it declares. `Err` says why they could not be
    /// read (the findings then say so, and nothing is taken as allowed).
    pub(crate) async fn allowed_special_categories(
        &self,
        source_id: &str,
    ) -> Result<HashSet<i32>, String> {
        let source = self.source(source_id).await.map_err(|e| e.to_string())?;
        let purposes = self.register_purposes(&[&source]).await?;
        Ok(purposes
            .into_values()
            .flatten()
            .flat_map(|p| p.special_categories)
            .collect())
    }
}

/// Adds to `l` the findings of an export of `source_name` that returned
/// `found` (category, special category, records) where `allowed` are the
/// special categories the register allows it; returns the action entries
/// saying so. A finding already made for the same source and category is
/// brought up to date instead of repeated.
pub(crate) fn record_findings(
    l: &mut Loaded,
    source_name: &str,
    found: &[(String, SpecialCategory, i64)],
    allowed: &Result<HashSet<i32>, String>,
    now: DateTime<Utc>,
    principal: &str,
) -> Vec<pb::ActionEntry> {
    let mut actions = Vec::new();
    for (category, special, count) in found {
        if let Ok(allowed) = allowed
            && allowed.contains(&(*special as i32))
        {
            continue;
        }
        let why = match allowed {
            Ok(_) => "which the register does not allow for this source (no purpose it \
                      declares names it)"
                .to_string(),
            Err(e) => format!("which could not be checked against the register ({e})"),
        };
        let findings = &mut l.record.special_category_findings;
        match findings
            .iter_mut()
            .find(|f| f.data_source == source_name && &f.category == category)
        {
            Some(f) => {
                f.record_count = *count;
                f.special_category = *special as i32;
            }
            None => findings.push(pb::SpecialCategoryFinding {
                data_source: source_name.to_string(),
                category: category.clone(),
                special_category: *special as i32,
                record_count: *count,
                find_time: Some(timestamp(now)),
                ..Default::default()
            }),
        }
        actions.push(action(
            now,
            principal,
            "special_category_found",
            ActionResult::Failed,
            format!(
                "{count} record(s) of {category} hold {} data (Art. 9), {why}: they must be \
                 destroyed and the destruction recorded (R-4)",
                words(*special)
            ),
            source_name,
        ));
    }
    actions
}

/// Checks a RecordDestruction: the request, the finding's source and
/// category, and how the records were destroyed.
pub(crate) fn validate_destruction(r: &pb::RecordDestructionRequest) -> Result<String, ApiError> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    v.required("data_source", &r.data_source, MAX_ID);
    v.required("category", &r.category, MAX_ID);
    v.required("destruction", &r.destruction, MAX_TEXT);
    v.finish()?;
    Ok(id.unwrap_or_default())
}

impl Api {
    /// RecordDestruction.
    pub(crate) async fn record_destruction(
        &self,
        call: &CallContext,
        r: pb::RecordDestructionRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "RecordDestruction", &r.request_id, &r);
        let now = self.clock.now();
        let id = validate_destruction(&r)?;
        let principal = call.principal.name().to_string();
        self.change(call, "RecordDestruction", &id, key.as_ref(), move |l| {
            let mut states = OPEN.to_vec();
            states.push(RequestState::Completed);
            require(l, &states, "record a destruction")?;
            let Some(f) = l
                .record
                .special_category_findings
                .iter_mut()
                .find(|f| f.data_source == r.data_source && f.category == r.category)
            else {
                return Err(ApiError::not_found(
                    "special-category finding",
                    format!("{} {}", r.data_source, r.category),
                )
                .in_field("category"));
            };
            if f.destroyed {
                return Err(refuse(
                    l,
                    "ALREADY_DESTROYED",
                    "its destruction was recorded already",
                ));
            }
            f.destroyed = true;
            f.destruction = r.destruction.clone();
            f.destroy_time = Some(timestamp(now));
            f.actor = Some(model::actor(&principal));
            let text = format!(
                "{} record(s) of {} ({} data) destroyed: {}",
                f.record_count,
                f.category,
                words(f.special_category()),
                r.destruction
            );
            Ok(Changes {
                actions: vec![action(
                    now,
                    &principal,
                    "special_category_destroyed",
                    ActionResult::Succeeded,
                    text,
                    &r.data_source,
                )],
                ..Default::default()
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::fields::violated_fields;

    use super::*;

    use crate::api::test_now as now;

    #[test]
    fn findings_name_what_the_register_does_not_allow() {
        let mut l = Loaded::default();
        let found = vec![
            ("medical_notes".to_string(), SpecialCategory::Health, 3),
            ("badges".to_string(), SpecialCategory::Biometric, 1),
        ];
        let allowed = Ok(HashSet::from([SpecialCategory::Biometric as i32]));
        let actions = record_findings(
            &mut l,
            "dataSources/crm",
            &found,
            &allowed,
            now(),
            "custodia",
        );
        assert_eq!(actions.len(), 1);
        assert!(
            actions[0]
                .description
                .contains("3 record(s) of medical_notes hold health data")
        );
        let f = &l.record.special_category_findings;
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].category.as_str(), f[0].record_count),
            ("medical_notes", 3)
        );
        // Asked again (a retry): the finding is brought up to date, not repeated.
        let again = vec![("medical_notes".to_string(), SpecialCategory::Health, 4)];
        record_findings(
            &mut l,
            "dataSources/crm",
            &again,
            &allowed,
            now(),
            "custodia",
        );
        assert_eq!(l.record.special_category_findings.len(), 1);
        assert_eq!(l.record.special_category_findings[0].record_count, 4);
        // A register that cannot be read allows nothing, and says so.
        let unread = Err("consent unreachable".to_string());
        let actions = record_findings(&mut l, "dataSources/hr", &found, &unread, now(), "custodia");
        assert_eq!(actions.len(), 2);
        assert!(actions[0].description.contains("could not be checked"));
    }

    #[test]
    fn a_destruction_says_how() {
        let r = pb::RecordDestructionRequest {
            name: "requests/abc".into(),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_destruction(&r)),
            ["data_source", "category", "destruction"]
        );
    }
}
