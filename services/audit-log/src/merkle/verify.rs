//! Proof verification, literally as in RFC 9162 §2.1.3.2 and §2.1.4.2 (hashes only).

use super::{Hash, ProofError, node_hash};

/// Checks that `leaf_hash` is leaf `index` of the `size`-leaf tree `root` (RFC 9162 §2.1.3.2).
///
/// Errors: [`ProofError::IndexOutOfRange`] if `index >= size`,
/// [`ProofError::ProofTooLong`] / [`ProofError::ProofTooShort`] if the proof length
/// does not fit the index and size, [`ProofError::RootMismatch`] otherwise.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    // 1. leaf_index >= tree_size fails.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // 2. fn = leaf_index, sn = tree_size - 1.
    let mut f_n = index;
    let mut s_n = size - 1;
    // 3. r = hash.
    let mut r = *leaf_hash;
    // 4. For each value p in the inclusion_path array:
    for p in proof {
        // a. If sn is 0, stop and fail.
        if s_n == 0 {
            return Err(ProofError::ProofTooLong);
        }
        // b. If LSB(fn) is set, or if fn is equal to sn, then:
        if f_n & 1 == 1 || f_n == s_n {
            // i. r = HASH(0x01 || p || r)
            r = node_hash(p, &r);
            // ii. If LSB(fn) is not set, right-shift both fn and sn equally until
            //     either LSB(fn) is set or fn is 0.
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            // Otherwise: r = HASH(0x01 || r || p)
            r = node_hash(&r, p);
        }
        // c. Finally, right-shift both fn and sn one time.
        f_n >>= 1;
        s_n >>= 1;
    }
    // 5. Compare sn to 0 and r against root_hash.
    if s_n != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that tree `old_root` of `old_size` leaves is a prefix of `new_root` (RFC 9162 §2.1.4.2).
///
/// Errors: [`ProofError::EmptyOldTree`] if `old_size == 0`,
/// [`ProofError::OldSizeExceedsNew`] if `old_size > new_size`; for equal sizes the
/// proof must be empty ([`ProofError::ProofTooLong`]) and the roots equal
/// ([`ProofError::NewRootMismatch`]); otherwise [`ProofError::ProofTooShort`] /
/// [`ProofError::ProofTooLong`] for a proof of the wrong length, then
/// [`ProofError::OldRootMismatch`] or [`ProofError::NewRootMismatch`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if old_size > new_size {
        return Err(ProofError::OldSizeExceedsNew { old_size, new_size });
    }
    if old_size == new_size {
        // SUBPROOF(m, D[m], true) is empty: the trees are the same one.
        if !proof.is_empty() {
            return Err(ProofError::ProofTooLong);
        }
        if old_root != new_root {
            return Err(ProofError::NewRootMismatch);
        }
        return Ok(());
    }
    // 1. If consistency_path is an empty array, stop and fail.
    let Some((head, tail)) = proof.split_first() else {
        return Err(ProofError::ProofTooShort);
    };
    // 2. If first is an exact power of 2, prepend first_hash to consistency_path.
    let (start, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (head, tail)
    };
    // 3. fn = first - 1, sn = second - 1.
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    // 4. If LSB(fn) is set, right-shift both fn and sn equally until LSB(fn) is not set.
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // 5. Set both fr and sr to the first value in the consistency_path array.
    let mut f_r = *start;
    let mut s_r = *start;
    // 6. For each subsequent value c in the consistency_path array:
    for c in rest {
        // a. If sn is 0, stop and fail.
        if s_n == 0 {
            return Err(ProofError::ProofTooLong);
        }
        // b. If LSB(fn) is set, or if fn is equal to sn, then:
        if f_n & 1 == 1 || f_n == s_n {
            // i. fr = HASH(0x01 || c || fr), sr = HASH(0x01 || c || sr)
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            // ii. If LSB(fn) is not set, right-shift both fn and sn equally until
            //     either LSB(fn) is set or fn is 0.
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            // Otherwise: sr = HASH(0x01 || sr || c)
            s_r = node_hash(&s_r, c);
        }
        // c. Finally, right-shift both fn and sn one time.
        f_n >>= 1;
        s_n >>= 1;
    }
    // 7. Verified if sn is 0, fr equals first_hash and sr equals second_hash.
    if s_n != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if f_r != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if s_r != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}
