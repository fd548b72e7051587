//! The log's signing key: `audit.signing_key` when configured, else (embedded
//! default only) a seed generated once into `<data_dir>/audit-signing.key`.

use custodia_core::{Config, signing::Ed25519Key};

use crate::signer::HeadSigner;

/// File holding the generated seed in the embedded default.
pub const SEED_FILE: &str = "audit-signing.key";

/// The signer this process uses for tree heads.
pub fn head_signer(config: &Config) -> anyhow::Result<HeadSigner> {
    Ok(HeadSigner::new(Ed25519Key::configured_or_generated(
        config,
        config.audit.signing_key.as_ref(),
        "audit.signing_key",
        SEED_FILE,
    )?))
}
