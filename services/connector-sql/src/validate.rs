//! Each request's checks, before any query: pure functions of the request and
//! the configured tables, returning what the operation needs. Violations name
//! their fields, all at once (INVALID_ARGUMENT); a request the configuration
//! cannot serve is FAILED_PRECONDITION.

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    echo::echo,
    idempotency::MAX_REQUEST_ID,
    subject::SubjectId,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::{RetentionAction, RetentionPolicy, SubjectRef},
    connector::v1::{self as pb, RestrictionAction},
};

use crate::Table;

const MAX_IDENTIFIERS: usize = 32;
const MAX_CORRECTIONS: usize = 256;

/// The identifiers of the subject (`subject_identifiers`), parsed.
fn subject_ids(v: &mut Validator, refs: &[SubjectRef]) -> Vec<SubjectId> {
    if refs.is_empty() {
        v.add("subject_identifiers", "at least one identifier is required");
    } else if refs.len() > MAX_IDENTIFIERS {
        v.add(
            "subject_identifiers",
            format!("at most {MAX_IDENTIFIERS} identifiers"),
        );
    }
    let mut ids = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        match SubjectId::parse(&r.r#type, &r.value, &format!("subject_identifiers[{i}]")) {
            Ok(id) => ids.push(id),
            Err(ApiError::InvalidArgument(list)) => {
                for f in list {
                    v.add(f.field, f.description);
                }
            }
            Err(other) => v.add(format!("subject_identifiers[{i}]"), other.to_string()),
        }
    }
    ids
}

/// The checks every request about a subject shares: its identifiers and the
/// DSAR request it serves.
fn subject_request(v: &mut Validator, refs: &[SubjectRef], dsar_request: &str) -> Vec<SubjectId> {
    let ids = subject_ids(v, refs);
    v.max_len("dsar_request", dsar_request, MAX_ID);
    ids
}

fn request_id(v: &mut Validator, field: &str, value: &str) {
    v.required(field, value, MAX_REQUEST_ID);
}

/// The tables selected by `categories` (all when empty), in configuration
/// order, which erasure relies on; unknown categories are named under `field`.
fn select<'t>(
    tables: &'t [Table],
    v: &mut Validator,
    field: &str,
    categories: &[String],
) -> Vec<&'t Table> {
    if categories.is_empty() {
        return tables.iter().collect();
    }
    let mut out = Vec::new();
    for (i, c) in categories.iter().enumerate() {
        match tables.iter().find(|t| t.cfg.category() == c) {
            Some(t) => {
                if !out.iter().any(|o: &&Table| std::ptr::eq(*o, t)) {
                    out.push(t);
                }
            }
            None => v.add(
                format!("{field}[{i}]"),
                format!(
                    "unknown category `{}` (GetCapabilities lists them)",
                    echo(c)
                ),
            ),
        }
    }
    // Keep configuration order, which erasure relies on.
    out.sort_by_key(|t| tables.iter().position(|x| std::ptr::eq(x, *t)));
    out
}

/// ExportSubject: the subject's identifiers and the indexes of the tables to
/// export.
pub(crate) fn export(
    r: &pb::ExportSubjectRequest,
    tables: &[Table],
) -> Result<(Vec<SubjectId>, Vec<usize>), ApiError> {
    let mut v = Validator::new();
    let ids = subject_request(&mut v, &r.subject_identifiers, &r.dsar_request);
    let selected: Vec<usize> = select(tables, &mut v, "categories", &r.categories)
        .into_iter()
        .filter_map(|t| tables.iter().position(|x| std::ptr::eq(x, t)))
        .collect();
    v.finish()?;
    Ok((ids, selected))
}

/// EraseSubject: the subject's identifiers and the tables to erase from.
pub(crate) fn erase<'t>(
    r: &pb::EraseSubjectRequest,
    tables: &'t [Table],
) -> Result<(Vec<SubjectId>, Vec<&'t Table>), ApiError> {
    let mut v = Validator::new();
    let ids = subject_request(&mut v, &r.subject_identifiers, &r.dsar_request);
    request_id(&mut v, "request_id", &r.request_id);
    let selected = select(tables, &mut v, "categories", &r.categories);
    v.finish()?;
    Ok((ids, selected))
}

/// RestrictSubject: the subject's identifiers, whether to restrict (or lift)
/// and the tables.
pub(crate) fn restrict<'t>(
    r: &pb::RestrictSubjectRequest,
    tables: &'t [Table],
) -> Result<(Vec<SubjectId>, bool, Vec<&'t Table>), ApiError> {
    let mut v = Validator::new();
    let ids = subject_request(&mut v, &r.subject_identifiers, &r.dsar_request);
    v.max_len("reason", &r.reason, MAX_TEXT);
    request_id(&mut v, "request_id", &r.request_id);
    let action = RestrictionAction::try_from(r.action).unwrap_or_default();
    v.check(
        action != RestrictionAction::Unspecified,
        "action",
        "must be RESTRICTION_ACTION_RESTRICT or RESTRICTION_ACTION_LIFT",
    );
    let selected = select(tables, &mut v, "categories", &r.categories);
    v.finish()?;
    Ok((ids, action == RestrictionAction::Restrict, selected))
}

/// RectifySubject: the subject's identifiers (each correction is judged
/// against the configuration as it is applied).
pub(crate) fn rectify(r: &pb::RectifySubjectRequest) -> Result<Vec<SubjectId>, ApiError> {
    let mut v = Validator::new();
    let ids = subject_request(&mut v, &r.subject_identifiers, &r.dsar_request);
    request_id(&mut v, "request_id", &r.request_id);
    if r.corrections.is_empty() {
        v.add("corrections", "at least one correction is required");
    } else if r.corrections.len() > MAX_CORRECTIONS {
        v.add(
            "corrections",
            format!("at most {MAX_CORRECTIONS} corrections per request"),
        );
    }
    for (i, c) in r.corrections.iter().enumerate() {
        v.required(&format!("corrections[{i}].category"), &c.category, MAX_ID)
            .required(&format!("corrections[{i}].field"), &c.field, MAX_ID)
            .max_len(&format!("corrections[{i}].record_id"), &c.record_id, MAX_ID);
    }
    v.finish()?;
    Ok(ids)
}

/// An ApplyRetention rule, checked against the configuration.
#[derive(Debug)]
pub(crate) struct Retention<'r, 't> {
    /// The tables it applies to, in configuration order.
    pub tables: Vec<&'t Table>,
    /// Delete or anonymise.
    pub action: RetentionAction,
    /// The anchor name the policy counts from (`last_activity`), or empty.
    pub anchor: &'r str,
    /// Rows whose anchor is before this Unix second are due.
    pub cutoff: i64,
}

/// ApplyRetention: the rule, its tables (those listing the rule's purpose
/// when it names no categories, left out when they cannot apply it), and
/// FAILED_PRECONDITION when a category it names cannot apply it.
pub(crate) fn retention<'r, 't>(
    r: &'r pb::ApplyRetentionRequest,
    tables: &'t [Table],
) -> Result<Retention<'r, 't>, ApiError> {
    let mut v = Validator::new();
    request_id(&mut v, "request_id", &r.request_id);
    static DEFAULT_RULE: pb::RetentionRule = pb::RetentionRule {
        rule_id: String::new(),
        policy: None,
        cutoff_time: None,
        categories: Vec::new(),
    };
    let rule = r.rule.as_ref().unwrap_or(&DEFAULT_RULE);
    if r.rule.is_none() {
        v.add("rule", "is required");
    }
    v.required("rule.rule_id", &rule.rule_id, MAX_ID);
    static DEFAULT_POLICY: RetentionPolicy = RetentionPolicy {
        period: String::new(),
        anchor: String::new(),
        criteria: String::new(),
        action: 0,
    };
    let policy = rule.policy.as_ref().unwrap_or(&DEFAULT_POLICY);
    if r.rule.is_some() && rule.policy.is_none() {
        v.add("rule.policy", "is required");
    }
    let action = RetentionAction::try_from(policy.action).unwrap_or_default();
    if rule.policy.is_some() && action == RetentionAction::Unspecified {
        v.add(
            "rule.policy.action",
            "must be RETENTION_ACTION_DELETE or RETENTION_ACTION_ANONYMISE",
        );
    }
    let cutoff: Option<DateTime<Utc>> = rule
        .cutoff_time
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32));
    if r.rule.is_some() && cutoff.is_none() {
        v.add("rule.cutoff_time", "is required");
    }
    let selected: Vec<&Table> = if rule.categories.is_empty() {
        tables
            .iter()
            .filter(|t| t.cfg.purposes.contains(&rule.rule_id))
            // Tables of the purpose that cannot apply the rule are left out;
            // naming such a category explicitly is FAILED_PRECONDITION below.
            .filter(|t| {
                let able = t.cfg.retention.is_some()
                    && (action != RetentionAction::Anonymise || t.cfg.anonymise.is_some());
                if !able {
                    tracing::info!(category = t.cfg.category(), rule = %rule.rule_id,
                        "retention rule skipped: no anchor or anonymisation configured");
                }
                able
            })
            .collect()
    } else {
        select(tables, &mut v, "rule.categories", &rule.categories)
    };
    v.finish()?;
    for t in &selected {
        if t.cfg.retention.is_none() {
            return Err(ApiError::precondition(
                "NO_RETENTION_ANCHOR",
                format!(
                    "category `{}` has no retention anchor column configured in this connector",
                    t.cfg.category()
                ),
            ));
        }
        if action == RetentionAction::Anonymise && t.cfg.anonymise.is_none() {
            return Err(ApiError::precondition(
                "NO_ANONYMISATION",
                format!(
                    "category `{}` has no anonymisation configured in this connector",
                    t.cfg.category()
                ),
            ));
        }
    }
    Ok(Retention {
        tables: selected,
        action,
        anchor: &policy.anchor,
        cutoff: cutoff.expect("validated").timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use custodia_proto::connector::v1::Correction;
    use prost_types::Timestamp;

    use super::*;
    use crate::{ConnectorConfig, config, db::TableSchema};

    /// The tables of the example configuration: contacts, interactions,
    /// invoices (held by law 10 years), newsletter (anonymised, no retention).
    fn tables() -> Vec<Table> {
        let text = include_str!("../../../deploy/examples/connector-sql.toml");
        ConnectorConfig::from_toml_str(text)
            .unwrap()
            .tables
            .into_iter()
            .map(|cfg| Table {
                hold_period: cfg
                    .retained_by_law
                    .as_ref()
                    .map(|h| config::parse_period(&h.period).unwrap()),
                cfg,
                schema: TableSchema {
                    columns: BTreeMap::new(),
                    order: Vec::new(),
                    time_unit: None,
                },
            })
            .collect()
    }

    fn categories(selected: &[&Table]) -> Vec<String> {
        selected
            .iter()
            .map(|t| t.cfg.category().to_string())
            .collect()
    }

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidArgument(v) => v.into_iter().map(|f| f.field).collect(),
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    fn email() -> Vec<SubjectRef> {
        vec![SubjectRef {
            r#type: "email".into(),
            value: "ada@example.org".into(),
        }]
    }

    #[test]
    fn categories_select_tables_in_configuration_order() {
        let tables = tables();
        let r = pb::EraseSubjectRequest {
            subject_identifiers: email(),
            request_id: "r1".into(),
            categories: vec!["newsletter".into(), "contacts".into(), "contacts".into()],
            ..Default::default()
        };
        let (ids, selected) = erase(&r, &tables).unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(categories(&selected), ["contacts", "newsletter"]);
        let all = pb::EraseSubjectRequest {
            categories: Vec::new(),
            ..r.clone()
        };
        assert_eq!(erase(&all, &tables).unwrap().1.len(), 4);
        let unknown = pb::EraseSubjectRequest {
            categories: vec!["contacts".into(), "nope".into()],
            request_id: String::new(),
            ..r
        };
        assert_eq!(
            fields(erase(&unknown, &tables).unwrap_err()),
            ["request_id", "categories[1]"]
        );
    }

    #[test]
    fn subjects_are_named_and_bounded() {
        let tables = tables();
        let r = pb::ExportSubjectRequest::default();
        assert_eq!(
            fields(export(&r, &tables).unwrap_err()),
            ["subject_identifiers"]
        );
        let r = pb::ExportSubjectRequest {
            subject_identifiers: vec![
                SubjectRef {
                    r#type: "email".into(),
                    value: "not an email".into(),
                };
                MAX_IDENTIFIERS + 1
            ],
            ..Default::default()
        };
        let named = fields(export(&r, &tables).unwrap_err());
        assert_eq!(named[0], "subject_identifiers");
        assert!(named.contains(&"subject_identifiers[32].value".to_string()));
        let r = pb::ExportSubjectRequest {
            subject_identifiers: email(),
            categories: vec!["invoices".into()],
            ..Default::default()
        };
        assert_eq!(export(&r, &tables).unwrap().1, [2]);
    }

    #[test]
    fn a_restriction_names_its_action() {
        let tables = tables();
        let mut r = pb::RestrictSubjectRequest {
            subject_identifiers: email(),
            request_id: "r1".into(),
            ..Default::default()
        };
        assert_eq!(fields(restrict(&r, &tables).unwrap_err()), ["action"]);
        r.action = RestrictionAction::Lift as i32;
        let (_, restricting, selected) = restrict(&r, &tables).unwrap();
        assert!(!restricting);
        assert_eq!(selected.len(), 4);
    }

    #[test]
    fn corrections_are_bounded() {
        let mut r = pb::RectifySubjectRequest {
            subject_identifiers: email(),
            request_id: "r1".into(),
            ..Default::default()
        };
        assert_eq!(fields(rectify(&r).unwrap_err()), ["corrections"]);
        r.corrections = vec![Correction::default()];
        assert_eq!(
            fields(rectify(&r).unwrap_err()),
            ["corrections[0].category", "corrections[0].field"]
        );
        r.corrections = vec![Correction {
            category: "contacts".into(),
            field: "phone".into(),
            ..Default::default()
        }];
        assert_eq!(rectify(&r).unwrap().len(), 1);
    }

    fn rule(
        rule_id: &str,
        action: RetentionAction,
        categories: &[&str],
    ) -> pb::ApplyRetentionRequest {
        pb::ApplyRetentionRequest {
            request_id: "r1".into(),
            rule: Some(pb::RetentionRule {
                rule_id: rule_id.into(),
                policy: Some(RetentionPolicy {
                    anchor: "last_activity".into(),
                    action: action as i32,
                    ..Default::default()
                }),
                cutoff_time: Some(Timestamp {
                    seconds: 1_000,
                    nanos: 0,
                }),
                categories: categories.iter().map(|c| c.to_string()).collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_retention_rule_applies_where_it_can() {
        let tables = tables();
        let r = rule("purposes/admissions", RetentionAction::Delete, &[]);
        let rule = retention(&r, &tables).unwrap();
        assert_eq!(categories(&rule.tables), ["contacts", "interactions"]);
        assert_eq!((rule.cutoff, rule.anchor), (1_000, "last_activity"));
        // Nothing of the purpose can be anonymised: nothing to do.
        let r = self::rule("purposes/admissions", RetentionAction::Anonymise, &[]);
        assert!(retention(&r, &tables).unwrap().tables.is_empty());
        // Named explicitly, a category that cannot apply the rule refuses it.
        let r = self::rule("x", RetentionAction::Delete, &["newsletter"]);
        let Err(ApiError::FailedPrecondition { reason, .. }) = retention(&r, &tables) else {
            panic!("a category without anchor accepted");
        };
        assert_eq!(reason, "NO_RETENTION_ANCHOR");
        let r = self::rule("x", RetentionAction::Anonymise, &["contacts"]);
        let Err(ApiError::FailedPrecondition { reason, .. }) = retention(&r, &tables) else {
            panic!("a category without anonymisation accepted");
        };
        assert_eq!(reason, "NO_ANONYMISATION");
    }

    #[test]
    fn a_retention_rule_is_complete() {
        let tables = tables();
        let r = pb::ApplyRetentionRequest::default();
        assert_eq!(
            fields(retention(&r, &tables).unwrap_err()),
            ["request_id", "rule", "rule.rule_id"]
        );
        let mut r = rule("x", RetentionAction::Unspecified, &[]);
        if let Some(rule) = r.rule.as_mut() {
            rule.cutoff_time = None;
        }
        assert_eq!(
            fields(retention(&r, &tables).unwrap_err()),
            ["rule.policy.action", "rule.cutoff_time"]
        );
    }
}
