//! Enumerating a model directory the way `model_signing` does, and hashing it in parallel.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::atomic::{self, AtomicBool, AtomicUsize};

use crate::cache::{DigestCache, Fingerprint};
use crate::error::{Error, Result};
use crate::hash::{BUFFER_SIZE, Digest, ReadBuffer, hash_reader_with};

/// The signature file name `model_signing` uses; `trainguard seal` writes `DIR/model.sig`.
pub const DEFAULT_SIGNATURE_NAME: &str = "model.sig";

/// Paths `model_signing` leaves out by default (`--ignore-git-paths`), at the model root only.
pub const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// How to enumerate and hash a model directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Paths relative to the model root to leave out; a directory leaves out its whole subtree.
    /// No globs (as in model_signing). They are recorded in the signed statement, and a verifier
    /// leaves them out too.
    pub ignore_paths: Vec<String>,
    /// Leave out [`GIT_PATHS`] at the model root (default `true`, as model_signing).
    pub ignore_git_paths: bool,
    /// A digest cache file: files whose size, mtime, ctime, inode and device are unchanged since
    /// they were hashed reuse their digest (see [`crate::cache`]). `None` hashes everything.
    pub cache: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ignore_paths: Vec::new(),
            ignore_git_paths: true,
            cache: None,
        }
    }
}

impl Options {
    /// Leaves out `signature` if it lies inside `dir` (the signature cannot sign itself), and
    /// records it among the ignored paths, as model_signing does.
    pub fn ignore_signature(&mut self, dir: &Path, signature: &Path) -> Result<()> {
        if let Some(rel) = relative_inside(dir, signature)? {
            self.ignore_paths.push(rel);
        }
        Ok(())
    }
}

/// `path` relative to `dir` when it lies inside it (both made absolute, symlinks in `dir` and in
/// the parent of `path` resolved), as a `/`-separated string.
fn relative_inside(dir: &Path, path: &Path) -> Result<Option<String>> {
    let dir = fs_err::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let Some(name) = path.file_name() else {
        return Ok(None);
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(parent) = fs_err::canonicalize(&parent) else {
        return Ok(None);
    };
    let full = parent.join(name);
    let Ok(rel) = full.strip_prefix(&dir) else {
        return Ok(None);
    };
    Ok(rel
        .to_str()
        .map(|s| s.replace(std::path::MAIN_SEPARATOR, "/")))
}

/// One file of the manifest: its `/`-separated path relative to the model root and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// POSIX relative path, e.g. `weights/00001.safetensors`.
    pub name: String,
    /// SHA-256 of the whole file.
    pub digest: Digest,
}

/// What hashing a directory cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files in the manifest.
    pub files: usize,
    /// Total size of those files.
    pub bytes: u64,
    /// Files whose digest came from the cache instead of being read.
    pub cache_hits: usize,
}

/// Every file of a model directory with its digest, in `model_signing` order.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Informational model name (the directory's base name).
    pub model_name: String,
    /// Files, sorted component by component (`PurePosixPath` order).
    pub resources: Vec<Resource>,
    /// Ignored paths, normalized, sorted; recorded in the signed statement.
    pub ignore_paths: Vec<String>,
    /// What it cost to build.
    pub stats: HashStats,
}

impl Manifest {
    /// SHA-256 over the raw resource digests in order: the statement's subject digest.
    pub fn root_digest(&self) -> Digest {
        root_digest(&self.resources)
    }
}

pub(crate) fn root_digest(resources: &[Resource]) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for r in resources {
        h.update(r.digest.0);
    }
    Digest(h.finalize().into())
}

/// `PurePosixPath` order: component by component, each compared by code point.
pub(crate) fn name_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// An ignore path cleaned up: `./a//b/` → `a/b`. `None` for paths that could never be inside
/// the model (`..`, absolute) or that would ignore the whole model (empty, `.`).
pub(crate) fn normalize_ignore(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

fn is_ignored(name: &str, ignores: &[String]) -> bool {
    ignores.iter().any(|ig| {
        name == ig
            || (name.starts_with(ig.as_str()) && name.as_bytes().get(ig.len()) == Some(&b'/'))
    })
}

pub(crate) fn effective_ignores(opts: &Options) -> Vec<String> {
    let mut out: Vec<String> = opts
        .ignore_paths
        .iter()
        .filter_map(|p| normalize_ignore(p))
        .collect();
    if opts.ignore_git_paths {
        out.extend(GIT_PATHS.iter().map(|s| (*s).to_owned()));
    }
    out.sort();
    out.dedup();
    out
}

struct Found {
    name: String,
    /// Size when listed, to start the largest files first.
    size: u64,
    /// Device and inode when listed (lstat), checked again on the open handle.
    id: Option<(u64, u64)>,
}

/// Lists the regular files of `dir` that a manifest covers, sorted in `PurePosixPath` order.
fn enumerate(dir: &Path, ignores: &[String]) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    let mut walker = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .follow_root_links(true)
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            Error::io(path, e.into())
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let mut parts = Vec::new();
        for c in rel.components() {
            match c.as_os_str().to_str() {
                Some(s) => parts.push(s),
                None => {
                    return Err(Error::NonUtf8Name {
                        path: entry.path().to_path_buf(),
                    });
                }
            }
        }
        let name = parts.join("/");
        let ft = entry.file_type();
        if is_ignored(&name, ignores) {
            if ft.is_dir() {
                walker.skip_current_dir();
            }
            continue;
        }
        if ft.is_symlink() {
            return Err(Error::Symlink {
                path: entry.path().to_path_buf(),
            });
        } else if ft.is_dir() {
            continue;
        } else if ft.is_file() {
            let meta = entry
                .metadata()
                .map_err(|e| Error::io(entry.path(), e.into()))?;
            found.push(Found {
                name,
                size: meta.len(),
                id: crate::cache::file_id(&meta),
            });
        } else {
            return Err(Error::SpecialFile {
                path: entry.path().to_path_buf(),
            });
        }
    }
    found.sort_by(|a, b| name_order(&a.name, &b.name));
    Ok(found)
}

/// Hashes one file, going through the cache when there is one. Returns the digest, the size and
/// whether the cache answered.
fn hash_one(
    path: &Path,
    listed: Option<(u64, u64)>,
    cache: Option<&DigestCache>,
    buf: &mut [u8],
) -> Result<(Digest, u64, bool)> {
    let started = crate::cache::now_ns();
    let file = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
    // Metadata of the open handle: the very inode we are about to read.
    let before = file.metadata().map_err(|e| Error::io(path, e))?;
    if !before.is_file() {
        return Err(Error::SpecialFile {
            path: path.to_path_buf(),
        });
    }
    // A file swapped for a link or another file between listing and opening is not the file
    // the manifest names.
    if crate::cache::file_id(&before) != listed {
        return Err(Error::Replaced {
            path: path.to_path_buf(),
        });
    }
    let fp = Fingerprint::of(&before);
    if let (Some(cache), Some(fp)) = (cache, fp.as_ref())
        && let Some(d) = cache.lookup(path, fp)
    {
        return Ok((d, before.len(), true));
    }
    let (digest, n) = hash_reader_with(&file, buf).map_err(|e| Error::io(path, e))?;
    if let (Some(cache), Some(fp)) = (cache, fp) {
        let after = file.metadata().map_err(|e| Error::io(path, e))?;
        // Only remember a digest if the file did not change while we read it.
        if Fingerprint::of(&after).as_ref() == Some(&fp) && n == fp.size {
            cache.record(path, fp, started, digest);
        }
    }
    Ok((digest, n, false))
}

/// `work` applied to every item, results in item order; an error stops every thread from
/// starting another item and is returned.
///
/// Every thread of the current rayon pool takes the next unclaimed item (a shared counter), with
/// its own aligned [`BUFFER_SIZE`] buffer, until none is left: items *start* in slice order
/// (longest-processing-time-first when sorted by size), and no thread idles while an item is
/// unclaimed. (A `par_iter` splits the list into ranges and idle threads steal the far end
/// first, so its order is only roughly largest-first.)
fn in_order_on_every_thread<T: Sync, R: Send>(
    items: &[T],
    work: impl Fn(&mut [u8], &T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let parts: Vec<Result<Vec<(usize, R)>>> = rayon::broadcast(|_| {
        let mut buf = ReadBuffer::new(BUFFER_SIZE);
        let mut done = Vec::new();
        while !failed.load(atomic::Ordering::Relaxed) {
            let i = next.fetch_add(1, atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            match work(buf.as_mut(), item) {
                Ok(r) => done.push((i, r)),
                Err(e) => {
                    failed.store(true, atomic::Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(done)
    });
    let mut all = Vec::with_capacity(items.len());
    for part in parts {
        all.extend(part?);
    }
    // Only a failure stops a thread before the list is exhausted, and it was returned above.
    debug_assert_eq!(all.len(), items.len());
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// Builds the manifest of every file in `dir`, hashing files in parallel (every rayon thread,
/// largest files first, one sequential SHA-256 per file, each streamed through a fixed buffer).
///
/// Refuses symbolic links and special files, as `model_signing` does by default.
pub fn manifest(dir: &Path, opts: &Options) -> Result<Manifest> {
    let meta = fs_err::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let ignores = effective_ignores(opts);
    let files = enumerate(dir, &ignores)?;
    let cache = match &opts.cache {
        Some(p) => Some(DigestCache::load(p)?),
        None => None,
    };
    let canonical = fs_err::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    // Largest files first: one file's digest is a sequential chain, so the longest ones must
    // start earliest for the threads to finish together.
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].size));
    let hashed = in_order_on_every_thread(&order, |buf, &i| {
        let f = &files[i];
        hash_one(&canonical.join(&f.name), f.id, cache.as_ref(), buf)
    })?;
    let mut hashed: Vec<(usize, (Digest, u64, bool))> = order.into_iter().zip(hashed).collect();
    hashed.sort_unstable_by_key(|(i, _)| *i);
    if let Some(cache) = cache {
        cache.save(&canonical)?;
    }
    let mut stats = HashStats {
        files: files.len(),
        ..HashStats::default()
    };
    let mut resources = Vec::with_capacity(files.len());
    for (f, (_, (digest, size, hit))) in files.into_iter().zip(hashed) {
        stats.bytes += size;
        stats.cache_hits += usize::from(hit);
        resources.push(Resource {
            name: f.name,
            digest,
        });
    }
    let model_name = dir
        .file_name()
        .or_else(|| canonical.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Manifest {
        model_name,
        resources,
        ignore_paths: ignores,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_order_matches_pure_posix_path() {
        let mut names = vec!["a.txt", "a-b", "a/b", "B", "a/b/c", "a/a"];
        names.sort_by(|a, b| name_order(a, b));
        assert_eq!(names, ["B", "a/a", "a/b", "a/b/c", "a-b", "a.txt"]);
    }

    #[test]
    fn a_file_replaced_after_listing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs_err::write(&path, b"x").unwrap();
        let id = crate::cache::file_id(&fs_err::metadata(&path).unwrap());
        let mut buf = ReadBuffer::new(BUFFER_SIZE);
        assert!(hash_one(&path, id, None, buf.as_mut()).is_ok());
        let other = id.map(|(dev, ino)| (dev, ino.wrapping_add(1)));
        let err = hash_one(&path, other, None, buf.as_mut()).unwrap_err();
        assert!(matches!(err, Error::Replaced { .. }), "{err}");
    }

    #[test]
    fn ignore_normalization() {
        assert_eq!(normalize_ignore("./a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalize_ignore("../x"), None);
        assert_eq!(normalize_ignore("/etc"), None);
        assert_eq!(normalize_ignore("."), None);
        assert_eq!(normalize_ignore(""), None);
        assert!(is_ignored(".git/config", &[".git".into()]));
        assert!(is_ignored(".git", &[".git".into()]));
        assert!(!is_ignored(".gitx", &[".git".into()]));
        assert!(!is_ignored("sub/.git/config", &[".git".into()]));
    }
}
