//! GenerateAuthorityReport: the Art. 33(3) report for the supervisory
//! authority, rendered from the record as structured JSON or a readable
//! Markdown document.

use chrono::{DateTime, SecondsFormat, Utc};
use custodia_core::{ApiError, auth::CallContext, proto_time::instant, storage::from_micros};
use custodia_proto::{
    breach::v1::{self as pb, BreachNature, ClockStatus, NotificationPhase},
    common::v1::{Contact, Document, ExportFormat},
};
use serde_json::{Value, json};

use crate::{
    api::{Api, breach_id, resource},
    state,
    store::Stored,
};

fn rfc3339(us: i64) -> String {
    from_micros(us).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn ts(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(instant)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn nature(n: i32) -> &'static str {
    match BreachNature::try_from(n) {
        Ok(BreachNature::Confidentiality) => "confidentiality",
        Ok(BreachNature::Integrity) => "integrity",
        Ok(BreachNature::Availability) => "availability",
        _ => "unspecified",
    }
}

fn phase(p: i32) -> &'static str {
    match NotificationPhase::try_from(p) {
        Ok(NotificationPhase::Initial) => "initial",
        Ok(NotificationPhase::FollowUp) => "follow-up",
        Ok(NotificationPhase::Final) => "final",
        _ => "unspecified",
    }
}

fn contact(c: Option<&Contact>) -> Value {
    match c {
        None => Value::Null,
        Some(c) => json!({
            "name": c.display_name,
            "email": c.email,
            "phone": c.phone,
            "postal_address": c.postal_address,
        }),
    }
}

fn clock_status(s: ClockStatus) -> &'static str {
    match s {
        ClockStatus::Running => "running",
        ClockStatus::Overdue => "overdue",
        ClockStatus::NotifiedInTime => "notified in time",
        ClockStatus::NotifiedLate => "notified late",
        ClockStatus::NotRequired => "not required",
        ClockStatus::Unspecified => "unspecified",
    }
}

/// The structured content (Art. 33(3)(a)-(d), plus the timing of Art. 33(1)).
pub fn json(b: &Stored, now: DateTime<Utc>) -> Value {
    let r = &b.record;
    let late_reasons: Vec<&str> = b
        .notifications
        .iter()
        .filter(|n| !n.delay_reasons.is_empty())
        .map(|n| n.delay_reasons.as_str())
        .collect();
    json!({
        "breach": format!("breaches/{}", b.id),
        "title": r.title,
        "state": b.state.as_str(),
        "generated_at": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        "timing": {
            "detected_at": ts(r.detect_time.as_ref()),
            "aware_at": rfc3339(b.awareness_us),
            "started_at": ts(r.start_time.as_ref()),
            "ended_at": ts(r.end_time.as_ref()),
            "authority_deadline": rfc3339(b.deadline_us),
            "clock": clock_status(state::clock_status(b, now)),
            "delay_reasons": late_reasons,
        },
        // Art. 33(3)(a)
        "nature": {
            "description": r.description,
            "cause": r.cause,
            "natures": r.natures.iter().map(|n| nature(*n)).collect::<Vec<_>>(),
            "data_categories": r.data_categories,
            "subject_categories": r.subject_categories,
            "approximate_subject_count": r.approximate_subject_count,
            "approximate_record_count": r.approximate_record_count,
            "affected_countries": r.affected_countries,
            "systems": r.systems,
        },
        // Art. 33(3)(b)
        "dpo_contact": contact(r.dpo_contact.as_ref()),
        // Art. 33(3)(c)
        "likely_consequences": r.likely_consequences,
        // Art. 33(3)(d)
        "measures": {
            "taken": r.measures_taken,
            "proposed": r.measures_proposed,
        },
        "risk_level": state::risk_name(b.risk_level),
        "notifications": b.notifications.iter().map(|n| json!({
            "phase": phase(n.phase),
            "authority": n.authority,
            "sent_at": ts(n.send_time.as_ref()),
            "authority_reference": n.authority_reference,
        })).collect::<Vec<_>>(),
        "subjects_told": !b.communications.is_empty(),
        "communication_waived": b.waiver.is_some(),
    })
}

/// Languages the Markdown report is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// English.
    En,
    /// French (for the CNIL).
    Fr,
}

impl Language {
    /// The language of a BCP 47 tag (`en`, `fr-FR`...); `None` when not available.
    pub fn parse(tag: &str) -> Option<Self> {
        let primary = tag.split(['-', '_']).next().unwrap_or_default();
        match primary.to_ascii_lowercase().as_str() {
            "" | "en" => Some(Language::En),
            "fr" => Some(Language::Fr),
            _ => None,
        }
    }
}

/// The labels of one language, in document order.
struct Labels {
    unknown: &'static str,
    about: &'static str,
    title: &'static str,
    record: &'static str,
    timing: &'static str,
    detected: &'static str,
    aware: &'static str,
    deadline: &'static str,
    clock: &'static str,
    delay: &'static str,
    nature_heading: &'static str,
    nature: &'static str,
    cause: &'static str,
    data: &'static str,
    subjects: &'static str,
    subject_count: &'static str,
    record_count: &'static str,
    systems: &'static str,
    contact: &'static str,
    consequences: &'static str,
    measures: &'static str,
    taken: &'static str,
    proposed: &'static str,
    risk: &'static str,
    notifications: &'static str,
    to: &'static str,
    at: &'static str,
}

const EN: Labels = Labels {
    unknown: "not known yet",
    about: "about",
    title: "Personal data breach notification",
    record: "Record",
    timing: "Timing (Art. 33(1))",
    detected: "Detected",
    aware: "Institution aware",
    deadline: "Authority deadline (72 h)",
    clock: "Clock",
    delay: "Reasons for the delay",
    nature_heading: "Nature of the breach (Art. 33(3)(a))",
    nature: "Nature",
    cause: "Cause",
    data: "Categories of data",
    subjects: "Categories of subjects",
    subject_count: "Approximate number of subjects",
    record_count: "Approximate number of records",
    systems: "Systems",
    contact: "Contact point (Art. 33(3)(b))",
    consequences: "Likely consequences (Art. 33(3)(c))",
    measures: "Measures (Art. 33(3)(d))",
    taken: "Taken",
    proposed: "Proposed",
    risk: "Risk",
    notifications: "Notifications so far (Art. 33(4))",
    to: "to",
    at: "at",
};

const FR: Labels = Labels {
    unknown: "pas encore connu",
    about: "environ",
    title: "Notification de violation de données personnelles",
    record: "Fiche",
    timing: "Délais (art. 33(1))",
    detected: "Détectée le",
    aware: "Connaissance par l'établissement",
    deadline: "Échéance de notification (72 h)",
    clock: "Délai",
    delay: "Motifs du retard",
    nature_heading: "Nature de la violation (art. 33(3)(a))",
    nature: "Nature",
    cause: "Origine",
    data: "Catégories de données",
    subjects: "Catégories de personnes",
    subject_count: "Nombre approximatif de personnes",
    record_count: "Nombre approximatif d'enregistrements",
    systems: "Systèmes",
    contact: "Point de contact (art. 33(3)(b))",
    consequences: "Conséquences probables (art. 33(3)(c))",
    measures: "Mesures (art. 33(3)(d))",
    taken: "Prises",
    proposed: "Envisagées",
    risk: "Risque",
    notifications: "Notifications effectuées (art. 33(4))",
    to: "à",
    at: "le",
};

fn or_unknown<'a>(s: &'a str, l: &'a Labels) -> &'a str {
    if s.trim().is_empty() { l.unknown } else { s }
}

/// The same content as a readable Markdown document in `language`.
pub fn markdown(b: &Stored, now: DateTime<Utc>, language: Language) -> String {
    let l = match language {
        Language::En => &EN,
        Language::Fr => &FR,
    };
    let r = &b.record;
    let count = |n: Option<i64>| n.map_or(l.unknown.to_string(), |n| format!("{} {n}", l.about));
    let join = |v: &[String]| {
        if v.is_empty() {
            l.unknown.to_string()
        } else {
            v.join(", ")
        }
    };
    let title = if r.title.is_empty() {
        format!("breaches/{}", b.id)
    } else {
        r.title.clone()
    };
    let mut out = format!("# {}: {title}\n\n", l.title);
    out.push_str(&format!(
        "{} `breaches/{}`, {}, {}.\n\n",
        l.record,
        b.id,
        b.state.as_str(),
        now.to_rfc3339_opts(SecondsFormat::Secs, true)
    ));
    out.push_str(&format!("## {}\n\n", l.timing));
    out.push_str(&format!(
        "- {}: {}\n- {}: {}\n- {}: {}\n- {}: {}\n",
        l.detected,
        ts(r.detect_time.as_ref()).unwrap_or_default(),
        l.aware,
        rfc3339(b.awareness_us),
        l.deadline,
        rfc3339(b.deadline_us),
        l.clock,
        clock_status(state::clock_status(b, now)),
    ));
    for n in b
        .notifications
        .iter()
        .filter(|n| !n.delay_reasons.is_empty())
    {
        out.push_str(&format!("- {}: {}\n", l.delay, n.delay_reasons));
    }
    out.push_str(&format!(
        "\n## {}\n\n{}\n\n",
        l.nature_heading, r.description
    ));
    let natures = if r.natures.is_empty() {
        l.unknown.to_string()
    } else {
        r.natures
            .iter()
            .map(|n| nature(*n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (label, value) in [
        (l.nature, natures),
        (l.cause, or_unknown(&r.cause, l).to_string()),
        (l.data, join(&r.data_categories)),
        (l.subjects, join(&r.subject_categories)),
        (l.subject_count, count(r.approximate_subject_count)),
        (l.record_count, count(r.approximate_record_count)),
        (l.systems, join(&r.systems)),
    ] {
        out.push_str(&format!("- {label}: {value}\n"));
    }
    out.push_str(&format!("\n## {}\n\n", l.contact));
    match &r.dpo_contact {
        Some(c) => out.push_str(&format!("{} {} {}\n", c.display_name, c.email, c.phone)),
        None => out.push_str(&format!("{}\n", l.unknown)),
    }
    out.push_str(&format!(
        "\n## {}\n\n{}\n",
        l.consequences,
        or_unknown(&r.likely_consequences, l)
    ));
    out.push_str(&format!(
        "\n## {}\n\n- {}: {}\n- {}: {}\n",
        l.measures,
        l.taken,
        or_unknown(&r.measures_taken, l),
        l.proposed,
        or_unknown(&r.measures_proposed, l)
    ));
    out.push_str(&format!(
        "\n## {}\n\n{}\n",
        l.risk,
        state::risk_name(b.risk_level)
    ));
    if !b.notifications.is_empty() {
        out.push_str(&format!("\n## {}\n\n", l.notifications));
        for n in &b.notifications {
            out.push_str(&format!(
                "- {} {} {} {} {} {}\n",
                phase(n.phase),
                l.to,
                n.authority,
                l.at,
                ts(n.send_time.as_ref()).unwrap_or_default(),
                n.authority_reference
            ));
        }
    }
    out
}

/// A GenerateAuthorityReport that passed validation.
#[derive(Debug, PartialEq)]
pub(crate) struct ValidReport {
    pub id: String,
    pub markdown: bool,
    pub language: Language,
}

/// Checks a GenerateAuthorityReport: the breach, the format (JSON or
/// Markdown) and the language.
pub(crate) fn validate_report_request(
    r: &pb::GenerateAuthorityReportRequest,
) -> Result<ValidReport, ApiError> {
    let id = breach_id("name", &r.name)?;
    let markdown = match ExportFormat::try_from(r.format) {
        Ok(ExportFormat::Unspecified | ExportFormat::Json) => false,
        Ok(ExportFormat::Markdown) => true,
        _ => return Err(ApiError::invalid("format", "must be JSON or MARKDOWN")),
    };
    let language = Language::parse(&r.language)
        .ok_or_else(|| ApiError::invalid("language", "reports are available in `en` and `fr`"))?;
    Ok(ValidReport {
        id,
        markdown,
        language,
    })
}

impl Api {
    /// GenerateAuthorityReport: the Art. 33 report of a breach as it is now.
    pub(crate) async fn generate_report(
        &self,
        call: &CallContext,
        r: pb::GenerateAuthorityReportRequest,
    ) -> Result<Document, ApiError> {
        let now = self.clock.now();
        let ValidReport {
            id,
            markdown,
            language,
        } = validate_report_request(&r)?;
        let b = self.load(&id).await?;
        let document = if markdown {
            Document {
                content_type: "text/markdown; charset=utf-8".into(),
                filename: format!("breach-{id}-art33.md"),
                content: self::markdown(&b, now, language).into_bytes(),
            }
        } else {
            Document {
                content_type: "application/json".into(),
                filename: format!("breach-{id}-art33.json"),
                content: serde_json::to_vec_pretty(&self::json(&b, now))
                    .map_err(ApiError::internal)?,
            }
        };
        self.record_read(call, "GenerateAuthorityReport", resource(&id))
            .await?;
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breach() -> Stored {
        Stored {
            id: "b1".into(),
            record: custodia_proto::breach::v1::Breach {
                title: "Laptop stolen".into(),
                description: "A laptop was stolen".into(),
                data_categories: vec!["exam results".into()],
                approximate_subject_count: Some(240),
                ..Default::default()
            },
            deadline_us: 72 * 3_600_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn markdown_has_every_art_33_3_section_in_both_languages() {
        let now = from_micros(0);
        let en = markdown(&breach(), now, Language::En);
        for s in [
            "(a)",
            "(b)",
            "(c)",
            "(d)",
            "about 240",
            "exam results",
            "1970-01-04T00:00:00Z",
        ] {
            assert!(en.contains(s), "{s} missing from {en}");
        }
        let fr = markdown(&breach(), now, Language::Fr);
        assert!(
            fr.contains("Nature de la violation (art. 33(3)(a))"),
            "{fr}"
        );
        assert!(fr.contains("environ 240"), "{fr}");
    }

    #[test]
    fn json_carries_the_structured_content() {
        let v = json(&breach(), from_micros(0));
        assert_eq!(v["nature"]["approximate_subject_count"], 240);
        assert_eq!(v["timing"]["authority_deadline"], "1970-01-04T00:00:00Z");
        assert_eq!(v["timing"]["clock"], "running");
    }

    #[test]
    fn languages() {
        assert_eq!(Language::parse(""), Some(Language::En));
        assert_eq!(Language::parse("fr-FR"), Some(Language::Fr));
        assert_eq!(Language::parse("de"), None);
    }
}
