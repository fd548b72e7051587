//! CloseBreach and DeleteBreach: a closed breach is kept for the retention
//! period ([`crate::state::RETENTION_YEARS`]), then may be deleted.

use custodia_core::{
    ApiError, auth::CallContext, idempotency::RequestKey, legal_time::retention_until,
    storage::to_micros, validate::MAX_TEXT,
};
use custodia_proto::breach::v1 as pb;

use crate::{
    api::{Api, named_change, resource, rfc3339, system_entry},
    state::{self, RETENTION_YEARS},
    store::Write,
};

/// Checks a CloseBreach: the breach's id.
pub(crate) fn validate_close(r: &pb::CloseBreachRequest) -> Result<String, ApiError> {
    let (id, mut v) = named_change("name", &r.name, &r.request_id)?;
    v.required("lessons_learned", &r.lessons_learned, MAX_TEXT);
    v.finish()?;
    Ok(id)
}

/// Checks a DeleteBreach: the breach's id.
pub(crate) fn validate_delete(r: &pb::DeleteBreachRequest) -> Result<String, ApiError> {
    let (id, mut v) = named_change("name", &r.name, &r.request_id)?;
    v.finish()?;
    Ok(id)
}

impl Api {
    /// CloseBreach: with the lessons learned, once the rules allow it.
    pub(crate) async fn close(
        &self,
        call: &CallContext,
        r: pb::CloseBreachRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "CloseBreach", &r.request_id, &r);
        let now = self.clock.now();
        let id = validate_close(&r)?;
        let principal = call.principal.name().to_string();
        let retain = retention_until(now, RETENTION_YEARS);
        let lessons = r.lessons_learned;
        self.change(call, "CloseBreach", &id, key.as_ref(), now, move |b| {
            state::check_close(b)?;
            Ok(vec![
                Write::Timeline(Box::new(system_entry(
                    now,
                    &principal,
                    format!("Breach closed; kept until {}", rfc3339(retain)),
                ))),
                Write::Close {
                    lessons,
                    close_us: to_micros(now),
                    retain_until_us: to_micros(retain),
                },
            ])
        })
        .await
    }

    /// DeleteBreach: a closed breach past its retention, with all kept with it.
    pub(crate) async fn delete(
        &self,
        call: &CallContext,
        r: pb::DeleteBreachRequest,
    ) -> Result<(), ApiError> {
        let key = RequestKey::of(call, "DeleteBreach", &r.request_id, &r);
        let now = self.clock.now();
        let id = validate_delete(&r)?;
        let event = self.event(call, "DeleteBreach", resource(&id));
        self.store
            .change(&id, key.as_ref(), &event, to_micros(now), move |b| {
                state::check_delete(b, now)?;
                Ok(vec![Write::Delete])
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_says_what_was_learned() {
        let mut r = pb::CloseBreachRequest {
            name: "breaches/abc".into(),
            ..Default::default()
        };
        match validate_close(&r) {
            Err(ApiError::InvalidArgument(list)) => assert_eq!(list[0].field, "lessons_learned"),
            other => panic!("unexpected {other:?}"),
        }
        r.lessons_learned = "encrypt laptops".into();
        assert_eq!(validate_close(&r).unwrap(), "abc");
        let delete = pb::DeleteBreachRequest {
            name: "abc".into(),
            ..Default::default()
        };
        assert!(matches!(
            validate_delete(&delete),
            Err(ApiError::InvalidArgument(_))
        ));
    }
}
