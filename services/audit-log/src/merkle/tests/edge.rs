//! Edge cases, error cases and exhaustive checks on small trees.

use super::super::{
    Hash, MerkleTree, ProofError, Recomputer, empty_root, leaf_hash, node_hash, root_from_leaves,
    verify_consistency, verify_inclusion,
};
use super::{leaves, reference_consistency, reference_inclusion};

#[test]
fn hashes_are_domain_separated_sha256() {
    use sha2::{Digest, Sha256};
    let data = b"entry";
    assert_eq!(
        leaf_hash(data),
        <Hash>::from(Sha256::digest([&[0u8][..], data].concat()))
    );
    let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
    assert_eq!(
        node_hash(&a, &b),
        <Hash>::from(Sha256::digest([&[1u8][..], &a, &b].concat()))
    );
    assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
    assert_eq!(
        hex::encode(empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn empty_tree() {
    let tree = MerkleTree::new();
    assert!(tree.is_empty());
    assert_eq!(tree.len(), 0);
    assert_eq!(tree, MerkleTree::from_leaves([]));
    assert_eq!(tree.root(0), Ok(empty_root()));
    assert_eq!(
        tree.root(1),
        Err(ProofError::SizeBeyondTree { size: 1, len: 0 })
    );
    assert_eq!(tree.leaf(0), None);
    assert!(tree.leaves().is_empty());
    assert_eq!(
        tree.inclusion_proof(0, 0),
        Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(tree.consistency_proof(0, 0), Err(ProofError::EmptyOldTree));
    assert_eq!(root_from_leaves(&[]), empty_root());
    let recomputer = Recomputer::new();
    assert_eq!((recomputer.size(), recomputer.root()), (0, empty_root()));
}

#[test]
fn single_leaf_tree() {
    let leaf = leaf_hash(b"only");
    let mut tree = MerkleTree::new();
    assert_eq!(tree.push(leaf), 0);
    assert_eq!(tree.root(1), Ok(leaf));
    assert_eq!(tree.inclusion_proof(0, 1), Ok(vec![]));
    verify_inclusion(&leaf, 0, 1, &[], &leaf).unwrap();
    assert_eq!(
        verify_inclusion(&leaf, 0, 1, &[leaf], &leaf),
        Err(ProofError::ProofTooLong)
    );
    assert_eq!(tree.consistency_proof(1, 1), Ok(vec![]));
    verify_consistency(1, 1, &leaf, &leaf, &[]).unwrap();
    assert_eq!(tree.consistency_proof(0, 1), Err(ProofError::EmptyOldTree));
}

#[test]
fn error_cases_are_reported_in_documented_order() {
    let tree = MerkleTree::from_leaves(leaves(10, 1));
    assert_eq!(
        tree.root(11),
        Err(ProofError::SizeBeyondTree { size: 11, len: 10 })
    );
    assert_eq!(
        tree.inclusion_proof(3, 11),
        Err(ProofError::SizeBeyondTree { size: 11, len: 10 })
    );
    assert_eq!(
        tree.inclusion_proof(12, 11),
        Err(ProofError::SizeBeyondTree { size: 11, len: 10 })
    );
    assert_eq!(
        tree.inclusion_proof(5, 5),
        Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
    );
    assert_eq!(
        tree.inclusion_proof(u64::MAX, 10),
        Err(ProofError::IndexOutOfRange {
            index: u64::MAX,
            size: 10
        })
    );
    assert_eq!(tree.consistency_proof(0, 11), Err(ProofError::EmptyOldTree));
    assert_eq!(
        tree.consistency_proof(12, 11),
        Err(ProofError::OldSizeExceedsNew {
            old_size: 12,
            new_size: 11
        })
    );
    assert_eq!(
        tree.consistency_proof(3, 11),
        Err(ProofError::SizeBeyondTree { size: 11, len: 10 })
    );
    assert_eq!(tree.leaf(10), None);
    assert_eq!(tree.leaf(u64::MAX), None);
    assert!(tree.consistency_proof(10, 10).unwrap().is_empty());
}

#[test]
fn verifiers_survive_extreme_sizes() {
    let h = leaf_hash(b"x");
    assert_eq!(
        verify_inclusion(&h, 0, u64::MAX, &[h; 3], &h),
        Err(ProofError::ProofTooShort)
    );
    assert_eq!(
        verify_inclusion(&h, u64::MAX - 1, u64::MAX, &[h; 64], &h),
        Err(ProofError::ProofTooLong)
    );
    assert_eq!(
        verify_inclusion(&h, u64::MAX, u64::MAX, &[], &h),
        Err(ProofError::IndexOutOfRange {
            index: u64::MAX,
            size: u64::MAX
        })
    );
    assert_eq!(
        verify_consistency(u64::MAX - 1, u64::MAX, &h, &h, &[h]),
        Err(ProofError::ProofTooShort)
    );
    assert!(verify_consistency(1 << 63, u64::MAX, &h, &h, &[h; 70]).is_err());
    assert_eq!(
        verify_consistency(3, 4, &h, &h, &[]),
        Err(ProofError::ProofTooShort)
    );
}

#[test]
fn push_builds_the_same_levels_as_from_leaves() {
    let all = leaves(300, 2);
    let mut pushed = MerkleTree::new();
    let mut extended = MerkleTree::new();
    for (i, leaf) in all.iter().enumerate() {
        assert_eq!(pushed.push(*leaf), i as u64);
        extended.extend([*leaf]);
        let built = MerkleTree::from_leaves(all[..=i].iter().copied());
        assert_eq!(pushed, built, "size {}", i + 1);
        assert_eq!(extended, built);
        assert_eq!(pushed.len(), i as u64 + 1);
        assert_eq!(pushed.leaf(i as u64), Some(*leaf));
    }
    assert_eq!(pushed.leaves(), &all[..]);
}

#[test]
fn historical_roots_match_the_recursive_mth_and_the_recomputer() {
    let all = leaves(300, 3);
    let tree = MerkleTree::from_leaves(all.iter().copied());
    let mut recomputer = Recomputer::new();
    for size in 0..=300u64 {
        let want = root_from_leaves(&all[..size as usize]);
        assert_eq!(tree.root(size), Ok(want), "size {size}");
        assert_eq!(recomputer.root(), want, "recomputer {size}");
        if let Some(leaf) = all.get(size as usize) {
            recomputer.push(*leaf);
        }
    }
}

#[test]
fn powers_of_two_use_stored_perfect_subtrees() {
    let all = leaves(64, 4);
    let tree = MerkleTree::from_leaves(all.iter().copied());
    for k in 0..=6u32 {
        let size = 1u64 << k;
        assert_eq!(tree.root(size), Ok(tree.perfect(k, 0)));
        for index in 0..size {
            let proof = tree.inclusion_proof(index, size).unwrap();
            let want: Vec<Hash> = (0..k)
                .map(|level| tree.perfect(level, (index >> level) ^ 1))
                .collect();
            assert_eq!(proof, want, "PATH({index}, {size})");
        }
        for j in k..=6 {
            let proof = tree.consistency_proof(size, 1 << j).unwrap();
            let want: Vec<Hash> = (k..j).map(|level| tree.perfect(level, 1)).collect();
            assert_eq!(proof, want, "PROOF({size}, {})", 1u64 << j);
        }
    }
}

#[test]
fn every_small_proof_matches_the_reference_and_verifies() {
    let all = leaves(40, 5);
    let tree = MerkleTree::from_leaves(all.iter().copied());
    for new in 1..=33u64 {
        let root = root_from_leaves(&all[..new as usize]);
        for index in 0..new {
            let proof = tree.inclusion_proof(index, new).unwrap();
            assert_eq!(
                proof,
                reference_inclusion(&all, index, new),
                "PATH({index}, {new})"
            );
            verify_inclusion(&all[index as usize], index, new, &proof, &root).unwrap();
        }
        for old in 1..=new {
            let proof = tree.consistency_proof(old, new).unwrap();
            assert_eq!(
                proof,
                reference_consistency(&all, old, new),
                "PROOF({old}, {new})"
            );
            let old_root = root_from_leaves(&all[..old as usize]);
            verify_consistency(old, new, &old_root, &root, &proof).unwrap();
        }
    }
}

/// Sizes are bound by the signed tree head, not by the proof (see the module docs).
#[test]
fn a_proof_can_fit_another_size_with_the_same_shape() {
    let all = leaves(4, 6);
    let tree = MerkleTree::from_leaves(all.iter().copied());
    let root4 = tree.root(4).unwrap();
    let proof = tree.inclusion_proof(0, 4).unwrap();
    // A 3-leaf tree whose last "leaf" is node(leaf 2, leaf 3) has the same root.
    verify_inclusion(&all[0], 0, 3, &proof, &root4).unwrap();
    let proof = tree.consistency_proof(2, 4).unwrap();
    verify_consistency(2, 3, &tree.root(2).unwrap(), &root4, &proof).unwrap();
}

/// Prints timings at 1,000,000 leaves; run with
/// `cargo test --release -- --ignored --nocapture million_leaf_timings`.
#[test]
#[ignore = "timing run, release mode"]
fn million_leaf_timings() {
    use std::time::Instant;
    const N: u64 = 1_000_000;
    let all = leaves(N, 7);

    let start = Instant::now();
    let tree = MerkleTree::from_leaves(all.iter().copied());
    let build = start.elapsed();

    let start = Instant::now();
    let mut pushed = MerkleTree::new();
    for leaf in &all {
        pushed.push(*leaf);
    }
    let push = start.elapsed();

    let start = Instant::now();
    let root = tree.root(N).unwrap();
    let root_time = start.elapsed();

    // Worst-ish case: a leaf near the ragged right edge of a non-power-of-two size.
    let (index, size) = (N - 2, N);
    let start = Instant::now();
    let proof = tree.inclusion_proof(index, size).unwrap();
    let inclusion = start.elapsed();
    let start = Instant::now();
    let rounds = 10_000u64;
    for i in 0..rounds {
        std::hint::black_box(tree.inclusion_proof((i * 7919) % (N - i), N - i).unwrap());
    }
    let inclusion_avg = start.elapsed() / rounds as u32;

    let start = Instant::now();
    let consistency = tree.consistency_proof(N / 3, N - 1).unwrap();
    let consistency_time = start.elapsed();

    let start = Instant::now();
    let mut recomputer = Recomputer::new();
    for leaf in &all {
        recomputer.push(*leaf);
    }
    let recompute = start.elapsed();

    verify_inclusion(&all[index as usize], index, size, &proof, &root).unwrap();
    let old_root = tree.root(N / 3).unwrap();
    verify_consistency(
        N / 3,
        N - 1,
        &old_root,
        &tree.root(N - 1).unwrap(),
        &consistency,
    )
    .unwrap();
    assert_eq!(recomputer.root(), root);
    assert_eq!(pushed, tree);
    println!(
        "from_leaves {build:?}, push x{N} {push:?}, root {root_time:?}, \
         inclusion {inclusion:?} (avg {inclusion_avg:?}), consistency {consistency_time:?}, \
         Recomputer x{N} {recompute:?}"
    );
}
