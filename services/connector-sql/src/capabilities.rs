//! GetCapabilities: what this connector can do, and the Art. 15(1)
//! information about each category it holds, from its configuration.

use custodia_proto::{
    common::v1::{RetentionAction, RetentionPolicy},
    connector::v1::{self as pb, Capability, DataCategory},
};

use crate::{
    config::EraseAction,
    service::{Inner, VERSION},
};

/// The capabilities of the connector `inner`.
pub(crate) fn capabilities(inner: &Inner) -> pb::GetCapabilitiesResponse {
    let mut capabilities = vec![
        Capability::Export as i32,
        Capability::Erase as i32,
        Capability::Restrict as i32,
    ];
    if inner.tables.iter().any(|t| !t.cfg.rectifiable.is_empty()) {
        capabilities.push(Capability::Rectify as i32);
    }
    if inner.tables.iter().any(|t| t.cfg.retention.is_some()) {
        capabilities.push(Capability::Retention as i32);
    }
    let mut identifier_types: Vec<String> = inner
        .tables
        .iter()
        .flat_map(|t| t.cfg.identifiers.keys().cloned())
        .collect();
    identifier_types.sort();
    identifier_types.dedup();
    let categories = inner
        .tables
        .iter()
        .map(|t| {
            let action = match t.cfg.erase {
                EraseAction::Delete => RetentionAction::Delete,
                EraseAction::Anonymise => RetentionAction::Anonymise,
            } as i32;
            let retention = match (&t.cfg.retention, &t.cfg.retained_by_law) {
                (Some(r), _) => Some(RetentionPolicy {
                    period: r.period.clone(),
                    anchor: r.anchor.clone(),
                    criteria: r.criteria.clone(),
                    action,
                }),
                (None, Some(h)) => Some(RetentionPolicy {
                    period: h.period.clone(),
                    anchor: String::new(),
                    criteria: h.reason.clone(),
                    action,
                }),
                (None, None) => None,
            };
            DataCategory {
                category: t.cfg.category().to_string(),
                description: t.cfg.description.clone(),
                purposes: t.cfg.purposes.clone(),
                recipients: t.cfg.recipients.clone(),
                retention,
                origin: t.cfg.origin.clone(),
                special_category: t
                    .cfg
                    .special_category
                    .map(|c| c.proto() as i32)
                    .unwrap_or_default(),
            }
        })
        .collect();
    pb::GetCapabilitiesResponse {
        display_name: inner.display_name.clone(),
        version: VERSION.to_string(),
        capabilities,
        identifier_types,
        categories,
    }
}
