//! The checks of [`Config::validate`] that `serve` used to make only while
//! starting, so `config check` passed configurations `serve` then refused: server
//! limits tonic would take literally, principals as the auth layer loads them,
//! scopes against the proto, the secrets PostgreSQL needs and configured seeds.

use std::collections::BTreeSet;

use secrecy::ExposeSecret;

use super::{Config, ConfigError};
use crate::auth::{StaticTokens, scopes::ScopeTable};

impl Config {
    /// Zero is not "unlimited" to tonic: a 0 s timeout ends every call at once and
    /// a concurrency limit of 0 lets no call through.
    pub(super) fn check_server_limits(&self) -> Result<(), ConfigError> {
        if self.server.request_timeout_secs == 0 {
            return Err(ConfigError(
                "server.request_timeout_secs must be at least 1 (0 would end every call at once)"
                    .into(),
            ));
        }
        if self.server.concurrency_limit_per_connection == 0 {
            return Err(ConfigError(
                "server.concurrency_limit_per_connection must be at least 1 (0 would serve no call)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Tokens as the auth layer loads them (at least 16 characters, none shared,
    /// the configured admin token included), and every granted scope one the proto
    /// declares (or `*`): a misspelt scope grants nothing and fails only at call
    /// time.
    pub(super) fn check_principals(&self) -> Result<(), ConfigError> {
        StaticTokens::from_config(&self.auth, self.auth.admin_token.as_ref())
            .map_err(|e| ConfigError(e.to_string()))?;
        let table = ScopeTable::from_descriptor_set(custodia_proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| ConfigError(format!("reading the scopes of the API: {e}")))?;
        let declared: BTreeSet<&str> = table.all_scopes();
        let unknown: Vec<String> = self
            .auth
            .principals
            .iter()
            .flat_map(|(name, p)| {
                p.scopes
                    .iter()
                    .filter(|s| *s != "*" && !declared.contains(s.as_str()))
                    .map(move |s| format!("auth.principals.{name}.scopes: unknown scope `{s}`"))
            })
            .collect();
        if !unknown.is_empty() {
            return Err(ConfigError(format!(
                "{} (`custodia auth scopes` lists the scopes)",
                unknown.join("; ")
            )));
        }
        Ok(())
    }

    /// What PostgreSQL needs that the embedded default generates, and configured
    /// signing seeds that must decode.
    pub(super) fn check_secrets(&self) -> Result<(), ConfigError> {
        if !self.is_embedded() && self.audit.subject_hash_key.is_none() {
            return Err(ConfigError(
                "audit.subject_hash_key must be set when services use PostgreSQL \
                 (every replica needs the same key)"
                    .into(),
            ));
        }
        for (setting, seed) in [
            ("audit.signing_key", &self.audit.signing_key),
            (
                "consent.receipt_signing_key",
                &self.consent.receipt_signing_key,
            ),
        ] {
            if let Some(seed) = seed {
                crate::signing::Ed25519Key::from_seed_text(seed.expose_secret(), setting)
                    .map_err(|e| ConfigError(e.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, PrincipalConfig};

    fn principal(token: &str, scopes: &[&str]) -> PrincipalConfig {
        PrincipalConfig {
            token: Some(token.to_string().into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn with_principals(principals: &[(&str, PrincipalConfig)]) -> Config {
        let mut config = Config::default();
        for (name, p) in principals {
            config.auth.principals.insert(name.to_string(), p.clone());
        }
        config
    }

    fn refused(config: &Config) -> String {
        config
            .validate()
            .expect_err("the configuration is refused")
            .to_string()
    }

    #[test]
    fn a_sound_configuration_passes() {
        let mut config = with_principals(&[
            ("crm", principal("crm-token-0123456789", &["consent.check"])),
            ("dpo", principal("dpo-token-0123456789", &["*"])),
        ]);
        config.auth.admin_token = Some("admin-token-0123456789".to_string().into());
        config.validate().unwrap();
        Config::default().validate().unwrap();
    }

    #[test]
    fn short_tokens_are_refused_naming_the_principal() {
        let err = refused(&with_principals(&[(
            "crm",
            principal("short", &["consent.check"]),
        )]));
        assert!(err.contains("auth.principals.crm"), "{err}");
        assert!(err.contains("shorter than 16"), "{err}");
        let mut config = Config::default();
        config.auth.admin_token = Some("short-admin".to_string().into());
        let err = refused(&config);
        assert!(err.contains("auth.admin_token"), "{err}");
    }

    #[test]
    fn shared_tokens_are_refused_naming_both() {
        let err = refused(&with_principals(&[
            (
                "crm",
                principal("shared-token-0123456789", &["consent.check"]),
            ),
            (
                "moodle",
                principal("shared-token-0123456789", &["consent.check"]),
            ),
        ]));
        assert!(
            err.contains("auth.principals.crm") && err.contains("auth.principals.moodle"),
            "{err}"
        );
        // With the admin's, or through the digest of the same token.
        let mut config = with_principals(&[(
            "crm",
            principal("shared-token-0123456789", &["consent.check"]),
        )]);
        config.auth.admin_token = Some("shared-token-0123456789".to_string().into());
        let err = refused(&config);
        assert!(err.contains("auth.admin_token"), "{err}");
        use sha2::Digest;
        let config = with_principals(&[
            (
                "crm",
                principal("shared-token-0123456789", &["consent.check"]),
            ),
            (
                "moodle",
                PrincipalConfig {
                    token_sha256: Some(hex::encode(sha2::Sha256::digest(
                        "shared-token-0123456789",
                    ))),
                    scopes: vec!["consent.check".into()],
                    ..Default::default()
                },
            ),
        ]);
        let err = refused(&config);
        assert!(err.contains("same token"), "{err}");
    }

    #[test]
    fn unknown_scopes_are_refused_each_by_name() {
        let err = refused(&with_principals(&[
            (
                "crm",
                principal("crm-token-0123456789", &["consent.check", "consent.chek"]),
            ),
            (
                "dpo",
                principal("dpo-token-0123456789", &["dsar.raed", "*"]),
            ),
        ]));
        assert!(
            err.contains("auth.principals.crm.scopes: unknown scope `consent.chek`"),
            "{err}"
        );
        assert!(
            err.contains("auth.principals.dpo.scopes: unknown scope `dsar.raed`"),
            "{err}"
        );
        assert!(!err.contains("`consent.check`"), "{err}");
        assert!(!err.contains("`*`"), "{err}");
    }

    #[test]
    fn zero_server_limits_are_refused_naming_the_key() {
        let mut config = Config::default();
        config.server.concurrency_limit_per_connection = 0;
        let err = refused(&config);
        assert!(
            err.contains("server.concurrency_limit_per_connection"),
            "{err}"
        );
        let mut config = Config::default();
        config.server.request_timeout_secs = 0;
        let err = refused(&config);
        assert!(err.contains("server.request_timeout_secs"), "{err}");
    }

    #[test]
    fn postgres_needs_the_subject_key_and_seeds_must_decode() {
        let mut config = Config::default();
        config.database.url = Some("postgres://u@db/custodia".to_string().into());
        let err = refused(&config);
        assert!(err.contains("audit.subject_hash_key"), "{err}");
        config.audit.subject_hash_key = Some("subject-key".to_string().into());
        config.validate().unwrap();
        config.audit.signing_key = Some("not-a-seed".to_string().into());
        let err = refused(&config);
        assert!(err.contains("audit.signing_key"), "{err}");
        config.audit.signing_key = None;
        config.consent.receipt_signing_key = Some("ab".repeat(31).into());
        let err = refused(&config);
        assert!(err.contains("consent.receipt_signing_key"), "{err}");
    }
}
