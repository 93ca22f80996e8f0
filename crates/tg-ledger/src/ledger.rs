//! The ledger on disk: a SQLite database (WAL) of entries and signed tree heads.
//!
//! Lifecycle as types: a [`Ledger<Writer>`] holds the signing key and can append; a
//! [`Ledger<Reader>`] holds only the public key. Either can be consumed by
//! [`Ledger::verify`], which yields a [`VerifiedLedger`] (the only thing proofs are made
//! from, so a proof is never cut from a tree that failed verification) or a
//! [`TamperReport`](crate::TamperReport).
//!
//! Schema (`PRAGMA user_version = 1`):
//!
//! - `entries(idx INTEGER PRIMARY KEY, time_ms, user, uid, host, verb, path, digests, verdict)`:
//!   one row per entry, `idx` the 0-based leaf index, `digests` a JSON array of
//!   `{"name", "hex"}`. Verification recomputes every leaf from these fields.
//! - `tree_heads(tree_size INTEGER PRIMARY KEY, root_hash, timestamp_ms, last_leaf, signature)`:
//!   one signed head per append.
//! - `state(id = 0, public_key, frontier)`: the signer's public key (SPKI DER) and the
//!   compact range of the current tree (the roots of its perfect subtrees, largest first), so an
//!   append costs `O(log n)` hashes instead of re-reading every row. Writers trust neither blindly:
//!   each append first checks the frontier against the newest signed head.
//!
//! Concurrency: every append is one `BEGIN IMMEDIATE` transaction (index, leaf, new head and
//! frontier together) under a 30 s busy timeout, so concurrent writers in several processes
//! serialise and none is lost.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p256::ecdsa::{SigningKey, VerifyingKey};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, TransactionBehavior, params};

use crate::entry::{Digest, Entry};
use crate::head::{self, KeyError, SignedTreeHead};
use crate::merkle::{Hash, empty_root, node_hash};
use crate::verify::{self, TamperReport, VerifiedLedger};

const SCHEMA_VERSION: i64 = 1;
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    user TEXT NOT NULL,
    uid INTEGER,
    host TEXT NOT NULL,
    verb TEXT NOT NULL,
    path TEXT NOT NULL,
    digests TEXT NOT NULL,
    verdict TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tree_heads (
    tree_size INTEGER PRIMARY KEY,
    root_hash BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    last_leaf BLOB NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    public_key BLOB NOT NULL,
    frontier BLOB NOT NULL
);
";

/// Why a ledger operation failed (as opposed to finding tampering, which is a
/// [`TamperReport`](crate::TamperReport)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// SQLite failed on the ledger database.
    #[error("ledger {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The signing or verifying key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The database file does not exist (only writers create it).
    #[error("ledger {path} does not exist")]
    NotFound {
        /// The database.
        path: PathBuf,
    },
    /// The database has no ledger tables.
    #[error("{path} is not a trainguard ledger")]
    NotALedger {
        /// The database.
        path: PathBuf,
    },
    /// The database was written by a newer trainguard.
    #[error("ledger {path} has schema version {version}; this trainguard reads version 1")]
    UnsupportedVersion {
        /// The database.
        path: PathBuf,
        /// The version found.
        version: i64,
    },
    /// The key given is not the key whose public half the ledger records.
    #[error("key {key} is not the key that signs ledger {path}")]
    KeyMismatch {
        /// The database.
        path: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The ledger is already signed with a key, and its key file is gone.
    #[error("signing key {key} does not exist, but ledger {path} is already signed with a key")]
    KeyMissing {
        /// The database.
        path: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The stored state does not match the newest signed head, so appending would sign over it.
    #[error("refusing to append to ledger {path}: {detail}")]
    Inconsistent {
        /// The database.
        path: PathBuf,
        /// What does not match.
        detail: String,
    },
    /// An entry that cannot be stored (a timestamp beyond 2^63 ms, a field over 4 GiB).
    #[error("entry cannot be stored: {detail}")]
    InvalidEntry {
        /// What is wrong with it.
        detail: String,
    },
    /// A proof was asked for an entry or size the verified ledger does not have.
    #[error("{what}: the ledger has {size} entries")]
    OutOfRange {
        /// What was asked for.
        what: String,
        /// The number of entries.
        size: u64,
    },
}

/// What a successful append returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The 0-based leaf index of the new entry.
    pub index: u64,
    /// Its RFC 9162 leaf hash.
    pub leaf_hash: Hash,
    /// The head signed right after it (`tree_size == index + 1`).
    pub tree_head: SignedTreeHead,
}

/// One row of the `entries` table as stored: not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The row's `idx` (the leaf index it claims).
    pub index: i64,
    /// The entry, or why the row's fields do not form one.
    pub entry: Result<Entry, String>,
}

mod sealed {
    pub trait Sealed {}
}

/// What a ledger handle can do: every mode can verify, only [`Writer`] can append.
pub trait Mode: sealed::Sealed {
    /// The key heads are verified against.
    fn verifying_key(&self) -> &VerifyingKey;
}

/// A ledger opened with its private signing key.
#[derive(Debug)]
pub struct Writer {
    key: SigningKey,
}

/// A ledger opened with a public key only.
#[derive(Debug)]
pub struct Reader {
    key: VerifyingKey,
}

impl sealed::Sealed for Writer {}
impl sealed::Sealed for Reader {}

impl Mode for Writer {
    fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }
}

impl Mode for Reader {
    fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

/// An open ledger database; see the module documentation.
#[derive(Debug)]
pub struct Ledger<M: Mode> {
    conn: Connection,
    path: PathBuf,
    mode: M,
}

impl Ledger<Writer> {
    /// Open the ledger at `path` for appending, creating the database (and the key at `key`,
    /// mode 0600) on first use.
    ///
    /// Fails with [`LedgerError::KeyMissing`] rather than minting a new key when the ledger is
    /// already signed and `key` is gone, and with [`LedgerError::KeyMismatch`] when `key` is
    /// another key.
    pub fn open(path: &Path, key: &Path) -> Result<Self, LedgerError> {
        let mut conn = connect(path, true)?;
        let sql = sql_err(path);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sql)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(&sql)?;
        if version > SCHEMA_VERSION {
            return Err(LedgerError::UnsupportedVersion {
                path: path.to_owned(),
                version,
            });
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(SCHEMA).map_err(&sql)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(&sql)?;
        }
        let recorded: Option<Vec<u8>> = tx
            .query_row("SELECT public_key FROM state WHERE id = 0", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&sql)?;
        let signing = match &recorded {
            Some(_) => head::load_signing_key(key).map_err(|e| match e {
                KeyError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    LedgerError::KeyMissing {
                        path: path.to_owned(),
                        key: key.to_owned(),
                    }
                }
                other => other.into(),
            })?,
            None => head::load_or_create_signing_key(key)?,
        };
        let der = head::public_key_der(signing.verifying_key());
        match recorded {
            Some(recorded) if recorded != der => {
                return Err(LedgerError::KeyMismatch {
                    path: path.to_owned(),
                    key: key.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                tx.execute(
                    "INSERT INTO state (id, public_key, frontier) VALUES (0, ?1, x'')",
                    params![der],
                )
                .map_err(&sql)?;
            }
        }
        tx.commit().map_err(&sql)?;
        Ok(Ledger {
            conn,
            path: path.to_owned(),
            mode: Writer { key: signing },
        })
    }

    /// Append one entry and sign the new tree head, in one transaction.
    pub fn append(&mut self, entry: &Entry) -> Result<Receipt, LedgerError> {
        let mut receipts = self.append_all(std::slice::from_ref(entry))?;
        receipts.pop().ok_or_else(|| LedgerError::Inconsistent {
            path: self.path.clone(),
            detail: "the append produced no receipt".into(),
        })
    }

    /// Append several entries in one transaction (one disk sync), still signing one head per
    /// entry so verification can name each of them. All or nothing.
    pub fn append_all(&mut self, entries: &[Entry]) -> Result<Vec<Receipt>, LedgerError> {
        let rows = entries
            .iter()
            .map(|e| Ok((e, i64_time(e)?, digests_json(e)?, e.leaf_hash())))
            .collect::<Result<Vec<_>, LedgerError>>()?;

        let path = self.path.clone();
        let sql = sql_err(&path);
        let inconsistent = |detail: String| LedgerError::Inconsistent {
            path: path.clone(),
            detail,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sql)?;
        let frontier_blob: Vec<u8> = tx
            .query_row("SELECT frontier FROM state WHERE id = 0", [], |r| r.get(0))
            .map_err(&sql)?;
        let newest = newest_head(&tx).map_err(&sql)?;
        let size = match &newest {
            None => 0,
            Some(Ok(h)) => h.tree_size,
            Some(Err(detail)) => return Err(inconsistent(detail.clone())),
        };
        let next_idx: i64 = tx
            .query_row("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries", [], |r| {
                r.get(0)
            })
            .map_err(&sql)?;
        if u64::try_from(next_idx).ok() != Some(size) {
            return Err(inconsistent(format!(
                "the newest signed tree head covers {size} entries, but the entries table ends \
                 at row {}",
                next_idx - 1
            )));
        }
        let mut frontier = parse_frontier(&frontier_blob, size).ok_or_else(|| {
            inconsistent(format!(
                "the stored frontier does not describe a tree of {size}"
            ))
        })?;
        if let Some(Ok(h)) = &newest {
            if !h.verify_signature(self.mode.key.verifying_key()) {
                return Err(inconsistent(format!(
                    "the signature on tree head {size} does not verify"
                )));
            }
            if frontier_root(&frontier) != h.root_hash {
                return Err(inconsistent(format!(
                    "the stored frontier does not match signed tree head {size}"
                )));
            }
        }
        let mut receipts = Vec::with_capacity(rows.len());
        for (index, (entry, time_ms, digests, leaf)) in (size..).zip(rows) {
            frontier_push(&mut frontier, index, leaf);
            let head = SignedTreeHead::sign(
                &self.mode.key,
                index + 1,
                frontier_root(&frontier),
                now_ms(),
                leaf,
            );
            let idx =
                i64::try_from(index).map_err(|_| inconsistent("the ledger is full".into()))?;
            tx.execute(
                "INSERT INTO entries (idx, time_ms, user, uid, host, verb, path, digests, verdict)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    idx,
                    time_ms,
                    entry.user,
                    entry.uid,
                    entry.host,
                    entry.verb,
                    entry.path,
                    digests,
                    entry.verdict
                ],
            )
            .map_err(&sql)?;
            tx.execute(
                "INSERT INTO tree_heads (tree_size, root_hash, timestamp_ms, last_leaf, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    idx + 1,
                    head.root_hash.as_slice(),
                    i64::try_from(head.timestamp_ms).unwrap_or(i64::MAX),
                    head.last_leaf.as_slice(),
                    head.signature
                ],
            )
            .map_err(&sql)?;
            receipts.push(Receipt {
                index,
                leaf_hash: leaf,
                tree_head: head,
            });
        }
        tx.execute(
            "UPDATE state SET frontier = ?1 WHERE id = 0",
            params![frontier.concat()],
        )
        .map_err(&sql)?;
        tx.commit().map_err(&sql)?;
        Ok(receipts)
    }

    /// The public half of the signing key, for verifiers.
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.mode.key.verifying_key()
    }
}

impl Ledger<Reader> {
    /// Open an existing ledger to read and verify it with `key`. Never creates anything.
    pub fn open(path: &Path, key: VerifyingKey) -> Result<Self, LedgerError> {
        Ok(Ledger {
            conn: open_existing(path)?,
            path: path.to_owned(),
            mode: Reader { key },
        })
    }
}

/// The stored entries of the ledger at `path`, the last `limit` of them when given, without any
/// key and without verifying anything: what the table says, for display.
pub fn read_entries(path: &Path, limit: Option<u64>) -> Result<Vec<StoredEntry>, LedgerError> {
    entries(&open_existing(path)?, path, limit)
}

/// Open a database that must already be a ledger.
fn open_existing(path: &Path) -> Result<Connection, LedgerError> {
    match fs_err::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LedgerError::NotFound {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(LedgerError::Key(KeyError::Io(e))),
    }
    let conn = connect(path, false)?;
    let sql = sql_err(path);
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
             AND name IN ('entries', 'tree_heads', 'state')",
            [],
            |r| r.get(0),
        )
        .map_err(&sql)?;
    if tables != 3 {
        return Err(LedgerError::NotALedger {
            path: path.to_owned(),
        });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(&sql)?;
    if version > SCHEMA_VERSION {
        return Err(LedgerError::UnsupportedVersion {
            path: path.to_owned(),
            version,
        });
    }
    Ok(conn)
}

fn entries(
    conn: &Connection,
    path: &Path,
    limit: Option<u64>,
) -> Result<Vec<StoredEntry>, LedgerError> {
    let sql = sql_err(path);
    let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let mut stmt = conn
        .prepare(
            "SELECT * FROM (SELECT idx, time_ms, user, uid, host, verb, path, digests, verdict
             FROM entries ORDER BY idx DESC LIMIT ?1) ORDER BY idx",
        )
        .map_err(&sql)?;
    let rows = stmt
        .query_map([limit], stored_entry)
        .map_err(&sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&sql)?;
    Ok(rows)
}

impl<M: Mode> Ledger<M> {
    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored entries in index order, the last `limit` of them when given. Not verified:
    /// this is what the table says.
    pub fn entries(&self, limit: Option<u64>) -> Result<Vec<StoredEntry>, LedgerError> {
        entries(&self.conn, &self.path, limit)
    }

    /// The newest signed tree head as stored (its signature not checked), if any.
    pub fn newest_head(&self) -> Result<Option<Result<SignedTreeHead, String>>, LedgerError> {
        newest_head(&self.conn).map_err(sql_err(&self.path))
    }

    /// Recompute every leaf from its row, rebuild the tree and check every signed head.
    ///
    /// Checked, in order: every stored head is well-formed and signed by this key, and one
    /// exists for every size up to the newest; every entry's recomputed leaf equals the leaf its
    /// head signed (else it is named removed, rewritten, reordered or inserted, see
    /// [`Problem`](crate::Problem)); then every signed root equals the rebuilt tree's root at
    /// that size, and every head is consistent with the newest through an RFC 9162 consistency
    /// proof. `Ok(Err(report))` is tampering; `Err` is a failure to read the database.
    pub fn verify(mut self) -> Result<Result<VerifiedLedger, TamperReport>, LedgerError> {
        let sql = sql_err(&self.path);
        // One read transaction: a consistent snapshot while writers keep appending.
        let tx = self.conn.transaction().map_err(&sql)?;
        let recorded_key: Option<Vec<u8>> = tx
            .query_row("SELECT public_key FROM state WHERE id = 0", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&sql)?;
        let entries = {
            let mut stmt = tx
                .prepare(
                    "SELECT idx, time_ms, user, uid, host, verb, path, digests, verdict
                     FROM entries ORDER BY idx",
                )
                .map_err(&sql)?;
            stmt.query_map([], stored_entry)
                .map_err(&sql)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&sql)?
        };
        let heads = {
            let mut stmt = tx
                .prepare(
                    "SELECT tree_size, root_hash, timestamp_ms, last_leaf, signature
                     FROM tree_heads ORDER BY tree_size",
                )
                .map_err(&sql)?;
            stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, head_from_row(r)?)))
                .map_err(&sql)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&sql)?
        };
        drop(tx);
        let key = *self.mode.verifying_key();
        let key_matches = recorded_key.is_none_or(|k| k == head::public_key_der(&key));
        Ok(verify::check(&key, key_matches, entries, heads))
    }
}

/// The entry's timestamp as SQLite stores it, checking every length the leaf encoding allows.
fn i64_time(entry: &Entry) -> Result<i64, LedgerError> {
    let too_long = [&entry.user, &entry.host, &entry.verb, &entry.path]
        .into_iter()
        .chain([&entry.verdict])
        .chain(entry.digests.iter().flat_map(|d| [&d.name, &d.hex]))
        .any(|s| u32::try_from(s.len()).is_err());
    if too_long || u32::try_from(entry.digests.len()).is_err() {
        return Err(LedgerError::InvalidEntry {
            detail: "a field is longer than 4 GiB".into(),
        });
    }
    i64::try_from(entry.time_ms).map_err(|_| LedgerError::InvalidEntry {
        detail: format!("timestamp {} ms is out of range", entry.time_ms),
    })
}

/// The `digests` column: a JSON array of `{"name", "hex"}`.
fn digests_json(entry: &Entry) -> Result<String, LedgerError> {
    serde_json::to_string(&entry.digests).map_err(|e| LedgerError::InvalidEntry {
        detail: e.to_string(),
    })
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
    move |source| LedgerError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn connect(path: &Path, create: bool) -> Result<Connection, LedgerError> {
    let sql = sql_err(path);
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(&sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&sql)?;
    // Switching to WAL takes an exclusive lock once, on a fresh database; a second process
    // racing to do the same can get SQLITE_BUSY without the busy handler, so retry briefly.
    let mut tries = 0;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Ok(_) => break,
            Err(e) if tries < 200 && is_busy(&e) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(sql(e)),
        }
    }
    // An audit log should survive a power cut with its last commits: fsync every commit.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&sql)?;
    Ok(conn)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn newest_head(conn: &Connection) -> rusqlite::Result<Option<Result<SignedTreeHead, String>>> {
    conn.query_row(
        "SELECT tree_size, root_hash, timestamp_ms, last_leaf, signature
         FROM tree_heads ORDER BY tree_size DESC LIMIT 1",
        [],
        head_from_row,
    )
    .optional()
}

/// A head from its row, or why the row is not one. Column types are checked here, not trusted:
/// SQLite lets anyone store text in an INTEGER column.
fn head_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SignedTreeHead, String>> {
    let values: [Value; 5] = [r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?];
    Ok(head_from_values(values))
}

fn head_from_values(v: [Value; 5]) -> Result<SignedTreeHead, String> {
    let [size, root, ts, last, sig] = v;
    Ok(SignedTreeHead {
        tree_size: as_u64(&size, "tree_size")?,
        root_hash: as_hash(root, "root_hash")?,
        timestamp_ms: as_u64(&ts, "timestamp_ms")?,
        last_leaf: as_hash(last, "last_leaf")?,
        signature: match sig {
            Value::Blob(b) => b,
            _ => return Err("signature is not a blob".into()),
        },
    })
}

fn stored_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntry> {
    let index: i64 = r.get(0)?;
    let values: [Value; 8] = [
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ];
    Ok(StoredEntry {
        index,
        entry: entry_from_values(values),
    })
}

fn entry_from_values(v: [Value; 8]) -> Result<Entry, String> {
    let [time_ms, user, uid, host, verb, path, digests, verdict] = v;
    let uid = match uid {
        Value::Null => None,
        Value::Integer(i) => {
            Some(u32::try_from(i).map_err(|_| format!("uid {i} is not a 32-bit user id"))?)
        }
        _ => return Err("uid is not an integer".into()),
    };
    let digests: Vec<Digest> = serde_json::from_str(&as_text(digests, "digests")?)
        .map_err(|e| format!("digests are not a JSON list of {{name, hex}}: {e}"))?;
    Ok(Entry {
        time_ms: as_u64(&time_ms, "time_ms")?,
        user: as_text(user, "user")?,
        uid,
        host: as_text(host, "host")?,
        verb: as_text(verb, "verb")?,
        path: as_text(path, "path")?,
        digests,
        verdict: as_text(verdict, "verdict")?,
    })
}

fn as_u64(v: &Value, field: &str) -> Result<u64, String> {
    match v {
        Value::Integer(i) => u64::try_from(*i).map_err(|_| format!("{field} {i} is negative")),
        _ => Err(format!("{field} is not an integer")),
    }
}

fn as_text(v: Value, field: &str) -> Result<String, String> {
    match v {
        Value::Text(s) => Ok(s),
        _ => Err(format!("{field} is not text")),
    }
}

fn as_hash(v: Value, field: &str) -> Result<Hash, String> {
    match v {
        Value::Blob(b) => b.try_into().map_err(|_| format!("{field} is not 32 bytes")),
        _ => Err(format!("{field} is not a blob")),
    }
}

/// The frontier of a tree of `size` leaves: one hash per set bit of `size`, largest subtree
/// first; `None` when the blob has the wrong length.
fn parse_frontier(blob: &[u8], size: u64) -> Option<Vec<Hash>> {
    if blob.len() != size.count_ones() as usize * 32 {
        return None;
    }
    Some(
        blob.chunks_exact(32)
            .map(|c| {
                let mut h = [0; 32];
                h.copy_from_slice(c);
                h
            })
            .collect(),
    )
}

/// Add a leaf to the frontier of a tree of `size` leaves: merge equal-sized subtrees from the
/// right, as binary addition carries.
fn frontier_push(frontier: &mut Vec<Hash>, size: u64, leaf: Hash) {
    let mut h = leaf;
    let mut n = size;
    while n & 1 == 1 {
        // One hash per set bit (checked by `parse_frontier`), so the pop always succeeds.
        if let Some(left) = frontier.pop() {
            h = node_hash(&left, &h);
        }
        n >>= 1;
    }
    frontier.push(h);
}

/// The MTH from a frontier: the RFC's split at the largest power of two is exactly a fold of
/// the perfect subtrees from the right.
fn frontier_root(frontier: &[Hash]) -> Hash {
    let mut it = frontier.iter().rev();
    let Some(last) = it.next() else {
        return empty_root();
    };
    it.fold(*last, |acc, left| node_hash(left, &acc))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MerkleTree, leaf_hash};

    #[test]
    fn frontier_root_equals_tree_root_at_every_size() {
        let mut frontier = Vec::new();
        let mut tree = MerkleTree::new();
        assert_eq!(frontier_root(&frontier), tree.root());
        for i in 0u64..100 {
            let leaf = leaf_hash(&i.to_le_bytes());
            frontier_push(&mut frontier, i, leaf);
            tree.push(leaf);
            assert_eq!(frontier.len(), (i + 1).count_ones() as usize);
            assert_eq!(frontier_root(&frontier), tree.root(), "size {}", i + 1);
            assert!(parse_frontier(&frontier.concat(), i + 1).is_some());
        }
        assert!(parse_frontier(&[0; 32], 3).is_none());
    }
}
