//! The log's signing key: `audit.signing_key` when configured, else (embedded
//! default only) a seed generated once into `<data_dir>/audit-signing.key`.

use custodia_core::{Config, keys};
use secrecy::ExposeSecret;

use crate::signer::HeadSigner;

/// File holding the generated seed in the embedded default.
pub const SEED_FILE: &str = "audit-signing.key";

/// The signer this process uses for tree heads.
pub fn head_signer(config: &Config) -> anyhow::Result<HeadSigner> {
    let seed = match &config.audit.signing_key {
        Some(seed) => seed.clone(),
        None if config.is_embedded() => {
            keys::configured_or_file(None, &config.data_dir, SEED_FILE)?.0
        }
        None => anyhow::bail!(
            "audit.signing_key must be set when the audit log uses PostgreSQL \
             (every replica signs with the same key)"
        ),
    };
    HeadSigner::from_seed_text(seed.expose_secret())
}
