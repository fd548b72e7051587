//! RecordHumanReview: the human review an AUTOMATED_DECISION request asks for
//! (Art. 22(3)): a person with authority reviews the decision, hears the
//! subject's point of view and records what they concluded and why. The
//! request cannot be completed before it (`lifecycle::completion_blocked`).

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::{enum_value, optional_time},
    idempotency::RequestKey,
    proto_time::timestamp,
    validate::{MAX_TEXT, Validator},
};
use custodia_proto::dsar::v1::{
    self as pb, ActionResult, HumanReviewOutcome, RequestState, RequestType,
};

use crate::{
    api::Api,
    model::{self, action, named_change},
    state::{refuse, require},
    store::Changes,
};

/// Checks a RecordHumanReview at `now`: the request's id and the review, its
/// time set (now when unset).
pub(crate) fn validate_review(
    r: &pb::RecordHumanReviewRequest,
    now: DateTime<Utc>,
) -> Result<(String, pb::HumanReview, HumanReviewOutcome), ApiError> {
    let mut v = Validator::new();
    let id = named_change(&mut v, &r.name, &r.request_id);
    let Some(mut review) = r.review.clone() else {
        v.add("review", "is required");
        v.finish()?;
        unreachable!("finish fails with a violation");
    };
    v.required("review.decision", &review.decision, MAX_TEXT);
    v.max_len("review.subject_view", &review.subject_view, MAX_TEXT);
    v.required("review.explanation", &review.explanation, MAX_TEXT);
    v.required("review.reviewer", &review.reviewer, MAX_TEXT);
    let outcome = enum_value(
        &mut v,
        "review.outcome",
        review.outcome,
        HumanReviewOutcome::Unspecified,
        "CONFIRMED, CHANGED, WITHDRAWN",
    );
    let at = optional_time(
        &mut v,
        "review.review_time",
        review.review_time.as_ref(),
        Some(now),
    );
    v.finish()?;
    review.review_time = Some(timestamp(at.unwrap_or(now)));
    review.actor = None;
    Ok((id.unwrap_or_default(), review, outcome.unwrap_or_default()))
}

impl Api {
    /// RecordHumanReview.
    pub(crate) async fn record_review(
        &self,
        call: &CallContext,
        r: pb::RecordHumanReviewRequest,
    ) -> Result<pb::Request, ApiError> {
        let key = RequestKey::of(call, "RecordHumanReview", &r.request_id, &r);
        let now = self.clock.now();
        let (id, mut review, outcome) = validate_review(&r, now)?;
        let principal = call.principal.name().to_string();
        review.actor = Some(model::actor(&principal));
        self.change(call, "RecordHumanReview", &id, key.as_ref(), move |l| {
            require(l, &[RequestState::InProgress], "record a human review")?;
            if l.record.r#type() != RequestType::AutomatedDecision {
                return Err(refuse(
                    l,
                    "NOT_APPLICABLE",
                    "a human review answers an AUTOMATED_DECISION request only (Art. 22)",
                ));
            }
            let text = format!(
                "Decision \"{}\" reviewed by {}: {} ({})",
                review.decision,
                review.reviewer,
                outcome
                    .as_str_name()
                    .trim_start_matches("HUMAN_REVIEW_OUTCOME_"),
                review.explanation
            );
            // A second review (after new facts) replaces the first; both stay in
            // the action record.
            l.record.human_review = Some(review);
            Ok(Changes {
                actions: vec![action(
                    now,
                    &principal,
                    "human_review_recorded",
                    ActionResult::Succeeded,
                    text,
                    "",
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
    fn a_review_says_who_concluded_what_and_why() {
        let mut r = pb::RecordHumanReviewRequest {
            name: "requests/abc".into(),
            review: Some(pb::HumanReview::default()),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_review(&r, now())),
            [
                "review.decision",
                "review.explanation",
                "review.reviewer",
                "review.outcome"
            ]
        );
        r.review = Some(pb::HumanReview {
            decision: "scholarship refused by the scoring engine".into(),
            outcome: HumanReviewOutcome::Changed as i32,
            explanation: "income documents re-read by hand".into(),
            reviewer: "Head of student services".into(),
            ..Default::default()
        });
        let (id, review, outcome) = validate_review(&r, now()).unwrap();
        assert_eq!((id.as_str(), outcome), ("abc", HumanReviewOutcome::Changed));
        assert_eq!(
            review.review_time,
            Some(timestamp(now())),
            "unset means now"
        );
        r.review = None;
        assert_eq!(violated_fields(&validate_review(&r, now())), ["review"]);
    }
}
