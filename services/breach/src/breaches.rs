//! ReportBreach, GetBreach, ListBreaches and UpdateBreach: a breach enters
//! the register with its 72-hour authority deadline, is read back, listed by
//! deadline, and its record corrected while it is open. Validation is pure
//! (`validate_*`, unit-tested below).

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    echo::echo,
    fields::{enum_value, optional_time, page_size},
    idempotency::{MAX_REQUEST_ID, RequestKey},
    legal_time::breach_authority_deadline,
    pagination,
    storage::{from_micros, to_micros},
    validate::{MAX_MASK_PATHS, Validator},
};
use custodia_proto::breach::v1::{self as pb, RiskLevel};

use crate::{
    api::{Api, breach_id, resource, rfc3339, system_entry},
    model,
    state::{self, State},
    store::{BreachFilter, Done, Stored, Write},
};

/// Checks a ReportBreach at `now`: the record and when the institution
/// became aware.
pub(crate) fn validate_report(
    r: &pb::ReportBreachRequest,
    now: DateTime<Utc>,
) -> Result<(pb::Breach, DateTime<Utc>), ApiError> {
    let mut v = Validator::new();
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
    let Some(breach) = &r.breach else {
        return Err(ApiError::invalid("breach", "is required"));
    };
    let aware = model::validate_record(&mut v, "breach", breach, now);
    v.finish()?;
    let aware = aware.ok_or_else(|| ApiError::invalid("breach.detect_time", "is required"))?;
    Ok((breach.clone(), aware))
}

/// Checks an UpdateBreach: the breach's id, the update and the paths to copy.
pub(crate) fn validate_update(
    r: &pb::UpdateBreachRequest,
) -> Result<(String, pb::Breach, Vec<String>), ApiError> {
    let mut v = Validator::new();
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
    let Some(update) = &r.breach else {
        return Err(ApiError::invalid("breach", "is required"));
    };
    let id = breach_id("breach.name", &update.name)?;
    match &r.update_mask {
        None => v.add("update_mask", "is required"),
        Some(m) if m.paths.is_empty() => v.add("update_mask.paths", "must name a field"),
        Some(m) if !v.max_items("update_mask.paths", m.paths.len(), MAX_MASK_PATHS) => {}
        Some(m) => {
            for (i, p) in m.paths.iter().enumerate() {
                if !model::UPDATABLE.contains(&p.as_str()) {
                    v.add(
                        format!("update_mask.paths[{i}]"),
                        format!(
                            "`{}` cannot be updated; allowed: {}",
                            echo(p),
                            model::UPDATABLE.join(", ")
                        ),
                    );
                }
            }
        }
    }
    v.finish()?;
    let paths = r.update_mask.clone().map(|m| m.paths).unwrap_or_default();
    Ok((id, update.clone(), paths))
}

/// A ListBreaches that passed validation: the filter, the page size, and
/// the fingerprint its page tokens are bound to.
#[derive(Debug)]
pub(crate) struct ValidList {
    pub filter: BreachFilter,
    pub size: usize,
    pub fingerprint: String,
}

/// Checks a ListBreaches at `now` (the instant `overdue` is judged at).
pub(crate) fn validate_list(
    r: &pb::ListBreachesRequest,
    now: DateTime<Utc>,
) -> Result<ValidList, ApiError> {
    let mut v = Validator::new();
    let size = page_size(&mut v, r.page_size);
    let state = match r.state {
        0 => None,
        s => enum_value(
            &mut v,
            "state",
            s,
            pb::BreachState::Unspecified,
            "OPEN, CLOSED",
        )
        .map(|s| match s {
            pb::BreachState::Closed => State::Closed,
            _ => State::Open,
        }),
    };
    let risk_level = match r.risk_level {
        0 => None,
        l => enum_value(
            &mut v,
            "risk_level",
            l,
            RiskLevel::Unspecified,
            "NO_RISK, RISK, HIGH_RISK",
        ),
    };
    let before = optional_time(
        &mut v,
        "deadline_before_time",
        r.deadline_before_time.as_ref(),
        None,
    );
    v.finish()?;
    let filter = BreachFilter {
        state,
        deadline_before_us: before.map(to_micros),
        overdue_at_us: r.overdue.then(|| to_micros(now)),
        risk_level,
    };
    let fingerprint = format!(
        "state={:?};before={:?};overdue={};risk={:?}",
        filter.state, filter.deadline_before_us, r.overdue, filter.risk_level
    );
    Ok(ValidList {
        filter,
        size,
        fingerprint,
    })
}

/// The writes of an update of `b` at `now` by `principal`: the merged
/// record (checked again as a whole), and timeline entries saying what
/// changed, the awareness time first when it moved.
fn updated(
    b: &Stored,
    update: &pb::Breach,
    paths: &[String],
    principal: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Write>, ApiError> {
    state::require_open(b, "be updated")?;
    let etag = format!("\"{}\"", b.version);
    if !update.etag.is_empty() && update.etag != etag {
        return Err(ApiError::precondition(
            "ETAG_MISMATCH",
            format!(
                "breach `breaches/{}` is {} and changed since etag {} (now {etag}); \
                 read it again",
                b.id,
                b.state.as_str(),
                echo(&update.etag)
            ),
        ));
    }
    let mut merged = b.record.clone();
    for p in paths {
        model::copy_field(&mut merged, update, p);
    }
    let mut v = Validator::new();
    let aware = model::validate_record(&mut v, "breach", &merged, now);
    v.finish()?;
    let aware = aware.ok_or_else(|| ApiError::invalid("breach.detect_time", "is required"))?;
    let aware_us = to_micros(aware);
    let deadline_us = to_micros(breach_authority_deadline(aware));
    let mut writes = vec![Write::Record(Box::new(merged), aware_us, deadline_us)];
    if aware_us != b.awareness_us {
        writes.push(Write::Timeline(Box::new(system_entry(
            now,
            principal,
            format!(
                "Awareness time corrected from {} to {}; authority deadline now {}",
                rfc3339(from_micros(b.awareness_us)),
                rfc3339(aware),
                rfc3339(from_micros(deadline_us))
            ),
        ))));
    }
    writes.push(Write::Timeline(Box::new(system_entry(
        now,
        principal,
        format!("Record updated: {}", paths.join(", ")),
    ))));
    Ok(writes)
}

impl Api {
    /// ReportBreach: a new OPEN breach, its deadline 72 hours after awareness.
    pub(crate) async fn report(
        &self,
        call: &CallContext,
        r: pb::ReportBreachRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "ReportBreach", &r.request_id, &r);
        let now = self.clock.now();
        let (breach, aware) = validate_report(&r, now)?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let deadline = breach_authority_deadline(aware);
        let principal = call.principal.name();
        let first = system_entry(
            now,
            principal,
            format!(
                "Breach reported by {principal}; institution aware at {}, authority deadline {}",
                rfc3339(aware),
                rfc3339(deadline)
            ),
        );
        let done = self
            .store
            .create(
                &id,
                &model::input_fields(&breach),
                principal,
                to_micros(aware),
                to_micros(deadline),
                first,
                key.as_ref(),
                &self.event(call, "ReportBreach", resource(&id)),
                to_micros(now),
            )
            .await?;
        let id = match done {
            Done::Applied(_) => id,
            Done::Replayed(earlier) => breach_id("name", &earlier)?,
        };
        self.current(&id).await
    }

    /// GetBreach.
    pub(crate) async fn get(
        &self,
        call: &CallContext,
        r: pb::GetBreachRequest,
    ) -> Result<pb::Breach, ApiError> {
        let id = breach_id("name", &r.name)?;
        let b = self.load(&id).await?;
        self.record_read(call, "GetBreach", resource(&id)).await?;
        Ok(model::to_proto(&b, self.clock.now()))
    }

    /// ListBreaches: earliest deadline first.
    pub(crate) async fn list(
        &self,
        call: &CallContext,
        r: pb::ListBreachesRequest,
    ) -> Result<pb::ListBreachesResponse, ApiError> {
        let now = self.clock.now();
        let ValidList {
            filter,
            size,
            fingerprint,
        } = validate_list(&r, now)?;
        let after: Option<(i64, String)> = pagination::decode(&r.page_token, &fingerprint)?;
        let mut found = self.store.list(&filter, after, size + 1).await?;
        let next = (found.len() > size).then(|| {
            let last = &found[size - 1];
            pagination::encode(&(last.deadline_us, last.id.clone()), &fingerprint)
        });
        found.truncate(size);
        self.record_read(call, "ListBreaches", String::new())
            .await?;
        Ok(pb::ListBreachesResponse {
            breaches: found.iter().map(|b| model::to_proto(b, now)).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    /// UpdateBreach: the masked fields of an open breach, etag-checked.
    pub(crate) async fn update(
        &self,
        call: &CallContext,
        r: pb::UpdateBreachRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "UpdateBreach", &r.request_id, &r);
        let now = self.clock.now();
        let (id, update, paths) = validate_update(&r)?;
        let principal = call.principal.name().to_string();
        self.change(call, "UpdateBreach", &id, key.as_ref(), now, move |b| {
            updated(b, &update, &paths, &principal, now)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::{fields::violated_fields, proto_time::timestamp};

    use super::*;

    use crate::api::test_now as now;

    #[test]
    fn a_report_needs_a_breach_and_is_aware_at_detection() {
        let mut r = pb::ReportBreachRequest::default();
        assert_eq!(violated_fields(&validate_report(&r, now())), ["breach"]);
        r.breach = Some(pb::Breach {
            description: "Laptop stolen".into(),
            detect_time: Some(timestamp(now())),
            ..Default::default()
        });
        assert_eq!(validate_report(&r, now()).unwrap().1, now());
    }

    #[test]
    fn updates_name_a_breach_and_only_updatable_paths() {
        let mut r = pb::UpdateBreachRequest {
            breach: Some(pb::Breach {
                name: "breaches/abc".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(violated_fields(&validate_update(&r)), ["update_mask"]);
        r.update_mask = Some(prost_types::FieldMask {
            paths: vec!["title".into(), "state".into()],
        });
        assert_eq!(
            violated_fields(&validate_update(&r)),
            ["update_mask.paths[1]"]
        );
        r.update_mask = Some(prost_types::FieldMask {
            paths: vec!["title".into()],
        });
        let (id, _, paths) = validate_update(&r).unwrap();
        assert_eq!((id.as_str(), paths), ("abc", vec!["title".to_string()]));
        r.breach.as_mut().unwrap().name = "nope".into();
        assert_eq!(violated_fields(&validate_update(&r)), ["breach.name"]);
    }

    #[test]
    fn listings_bind_their_tokens_to_the_filter() {
        let r = pb::ListBreachesRequest {
            state: pb::BreachState::Closed as i32,
            overdue: true,
            ..Default::default()
        };
        let valid = validate_list(&r, now()).unwrap();
        assert_eq!(valid.filter.state, Some(State::Closed));
        assert_eq!(valid.filter.overdue_at_us, Some(to_micros(now())));
        let all = validate_list(&pb::ListBreachesRequest::default(), now()).unwrap();
        assert_ne!(valid.fingerprint, all.fingerprint);
        assert_eq!(all.size, 50);
        let bad = pb::ListBreachesRequest {
            page_size: -3,
            state: 9,
            risk_level: 9,
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_list(&bad, now())),
            ["page_size", "state", "risk_level"]
        );
    }
}
