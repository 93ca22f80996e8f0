//! Verification of a whole ledger, and the names it gives to tampering.
//!
//! What is checked, in order:
//!
//! 1. every stored head: well-formed and signed by the key given; heads must exist for every
//!    size `1..=N` (one is signed per append), `N` the largest validly signed size;
//! 2. every entry `i < N`: its row exists, its fields form an entry, and the leaf recomputed from
//!    them equals the leaf that head `i + 1` signed. A mismatching leaf that equals the signed
//!    leaf of another index is named *reordered*, otherwise *rewritten*; a missing row is
//!    *removed*; a row at or past `N` is *inserted*;
//! 3. when every entry matches: the tree rebuilt from the recomputed leaves has, at every
//!    signed size, the signed root, and every head is consistent with the newest one through an
//!    RFC 9162 consistency proof.
//!
//! Because head `n` signs entry `n - 1`'s leaf as well as the root, every tampered entry is
//! named, not only the first point where the roots diverge.
//!
//! What a single copy of the database cannot show: the removal of the newest entries together
//! with their heads (a truncation). Keep a head elsewhere (`trainguard ledger head`, a witness)
//! and check it with [`VerifiedLedger::check_trusted_head`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use p256::ecdsa::VerifyingKey;

use crate::entry::Entry;
use crate::head::SignedTreeHead;
use crate::ledger::{LedgerError, StoredEntry};
use crate::merkle::{Hash, MerkleTree, verify_consistency};
use crate::proof::{ConsistencyProof, InclusionProof};

/// One sign of tampering, naming the entry or head concerned. Indexes are 0-based leaf
/// indexes; heads are named by their tree size.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The ledger records a different public key from the one verification used.
    WrongKey,
    /// A stored head is malformed or its signature does not verify.
    BadHead {
        /// The head's tree size as stored.
        tree_size: i64,
        /// What is wrong.
        detail: String,
    },
    /// No head is stored for a size below the newest signed one.
    MissingHead {
        /// The missing size.
        tree_size: u64,
    },
    /// A signed entry's row is gone.
    Removed {
        /// The entry.
        index: u64,
    },
    /// A signed entry's content changed.
    Rewritten {
        /// The entry.
        index: u64,
        /// Why its row no longer forms an entry, when it does not.
        malformed: Option<String>,
    },
    /// A signed entry's row now holds the content signed for another index.
    Reordered {
        /// The entry.
        index: u64,
        /// The index whose signed leaf the row now matches.
        signed_as: u64,
    },
    /// A row that no signed head covers.
    Inserted {
        /// The row's index.
        index: i64,
    },
    /// A head's root differs from the root of the tree rebuilt from the entries.
    RootMismatch {
        /// The head.
        tree_size: u64,
    },
    /// A head is not consistent with the newest head.
    Inconsistent {
        /// The earlier head.
        old_size: u64,
        /// The newest head.
        new_size: u64,
        /// Why the proof failed.
        detail: String,
    },
    /// A trusted head from elsewhere is larger than the ledger: entries were cut off the end.
    Truncated {
        /// The size of the trusted head.
        seen: u64,
        /// The ledger's size now.
        now: u64,
    },
    /// A trusted head from elsewhere is not part of this ledger's history.
    Forked {
        /// The size of the trusted head.
        tree_size: u64,
        /// Why.
        detail: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::WrongKey => write!(
                f,
                "the ledger records a different signing key from the one given \
                 (wrong --key, or the key record was rewritten)"
            ),
            Problem::BadHead { tree_size, detail } => {
                write!(
                    f,
                    "signed tree head {tree_size} is forged or damaged: {detail}"
                )
            }
            Problem::MissingHead { tree_size } => {
                write!(f, "signed tree head {tree_size} was removed")
            }
            Problem::Removed { index } => write!(
                f,
                "entry {index} was removed: signed tree head {} covers it, but its row is gone",
                index + 1
            ),
            Problem::Rewritten { index, malformed } => {
                write!(
                    f,
                    "entry {index} was rewritten: its leaf no longer matches signed tree head {}",
                    index + 1
                )?;
                if let Some(why) = malformed {
                    write!(f, " (its row is malformed: {why})")?;
                }
                Ok(())
            }
            Problem::Reordered { index, signed_as } => write!(
                f,
                "entry {index} was reordered: it holds the content signed as entry {signed_as}"
            ),
            Problem::Inserted { index } => {
                write!(
                    f,
                    "entry {index} was inserted: no signed tree head covers it"
                )
            }
            Problem::RootMismatch { tree_size } => write!(
                f,
                "signed tree head {tree_size} does not match the tree rebuilt from the entries"
            ),
            Problem::Inconsistent {
                old_size,
                new_size,
                detail,
            } => write!(
                f,
                "signed tree head {old_size} is not consistent with signed tree head \
                 {new_size}: {detail}"
            ),
            Problem::Truncated { seen, now } => write!(
                f,
                "the ledger was truncated: a signed tree head of size {seen} was seen, \
                 the ledger now holds {now} entries"
            ),
            Problem::Forked { tree_size, detail } => write!(
                f,
                "the trusted tree head of size {tree_size} is not part of this ledger: {detail}"
            ),
        }
    }
}

/// Everything verification found wrong with a ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TamperReport {
    /// The problems, heads first, then entries in index order.
    pub problems: Vec<Problem>,
    /// How many entry rows the database holds.
    pub rows: u64,
    /// The largest validly signed tree size.
    pub signed_size: u64,
}

/// A ledger whose every entry and head checked out, as of the snapshot verified.
#[derive(Debug, Clone)]
pub struct VerifiedLedger {
    key: VerifyingKey,
    entries: Vec<Entry>,
    tree: MerkleTree,
    heads: Vec<SignedTreeHead>,
}

impl VerifiedLedger {
    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The entries, in index order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every signed head, by size (`heads()[i].tree_size == i + 1`).
    pub fn heads(&self) -> &[SignedTreeHead] {
        &self.heads
    }

    /// The newest signed head; `None` for an empty ledger.
    pub fn newest_head(&self) -> Option<&SignedTreeHead> {
        self.heads.last()
    }

    /// An inclusion proof for entry `index` against the newest signed head.
    pub fn inclusion_proof(&self, index: u64) -> Result<InclusionProof, LedgerError> {
        let size = self.size();
        let out_of_range = || LedgerError::OutOfRange {
            what: format!("entry {index} does not exist"),
            size,
        };
        let head = self.newest_head().ok_or_else(out_of_range)?;
        let audit_path = self
            .tree
            .inclusion_proof(index, size)
            .ok_or_else(out_of_range)?;
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
            .ok_or_else(out_of_range)?;
        Ok(InclusionProof {
            leaf_index: index,
            entry: entry.clone(),
            leaf_hash: entry.leaf_hash(),
            audit_path,
            tree_head: head.clone(),
        })
    }

    /// A consistency proof from the signed head of `old_size` to the newest signed head.
    pub fn consistency_proof(&self, old_size: u64) -> Result<ConsistencyProof, LedgerError> {
        let size = self.size();
        let out_of_range = || LedgerError::OutOfRange {
            what: format!("no signed tree head of size {old_size}"),
            size,
        };
        let new_head = self.newest_head().ok_or_else(out_of_range)?;
        let old_head = old_size
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.heads.get(i))
            .ok_or_else(out_of_range)?;
        let proof = self
            .tree
            .consistency_proof(old_size, size)
            .ok_or_else(out_of_range)?;
        Ok(ConsistencyProof {
            old_head: old_head.clone(),
            new_head: new_head.clone(),
            proof,
        })
    }

    /// Check a head kept outside the database (by a user, a witness) against this ledger: it
    /// must be signed by the ledger's key and be one of the ledger's own heads. Catches the one
    /// thing a single database cannot: newest entries cut off together with their heads.
    pub fn check_trusted_head(&self, trusted: &SignedTreeHead) -> Result<(), Problem> {
        let size = trusted.tree_size;
        if !trusted.verify_signature(&self.key) {
            return Err(Problem::Forked {
                tree_size: size,
                detail: "its signature does not verify with the ledger's key".into(),
            });
        }
        if size > self.size() {
            return Err(Problem::Truncated {
                seen: size,
                now: self.size(),
            });
        }
        match self.tree.root_at(size) {
            Some(root) if size > 0 && root == trusted.root_hash => Ok(()),
            _ => Err(Problem::Forked {
                tree_size: size,
                detail: "its root differs from the ledger's root at that size".into(),
            }),
        }
    }
}

/// The whole check over one snapshot of the tables; see the module documentation.
pub(crate) fn check(
    key: &VerifyingKey,
    key_matches: bool,
    rows: Vec<StoredEntry>,
    stored_heads: Vec<(i64, Result<SignedTreeHead, String>)>,
) -> Result<VerifiedLedger, TamperReport> {
    let row_count = rows.len() as u64;
    if !key_matches {
        // Every signature would fail: say the one thing that explains them all.
        return Err(TamperReport {
            problems: vec![Problem::WrongKey],
            rows: row_count,
            signed_size: 0,
        });
    }
    let mut problems = Vec::new();

    // 1. Heads.
    let mut signed: BTreeMap<u64, SignedTreeHead> = BTreeMap::new();
    for (tree_size, head) in stored_heads {
        match head {
            Err(detail) => problems.push(Problem::BadHead { tree_size, detail }),
            Ok(h) if u64::try_from(tree_size).ok() != Some(h.tree_size) || h.tree_size == 0 => {
                problems.push(Problem::BadHead {
                    tree_size,
                    detail: "its size is not a positive tree size".into(),
                });
            }
            Ok(h) if !h.verify_signature(key) => problems.push(Problem::BadHead {
                tree_size,
                detail: "its signature does not verify".into(),
            }),
            Ok(h) => {
                signed.insert(h.tree_size, h);
            }
        }
    }
    let signed_size = signed.keys().next_back().copied().unwrap_or(0);
    let mut missing = 0u64;
    for size in 1..=signed_size {
        if !signed.contains_key(&size) {
            missing += 1;
            // A head that is stored but bad was already named.
            if !problems.iter().any(
                |p| matches!(p, Problem::BadHead { tree_size, .. } if *tree_size as u64 == size),
            ) {
                problems.push(Problem::MissingHead { tree_size: size });
            }
        }
    }

    // 2. Entries against the leaves their heads signed.
    let signed_at: HashMap<Hash, u64> = signed
        .values()
        .map(|h| (h.last_leaf, h.tree_size - 1))
        .collect();
    let mut by_index: BTreeMap<i64, Result<Entry, String>> = BTreeMap::new();
    for row in rows {
        by_index.insert(row.index, row.entry);
    }
    let mut leaves = Vec::with_capacity(by_index.len());
    let mut entries = Vec::with_capacity(by_index.len());
    let mut entry_problems = false;
    for index in 0..signed_size {
        let row = i64::try_from(index).ok().and_then(|i| by_index.remove(&i));
        let expected = signed.get(&(index + 1)).map(|h| h.last_leaf);
        match row {
            None => {
                entry_problems = true;
                problems.push(Problem::Removed { index });
            }
            Some(Err(why)) => {
                entry_problems = true;
                problems.push(Problem::Rewritten {
                    index,
                    malformed: Some(why),
                });
            }
            Some(Ok(entry)) => {
                let leaf = entry.leaf_hash();
                if expected.is_some_and(|e| e != leaf) {
                    entry_problems = true;
                    match signed_at.get(&leaf) {
                        Some(&other) if other != index => problems.push(Problem::Reordered {
                            index,
                            signed_as: other,
                        }),
                        _ => problems.push(Problem::Rewritten {
                            index,
                            malformed: None,
                        }),
                    }
                }
                leaves.push(leaf);
                entries.push(entry);
            }
        }
    }
    for index in by_index.into_keys() {
        entry_problems = true;
        problems.push(Problem::Inserted { index });
    }

    // 3. Roots and consistency, once every leaf is where its head says.
    let mut tree = MerkleTree::new();
    if !entry_problems {
        for leaf in leaves {
            tree.push(leaf);
        }
        // Every root first: a later root that differs makes every proof to it fail, so the
        // first divergent head is the one to name.
        let diverged = signed
            .values()
            .find(|head| tree.root_at(head.tree_size) != Some(head.root_hash));
        if let Some(head) = diverged {
            problems.push(Problem::RootMismatch {
                tree_size: head.tree_size,
            });
        } else if let Some(newest) = signed.values().next_back() {
            // Then every head against the newest through an RFC 9162 consistency proof.
            for head in signed.values() {
                let proof = tree
                    .consistency_proof(head.tree_size, newest.tree_size)
                    .unwrap_or_default();
                if let Err(e) = verify_consistency(
                    head.tree_size,
                    newest.tree_size,
                    &head.root_hash,
                    &newest.root_hash,
                    &proof,
                ) {
                    problems.push(Problem::Inconsistent {
                        old_size: head.tree_size,
                        new_size: newest.tree_size,
                        detail: e.to_string(),
                    });
                }
            }
        }
    }

    if problems.is_empty() && missing == 0 {
        Ok(VerifiedLedger {
            key: *key,
            entries,
            tree,
            heads: signed.into_values().collect(),
        })
    } else {
        Err(TamperReport {
            problems,
            rows: row_count,
            signed_size,
        })
    }
}
