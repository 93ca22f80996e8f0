//! The engine behind [`crate::verify`] and [`crate::snapshot`]: one walk of each site directory,
//! one parallel hashing pass over every file that needs a digest, then the checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::baseline::{self, Baseline, FileEntry, Hook, Persist};
use crate::hash::{self, FileDigest, HashError};
use crate::hooks;
use crate::probe::Interpreter;
use crate::pyc::{self, Header};
use crate::record::{self, Hash};
use crate::{Accepted, Error, Finding, Kind, Options, Report};

/// RECORD files larger than this are refused (torch's is about 2 MB).
const MAX_RECORD: u64 = 64 << 20;
/// `.pth` and `.start` files larger than this are reported without being parsed.
const MAX_HOOK_FILE: u64 = 1 << 20;
/// Longest evidence line kept.
const MAX_EVIDENCE: usize = 400;

/// One installed distribution.
struct Dist {
    /// `name version`.
    label: String,
    /// Its resolved RECORD entries.
    entries: Vec<Entry>,
}

struct Entry {
    path: PathBuf,
    hash: Option<Result<Hash, String>>,
    size: Option<String>,
}

/// One walked file.
struct Walked {
    path: PathBuf,
    /// Index of its site directory.
    site: usize,
    /// A symbolic link to a directory (not followed; RECORDs never list directories).
    dir_link: bool,
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_EVIDENCE {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_EVIDENCE).collect();
        t.push('…');
        t
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn is_record_file(path: &Path) -> bool {
    let in_dist_info = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n.to_string_lossy().ends_with(".dist-info"));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    in_dist_info
        && matches!(
            name.as_deref(),
            Some("RECORD" | "RECORD.jws" | "RECORD.p7s")
        )
}

fn in_pycache(path: &Path) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "__pycache__")
}

/// Files the import system or the dynamic loader can pick up from a package directory.
fn is_importable(name: &str) -> bool {
    let ext = name.rsplit_once('.').map(|(_, e)| e);
    matches!(ext, Some("py" | "pyc" | "pyw" | "so" | "pth")) || name.contains(".so.")
}

/// Whether a `__pycache__/<stem>.<tag>.pyc` is what the interpreter itself would write for its
/// source as it is now: this interpreter's magic, and a timestamp header matching the source's
/// mtime and size (or a hash header the import system checks). Such a file is trusted like the
/// `.pyc` files pip compiles at install time, which RECORD lists without a hash.
fn pyc_tied_to_source(path: &Path, magic: Option<[u8; 4]>) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((stem, _)) = pyc::split_cached_name(&name) else {
        return false;
    };
    let Some(source) = path
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(format!("{stem}.py")))
    else {
        return false;
    };
    let mut head = Vec::with_capacity(16);
    let read = fs_err::File::open(path).and_then(|f| f.take(16).read_to_end(&mut head));
    let (Ok(_), Ok(src)) = (read, fs_err::metadata(&source)) else {
        return false;
    };
    match pyc::parse_header(&head) {
        Ok((m, _)) if magic.is_some_and(|want| want != m) => false,
        Ok((_, Header::Timestamp { mtime, size })) => {
            u64::from(mtime) == (src.mtime() as u64 & 0xFFFF_FFFF)
                && u64::from(size) == (src.len() & 0xFFFF_FFFF)
        }
        Ok((_, Header::Hash { check_source })) => check_source,
        Err(_) => false,
    }
}

/// Read a distribution's RECORD and resolve its entries; problems become findings.
fn read_dist(
    interp: &Interpreter,
    site: &Path,
    dist_info: &Path,
    findings: &mut Vec<Finding>,
) -> Option<Dist> {
    let dir_name = dist_info.file_name()?.to_string_lossy().into_owned();
    let stem = dir_name.trim_end_matches(".dist-info");
    let label = match stem.rsplit_once('-') {
        Some((name, version)) => format!("{name} {version}"),
        None => stem.to_owned(),
    };
    let record_path = dist_info.join("RECORD");
    let text = match fs_err::metadata(&record_path) {
        Ok(m) if m.len() > MAX_RECORD => {
            findings.push(
                Finding::new(
                    Kind::Unverifiable,
                    display(&record_path),
                    format!(
                        "record is {} bytes, over the {MAX_RECORD}-byte limit",
                        m.len()
                    ),
                )
                .in_distribution(Some(&label)),
            );
            return None;
        }
        Ok(_) => match fs_err::read(&record_path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                findings.push(
                    Finding::new(
                        Kind::Unreadable,
                        display(&record_path),
                        "cannot read record",
                    )
                    .in_distribution(Some(&label))
                    .with_evidence(e.to_string()),
                );
                return None;
            }
        },
        Err(_) => {
            findings.push(
                Finding::new(
                    Kind::Unverifiable,
                    display(dist_info),
                    "distribution has no RECORD: its files cannot be verified",
                )
                .in_distribution(Some(&label)),
            );
            return None;
        }
    };
    let root = interp.root_of(site);
    let mut entries = Vec::new();
    for row in record::parse(&text) {
        let Some(path) = record::resolve(site, &root, &row.path) else {
            findings.push(
                Finding::new(
                    Kind::RecordPathEscapes,
                    display(&record_path),
                    format!(
                        "record entry resolves outside the installation prefix {}",
                        root.display()
                    ),
                )
                .in_distribution(Some(&label))
                .with_evidence(truncate(&row.path)),
            );
            continue;
        };
        entries.push(Entry {
            path,
            hash: row.hash.as_deref().map(record::parse_hash),
            size: row.size,
        });
    }
    Some(Dist { label, entries })
}

/// Walk a site directory; unreadable subdirectories become findings.
fn walk(site: &Path, idx: usize, out: &mut Vec<Walked>, findings: &mut Vec<Finding>) {
    for entry in walkdir::WalkDir::new(site)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().map_or_else(|| display(site), display);
                findings.push(
                    Finding::new(Kind::Unreadable, path, "cannot walk directory")
                        .with_evidence(e.to_string()),
                );
                continue;
            }
        };
        let ft = entry.file_type();
        let is_file = ft.is_file() || (ft.is_symlink() && entry.path().is_file());
        let dir_link = ft.is_symlink() && entry.path().is_dir();
        if (is_file || dir_link) && entry.depth() > 0 {
            out.push(Walked {
                path: entry.into_path(),
                site: idx,
                dir_link,
            });
        }
    }
}

/// Walk every site directory, in order.
fn walk_sites(sites: &[PathBuf], findings: &mut Vec<Finding>) -> Vec<Walked> {
    let mut walked = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        walk(site, i, &mut walked, findings);
    }
    walked
}

/// State shared by the checks.
struct Ctx<'a> {
    opts: &'a Options,
    interp: Interpreter,
    sites: Vec<PathBuf>,
    dists: Vec<Dist>,
    /// Every RECORD-listed path → its distribution.
    owned: HashMap<PathBuf, usize>,
    /// (site, top-level directory name) → the first distribution owning something in it.
    owned_tops: HashMap<(usize, String), usize>,
    digests: HashMap<PathBuf, Result<FileDigest, HashError>>,
    findings: Vec<Finding>,
    /// Informational findings that do not change the verdict.
    notes: Vec<Finding>,
    accepted: Vec<Accepted>,
    hooks: Vec<Hook>,
}

impl Ctx<'_> {
    fn label(&self, dist: Option<usize>) -> Option<&str> {
        dist.map(|d| self.dists[d].label.as_str())
    }

    fn owner_of(&self, path: &Path) -> Option<usize> {
        if let Some(d) = self.owned.get(path) {
            return Some(*d);
        }
        let (site, top) = self.top_of(path)?;
        self.owned_tops.get(&(site, top)).copied()
    }

    /// The site directory index and top-level name of a path under a site directory.
    fn top_of(&self, path: &Path) -> Option<(usize, String)> {
        self.sites.iter().enumerate().find_map(|(i, s)| {
            let rel = path.strip_prefix(s).ok()?;
            let first = rel.components().next()?;
            Some((i, first.as_os_str().to_string_lossy().into_owned()))
        })
    }

    /// Every check but [`Self::check_records`]: none of them reads a digest.
    fn check_without_digests(&mut self, walked: &[Walked]) {
        self.check_unrecorded(walked);
        self.check_pycache(walked);
        let extra = self.check_site_hooks();
        self.check_customize(extra);
        self.check_environment();
    }

    fn check_records(&mut self) {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        let magic = self.interp.magic_bytes();
        for (dist_idx, dist) in self.dists.iter().enumerate() {
            let dist_label = Some(dist.label.as_str());
            for e in &dist.entries {
                let shown = display(&e.path);
                let hash = match &e.hash {
                    None if is_record_file(&e.path) => continue,
                    // `.pyc` files compiled at install time are listed without a hash; their
                    // headers are checked against their sources in `check_pycache`.
                    None if in_pycache(&e.path) => continue,
                    None => {
                        if e.path.exists() {
                            out.push(
                                Finding::new(
                                    Kind::Unverifiable,
                                    shown,
                                    "record lists this file without a hash",
                                )
                                .in_distribution(dist_label),
                            );
                        }
                        continue;
                    }
                    Some(Err(why)) => {
                        out.push(
                            Finding::new(Kind::Unverifiable, shown, "record hash is not usable")
                                .in_distribution(dist_label)
                                .with_evidence(why.clone()),
                        );
                        continue;
                    }
                    Some(Ok(h)) => h,
                };
                let (size, matches, evidence) = match hash {
                    Hash::Sha256(want) => match self.digests.get(&e.path) {
                        Some(Ok(d)) => (
                            d.size,
                            d.sha256 == *want,
                            format!(
                                "record sha256={} now sha256={}",
                                record::encode_digest(want),
                                record::encode_digest(&d.sha256)
                            ),
                        ),
                        Some(Err(err)) if err.not_found => {
                            out.push(
                                Finding::new(
                                    Kind::MissingFile,
                                    shown,
                                    "file listed in record is missing",
                                )
                                .in_distribution(dist_label),
                            );
                            continue;
                        }
                        Some(Err(err)) => {
                            out.push(
                                Finding::new(Kind::Unreadable, shown, "cannot read file")
                                    .in_distribution(dist_label)
                                    .with_evidence(err.message.clone()),
                            );
                            continue;
                        }
                        None => continue,
                    },
                    Hash::OtherSha2(algo, want) => {
                        let meta = fs_err::metadata(&e.path);
                        match (meta, hash::other_sha2(&e.path, algo)) {
                            (Ok(m), Ok(got)) => (
                                m.len(),
                                &got == want,
                                format!(
                                    "record {algo}={} now {algo}={}",
                                    record::encode_digest(want),
                                    record::encode_digest(&got)
                                ),
                            ),
                            (Err(err), _) if err.kind() == std::io::ErrorKind::NotFound => {
                                out.push(
                                    Finding::new(
                                        Kind::MissingFile,
                                        shown,
                                        "file listed in record is missing",
                                    )
                                    .in_distribution(dist_label),
                                );
                                continue;
                            }
                            (Err(err), _) => {
                                out.push(
                                    Finding::new(Kind::Unreadable, shown, "cannot read file")
                                        .in_distribution(dist_label)
                                        .with_evidence(err.to_string()),
                                );
                                continue;
                            }
                            (Ok(_), Err(msg)) => {
                                out.push(
                                    Finding::new(Kind::Unreadable, shown, "cannot read file")
                                        .in_distribution(dist_label)
                                        .with_evidence(msg),
                                );
                                continue;
                            }
                        }
                    }
                };
                let size_ok = match e.size.as_deref().map(str::parse::<u64>) {
                    None => true,
                    Some(Ok(want)) => want == size,
                    Some(Err(_)) => false,
                };
                if !matches || !size_ok {
                    let now = match self.digests.get(&e.path) {
                        Some(Ok(d)) => Some(d.sha256),
                        _ => None,
                    };
                    // A wheel-shipped .pyc the interpreter rewrote for the verified source.
                    if in_pycache(&e.path) && pyc_tied_to_source(&e.path, magic) {
                        continue;
                    }
                    // Two distributions install the same path (e.g. nvidia_nccl_cu12 and _cu13):
                    // the content is authentic, it is just another distribution's.
                    let other = now.and_then(|now| {
                        self.dists.iter().enumerate().find_map(|(i, d)| {
                            (i != dist_idx
                                && d.entries.iter().any(|o| {
                                    o.path == e.path
                                        && matches!(o.hash, Some(Ok(Hash::Sha256(h))) if h == now)
                                }))
                            .then_some(d.label.as_str())
                        })
                    });
                    if let Some(other) = other {
                        notes.push(
                            Finding::new(
                                Kind::Overwritten,
                                shown,
                                format!(
                                    "overwritten by distribution {other}, whose record it matches"
                                ),
                            )
                            .in_distribution(dist_label),
                        );
                        continue;
                    }
                    let msg = if size_ok {
                        "content differs from record".to_owned()
                    } else {
                        format!(
                            "size {size} differs from record size {}",
                            e.size.as_deref().unwrap_or("")
                        )
                    };
                    out.push(
                        Finding::new(Kind::ModifiedFile, shown, msg)
                            .in_distribution(dist_label)
                            .with_evidence(evidence),
                    );
                }
            }
        }
        self.findings.extend(out);
        self.notes.extend(notes);
    }

    /// Unrecorded importable files in owned package directories and at the top of each site
    /// directory, and whole package directories no RECORD owns.
    fn check_unrecorded(&mut self, walked: &[Walked]) {
        let mut out = Vec::new();
        let mut unowned_dirs: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for w in walked {
            let site = &self.sites[w.site];
            if w.dir_link {
                let target = fs_err::read_link(&w.path)
                    .map_or_else(|e| e.to_string(), |t| t.display().to_string());
                out.push(
                    Finding::new(
                        Kind::UnrecordedFile,
                        display(&w.path),
                        "symbolic link to a directory: what it points to is importable and not verified",
                    )
                    .in_distribution(self.label(self.owner_of(&w.path)))
                    .with_evidence(target),
                );
                continue;
            }
            let Ok(rel) = w.path.strip_prefix(site) else {
                continue;
            };
            let mut comps = rel.components();
            let Some(top) = comps.next() else { continue };
            let top = top.as_os_str().to_string_lossy().into_owned();
            let name = w
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let depth = rel.components().count();
            if top.ends_with(".dist-info")
                || top.ends_with(".egg-info")
                || top == "__pycache__"
                || in_pycache(&w.path)
                || !is_importable(&name)
                || self.owned.contains_key(&w.path)
            {
                continue;
            }
            if depth == 1 {
                if name == "_virtualenv.py" && site.join("_virtualenv.pth").is_file() {
                    self.accepted.push(Accepted {
                        path: display(&w.path),
                        reason: "virtualenv's interpreter patcher module, imported by _virtualenv.pth (not covered by any RECORD)".into(),
                    });
                    continue;
                }
                let what = if name.ends_with(".pth") {
                    "path configuration file that no record lists (it extends sys.path)"
                } else {
                    "module at the top of site-packages that no record lists"
                };
                out.push(Finding::new(Kind::UnrecordedFile, display(&w.path), what));
                continue;
            }
            match self.owned_tops.get(&(w.site, top.clone())) {
                Some(d) => out.push(
                    Finding::new(
                        Kind::UnrecordedFile,
                        display(&w.path),
                        "file in a package directory that no record lists",
                    )
                    .in_distribution(self.label(Some(*d))),
                ),
                None => *unowned_dirs.entry(site.join(&top)).or_default() += 1,
            }
        }
        for (dir, n) in unowned_dirs {
            out.push(Finding::new(
                Kind::UnrecordedFile,
                display(&dir),
                format!("package directory that no record owns ({n} importable files)"),
            ));
        }
        self.findings.extend(out);
    }

    /// `.pyc` files in `__pycache__` of owned packages (and the site directory's own).
    fn check_pycache(&mut self, walked: &[Walked]) {
        let tag = self.interp.cache_tag.clone();
        let magic = self.interp.magic_bytes();
        let mut out = Vec::new();
        for w in walked {
            if w.dir_link || !in_pycache(&w.path) {
                continue;
            }
            let Some((_, top)) = self.top_of(&w.path) else {
                continue;
            };
            let top_dist = self.owned_tops.get(&(w.site, top.clone())).copied();
            if top != "__pycache__" && top_dist.is_none() {
                continue;
            }
            let name = w
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some((stem, file_tag)) = pyc::split_cached_name(&name) else {
                continue;
            };
            if tag.as_deref() != Some(file_tag) {
                continue; // another interpreter's cache: this one never loads it
            }
            let Some(pkg_dir) = w.path.parent().and_then(Path::parent) else {
                continue;
            };
            let source = pkg_dir.join(format!("{stem}.py"));
            let dist = self.owner_of(&source).or(top_dist);
            let dist_label = self.label(dist);
            let shown = display(&w.path);
            let src_meta = match fs_err::metadata(&source) {
                Ok(m) => m,
                Err(_) => {
                    out.push(
                        Finding::new(
                            Kind::OrphanPyc,
                            shown,
                            format!("compiled module without its source {}", source.display()),
                        )
                        .in_distribution(dist_label),
                    );
                    continue;
                }
            };
            let mut head = Vec::with_capacity(16);
            let read = fs_err::File::open(&w.path).and_then(|f| f.take(16).read_to_end(&mut head));
            if let Err(e) = read {
                out.push(
                    Finding::new(Kind::Unreadable, shown, "cannot read compiled module")
                        .in_distribution(dist_label)
                        .with_evidence(e.to_string()),
                );
                continue;
            }
            let (file_magic, header) = match pyc::parse_header(&head) {
                Ok(h) => h,
                Err(why) => {
                    out.push(
                        Finding::new(
                            Kind::PycMismatch,
                            shown,
                            "compiled module header is invalid",
                        )
                        .in_distribution(dist_label)
                        .with_evidence(why),
                    );
                    continue;
                }
            };
            if magic.is_some_and(|m| m != file_magic) {
                out.push(
                    Finding::new(
                        Kind::PycMismatch,
                        shown,
                        "compiled module magic number is not this interpreter's",
                    )
                    .in_distribution(dist_label)
                    .with_evidence(format!(
                        "magic {} expected {}",
                        hex::encode(file_magic),
                        self.interp.magic
                    )),
                );
                continue;
            }
            match header {
                Header::Timestamp { mtime, size } => {
                    let want_mtime = (src_meta.mtime() & 0xFFFF_FFFF) as u32;
                    let want_size = (src_meta.len() & 0xFFFF_FFFF) as u32;
                    if mtime != want_mtime || size != want_size {
                        out.push(
                            Finding::new(
                                Kind::PycMismatch,
                                shown,
                                "compiled module does not match its source's mtime and size: the source changed after it was compiled",
                            )
                            .in_distribution(dist_label)
                            .with_evidence(format!(
                                "pyc mtime {mtime} size {size}; source mtime {want_mtime} size {want_size}"
                            )),
                        );
                    }
                }
                Header::Hash {
                    check_source: false,
                } => out.push(
                    Finding::new(
                        Kind::UncheckedPyc,
                        shown,
                        "unchecked hash-based compiled module: loaded without comparing it to its source",
                    )
                    .in_distribution(dist_label),
                ),
                // The import system re-hashes the source and recompiles on a mismatch.
                Header::Hash { check_source: true } => {}
            }
        }
        self.findings.extend(out);
    }

    /// `.pth` and `.start` files in every site directory; returns the directories `.pth` path
    /// lines add to `sys.path`.
    fn check_site_hooks(&mut self) -> Vec<PathBuf> {
        let mut extra_paths = Vec::new();
        let mut out = Vec::new();
        for site in self.sites.clone() {
            let Ok(entries) = fs_err::read_dir(&site) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".pth") || n.ends_with(".start"))
                .collect();
            names.sort();
            for name in names {
                let path = site.join(&name);
                let dist = self.owned.get(&path).copied();
                let dist_label = self.label(dist).map(str::to_owned);
                let content = match fs_err::metadata(&path) {
                    Ok(m) if m.len() > MAX_HOOK_FILE => {
                        out.push(
                            Finding::new(
                                if name.ends_with(".pth") {
                                    Kind::PthCode
                                } else {
                                    Kind::StartupEntryPoint
                                },
                                display(&path),
                                format!("start-up file of {} bytes, too large to review", m.len()),
                            )
                            .in_distribution(dist_label.as_deref()),
                        );
                        continue;
                    }
                    _ => match fs_err::read(&path) {
                        Ok(c) => c,
                        Err(e) => {
                            out.push(
                                Finding::new(
                                    Kind::Unreadable,
                                    display(&path),
                                    "cannot read start-up file",
                                )
                                .with_evidence(e.to_string()),
                            );
                            continue;
                        }
                    },
                };
                if name.ends_with(".start") {
                    let eps = hooks::start_entry_points(&content);
                    if !eps.is_empty() {
                        self.hooks.push(Hook {
                            path: display(&path),
                            detail: eps.join("\n"),
                        });
                        out.push(
                            Finding::new(
                                Kind::StartupEntryPoint,
                                display(&path),
                                "PEP 829 start-up file: entry points called at every interpreter start (Python 3.15+)",
                            )
                            .in_distribution(dist_label.as_deref())
                            .with_evidence(truncate(&eps.join("\n"))),
                        );
                    }
                    continue;
                }
                let pth = hooks::parse_pth(&content);
                for line in &pth.path_lines {
                    extra_paths.push(site.join(line));
                }
                if pth.exec_lines.is_empty() {
                    continue;
                }
                self.hooks.push(Hook {
                    path: display(&path),
                    detail: pth.exec_lines.join("\n"),
                });
                let recorded = |module: &str| {
                    let finder = site.join(format!("{module}.py"));
                    self.owned.contains_key(&finder) && finder.is_file()
                };
                match hooks::accept_exec_lines(&name, &pth.exec_lines, recorded) {
                    Some(reason) => self.accepted.push(Accepted {
                        path: display(&path),
                        reason,
                    }),
                    None => out.push(
                        Finding::new(
                            Kind::PthCode,
                            display(&path),
                            "path configuration file runs code at every interpreter start",
                        )
                        .in_distribution(dist_label.as_deref())
                        .with_evidence(
                            pth.exec_lines
                                .iter()
                                .map(|l| truncate(l))
                                .collect::<Vec<_>>()
                                .join("\n"),
                        ),
                    ),
                }
            }
        }
        self.findings.extend(out);
        extra_paths
    }

    /// `sitecustomize`/`usercustomize` on the search path the real start-up would use.
    fn check_customize(&mut self, extra_paths: Vec<PathBuf>) {
        let mut dirs: Vec<PathBuf> = self.interp.sys_path.clone();
        if let Some(pp) = self.opts.env.get("PYTHONPATH") {
            dirs.extend(pp.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
        }
        dirs.extend(self.sites.iter().cloned());
        dirs.extend(extra_paths);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for dir in dirs {
            if !seen.insert(dir.clone()) {
                continue;
            }
            let Ok(entries) = fs_err::read_dir(&dir) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| hooks::is_customize_module(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .filter(|p| p.is_file() || p.join("__init__.py").is_file())
                .collect();
            found.sort();
            for path in found {
                self.hooks.push(Hook {
                    path: display(&path),
                    detail: "customize module".into(),
                });
                out.push(
                    Finding::new(
                        Kind::CustomizeModule,
                        display(&path),
                        "module imported automatically at every interpreter start",
                    )
                    .in_distribution(self.label(self.owned.get(&path).copied())),
                );
            }
        }
        self.findings.extend(out);
    }

    fn check_environment(&mut self) {
        let mut out = Vec::new();
        for (var, why) in hooks::RISKY_ENV {
            if let Some(value) = self.opts.env.get(var).filter(|v| !v.is_empty()) {
                self.hooks.push(Hook {
                    path: var.to_owned(),
                    detail: value.clone(),
                });
                out.push(
                    Finding::new(
                        Kind::EnvironmentVariable,
                        var,
                        format!("variable is set: {why}"),
                    )
                    .with_evidence(truncate(value)),
                );
            }
        }
        if let Some(value) = self.opts.env.get("PYTHONWARNINGS")
            && hooks::warnings_imports_module(value)
        {
            out.push(
                Finding::new(
                    Kind::EnvironmentVariable,
                    "PYTHONWARNINGS",
                    "variable names a warning category by module path, which is imported at start-up",
                )
                .with_evidence(truncate(value)),
            );
        }
        let preload = self.opts.system_root.join("etc/ld.so.preload");
        if let Ok(bytes) = fs_err::read(&preload) {
            let text = String::from_utf8_lossy(&bytes);
            let libs: Vec<&str> = text
                .split_whitespace()
                .filter(|l| !l.starts_with('#'))
                .collect();
            if !libs.is_empty() {
                out.push(
                    Finding::new(
                        Kind::LdPreload,
                        display(&preload),
                        "shared objects preloaded into every process",
                    )
                    .with_evidence(truncate(&libs.join(" "))),
                );
            }
        }
        self.findings.extend(out);
    }
}

/// Run every check; with `want_baseline`, also build a baseline of the current state.
pub(crate) fn run(
    opts: &Options,
    want_baseline: bool,
) -> Result<(Report, Option<Baseline>), Error> {
    let interp = Interpreter::probe(&opts.python, opts.home.as_deref())?;
    let sites = interp.site_dirs();
    let mut findings = Vec::new();

    // Distributions.
    let mut dists = Vec::new();
    for site in &sites {
        let mut entries: Vec<PathBuf> = fs_err::read_dir(site)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".dist-info") && path.is_dir() {
                if let Some(d) = read_dist(&interp, site, &path, &mut findings) {
                    dists.push(d);
                }
            } else if name.ends_with(".egg-info") {
                findings.push(Finding::new(
                    Kind::Unverifiable,
                    display(&path),
                    "legacy egg-info distribution: no hashes to verify its files against",
                ));
            }
        }
    }
    let mut owned = HashMap::new();
    let mut owned_tops = HashMap::new();
    for (i, d) in dists.iter().enumerate() {
        for e in &d.entries {
            owned.entry(e.path.clone()).or_insert(i);
            for (s, site) in sites.iter().enumerate() {
                if let Ok(rel) = e.path.strip_prefix(site) {
                    let mut comps = rel.components();
                    if let (Some(top), Some(_)) = (comps.next(), comps.next()) {
                        let top = top.as_os_str().to_string_lossy().into_owned();
                        if !top.ends_with(".dist-info") && top != "__pycache__" {
                            owned_tops.entry((s, top)).or_insert(i);
                        }
                    }
                }
            }
        }
    }

    let full = want_baseline || opts.baseline.is_some();
    let mut to_hash: HashSet<PathBuf> = dists
        .iter()
        .flat_map(|d| &d.entries)
        .filter(|e| {
            matches!(e.hash, Some(Ok(Hash::Sha256(_))))
                || (full && !is_record_file(&e.path) && e.path.is_file())
        })
        .map(|e| e.path.clone())
        .collect();
    let mut ctx = Ctx {
        opts,
        interp,
        sites,
        dists,
        owned,
        owned_tops,
        digests: HashMap::new(),
        findings,
        notes: Vec::new(),
        accepted: Vec::new(),
        hooks: Vec::new(),
    };

    // One walk per site directory, one hashing pass. Hashing is nearly all of the run (every
    // RECORD-listed byte: 5.4 GB for torch with its CUDA wheels). Without a baseline the walk
    // and the checks that need no digest run beside it, on the thread that starts hashing last,
    // instead of leaving the other cores idle before or after it. A baseline hashes the walked
    // files too, so there the walk comes first.
    if full {
        let walked = walk_sites(&ctx.sites, &mut ctx.findings);
        to_hash.extend(
            walked
                .iter()
                .filter(|w| !w.dir_link)
                .map(|w| w.path.clone()),
        );
        ctx.digests = hash::hash_all(to_hash.into_iter().collect());
        ctx.check_without_digests(&walked);
    } else {
        let (digests, ()) = rayon::join(
            || hash::hash_all(to_hash.into_iter().collect()),
            || {
                let walked = walk_sites(&ctx.sites, &mut ctx.findings);
                ctx.check_without_digests(&walked);
            },
        );
        ctx.digests = digests;
    }
    ctx.check_records();
    let (files_hashed, bytes_hashed) = ctx
        .digests
        .values()
        .filter_map(|d| d.as_ref().ok())
        .fold((0usize, 0u64), |(n, b), d| (n + 1, b + d.size));

    let mut baseline = None;
    if full {
        let mut files = BTreeMap::new();
        for (path, d) in &ctx.digests {
            match d {
                Ok(d) => {
                    files.insert(
                        display(path),
                        FileEntry {
                            sha256: hex::encode(d.sha256),
                            size: d.size,
                        },
                    );
                }
                Err(e) if e.not_found => {}
                Err(e) => {
                    // RECORD entries were reported by `check_records`; report the rest.
                    if !ctx.owned.contains_key(path) {
                        ctx.findings.push(
                            Finding::new(Kind::Unreadable, display(path), "cannot read file")
                                .with_evidence(e.message.clone()),
                        );
                    }
                }
            }
        }
        let persistence: BTreeMap<String, Persist> =
            baseline::persistence_paths(opts.home.as_deref(), &opts.system_root)
                .into_iter()
                .chain(
                    opts.baseline
                        .iter()
                        .flat_map(|b| b.persistence.keys().map(PathBuf::from)),
                )
                .map(|p| (display(&p), baseline::read_persist(&p)))
                .collect();
        if let Some(base) = &opts.baseline {
            let diff = baseline::diff(base, &files, &persistence);
            ctx.findings.extend(diff);
        }
        if want_baseline {
            baseline = Some(Baseline {
                format: baseline::FORMAT.to_owned(),
                python: ctx.interp.clone(),
                site_dirs: ctx.sites.clone(),
                files,
                persistence,
                hooks: ctx.hooks.clone(),
            });
        }
    }

    let mut findings = ctx.findings;
    findings.sort_by(|a, b| (&a.path, a.kind).cmp(&(&b.path, b.kind)));
    findings.dedup();
    let mut accepted = ctx.accepted;
    accepted.sort_by(|a, b| a.path.cmp(&b.path));
    let report = Report {
        python: ctx.interp,
        site_dirs: ctx.sites,
        distributions: ctx.dists.len(),
        files_hashed,
        bytes_hashed,
        baseline_compared: opts.baseline.is_some(),
        findings,
        notes: ctx.notes,
        accepted,
    };
    Ok((report, baseline))
}
