//! Ed25519 signing keys of the platform (audit tree heads, consent receipts):
//! configured as a 32-byte seed (64 hex characters or unpadded base64url), or
//! generated once into the data directory in the embedded default.

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::{Config, keys};

/// Key id of a public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// An Ed25519 signing key with its id.
#[derive(Clone)]
pub struct Ed25519Key {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Key")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Ed25519Key {
    /// A key from a seed given as 64 hex characters or unpadded base64url.
    pub fn from_seed_text(text: &str, setting: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let bytes = if text.len() == 64 {
            hex::decode(text).map_err(|_| anyhow::anyhow!("{setting} is not valid hex"))?
        } else {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| {
                    anyhow::anyhow!("{setting} is neither 64 hex characters nor base64url")
                })?
        };
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{setting} must encode exactly 32 bytes"))?;
        let key = SigningKey::from_bytes(&seed);
        let key_id = key_id(&key.verifying_key());
        Ok(Self { key, key_id })
    }

    /// The key named by `configured` (setting `setting`), else in the embedded
    /// default the seed in `<data_dir>/<file>`, generated on first use.
    pub fn configured_or_generated(
        config: &Config,
        configured: Option<&SecretString>,
        setting: &str,
        file: &str,
    ) -> anyhow::Result<Self> {
        let seed = match configured {
            Some(seed) => seed.clone(),
            None if config.is_embedded() => {
                keys::configured_or_file(None, &config.data_dir, file)?.0
            }
            None => anyhow::bail!(
                "{setting} must be set when the service uses PostgreSQL (every replica signs with the same key)"
            ),
        };
        Self::from_seed_text(seed.expose_secret(), setting)
    }

    /// The public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Id of the key, carried with every signature.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}
