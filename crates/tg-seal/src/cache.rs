//! The digest cache behind `--cache`: skip re-reading files that provably did not change.
//!
//! One JSON file (by default `$XDG_CACHE_HOME/trainguard/seal-digests.json`, else
//! `~/.cache/trainguard/seal-digests.json`, created mode 0600, replaced atomically) maps each
//! file's absolute path to the digest it had and the file's fingerprint when it was hashed:
//! size, mtime and ctime in nanoseconds, inode and device. A digest is reused only when all of
//! them are unchanged.
//!
//! Why this cannot let a changed file pass: any write changes mtime and ctime; `touch -d` can
//! put mtime back but not ctime (the kernel sets ctime to the current time on every change, and
//! no system call sets it); replacing the file changes the inode. The remaining hole is the one
//! git calls "racily clean": a file written within the timestamp granularity of the moment we
//! hashed it could change again without its timestamps moving. So, like git, an entry is only
//! trusted when the file's mtime and ctime are at least [`RACY_MARGIN_NS`] older than the moment
//! hashing began; otherwise the file is read again (and the next run can trust it). A digest is
//! only recorded when the file's fingerprint is the same before and after reading it.
//!
//! The cache is exactly as trustworthy as the file that holds it: whoever can write it can make
//! a changed file pass. Keep it in a directory only the verifying user can write (the default),
//! and do not use `--cache` where the attacker is that user.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Digest;

/// A cached digest is trusted only if the file's mtime and ctime are this much older than the
/// start of the hashing that produced it (1 s, far above any file system's timestamp step).
pub const RACY_MARGIN_NS: i64 = 1_000_000_000;

/// Format version of the cache file; another version is ignored (treated as empty).
const VERSION: u32 = 1;

/// A cache file bigger than this is ignored rather than read.
const MAX_CACHE_FILE: u64 = 512 << 20;

/// The default cache file: `$XDG_CACHE_HOME/trainguard/seal-digests.json`, else
/// `$HOME/.cache/trainguard/seal-digests.json`; `None` when neither variable is set.
pub fn default_cache_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("trainguard").join("seal-digests.json"))
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Device and inode number of a file (`None` where the platform has none).
#[cfg(unix)]
pub(crate) fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

/// Device and inode number of a file (`None` where the platform has none).
#[cfg(not(unix))]
pub(crate) fn file_id(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// What identifies one version of a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    pub(crate) size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
}

impl Fingerprint {
    #[cfg(unix)]
    pub(crate) fn of(meta: &std::fs::Metadata) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Some(Fingerprint {
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        })
    }

    /// Without ctime and inode numbers the cache could be fooled, so it is never used.
    #[cfg(not(unix))]
    pub(crate) fn of(_meta: &std::fs::Metadata) -> Option<Self> {
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    fingerprint: Fingerprint,
    hashed_at_ns: i64,
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: HashMap<String, Entry>,
}

/// The loaded cache: read-only old entries, plus the entries this run confirmed or added.
#[derive(Debug)]
pub(crate) struct DigestCache {
    path: PathBuf,
    old: HashMap<String, Entry>,
    seen: Mutex<HashMap<String, Entry>>,
}

fn key(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl DigestCache {
    /// Loads `path`; a missing, oversized, corrupt or other-version file is an empty cache.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let old = match fs_err::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(Error::io(path, e)),
            Ok(m) if m.len() > MAX_CACHE_FILE => HashMap::new(),
            Ok(_) => {
                let bytes = fs_err::read(path).map_err(|e| Error::io(path, e))?;
                match serde_json::from_slice::<CacheFile>(&bytes) {
                    Ok(f) if f.version == VERSION => f.entries,
                    _ => HashMap::new(),
                }
            }
        };
        Ok(DigestCache {
            path: path.to_path_buf(),
            old,
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// The cached digest of `path` if its fingerprint is unchanged and was not racy.
    pub(crate) fn lookup(&self, path: &Path, fp: &Fingerprint) -> Option<Digest> {
        let k = key(path);
        let e = self.old.get(&k)?;
        let settled = e.hashed_at_ns.saturating_sub(RACY_MARGIN_NS);
        if e.fingerprint != *fp || fp.mtime_ns >= settled || fp.ctime_ns >= settled {
            return None;
        }
        let d = Digest::from_hex(&e.sha256)?;
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, e.clone());
        Some(d)
    }

    /// Remembers that `path`, with fingerprint `fp`, hashed to `digest` in a read that began at
    /// `hashed_at_ns`.
    pub(crate) fn record(&self, path: &Path, fp: Fingerprint, hashed_at_ns: i64, digest: Digest) {
        let e = Entry {
            fingerprint: fp,
            hashed_at_ns,
            sha256: digest.to_hex(),
        };
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key(path), e);
    }

    /// Writes the cache back: entries under `root` are replaced by what this run saw (files
    /// that disappeared are dropped), entries elsewhere are kept.
    pub(crate) fn save(self, root: &Path) -> Result<()> {
        let prefix = format!("{}/", key(root).trim_end_matches('/'));
        let mut entries: HashMap<String, Entry> = self
            .old
            .into_iter()
            .filter(|(k, _)| !k.starts_with(&prefix))
            .collect();
        entries.extend(self.seen.into_inner().unwrap_or_else(|p| p.into_inner()));
        let file = CacheFile {
            version: VERSION,
            entries,
        };
        let json = serde_json::to_vec(&file).expect("cache entries always serialize");
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs_err::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| Error::io(&dir, e))?;
        std::io::Write::write_all(&mut tmp, &json).map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(&self.path)
            .map_err(|e| Error::io(&self.path, e.error))?;
        Ok(())
    }
}
