//! The in-memory tree: perfect subtree hashes stored level by level.

use super::{Hash, ProofError, empty_root, node_hash, split_point};

/// Append-only RFC 9162 Merkle tree that stores every perfect subtree hash by level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleTree {
    /// `levels[k][i]` is the hash of leaves `[i << k, (i + 1) << k)`; `levels[0]` holds
    /// the leaf hashes. Level `k` exists exactly when the tree has at least `2^k` leaves.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// Creates an empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a tree from leaf hashes in order, one level at a time.
    pub fn from_leaves<I: IntoIterator<Item = Hash>>(leaves: I) -> Self {
        let mut current: Vec<Hash> = leaves.into_iter().collect();
        let mut levels = Vec::new();
        while !current.is_empty() {
            let next: Vec<Hash> = current
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(current);
            current = next;
        }
        Self { levels }
    }

    /// Appends a leaf hash and returns its index (amortised O(1) node hashes).
    pub fn push(&mut self, leaf_hash: Hash) -> u64 {
        let index = self.len();
        let mut hash = leaf_hash;
        let mut level = 0;
        loop {
            if level == self.levels.len() {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            let n = row.len();
            if n % 2 == 1 {
                return index;
            }
            hash = node_hash(&row[n - 2], &row[n - 1]);
            level += 1;
        }
    }

    /// Number of leaves in the tree.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaf hash at `index`, if the tree has that many leaves.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let index = usize::try_from(index).ok()?;
        self.leaves().get(index).copied()
    }

    /// All leaf hashes in order.
    pub fn leaves(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// Root hash of the tree's first `size` leaves (MTH of RFC 9162 §2.1.1); `size <= len()`.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        Ok(if size == 0 {
            empty_root()
        } else {
            self.range_hash(0, size)
        })
    }

    /// Inclusion proof (RFC 9162 §2.1.3.1 `PATH`) of leaf `index` in the tree of `size` leaves.
    ///
    /// Errors: [`ProofError::SizeBeyondTree`] if `size > len()`, then
    /// [`ProofError::IndexOutOfRange`] if `index >= size`. The proof is ordered from the
    /// leaf's sibling up to the root's child, and is empty for a 1-leaf tree.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::with_capacity(proof_capacity(size));
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    /// Consistency proof (RFC 9162 §2.1.4.1 `SUBPROOF`) from `old_size` to `new_size` leaves.
    ///
    /// Errors: [`ProofError::EmptyOldTree`] if `old_size == 0`, then
    /// [`ProofError::OldSizeExceedsNew`] if `old_size > new_size`, then
    /// [`ProofError::SizeBeyondTree`] if `new_size > len()`. The proof is empty when
    /// `old_size == new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
        if old_size == 0 {
            return Err(ProofError::EmptyOldTree);
        }
        if old_size > new_size {
            return Err(ProofError::OldSizeExceedsNew { old_size, new_size });
        }
        self.check_size(new_size)?;
        let mut proof = Vec::with_capacity(proof_capacity(new_size) + 1);
        self.subproof(old_size, 0, new_size, true, &mut proof);
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        let len = self.len();
        if size > len {
            return Err(ProofError::SizeBeyondTree { size, len });
        }
        Ok(())
    }

    /// The stored hash of the perfect subtree `[index << level, (index + 1) << level)`.
    pub(super) fn perfect(&self, level: u32, index: u64) -> Hash {
        // Both fit: the subtree lies within the stored leaves.
        self.levels[level as usize][index as usize]
    }

    /// MTH of leaves `[start, end)`: one stored perfect subtree per set bit of the
    /// width, folded right to left. `start` must be aligned as in the RFC's recursion
    /// (a multiple of the largest power of two not above `end - start`).
    pub(super) fn range_hash(&self, start: u64, end: u64) -> Hash {
        debug_assert!(start < end && end <= self.len());
        let mut pos = end;
        let mut rest = end - start;
        let mut acc: Option<Hash> = None;
        while rest != 0 {
            let level = rest.trailing_zeros();
            let width = 1u64 << level;
            pos -= width;
            debug_assert_eq!(pos % width, 0, "unaligned subtree");
            let piece = self.perfect(level, pos >> level);
            acc = Some(match acc {
                None => piece,
                Some(right) => node_hash(&piece, &right),
            });
            rest -= width;
        }
        acc.unwrap_or_else(empty_root)
    }

    /// RFC 9162 `PATH(m, D[start:end])` for absolute leaf index `m`, appended leaf-first.
    pub(super) fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n == 1 {
            return;
        }
        let k = split_point(n);
        if m < start + k {
            self.path(m, start, start + k, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.path(m, start + k, end, out);
            out.push(self.range_hash(start, start + k));
        }
    }

    /// RFC 9162 `SUBPROOF(m, D[start:end], whole)` with `m` relative to `start`.
    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.range_hash(start, end));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.range_hash(start, start + k));
        }
    }
}

/// Upper bound on a proof's length for a tree of `size` leaves: its height.
fn proof_capacity(size: u64) -> usize {
    (u64::BITS - size.leading_zeros()) as usize
}

impl FromIterator<Hash> for MerkleTree {
    fn from_iter<I: IntoIterator<Item = Hash>>(iter: I) -> Self {
        Self::from_leaves(iter)
    }
}

impl Extend<Hash> for MerkleTree {
    fn extend<I: IntoIterator<Item = Hash>>(&mut self, iter: I) {
        for leaf in iter {
            self.push(leaf);
        }
    }
}
