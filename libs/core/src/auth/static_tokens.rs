use std::{collections::HashMap, sync::Arc};

use futures::future::{self, BoxFuture};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{ADMIN_PRINCIPAL, AuthError, Authenticator, Principal};
use crate::config::AuthConfig;

/// Bearer tokens from configuration. Tokens are kept only as SHA-256 digests and
/// looked up by digest, so comparing never leaks a token's prefix through timing.
#[derive(Clone, Default)]
pub struct StaticTokens {
    by_digest: HashMap<[u8; 32], Arc<Principal>>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.by_digest.values().map(|p| p.name()).collect();
        names.sort();
        f.debug_struct("StaticTokens")
            .field("principals", &names)
            .finish()
    }
}

/// The configuration key of `principal`, for error messages.
fn config_key(principal: &str) -> String {
    if principal == ADMIN_PRINCIPAL {
        "auth.admin_token".into()
    } else {
        format!("auth.principals.{principal}")
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl StaticTokens {
    /// Principals from `config.principals`, plus `admin` (scope `*`) when `admin_token` is set.
    pub fn from_config(
        config: &AuthConfig,
        admin_token: Option<&SecretString>,
    ) -> anyhow::Result<Self> {
        let mut tokens = Self::default();
        if let Some(token) = admin_token {
            tokens.insert_token(
                token.expose_secret(),
                Principal::new(ADMIN_PRINCIPAL, ["*"]),
            )?;
        }
        for (name, p) in &config.principals {
            let principal = Principal::new(name.clone(), p.scopes.iter().cloned());
            match (&p.token, &p.token_sha256) {
                (Some(token), _) => tokens.insert_token(token.expose_secret(), principal)?,
                (None, Some(hex_digest)) => {
                    let bytes: [u8; 32] = hex::decode(hex_digest)
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "auth.principals.{name}.token_sha256 is not 64 hex characters"
                            )
                        })?;
                    tokens.insert_digest(bytes, principal)?;
                }
                (None, None) => anyhow::bail!("auth.principals.{name}: no token"),
            }
        }
        Ok(tokens)
    }

    /// Adds one principal with its token.
    pub fn insert_token(&mut self, token: &str, principal: Principal) -> anyhow::Result<()> {
        anyhow::ensure!(
            token.len() >= 16,
            "{}: the token is shorter than 16 characters",
            config_key(principal.name())
        );
        self.insert_digest(digest(token), principal)
    }

    fn insert_digest(&mut self, d: [u8; 32], principal: Principal) -> anyhow::Result<()> {
        if let Some(existing) = self.by_digest.get(&d) {
            // Shared accounts defeat individual accountability (S-2).
            anyhow::bail!(
                "{} and {} have the same token; every caller needs its own",
                config_key(existing.name()),
                config_key(principal.name())
            );
        }
        self.by_digest.insert(d, Arc::new(principal));
        Ok(())
    }

    /// Every configured principal, for access reviews (S-3).
    pub fn principals(&self) -> Vec<Arc<Principal>> {
        let mut all: Vec<_> = self.by_digest.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Arc<Principal>, AuthError>> {
        let found = self
            .by_digest
            .get(&digest(token))
            .cloned()
            .ok_or(AuthError::Invalid);
        Box::pin(future::ready(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrincipalConfig;

    #[tokio::test]
    async fn tokens_and_digests_authenticate() {
        let mut config = AuthConfig::default();
        config.principals.insert(
            "crm".into(),
            PrincipalConfig {
                token: Some("crm-token-0123456789".to_string().into()),
                scopes: vec!["consent.check".into()],
                ..Default::default()
            },
        );
        config.principals.insert(
            "moodle".into(),
            PrincipalConfig {
                token_sha256: Some(hex::encode(digest("moodle-token-0123456789"))),
                scopes: vec!["consent.read".into()],
                ..Default::default()
            },
        );
        let admin: SecretString = "admin-token-0123456789".to_string().into();
        let tokens = StaticTokens::from_config(&config, Some(&admin)).unwrap();
        let crm = tokens.authenticate("crm-token-0123456789").await.unwrap();
        assert_eq!(crm.name(), "crm");
        assert!(crm.has_scope("consent.check") && !crm.has_scope("consent.write"));
        let moodle = tokens
            .authenticate("moodle-token-0123456789")
            .await
            .unwrap();
        assert_eq!(moodle.name(), "moodle");
        let admin = tokens.authenticate("admin-token-0123456789").await.unwrap();
        assert!(admin.has_scope("anything.at.all"));
        assert_eq!(
            tokens.authenticate("nope").await.unwrap_err(),
            AuthError::Invalid
        );
        assert!(!format!("{tokens:?}").contains("token-0123"));
    }

    #[test]
    fn shared_and_short_tokens_are_refused() {
        let mut t = StaticTokens::default();
        t.insert_token("same-token-0123456789", Principal::new("a", ["x"]))
            .unwrap();
        assert!(
            t.insert_token("same-token-0123456789", Principal::new("b", ["x"]))
                .is_err()
        );
        assert!(t.insert_token("short", Principal::new("c", ["x"])).is_err());
    }
}
