//! Property tests: proofs from the tree verify against the recursive MTH, and any
//! alteration of a proof, index, size, leaf or root is rejected.
//!
//! A different *size* can legitimately verify when the RFC's own recursive
//! definition says it does (see the module docs), so for sizes the literal verifier
//! is required to agree with the recursive reference verifier instead.

use proptest::prelude::*;

use super::super::{
    MerkleTree, ProofError, Recomputer, empty_root, root_from_leaves, verify_consistency,
    verify_inclusion,
};
use super::{
    Mix, leaves, recursive_consistency_ok, recursive_inclusion_ok, reference_consistency,
    reference_inclusion, tampered,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn inclusion_proofs_verify_and_resist_tampering(
        size in 1u64..=300,
        extra in 0u64..16,
        pick: u64,
        seed: u64,
        salt: u64,
    ) {
        let all = leaves(size + extra, seed);
        let tree = MerkleTree::from_leaves(all.iter().copied());
        let index = pick % size;
        let leaf = all[index as usize];
        let root = root_from_leaves(&all[..size as usize]);
        let proof = tree.inclusion_proof(index, size).unwrap();

        prop_assert_eq!(tree.root(size).unwrap(), root);
        prop_assert_eq!(&proof, &reference_inclusion(&all, index, size));
        prop_assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));
        prop_assert!(recursive_inclusion_ok(&leaf, index, size, &proof, &root));

        let mut mix = Mix(salt);
        for (what, bad) in tampered(&proof, &mut mix) {
            let verdict = verify_inclusion(&leaf, index, size, &bad, &root);
            prop_assert!(verdict.is_err(), "accepted {}", what);
        }
        for other in (0..size).filter(|&other| other != index) {
            let verdict = verify_inclusion(&leaf, other, size, &proof, &root);
            prop_assert!(verdict.is_err(), "index {}", other);
            let verdict = verify_inclusion(&all[other as usize], other, size, &proof, &root);
            prop_assert!(verdict.is_err(), "leaf {}", other);
        }
        let beyond = size + mix.below(1000);
        prop_assert_eq!(
            verify_inclusion(&leaf, beyond, size, &proof, &root),
            Err(ProofError::IndexOutOfRange { index: beyond, size })
        );

        let (random, pow2) = (1 + mix.below(2 * size + 2), size.next_power_of_two());
        let sizes = [0, 1, size - 1, size + 1, size * 2, size / 2, pow2, random];
        for wrong in sizes.into_iter().filter(|&s| s != size) {
            let literal = verify_inclusion(&leaf, index, wrong, &proof, &root).is_ok();
            let reference = recursive_inclusion_ok(&leaf, index, wrong, &proof, &root);
            prop_assert_eq!(literal, reference, "size {} instead of {}", wrong, size);
        }

        let mut roots = vec![empty_root(), mix.hash(), root_from_leaves(&all)];
        if size > 1 {
            roots.extend([leaf, root_from_leaves(&all[..size as usize - 1])]);
        }
        for wrong in roots.into_iter().filter(|r| *r != root) {
            let verdict = verify_inclusion(&leaf, index, size, &proof, &wrong);
            prop_assert_eq!(verdict, Err(ProofError::RootMismatch));
        }
        let verdict = verify_inclusion(&mix.hash(), index, size, &proof, &root);
        prop_assert_eq!(verdict, Err(ProofError::RootMismatch));
    }

    #[test]
    fn consistency_proofs_verify_and_resist_tampering(
        new in 1u64..=300,
        extra in 0u64..16,
        pick: u64,
        seed: u64,
        salt: u64,
    ) {
        let all = leaves(new + extra, seed);
        let tree = MerkleTree::from_leaves(all.iter().copied());
        let old = 1 + pick % new;
        let r1 = root_from_leaves(&all[..old as usize]);
        let r2 = root_from_leaves(&all[..new as usize]);
        let proof = tree.consistency_proof(old, new).unwrap();

        prop_assert_eq!(&proof, &reference_consistency(&all, old, new));
        prop_assert_eq!(proof.is_empty(), old == new);
        prop_assert_eq!(verify_consistency(old, new, &r1, &r2, &proof), Ok(()));
        prop_assert!(recursive_consistency_ok(old, new, &r1, &r2, &proof));

        let mut mix = Mix(salt);
        for (what, bad) in tampered(&proof, &mut mix) {
            let verdict = verify_consistency(old, new, &r1, &r2, &bad);
            prop_assert!(verdict.is_err(), "accepted {}", what);
        }

        let mut olds = vec![mix.hash(), empty_root(), r2];
        let mut news = vec![mix.hash(), empty_root(), r1, root_from_leaves(&all)];
        if old > 1 {
            olds.push(root_from_leaves(&all[..old as usize - 1]));
        }
        if new > 1 {
            news.push(root_from_leaves(&all[..new as usize - 1]));
        }
        for wrong in olds.into_iter().filter(|r| *r != r1) {
            prop_assert!(verify_consistency(old, new, &wrong, &r2, &proof).is_err());
        }
        for wrong in news.into_iter().filter(|r| *r != r2) {
            prop_assert!(verify_consistency(old, new, &r1, &wrong, &proof).is_err());
        }

        let random = (1 + mix.below(2 * new + 2), 1 + mix.below(2 * new + 2));
        let pairs = [
            (old - 1, new), (old + 1, new), (old ^ 2, new), (old, new - 1), (old, new + 1),
            (old, new * 2), (old, new / 2), (old * 2, new * 2), random,
        ];
        for (o, n) in pairs.into_iter().filter(|&p| p != (old, new)) {
            let literal = verify_consistency(o, n, &r1, &r2, &proof).is_ok();
            let reference = recursive_consistency_ok(o, n, &r1, &r2, &proof);
            prop_assert_eq!(literal, reference, "({}, {}) instead of ({}, {})", o, n, old, new);
        }
    }

    #[test]
    fn recomputer_and_tree_agree_at_every_size(size in 0u64..=300, seed: u64) {
        let all = leaves(size, seed);
        let tree = MerkleTree::from_leaves(all.iter().copied());
        let mut recomputer = Recomputer::new();
        prop_assert_eq!(recomputer.root(), tree.root(0).unwrap());
        for (i, leaf) in all.iter().enumerate() {
            recomputer.push(*leaf);
            prop_assert_eq!(recomputer.size(), i as u64 + 1);
            prop_assert_eq!(recomputer.root(), tree.root(i as u64 + 1).unwrap());
        }
        prop_assert_eq!(recomputer.root(), root_from_leaves(&all));
    }
}
