//! Merkle tree hashing, proofs and proof verification exactly as RFC 9162 §2.1 defines them.
//!
//! - leaf hash: `SHA-256(0x00 || leaf bytes)`;
//! - node hash: `SHA-256(0x01 || left || right)`;
//! - the Merkle Tree Hash (MTH) of `n > 1` leaves splits at `k`, the largest power of two
//!   smaller than `n`: `MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))`; the MTH of no leaves is
//!   `SHA-256("")`.
//!
//! Proof *generation* lives on [`MerkleTree`]; proof *verification* ([`verify_inclusion`],
//! [`verify_consistency`]) is free-standing and needs nothing but the hashes and sizes, so a
//! client that holds only a signed tree head can check a proof it was handed.

use sha2::{Digest as _, Sha256};

/// A SHA-256 output: a leaf hash, a node hash or a root.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || leaf)`: the hash of one leaf (RFC 9162 §2.1.1).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0x00])
        .chain_update(leaf)
        .finalize()
        .into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node (RFC 9162 §2.1.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([0x01])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The Merkle Tree Hash of the empty list: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (n - 1).ilog2()
}

/// A Merkle tree held in memory, level by level, that grows one leaf at a time.
///
/// `levels[0]` holds the leaf hashes; `levels[h][i]` is the hash of the perfect subtree of
/// `2^h` leaves starting at leaf `i * 2^h`. Only complete subtrees are stored, so the MTH of any
/// prefix, and every proof over it, costs `O(log n)` hashes.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one leaf, given as its leaf hash (see [`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut h = 0;
        while self.levels[h].len().is_multiple_of(2) {
            let n = self.levels[h].len();
            let parent = node_hash(&self.levels[h][n - 2], &self.levels[h][n - 1]);
            if self.levels.len() == h + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[h + 1].push(parent);
            h += 1;
        }
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The leaf hash at `index`, if the tree has that many leaves.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let index = usize::try_from(index).ok()?;
        self.levels.first()?.get(index).copied()
    }

    /// The MTH of the whole tree.
    pub fn root(&self) -> Hash {
        self.subtree(0, self.size())
    }

    /// The MTH of the first `size` leaves, or `None` when the tree is smaller.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        (size <= self.size()).then(|| self.subtree(0, size))
    }

    /// MTH(D[start : start + len]); the caller keeps the range inside the tree.
    fn subtree(&self, start: u64, len: u64) -> Hash {
        if len == 0 {
            return empty_root();
        }
        if len.is_power_of_two() && start.is_multiple_of(len) {
            let level = len.ilog2() as usize;
            // Both indexes are in range: the range lies inside the tree and is a complete
            // subtree, so `push` has stored it.
            return self.levels[level][(start / len) as usize];
        }
        let k = split_point(len);
        node_hash(&self.subtree(start, k), &self.subtree(start + k, len - k))
    }

    /// The audit path for leaf `index` in the tree of the first `size` leaves
    /// (RFC 9162 §2.1.3.1), ordered from the leaf up; `None` unless `index < size <= self.size()`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.size() {
            return None;
        }
        let mut path = Vec::new();
        self.path(index, 0, size, &mut path);
        Some(path)
    }

    /// PATH(m, D[start : start + n]), appended leaf-first.
    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.subtree(start, k));
        }
    }

    /// The consistency proof between the tree of the first `old_size` leaves and the tree of
    /// the first `new_size` leaves (RFC 9162 §2.1.4.1); `None` unless
    /// `1 <= old_size <= new_size <= self.size()`. Equal sizes give an empty proof.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Option<Vec<Hash>> {
        if old_size == 0 || old_size > new_size || new_size > self.size() {
            return None;
        }
        let mut proof = Vec::new();
        self.subproof(old_size, 0, new_size, true, &mut proof);
        Some(proof)
    }

    /// SUBPROOF(m, D[start : start + n], b), appended in RFC order.
    fn subproof(&self, m: u64, start: u64, n: u64, whole: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !whole {
                out.push(self.subtree(start, n));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, k, whole, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.subtree(start, k));
        }
    }
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index claimed by the proof.
        index: u64,
        /// The tree size claimed by the proof.
        size: u64,
    },
    /// The old tree is empty or larger than the new one.
    #[error("no consistency proof exists from size {old_size} to size {new_size}")]
    BadSizes {
        /// The size of the earlier tree.
        old_size: u64,
        /// The size of the later tree.
        new_size: u64,
    },
    /// The proof has too many or too few hashes for the sizes it claims.
    #[error("the proof has the wrong number of hashes ({len}) for its tree sizes")]
    WrongLength {
        /// How many hashes the proof holds.
        len: usize,
    },
    /// The hashes recomputed from the proof differ from the expected root.
    #[error("the proof leads to root {computed}, not to the expected root {expected}")]
    RootMismatch {
        /// The root the proof leads to, hex.
        computed: String,
        /// The root the caller expected, hex.
        expected: String,
    },
}

/// Verify an inclusion proof (RFC 9162 §2.1.3.2): that the leaf with hash `leaf` sits at
/// `index` in the tree of `size` leaves whose MTH is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let wrong_length = ProofError::WrongLength { len: proof.len() };
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(wrong_length);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(wrong_length);
    }
    check_root(&r, root)
}

/// Verify a consistency proof (RFC 9162 §2.1.4.2): that the tree of `old_size` leaves with
/// MTH `old_root` is a prefix of the tree of `new_size` leaves with MTH `new_root`.
///
/// Equal sizes are consistent with an empty proof when the roots are equal.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::BadSizes { old_size, new_size });
    }
    let wrong_length = ProofError::WrongLength { len: proof.len() };
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(wrong_length);
        }
        return check_root(new_root, old_root);
    }
    // Step 1: an empty path never proves anything between different sizes.
    let Some((&first, rest)) = proof.split_first() else {
        return Err(wrong_length);
    };
    // Step 2: when the old tree is a perfect subtree, its root is the implicit first hash.
    let (seed, path): (Hash, &[Hash]) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        (first, rest)
    };
    // Steps 3–4.
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Steps 5–6.
    let (mut f_r, mut s_r) = (seed, seed);
    for c in path {
        if s_n == 0 {
            return Err(wrong_length);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    if s_n != 0 {
        return Err(wrong_length);
    }
    check_root(&f_r, old_root)?;
    check_root(&s_r, new_root)
}

fn check_root(computed: &Hash, expected: &Hash) -> Result<(), ProofError> {
    if computed == expected {
        Ok(())
    } else {
        Err(ProofError::RootMismatch {
            computed: hex::encode(computed),
            expected: hex::encode(expected),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MTH straight from the RFC's recursive definition, independent of [`MerkleTree`].
    fn reference_mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&reference_mth(&leaves[..k]), &reference_mth(&leaves[k..]))
            }
        }
    }

    fn tree_of(n: u64) -> (MerkleTree, Vec<Hash>) {
        let mut tree = MerkleTree::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let h = leaf_hash(&i.to_be_bytes());
            tree.push(h);
            leaves.push(h);
        }
        (tree, leaves)
    }

    /// The eight-leaf test vector of the Certificate Transparency reference implementation
    /// (`merkle_tree_test.cc`), the roots of each prefix.
    #[test]
    fn roots_match_the_certificate_transparency_test_vector() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut tree = MerkleTree::new();
        assert_eq!(
            hex::encode(tree.root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (input, root) in inputs.iter().zip(roots) {
            tree.push(leaf_hash(input));
            assert_eq!(hex::encode(tree.root()), root, "size {}", tree.size());
        }
    }

    #[test]
    fn prefix_roots_match_the_recursive_definition() {
        let (tree, leaves) = tree_of(70);
        for size in 0..=70 {
            assert_eq!(
                tree.root_at(size).unwrap(),
                reference_mth(&leaves[..size as usize]),
                "size {size}"
            );
        }
        assert_eq!(tree.root_at(71), None);
    }

    #[test]
    fn every_inclusion_proof_verifies_and_no_other_leaf_or_index_does() {
        let (tree, leaves) = tree_of(33);
        for size in 1..=33 {
            let root = tree.root_at(size).unwrap();
            for index in 0..size {
                let proof = tree.inclusion_proof(index, size).unwrap();
                let leaf = &leaves[index as usize];
                assert_eq!(verify_inclusion(index, size, leaf, &proof, &root), Ok(()));
                let other = leaf_hash(b"other");
                assert!(verify_inclusion(index, size, &other, &proof, &root).is_err());
                if size > 1 {
                    let wrong = (index + 1) % size;
                    assert!(verify_inclusion(wrong, size, leaf, &proof, &root).is_err());
                }
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 1;
                    assert!(verify_inclusion(index, size, leaf, &bad, &root).is_err());
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert!(verify_inclusion(index, size, leaf, &longer, &root).is_err());
            }
        }
        assert_eq!(tree.inclusion_proof(5, 5), None);
        assert_eq!(tree.inclusion_proof(0, 34), None);
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampered_ones_do_not() {
        let (tree, _) = tree_of(33);
        for new_size in 1..=33 {
            let new_root = tree.root_at(new_size).unwrap();
            for old_size in 1..=new_size {
                let old_root = tree.root_at(old_size).unwrap();
                let proof = tree.consistency_proof(old_size, new_size).unwrap();
                assert_eq!(
                    verify_consistency(old_size, new_size, &old_root, &new_root, &proof),
                    Ok(()),
                    "{old_size} -> {new_size}"
                );
                let mut other = old_root;
                other[31] ^= 0x80;
                assert!(verify_consistency(old_size, new_size, &other, &new_root, &proof).is_err());
                assert!(verify_consistency(old_size, new_size, &old_root, &other, &proof).is_err());
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][3] ^= 4;
                    assert!(
                        verify_consistency(old_size, new_size, &old_root, &new_root, &bad).is_err()
                    );
                }
                if old_size < new_size {
                    assert!(
                        verify_consistency(old_size, new_size, &old_root, &new_root, &[]).is_err()
                    );
                }
            }
        }
        assert_eq!(tree.consistency_proof(0, 3), None);
        assert_eq!(tree.consistency_proof(4, 3), None);
    }

    /// A root from a different history (one leaf changed) is not consistent with the tree.
    #[test]
    fn a_rewritten_prefix_is_not_consistent() {
        let (tree, mut leaves) = tree_of(13);
        leaves[2] = leaf_hash(b"rewritten");
        let forged_old = reference_mth(&leaves[..5]);
        let proof = tree.consistency_proof(5, 13).unwrap();
        assert!(verify_consistency(5, 13, &forged_old, &tree.root(), &proof).is_err());
    }

    #[test]
    fn proofs_with_hostile_sizes_fail_without_panicking() {
        let h = leaf_hash(b"x");
        let proof = vec![h; 70];
        for (a, b) in [
            (0, 0),
            (u64::MAX, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (1, u64::MAX),
        ] {
            assert!(verify_inclusion(a, b, &h, &proof, &h).is_err());
            assert!(verify_consistency(a, b, &h, &h, &proof).is_err());
            assert!(verify_consistency(b, a, &h, &h, &proof).is_err());
        }
    }
}
