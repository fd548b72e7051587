//! Recomputing roots from leaf hashes without a stored tree.

use super::{Hash, empty_root, node_hash, split_point};

/// Plain recursive MTH of RFC 9162 §2.1.1 over `leaves` (an independent reference path).
pub fn root_from_leaves(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        empty_root()
    } else {
        mth(leaves)
    }
}

fn mth(leaves: &[Hash]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split_point(leaves.len() as u64) as usize;
    node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
}

/// Streaming root computation: ingests leaf hashes in order, O(log n) memory.
///
/// It keeps one hash per set bit of the size (the perfect subtrees the RFC tree
/// starts with, largest first), so [`Recomputer::root`] at the current size costs
/// O(log n) node hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recomputer {
    size: u64,
    /// Roots of the perfect subtrees covering `[0, size)`, left (largest) first.
    stack: Vec<Hash>,
}

impl Recomputer {
    /// Starts with the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next leaf hash (amortised O(1) node hashes).
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut hash = leaf_hash;
        let mut carry = self.size;
        while carry & 1 == 1 {
            let left = self
                .stack
                .pop()
                .expect("one stacked subtree per set bit of the size");
            hash = node_hash(&left, &hash);
            carry >>= 1;
        }
        self.stack.push(hash);
        self.size += 1;
    }

    /// Number of leaf hashes ingested so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Root hash of the tree of all leaves ingested so far.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.stack.iter().rev();
        let Some(last) = subtrees.next() else {
            return empty_root();
        };
        subtrees.fold(*last, |right, left| node_hash(left, &right))
    }
}
