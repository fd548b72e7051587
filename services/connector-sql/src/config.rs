//! The connector's configuration: which database, who may call, and for each
//! table the category it holds, the columns that identify a person and what
//! erasure, restriction, rectification and retention do to it.
//!
//! Table and column names come only from here and are checked to be plain SQL
//! identifiers when the file is loaded (and to exist when the database is
//! opened), so they can be quoted into statements; every value is bound.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
};

use anyhow::Context;
use custodia_core::{config::AuthConfig, legal_time::CalendarPeriod};
use custodia_proto::common::v1::RetentionGround;
use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::SecretString;
use serde::Deserialize;

/// Prefix of the connector's own tables in the database it serves.
pub const RESERVED_PREFIX: &str = "custodia_connector_";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// `sqlite://path?mode=rw` or `postgres://user@host/db`. May also come from
    /// `CUSTODIA_CONNECTOR_DATABASE_URL`, so the file need not hold a password.
    pub database_url: SecretString,
    /// Name shown by GetCapabilities, e.g. "Admissions CRM".
    pub display_name: String,
    /// Where `custodia connector sql` listens (default 127.0.0.1:50061).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Pool size (default 4).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Who may call: `[auth.principals.dsar]` with `token` or `token_sha256` and
    /// `scopes = ["connector.read", "connector.write"]`, as in custodia's own config.
    pub auth: AuthConfig,
    /// The tables holding personal data.
    pub tables: Vec<TableConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50061))
}

fn default_max_connections() -> u32 {
    4
}

/// A special category of data (Art. 9(1)) as the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialCategoryConfig {
    /// Racial or ethnic origin.
    RacialOrEthnicOrigin,
    /// Political opinions.
    PoliticalOpinions,
    /// Religious or philosophical beliefs.
    ReligiousOrPhilosophicalBeliefs,
    /// Trade union membership.
    TradeUnionMembership,
    /// Genetic data.
    Genetic,
    /// Biometric data.
    Biometric,
    /// Data concerning health.
    Health,
    /// Sex life or sexual orientation.
    SexLifeOrOrientation,
}

impl SpecialCategoryConfig {
    /// The protobuf value.
    pub fn proto(self) -> custodia_proto::common::v1::SpecialCategory {
        use custodia_proto::common::v1::SpecialCategory as S;
        match self {
            Self::RacialOrEthnicOrigin => S::RacialOrEthnicOrigin,
            Self::PoliticalOpinions => S::PoliticalOpinions,
            Self::ReligiousOrPhilosophicalBeliefs => S::ReligiousOrPhilosophicalBeliefs,
            Self::TradeUnionMembership => S::TradeUnionMembership,
            Self::Genetic => S::Genetic,
            Self::Biometric => S::Biometric,
            Self::Health => S::Health,
            Self::SexLifeOrOrientation => S::SexLifeOrOrientation,
        }
    }
}

/// One table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The SQL table.
    pub name: String,
    /// Category name used in records and requests; default: the table name.
    #[serde(default)]
    pub category: Option<String>,
    /// What the category contains, in clear language.
    #[serde(default)]
    pub description: String,
    /// Purposes of the processing (`purposes/{purpose}`); ApplyRetention with no
    /// categories applies a rule to the tables listing its `rule_id` here.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Recipients of this data.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Where the data comes from when not from the subject.
    #[serde(default)]
    pub origin: String,
    /// The special category of data (Art. 9) the table holds, if any (`health`,
    /// `biometric`, ...): dsar flags its records for destruction where the
    /// register allows no such category for the source.
    #[serde(default)]
    pub special_category: Option<SpecialCategoryConfig>,
    /// Primary-key column (the record id).
    pub primary_key: String,
    /// SubjectRef type (`email`, `student_number`, `crm_contact`, ...) -> column.
    pub identifiers: BTreeMap<String, String>,
    /// One row of this table is one person: a match on one identifier column
    /// makes the row's other identifier columns identifiers of the same person,
    /// used to find the person's rows in the other tables.
    #[serde(default)]
    pub person: bool,
    /// Column holding when the record was created.
    #[serde(default)]
    pub created_column: Option<String>,
    /// Column holding when the record was last changed.
    #[serde(default)]
    pub updated_column: Option<String>,
    /// Unit of integer time columns (`seconds` default, `milliseconds`); when set,
    /// every time column of the table is read as a Unix time in that unit.
    #[serde(default)]
    pub time_unit: Option<TimeUnit>,
    /// Columns never exported (password hashes, internal flags).
    #[serde(default)]
    pub exclude_columns: Vec<String>,
    /// What erasure does: `delete` (default) or `anonymise`.
    #[serde(default)]
    pub erase: EraseAction,
    /// How to anonymise a row (erase = "anonymise", or a retention rule asking
    /// for anonymisation).
    #[serde(default)]
    pub anonymise: Option<AnonymiseConfig>,
    /// Rows the law requires to be kept, erased only once the period is over.
    #[serde(default)]
    pub retained_by_law: Option<LegalHoldConfig>,
    /// How restriction is recorded; default: a side table the connector owns.
    #[serde(default)]
    pub restriction: Option<RestrictionConfig>,
    /// Columns RectifySubject may change.
    #[serde(default)]
    pub rectifiable: Vec<String>,
    /// What ApplyRetention counts the period from.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
}

impl TableConfig {
    /// The category name.
    pub fn category(&self) -> &str {
        self.category.as_deref().unwrap_or(&self.name)
    }
}

/// Unit of integer time columns.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Unix seconds.
    Seconds,
    /// Unix milliseconds.
    Milliseconds,
}

/// What erasure does to a row.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EraseAction {
    /// DELETE the row.
    #[default]
    Delete,
    /// Overwrite the personal columns (see [`AnonymiseConfig`]).
    Anonymise,
}

/// Columns overwritten when a row is anonymised.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AnonymiseConfig {
    /// Columns set to NULL.
    #[serde(default)]
    pub set_null: Vec<String>,
    /// Columns set to a fixed value.
    #[serde(default)]
    pub set: BTreeMap<String, FixedValue>,
}

/// A fixed value from the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum FixedValue {
    /// true/false.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
    /// Text.
    Text(String),
}

/// Rows kept under a legal obligation (GDPR Art. 17(3)).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegalHoldConfig {
    /// Column the period is counted from, e.g. `issued_at`.
    pub anchor_column: String,
    /// ISO 8601 period, e.g. `P10Y`.
    pub period: String,
    /// `legal_obligation`, `public_task`, `legal_claims`, `archiving`,
    /// `public_health` or `freedom_of_expression`.
    pub ground: Ground,
    /// The legal reference, e.g. "Code de commerce, art. L123-22".
    #[serde(default)]
    pub legal_reference: String,
    /// The reason in words, as shown to the subject.
    pub reason: String,
}

/// Ground for keeping data (mirrors `custodia.common.v1.RetentionGround`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Ground {
    LegalObligation,
    PublicTask,
    LegalClaims,
    Archiving,
    PublicHealth,
    FreedomOfExpression,
}

impl Ground {
    /// The proto enum value.
    pub fn proto(self) -> RetentionGround {
        match self {
            Ground::LegalObligation => RetentionGround::LegalObligation,
            Ground::PublicTask => RetentionGround::PublicTask,
            Ground::LegalClaims => RetentionGround::LegalClaims,
            Ground::Archiving => RetentionGround::Archiving,
            Ground::PublicHealth => RetentionGround::PublicHealth,
            Ground::FreedomOfExpression => RetentionGround::FreedomOfExpression,
        }
    }
}

/// How a restriction is recorded in the table itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestrictionConfig {
    /// The column.
    pub column: String,
    /// `flag` (boolean/0-1 column, default) or `timestamp` (set when
    /// restricted, NULL otherwise).
    #[serde(default)]
    pub kind: RestrictionKind,
}

/// Kind of restriction column.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RestrictionKind {
    /// true / false.
    #[default]
    Flag,
    /// When restricted; NULL when not.
    Timestamp,
}

/// Retention of a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Column the retention period is counted from by default.
    pub anchor_column: String,
    /// Other anchors by RetentionPolicy anchor name (`collection`,
    /// `last_activity`, ...) -> column; a rule naming one uses its column.
    #[serde(default)]
    pub anchors: BTreeMap<String, String>,
    /// For GetCapabilities: the anchor name of `anchor_column`.
    #[serde(default)]
    pub anchor: String,
    /// For GetCapabilities: the period, e.g. `P3Y`.
    #[serde(default)]
    pub period: String,
    /// For GetCapabilities: the criteria in words.
    #[serde(default)]
    pub criteria: String,
}

/// A plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes.
pub fn is_plain_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A subject identifier type: `[a-z][a-z0-9_]*`.
fn is_identifier_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl ConnectorConfig {
    /// Reads `path` (TOML), with `CUSTODIA_CONNECTOR_DATABASE_URL` overriding
    /// `database_url`, and validates it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let figment = Figment::from(Toml::file_exact(path))
            .merge(Env::prefixed("CUSTODIA_CONNECTOR_").only(&["database_url"]));
        let config: Self = figment
            .extract()
            .with_context(|| format!("reading {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text and validates it.
    pub fn from_toml_str(text: &str) -> anyhow::Result<Self> {
        let config: Self = Figment::from(Toml::string(text))
            .extract()
            .context("parsing the connector configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that can be checked without the database; errors name
    /// the offending setting (`tables[1].identifiers.email`).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.display_name.trim().is_empty(),
            "display_name is required"
        );
        anyhow::ensure!(
            self.auth.admin_token.is_some() || !self.auth.principals.is_empty(),
            "auth: no principal is configured, so no one could call the connector \
             (add [auth.principals.dsar] with a token and scopes)"
        );
        anyhow::ensure!(!self.tables.is_empty(), "tables: at least one is required");
        let mut categories = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let at = format!("tables[{i}]");
            let ident = |field: &str, value: &str| -> anyhow::Result<()> {
                anyhow::ensure!(
                    is_plain_identifier(value),
                    "{at}.{field}: {value:?} is not a plain SQL identifier \
                     ([A-Za-z_][A-Za-z0-9_]*, at most 63 characters)"
                );
                Ok(())
            };
            ident("name", &t.name)?;
            anyhow::ensure!(
                !t.name.to_ascii_lowercase().starts_with(RESERVED_PREFIX),
                "{at}.name: tables named {RESERVED_PREFIX}* belong to the connector"
            );
            anyhow::ensure!(
                names.insert(t.name.clone()),
                "{at}.name: table {} is listed twice",
                t.name
            );
            let category = t.category();
            anyhow::ensure!(
                !category.trim().is_empty()
                    && category.len() <= 64
                    && !category.chars().any(char::is_control),
                "{at}.category: must be 1 to 64 characters"
            );
            anyhow::ensure!(
                categories.insert(category.to_string()),
                "{at}.category: {category} is used by two tables"
            );
            ident("primary_key", &t.primary_key)?;
            anyhow::ensure!(
                !t.identifiers.is_empty(),
                "{at}.identifiers: at least one identifier type -> column is required"
            );
            for (kind, column) in &t.identifiers {
                anyhow::ensure!(
                    is_identifier_type(kind),
                    "{at}.identifiers: {kind:?} is not an identifier type ([a-z][a-z0-9_]*)"
                );
                ident(&format!("identifiers.{kind}"), column)?;
            }
            if let Some(c) = &t.created_column {
                ident("created_column", c)?;
            }
            if let Some(c) = &t.updated_column {
                ident("updated_column", c)?;
            }
            for (j, c) in t.exclude_columns.iter().enumerate() {
                ident(&format!("exclude_columns[{j}]"), c)?;
                anyhow::ensure!(
                    *c != t.primary_key,
                    "{at}.exclude_columns[{j}]: the primary key is the record id and is always exported"
                );
            }
            for (j, c) in t.rectifiable.iter().enumerate() {
                ident(&format!("rectifiable[{j}]"), c)?;
                anyhow::ensure!(
                    *c != t.primary_key,
                    "{at}.rectifiable[{j}]: the primary key cannot be rectified"
                );
            }
            if let Some(a) = &t.anonymise {
                for (j, c) in a.set_null.iter().enumerate() {
                    ident(&format!("anonymise.set_null[{j}]"), c)?;
                }
                for c in a.set.keys() {
                    ident(&format!("anonymise.set.{c}"), c)?;
                }
                anyhow::ensure!(
                    !a.set_null.is_empty() || !a.set.is_empty(),
                    "{at}.anonymise: list at least one column in set_null or set"
                );
                let covered: BTreeSet<&str> = a
                    .set_null
                    .iter()
                    .chain(a.set.keys())
                    .map(String::as_str)
                    .collect();
                anyhow::ensure!(
                    !covered.contains(t.primary_key.as_str()),
                    "{at}.anonymise: the primary key cannot be overwritten"
                );
                for (kind, column) in &t.identifiers {
                    anyhow::ensure!(
                        *column == t.primary_key || covered.contains(column.as_str()),
                        "{at}.anonymise: identifier column {column} ({kind}) is not overwritten, \
                         so an anonymised row would still identify the person"
                    );
                }
            }
            if t.erase == EraseAction::Anonymise {
                anyhow::ensure!(
                    t.anonymise.is_some(),
                    "{at}.erase: `anonymise` needs an [tables.anonymise] section"
                );
            }
            if let Some(h) = &t.retained_by_law {
                ident("retained_by_law.anchor_column", &h.anchor_column)?;
                parse_period(&h.period).with_context(|| format!("{at}.retained_by_law.period"))?;
                anyhow::ensure!(
                    !h.reason.trim().is_empty(),
                    "{at}.retained_by_law.reason: is required (it is shown to the subject)"
                );
            }
            if let Some(r) = &t.restriction {
                ident("restriction.column", &r.column)?;
            }
            if let Some(r) = &t.retention {
                ident("retention.anchor_column", &r.anchor_column)?;
                for (name, c) in &r.anchors {
                    ident(&format!("retention.anchors.{name}"), c)?;
                }
                if !r.period.is_empty() {
                    parse_period(&r.period).with_context(|| format!("{at}.retention.period"))?;
                }
            }
        }
        Ok(())
    }
}

/// Parses an ISO 8601 period (`P10Y`); a zero period is refused.
pub fn parse_period(text: &str) -> anyhow::Result<CalendarPeriod> {
    let period: CalendarPeriod = text.parse()?;
    anyhow::ensure!(!period.is_zero(), "{text:?} is a zero period");
    Ok(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../deploy/examples/connector-sql.toml");
        let config = ConnectorConfig::from_toml_str(text).expect("example parses");
        assert_eq!(config.tables.len(), 4);
        assert_eq!(config.tables[3].category(), "newsletter");
        custodia_core::auth::StaticTokens::from_config(&config.auth, None).expect("tokens");
    }

    #[test]
    fn identifiers_are_plain() {
        for ok in ["contacts", "_x1", "mdl_user"] {
            assert!(is_plain_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a b",
            "a\"b",
            "a;b",
            "a.b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }
}
