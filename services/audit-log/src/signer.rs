//! Signed tree heads (Ed25519). The signed message is fixed-width and documented
//! so anyone can check a head with the public key alone:
//! `"custodia-sth-v1" || tree_size (u64 BE) || timestamp_ms (u64 BE) || root (32 bytes)`.

use custodia_core::signing::Ed25519Key;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// Domain separation prefix of the signed message.
pub const STH_CONTEXT: &[u8] = b"custodia-sth-v1";

/// The bytes a tree head signature covers.
pub fn sth_message(tree_size: u64, timestamp_ms: u64, root: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(STH_CONTEXT.len() + 48);
    m.extend_from_slice(STH_CONTEXT);
    m.extend_from_slice(&tree_size.to_be_bytes());
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m.extend_from_slice(root);
    m
}

/// Signs tree heads with the log's Ed25519 key.
#[derive(Debug, Clone)]
pub struct HeadSigner {
    key: Ed25519Key,
}

impl HeadSigner {
    /// A signer from a 32-byte seed given as 64 hex characters or unpadded base64url.
    pub fn from_seed_text(text: &str) -> anyhow::Result<Self> {
        Ok(Self::new(Ed25519Key::from_seed_text(
            text,
            "audit.signing_key",
        )?))
    }

    /// A signer with `key`.
    pub fn new(key: Ed25519Key) -> Self {
        Self { key }
    }

    /// The public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.public_key()
    }

    /// Id of the key, stored with every head.
    pub fn key_id(&self) -> &str {
        self.key.key_id()
    }

    /// Signature over [`sth_message`].
    pub fn sign(&self, tree_size: u64, timestamp_ms: u64, root: &[u8; 32]) -> [u8; 64] {
        self.key.sign(&sth_message(tree_size, timestamp_ms, root))
    }
}

/// Checks a head signature with `public_key`.
pub fn verify_head(
    public_key: &VerifyingKey,
    tree_size: u64,
    timestamp_ms: u64,
    root: &[u8; 32],
    signature: &[u8],
) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    public_key
        .verify(&sth_message(tree_size, timestamp_ms, root), &signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let signer = HeadSigner::from_seed_text(&"11".repeat(32)).unwrap();
        let root = [7u8; 32];
        let sig = signer.sign(10, 1000, &root);
        let pk = signer.public_key();
        assert!(verify_head(&pk, 10, 1000, &root, &sig));
        assert!(!verify_head(&pk, 11, 1000, &root, &sig));
        assert!(!verify_head(&pk, 10, 1001, &root, &sig));
        assert!(!verify_head(&pk, 10, 1000, &[8u8; 32], &sig));
        assert_eq!(signer.key_id().len(), 16);
        assert!(HeadSigner::from_seed_text("short").is_err());
        let b64 =
            HeadSigner::from_seed_text("ERERERERERERERERERERERERERERERERERERERERERE").unwrap();
        assert_eq!(b64.key_id(), signer.key_id());
    }
}
