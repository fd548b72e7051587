//! Risk assessment with the ENISA severity methodology ("Recommendations for a
//! methodology of the assessment of severity of personal data breaches",
//! ENISA 2013), B-3.
//!
//! Severity `SE = DPC x EI + CB`:
//! - **DPC**, data processing context, 1 to 4: the basic score of the data
//!   category (1 simple data, 2 behavioural, 3 financial, 4 sensitive), after
//!   the methodology's adjustments up or down by the context (volume, public
//!   availability, nature of the processing). The assessor enters the adjusted
//!   score with its rationale; any value 1..=4 is accepted.
//! - **EI**, ease of identification: 0.25 negligible, 0.5 limited,
//!   0.75 significant, 1 maximum.
//! - **CB**, circumstances of breach, additive: loss of confidentiality 0,
//!   0.25 or 0.5; loss of integrity 0, 0.25 or 0.5; loss of availability 0,
//!   0.25 or 0.5; malicious intent + 0.5.
//!
//! Severity bands: `SE < 2` low, `2 <= SE < 3` medium, `3 <= SE < 4` high,
//! `SE >= 4` very high. The band decides the risk level (Art. 33, 34):
//! low -> no risk (document only), medium -> risk (notify the authority),
//! high and very high -> high risk (notify the authority and tell the
//! subjects). The assessor may override the computed level with a written
//! justification; both are kept.

use custodia_core::validate::Validator;
use custodia_proto::breach::v1::{EnisaInputs, RiskLevel, Severity};

/// The allowed ease-of-identification scores.
pub const EASE_OF_IDENTIFICATION: [f64; 4] = [0.25, 0.5, 0.75, 1.0];
/// The allowed scores of each circumstance of loss.
pub const LOSS_SCORES: [f64; 3] = [0.0, 0.25, 0.5];
/// What malicious intent adds to CB.
pub const MALICIOUS_INTENT: f64 = 0.5;

/// Checks the inputs, naming fields under `prefix` (e.g. `assessment.inputs`).
pub fn validate(inputs: Option<&EnisaInputs>, prefix: &str, v: &mut Validator) {
    let Some(i) = inputs else {
        v.add(prefix, "is required");
        return;
    };
    let f = |name: &str| format!("{prefix}.{name}");
    if !(1..=4).contains(&i.data_processing_context) {
        v.add(f("data_processing_context"), "must be 1, 2, 3 or 4");
    }
    if !EASE_OF_IDENTIFICATION.contains(&i.ease_of_identification) {
        v.add(f("ease_of_identification"), "must be 0.25, 0.5, 0.75 or 1");
    }
    for (name, value) in [
        ("confidentiality_loss", i.confidentiality_loss),
        ("integrity_loss", i.integrity_loss),
        ("availability_loss", i.availability_loss),
    ] {
        if !LOSS_SCORES.contains(&value) {
            v.add(f(name), "must be 0, 0.25 or 0.5");
        }
    }
    for (name, value) in [
        (
            "data_processing_context_rationale",
            &i.data_processing_context_rationale,
        ),
        (
            "ease_of_identification_rationale",
            &i.ease_of_identification_rationale,
        ),
        ("circumstances_rationale", &i.circumstances_rationale),
    ] {
        v.max_len(&f(name), value, custodia_core::validate::MAX_TEXT);
    }
}

/// Circumstances of breach: the sum of the losses and malicious intent.
pub fn circumstances(i: &EnisaInputs) -> f64 {
    let malicious = if i.malicious_intent {
        MALICIOUS_INTENT
    } else {
        0.0
    };
    i.confidentiality_loss + i.integrity_loss + i.availability_loss + malicious
}

/// `SE = DPC x EI + CB` (inputs already validated).
pub fn severity_score(i: &EnisaInputs) -> f64 {
    f64::from(i.data_processing_context) * i.ease_of_identification + circumstances(i)
}

/// The band of a severity score.
pub fn severity(score: f64) -> Severity {
    if score < 2.0 {
        Severity::Low
    } else if score < 3.0 {
        Severity::Medium
    } else if score < 4.0 {
        Severity::High
    } else {
        Severity::VeryHigh
    }
}

/// The risk level a severity band leads to.
pub fn risk_level(severity: Severity) -> RiskLevel {
    match severity {
        Severity::Unspecified => RiskLevel::Unspecified,
        Severity::Low => RiskLevel::NoRisk,
        Severity::Medium => RiskLevel::Risk,
        Severity::High | Severity::VeryHigh => RiskLevel::HighRisk,
    }
}

/// Score, band and computed level of validated inputs.
pub fn assess(i: &EnisaInputs) -> (f64, Severity, RiskLevel) {
    let score = severity_score(i);
    let band = severity(score);
    (score, band, risk_level(band))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dpc: i32, ei: f64, c: f64, i: f64, a: f64, malicious: bool) -> EnisaInputs {
        EnisaInputs {
            data_processing_context: dpc,
            ease_of_identification: ei,
            confidentiality_loss: c,
            integrity_loss: i,
            availability_loss: a,
            malicious_intent: malicious,
            ..Default::default()
        }
    }

    #[test]
    fn score_is_dpc_times_ei_plus_cb() {
        // Stolen laptop with exam results (behavioural/evaluation data, DPC 2),
        // names on every file (EI 1), unknown recipients (0.5), theft (+0.5).
        let i = inputs(2, 1.0, 0.5, 0.0, 0.0, true);
        assert_eq!(severity_score(&i), 3.0);
        assert_eq!(
            assess(&i),
            (3.0, Severity::High, RiskLevel::HighRisk),
            "high severity means high risk"
        );
    }

    #[test]
    fn bands_and_their_edges() {
        assert_eq!(severity(0.25), Severity::Low);
        assert_eq!(severity(1.99), Severity::Low);
        assert_eq!(severity(2.0), Severity::Medium);
        assert_eq!(severity(2.75), Severity::Medium);
        assert_eq!(severity(3.0), Severity::High);
        assert_eq!(severity(3.75), Severity::High);
        assert_eq!(severity(4.0), Severity::VeryHigh);
        assert_eq!(severity(5.5), Severity::VeryHigh);
    }

    #[test]
    fn bands_map_to_risk_levels() {
        assert_eq!(risk_level(Severity::Low), RiskLevel::NoRisk);
        assert_eq!(risk_level(Severity::Medium), RiskLevel::Risk);
        assert_eq!(risk_level(Severity::High), RiskLevel::HighRisk);
        assert_eq!(risk_level(Severity::VeryHigh), RiskLevel::HighRisk);
    }

    #[test]
    fn mailing_to_wrong_list_of_simple_data_is_low() {
        // Email addresses (simple, DPC 1), limited identification, known recipients.
        let i = inputs(1, 0.5, 0.25, 0.0, 0.0, false);
        assert_eq!(assess(&i), (0.75, Severity::Low, RiskLevel::NoRisk));
    }

    #[test]
    fn financial_data_with_significant_identification_is_medium() {
        let i = inputs(3, 0.75, 0.0, 0.0, 0.25, false);
        assert_eq!(assess(&i), (2.5, Severity::Medium, RiskLevel::Risk));
    }

    #[test]
    fn invalid_inputs_name_their_fields() {
        let mut v = Validator::new();
        validate(
            Some(&inputs(5, 0.3, 0.1, 0.0, 0.75, false)),
            "assessment.inputs",
            &mut v,
        );
        let err = v.finish().unwrap_err().to_string();
        for field in [
            "assessment.inputs.data_processing_context",
            "assessment.inputs.ease_of_identification",
            "assessment.inputs.confidentiality_loss",
            "assessment.inputs.availability_loss",
        ] {
            assert!(err.contains(field), "{err}");
        }
        assert!(!err.contains("integrity_loss"), "{err}");
        let mut v = Validator::new();
        validate(None, "assessment.inputs", &mut v);
        assert!(v.finish().is_err());
    }
}
