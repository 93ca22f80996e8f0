//! Baselines: a JSON record of every file under the site directories (SHA-256 and size), the
//! start-up hooks seen, and the login/persistence files an insider would touch
//! (`authorized_keys`, crontabs, `ld.so.preload`), so a later `verify` names what changed.
//!
//! The baseline is plain JSON and unsigned: keep it where the training job cannot write
//! (sealing it is `tg-seal`'s job).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::probe::Interpreter;
use crate::{Error, Finding, Kind};

/// The format string this version writes and reads.
pub const FORMAT: &str = "trainguard-env-baseline/1";

/// Persistence files larger than this are recorded by hash only, without their lines.
const MAX_LINES_BYTES: u64 = 1 << 20;

/// One file's content at snapshot time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The state of one persistence file (`authorized_keys`, a crontab).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Persist {
    /// The file did not exist.
    Absent,
    /// The file existed but could not be read (e.g. a root-only crontab).
    Unreadable {
        /// Why.
        error: String,
    },
    /// The file's content.
    Present {
        /// SHA-256, lowercase hex.
        sha256: String,
        /// Size in bytes.
        size: u64,
        /// Its lines (when the file is small text), so a diff can name the added line.
        #[serde(default)]
        lines: Vec<String>,
    },
}

/// A start-up hook seen at snapshot time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// The `.pth`/`.start`/customize file, or the variable name.
    pub path: String,
    /// What it runs (the executed line, the entry point, the value).
    pub detail: String,
}

/// A snapshot of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Always [`FORMAT`].
    pub format: String,
    /// The interpreter the snapshot was taken with.
    pub python: Interpreter,
    /// The site directories that were walked.
    pub site_dirs: Vec<PathBuf>,
    /// Every file under the site directories, plus the files RECORDs install outside them
    /// (console scripts), by absolute path.
    pub files: BTreeMap<String, FileEntry>,
    /// Login and persistence files, by absolute path.
    pub persistence: BTreeMap<String, Persist>,
    /// Start-up hooks present (accepted or not).
    pub hooks: Vec<Hook>,
}

impl Baseline {
    /// Read a baseline file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = fs_err::read(path)?;
        #[derive(Deserialize)]
        struct Probe {
            format: String,
        }
        let head: Probe = serde_json::from_slice(&bytes).map_err(|source| Error::Baseline {
            path: path.to_owned(),
            source,
        })?;
        if head.format != FORMAT {
            return Err(Error::BaselineFormat {
                path: path.to_owned(),
                found: head.format,
                expected: FORMAT,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| Error::Baseline {
            path: path.to_owned(),
            source,
        })
    }

    /// Write the baseline as pretty JSON (sorted keys, so two snapshots diff well).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        fs_err::write(path, json)?;
        Ok(())
    }
}

/// The persistence files to watch: the user's and root's `authorized_keys`, the system
/// crontab, `cron.d`, per-user crontabs (Debian and Red Hat spool layouts), `ld.so.preload`.
pub(crate) fn persistence_paths(home: Option<&Path>, system_root: &Path) -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = home.map(Path::to_owned).into_iter().collect();
    let root_home = system_root.join("root");
    if !homes.contains(&root_home) {
        homes.push(root_home);
    }
    let mut out = Vec::new();
    for h in homes {
        out.push(h.join(".ssh/authorized_keys"));
        out.push(h.join(".ssh/authorized_keys2"));
    }
    out.push(system_root.join("etc/crontab"));
    out.push(system_root.join("etc/ld.so.preload"));
    for dir in ["etc/cron.d", "var/spool/cron/crontabs", "var/spool/cron"] {
        if let Ok(entries) = fs_err::read_dir(system_root.join(dir)) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            out.extend(files);
        }
    }
    out
}

/// Read one persistence file's state.
pub(crate) fn read_persist(path: &Path) -> Persist {
    use sha2::Digest;
    match fs_err::read(path) {
        Ok(bytes) => {
            let lines = if bytes.len() as u64 <= MAX_LINES_BYTES {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            } else {
                Vec::new()
            };
            Persist::Present {
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
                size: bytes.len() as u64,
                lines,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persist::Absent,
        Err(e) => Persist::Unreadable {
            error: e.to_string(),
        },
    }
}

/// Compare the current files and persistence state with a baseline.
pub(crate) fn diff(
    base: &Baseline,
    files: &BTreeMap<String, FileEntry>,
    persistence: &BTreeMap<String, Persist>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (path, now) in files {
        match base.files.get(path) {
            None => out.push(
                Finding::new(Kind::BaselineAdded, path, "file added since the baseline")
                    .with_evidence(format!("sha256 {} size {}", now.sha256, now.size)),
            ),
            Some(then) if then != now => out.push(
                Finding::new(
                    Kind::BaselineChanged,
                    path,
                    "file changed since the baseline",
                )
                .with_evidence(format!(
                    "sha256 {} size {} -> sha256 {} size {}",
                    then.sha256, then.size, now.sha256, now.size
                )),
            ),
            Some(_) => {}
        }
    }
    for (path, then) in &base.files {
        if !files.contains_key(path) {
            out.push(
                Finding::new(
                    Kind::BaselineRemoved,
                    path,
                    "file removed since the baseline",
                )
                .with_evidence(format!("sha256 {} size {}", then.sha256, then.size)),
            );
        }
    }
    for (path, now) in persistence {
        let then = base.persistence.get(path).unwrap_or(&Persist::Absent);
        if let Some(f) = persist_diff(path, then, now) {
            out.push(f);
        }
    }
    out
}

fn persist_diff(path: &str, then: &Persist, now: &Persist) -> Option<Finding> {
    let lines = |p: &Persist| match p {
        Persist::Present { lines, .. } => lines.clone(),
        _ => Vec::new(),
    };
    let same = match (then, now) {
        (Persist::Present { sha256: a, .. }, Persist::Present { sha256: b, .. }) => a == b,
        (Persist::Absent, Persist::Absent) => true,
        (Persist::Unreadable { .. }, Persist::Unreadable { .. }) => true,
        _ => false,
    };
    if same {
        return None;
    }
    let (old, new) = (lines(then), lines(now));
    let added: Vec<&String> = new.iter().filter(|l| !old.contains(l)).collect();
    let removed: Vec<&String> = old.iter().filter(|l| !new.contains(l)).collect();
    let mut evidence = Vec::new();
    evidence.extend(added.iter().map(|l| format!("+ {l}")));
    evidence.extend(removed.iter().map(|l| format!("- {l}")));
    let (kind, message) = match (then, now) {
        (Persist::Absent, Persist::Present { .. }) => (
            Kind::BaselineAdded,
            "persistence file created since the baseline",
        ),
        (Persist::Present { .. }, Persist::Absent) => (
            Kind::BaselineRemoved,
            "persistence file removed since the baseline",
        ),
        _ => (
            Kind::BaselineChanged,
            "persistence file changed since the baseline",
        ),
    };
    let mut f = Finding::new(kind, path, message);
    if !evidence.is_empty() {
        f = f.with_evidence(evidence.join("\n"));
    } else if let Persist::Unreadable { error } = now {
        f = f.with_evidence(error.clone());
    }
    Some(f)
}
