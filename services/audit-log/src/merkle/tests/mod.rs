//! Tests: published RFC 6962 vectors, edge cases and property tests.
//!
//! The reference helpers here re-derive proofs from the recursive definitions of
//! RFC 9162 §2.1 over plain slices, independently of the stored levels.

mod edge;
mod props;
mod vectors;

use std::collections::HashMap;

use super::{Hash, leaf_hash, node_hash, split_point};

/// `n` distinct leaf hashes, different for every `seed`.
fn leaves(n: u64, seed: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
        .collect()
}

fn hx(s: &str) -> Hash {
    hex::decode(s).expect("hex").try_into().expect("32 bytes")
}

/// Ranges `[s, e)` whose hashes make up `PATH(m, D[start:end])`, in proof order.
fn path_ranges(m: u64, start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
    let n = end - start;
    if n == 1 {
        return;
    }
    let k = split_point(n);
    if m < start + k {
        path_ranges(m, start, start + k, out);
        out.push((start + k, end));
    } else {
        path_ranges(m, start + k, end, out);
        out.push((start, start + k));
    }
}

/// Ranges whose hashes make up `SUBPROOF(m, D[start:end], whole)`, in proof order.
fn subproof_ranges(m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<(u64, u64)>) {
    let n = end - start;
    if m == n {
        if !whole {
            out.push((start, end));
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        subproof_ranges(m, start, start + k, whole, out);
        out.push((start + k, end));
    } else {
        subproof_ranges(m - k, start + k, end, false, out);
        out.push((start, start + k));
    }
}

fn mth(leaves: &[Hash]) -> Hash {
    super::root_from_leaves(leaves)
}

/// Reference inclusion proof: `PATH` ranges hashed with the recursive MTH.
fn reference_inclusion(leaves: &[Hash], index: u64, size: u64) -> Vec<Hash> {
    let mut ranges = Vec::new();
    path_ranges(index, 0, size, &mut ranges);
    ranges
        .into_iter()
        .map(|(s, e)| mth(&leaves[s as usize..e as usize]))
        .collect()
}

/// Reference consistency proof: `SUBPROOF` ranges hashed with the recursive MTH.
fn reference_consistency(leaves: &[Hash], old: u64, new: u64) -> Vec<Hash> {
    let mut ranges = Vec::new();
    subproof_ranges(old, 0, new, true, &mut ranges);
    ranges
        .into_iter()
        .map(|(s, e)| mth(&leaves[s as usize..e as usize]))
        .collect()
}

/// MTH of `[s, e)` from the known subtree hashes only; `None` if one is missing.
fn mth_from(known: &HashMap<(u64, u64), Hash>, s: u64, e: u64) -> Option<Hash> {
    if let Some(hash) = known.get(&(s, e)) {
        return Some(*hash);
    }
    if e - s == 1 {
        return None;
    }
    let k = split_point(e - s);
    Some(node_hash(
        &mth_from(known, s, s + k)?,
        &mth_from(known, s + k, e)?,
    ))
}

/// A second verifier built from the RFC's recursive definitions: it assigns each proof
/// hash to the subtree `PATH` says it stands for and recomputes the root.
fn recursive_inclusion_ok(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let mut ranges = Vec::new();
    path_ranges(index, 0, size, &mut ranges);
    if ranges.len() != proof.len() {
        return false;
    }
    let mut known: HashMap<_, _> = ranges.into_iter().zip(proof.iter().copied()).collect();
    known.insert((index, index + 1), *leaf);
    mth_from(&known, 0, size) == Some(*root)
}

/// The consistency counterpart of [`recursive_inclusion_ok`], built on `SUBPROOF`.
fn recursive_consistency_ok(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut ranges = Vec::new();
    subproof_ranges(old, 0, new, true, &mut ranges);
    if ranges.len() != proof.len() {
        return false;
    }
    let mut known: HashMap<_, _> = ranges.into_iter().zip(proof.iter().copied()).collect();
    if old.is_power_of_two() {
        // The old tree is itself a node of the new one: its root is the given one.
        known.insert((0, old), *old_root);
    } else if mth_from(&known, 0, old) != Some(*old_root) {
        return false;
    }
    mth_from(&known, 0, new) == Some(*new_root)
}

/// Deterministic pseudo-random stream (splitmix64) for picking tampering positions.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn hash(&mut self) -> Hash {
        leaf_hash(&self.next().to_le_bytes())
    }
}

/// Every structural alteration of `proof`: a bit flipped in each hash, each hash
/// dropped, a random hash inserted, two hashes swapped, the order reversed.
fn tampered(proof: &[Hash], mix: &mut Mix) -> Vec<(String, Vec<Hash>)> {
    let mut out = Vec::new();
    for i in 0..proof.len() {
        let mut p = proof.to_vec();
        let bit = mix.below(256) as usize;
        p[i][bit / 8] ^= 1 << (bit % 8);
        out.push((format!("bit {bit} of hash {i} flipped"), p));
        let mut p = proof.to_vec();
        p.remove(i);
        out.push((format!("hash {i} dropped"), p));
    }
    for at in [0, proof.len(), mix.below(proof.len() as u64 + 1) as usize] {
        let mut p = proof.to_vec();
        p.insert(at, mix.hash());
        out.push((format!("random hash inserted at {at}"), p));
    }
    if proof.len() >= 2 {
        let i = mix.below(proof.len() as u64) as usize;
        let j = (i + 1 + mix.below(proof.len() as u64 - 1) as usize) % proof.len();
        if proof[i] != proof[j] {
            let mut p = proof.to_vec();
            p.swap(i, j);
            out.push((format!("hashes {i} and {j} swapped"), p));
        }
        let mut p = proof.to_vec();
        p.reverse();
        out.push(("order reversed".to_owned(), p));
    }
    out
}
