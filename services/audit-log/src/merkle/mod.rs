//! RFC 9162 (Certificate Transparency v2) §2.1 Merkle tree over audit-log entries.
//!
//! Hashing follows RFC 9162 §2.1.1 (identical to RFC 6962 §2.1): a leaf hash is
//! `SHA-256(0x00 || entry)`, an interior node is `SHA-256(0x01 || left || right)` and
//! the empty tree hashes to `SHA-256("")`. A tree of `n > 1` leaves splits at the
//! largest power of two `k < n`, so its left part is always a perfect subtree.
//!
//! # Storage
//!
//! [`MerkleTree`] keeps every *perfect* subtree hash, level by level: level 0 holds
//! the leaf hashes, and entry `i` of level `k` is the hash of leaves
//! `[i * 2^k, (i + 1) * 2^k)`. Level `k` thus holds `len >> k` hashes, about
//! `2 * 32` bytes per leaf in total, and [`MerkleTree::push`] only appends to the
//! levels (amortised O(1) node hashes). Every subtree that RFC 9162 hashes is a run
//! of perfect subtrees read off one per set bit of its size, so the root at *any*
//! historical size is O(log n) lookups and node hashes, and inclusion and
//! consistency proofs (RFC 9162 §2.1.3.1 `PATH`, §2.1.4.1 `SUBPROOF`) are
//! O(log² n) at worst; nothing ever walks the leaves.
//!
//! # Verification
//!
//! [`verify_inclusion`] and [`verify_consistency`] implement the bit-shifting
//! algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 literally and take only hashes, so
//! they check the tree code independently. [`root_from_leaves`] is the plain
//! recursive `MTH` and [`Recomputer`] recomputes roots in a single streaming pass
//! with O(log n) memory (for `custodia audit verify`).
//!
//! A proof binds a leaf (or an old root) to a root *for the claimed sizes*; the sizes
//! themselves are bound by the signed tree head that carries the root. Without it, a
//! size that yields the same hashing pattern can also verify (the index-0 proof of a
//! 4-leaf tree is a valid index-0 proof of a 3-leaf tree whose third "leaf" is the
//! hash of leaves 2 and 3); this is inherent in RFC 6962/9162 proofs.

mod recompute;
mod tree;
mod verify;

#[cfg(test)]
mod tests;

use sha2::{Digest, Sha256};

pub use recompute::{Recomputer, root_from_leaves};
pub use tree::MerkleTree;
pub use verify::{verify_consistency, verify_inclusion};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Why a proof could not be produced or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not below the tree size (this includes every index at size 0).
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size it was requested for.
        size: u64,
    },
    /// The requested tree size is larger than the number of leaves the tree holds.
    #[error("tree size {size} exceeds the {len} leaves held")]
    SizeBeyondTree {
        /// The requested tree size.
        size: u64,
        /// The number of leaves held.
        len: u64,
    },
    /// A consistency proof was asked for from the empty tree (RFC 9162 needs `0 < m`).
    #[error("a consistency proof needs an old tree size of at least 1")]
    EmptyOldTree,
    /// The old tree size of a consistency proof is larger than the new one.
    #[error("old tree size {old_size} exceeds new tree size {new_size}")]
    OldSizeExceedsNew {
        /// The old (first) tree size.
        old_size: u64,
        /// The new (second) tree size.
        new_size: u64,
    },
    /// The proof holds more hashes than the sizes allow (non-empty for equal sizes, too).
    #[error("proof has more hashes than the tree sizes allow")]
    ProofTooLong,
    /// The proof holds fewer hashes than the sizes need (empty for different sizes, too).
    #[error("proof has fewer hashes than the tree sizes need")]
    ProofTooShort,
    /// The root recomputed from an inclusion proof differs from the expected root.
    #[error("root recomputed from the inclusion proof does not match")]
    RootMismatch,
    /// The old root recomputed from a consistency proof differs from the expected one.
    #[error("old root recomputed from the consistency proof does not match")]
    OldRootMismatch,
    /// The new root recomputed from a consistency proof differs (equal sizes: the roots differ).
    #[error("new root recomputed from the consistency proof does not match")]
    NewRootMismatch,
}

/// RFC 9162 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0x00])
        .chain_update(data)
        .finalize()
        .into()
}

/// RFC 9162 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([0x01])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly below `n` (the RFC's split point `k`); needs `n >= 2`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}
