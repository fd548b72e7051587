//! AssessRisk: the ENISA severity of an open breach, computed from its
//! inputs ([`crate::risk`]) and optionally overridden with a justification.

use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::{absorb, enum_value},
    idempotency::{MAX_REQUEST_ID, RequestKey},
    proto_time::timestamp,
    validate::{MAX_TEXT, Validator},
};
use custodia_proto::breach::v1::{self as pb, RiskLevel};

use crate::{
    api::{Api, and_entry, breach_id},
    model::actor,
    risk,
    state::{self},
    store::Write,
};

/// An AssessRisk that passed validation.
#[derive(Debug)]
pub(crate) struct ValidAssessment {
    pub id: String,
    pub assessment: pb::RiskAssessment,
    pub overridden: Option<RiskLevel>,
}

/// Checks an AssessRisk.
pub(crate) fn validate_assess(r: &pb::AssessRiskRequest) -> Result<ValidAssessment, ApiError> {
    let mut v = Validator::new();
    let id = breach_id("name", &r.name);
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
    let Some(a) = &r.assessment else {
        return Err(ApiError::invalid("assessment", "is required"));
    };
    risk::validate(a.inputs.as_ref(), "assessment.inputs", &mut v);
    let overridden = if a.override_risk_level == 0 {
        None
    } else {
        enum_value(
            &mut v,
            "assessment.override_risk_level",
            a.override_risk_level,
            RiskLevel::Unspecified,
            "NO_RISK, RISK, HIGH_RISK",
        )
    };
    if a.override_risk_level != 0 {
        v.required(
            "assessment.override_justification",
            &a.override_justification,
            MAX_TEXT,
        );
    } else if !a.override_justification.is_empty() {
        v.add(
            "assessment.override_justification",
            "is only recorded with override_risk_level",
        );
    }
    v.max_len("assessment.notes", &a.notes, MAX_TEXT);
    // The name's violation comes last, after the assessment's.
    let id = absorb(&mut v, id);
    v.finish()?;
    Ok(ValidAssessment {
        id: id.unwrap_or_default(),
        assessment: a.clone(),
        overridden,
    })
}

impl Api {
    /// AssessRisk: appends an assessment; the breach's level follows it.
    pub(crate) async fn assess(
        &self,
        call: &CallContext,
        r: pb::AssessRiskRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "AssessRisk", &r.request_id, &r);
        let now = self.clock.now();
        let ValidAssessment {
            id,
            assessment: a,
            overridden,
        } = validate_assess(&r)?;
        let inputs = a.inputs.unwrap_or_default();
        let (score, severity, computed) = risk::assess(&inputs);
        let level = overridden.unwrap_or(computed);
        let principal = call.principal.name().to_string();
        let assessment = pb::RiskAssessment {
            inputs: Some(inputs),
            severity_score: score,
            severity: severity as i32,
            computed_risk_level: computed as i32,
            override_risk_level: a.override_risk_level,
            override_justification: a.override_justification,
            risk_level: level as i32,
            notes: a.notes,
            assess_time: Some(timestamp(now)),
            assessor: Some(actor(&principal)),
        };
        let text = format!(
            "Risk assessed (ENISA): SE = {score}, severity {:?}, computed {}{}",
            severity,
            state::risk_name(computed),
            match overridden {
                Some(o) => format!(", overridden to {}", state::risk_name(o)),
                None => String::new(),
            }
        );
        self.change(call, "AssessRisk", &id, key.as_ref(), now, move |b| {
            state::require_open(b, "be assessed")?;
            Ok(and_entry(
                Write::Assessment(Box::new(assessment)),
                now,
                &principal,
                text,
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::fields::violated_fields;

    use super::*;

    #[test]
    fn an_override_needs_a_justification_and_a_justification_an_override() {
        let mut r = pb::AssessRiskRequest {
            name: "breaches/abc".into(),
            assessment: Some(pb::RiskAssessment {
                override_risk_level: RiskLevel::HighRisk as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let justification = "assessment.override_justification";
        assert!(violated_fields(&validate_assess(&r)).contains(&justification));
        let a = r.assessment.as_mut().unwrap();
        a.override_risk_level = 0;
        a.override_justification = "because".into();
        assert!(violated_fields(&validate_assess(&r)).contains(&justification));
    }

    #[test]
    fn a_bad_name_is_named_after_the_assessment() {
        let r = pb::AssessRiskRequest {
            name: "nope".into(),
            assessment: Some(pb::RiskAssessment {
                override_risk_level: 7,
                override_justification: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let result = validate_assess(&r);
        let got = violated_fields(&result);
        assert_eq!(got.last(), Some(&"name"));
        assert!(got.contains(&"assessment.override_risk_level"));
        let missing = pb::AssessRiskRequest {
            name: "breaches/abc".into(),
            ..Default::default()
        };
        assert_eq!(violated_fields(&validate_assess(&missing)), ["assessment"]);
    }
}
