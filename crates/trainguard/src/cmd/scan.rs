//! `trainguard scan PATH...`: static analysis of model files, in parallel, never executing them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tg_report::{FileReport, Verdict};
use tg_scan::{Base, Limits, Policy, Scanner};

use crate::{Context, output};

/// Output formats of `scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Readable report on stdout, summary at the end.
    Human,
    /// JSON Lines: one object per file.
    Json,
    /// One SARIF 2.1.0 log for the whole run (for code-scanning dashboards).
    Sarif,
}

/// The built-in policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PolicyName {
    /// Exactly what torch.load(weights_only=True) accepts: its opcodes and its globals.
    WeightsOnly,
    /// weights-only plus reviewed numpy, stdlib, scikit-learn and trainer-state entries.
    Default,
}

/// Statically scan model files for code that runs when they are loaded.
///
/// Formats are detected from content, never from the extension: raw pickles (protocols 0-5),
/// PyTorch zip, legacy and tar checkpoints, TorchScript, numpy .npy/.npz, joblib, Keras HDF5,
/// TensorFlow SavedModel, and zip/tar/7z/gzip/bz2/xz/zstd wrappers around any of them. Nothing is
/// ever unpickled, imported or executed.
///
/// Verdicts: clean (only what the policy allows), suspicious (outside the policy), malicious
/// (known-dangerous callable or hostile structure), inconclusive (could not be fully analysed).
///
/// Exit codes: 0 all clean; 1 anything suspicious or malicious; 2 inconclusive or an error
/// (and nothing worse).
///
/// Examples:
///   trainguard scan model.pt
///   trainguard scan ~/.cache/huggingface/hub --exclude '*.safetensors'
///   trainguard scan --policy weights-only --format json ckpts/ > report.jsonl
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// Files or directories to scan (directories are walked recursively).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,

    /// Built-in policy to judge pickles against.
    #[arg(long, value_enum, default_value_t = PolicyName::Default)]
    policy: PolicyName,

    /// Also allow this global (module.name, optionally :class, :function or :constant; the
    /// default kind is class). Repeatable.
    #[arg(long = "allow", value_name = "MODULE.NAME")]
    allow: Vec<String>,

    /// Also allow every entry of this file (one module.name[:kind] per line, # comments).
    #[arg(long, value_name = "FILE")]
    policy_file: Vec<PathBuf>,

    /// Skip paths matching this glob (matched against the full path and the file name).
    /// Repeatable.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,

    /// Only scan files matching this glob (default: every file). Repeatable.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,

    /// Print only files that are not clean (human format).
    #[arg(long, short)]
    quiet: bool,

    /// Never show a progress bar (it is shown on a terminal for scans of many files).
    #[arg(long)]
    no_progress: bool,

    /// Worker threads (default: one per core).
    #[arg(long, short = 'j', value_name = "N")]
    threads: Option<usize>,

    /// Most pickle opcodes executed per stream.
    #[arg(long, value_name = "N", default_value_t = Limits::default().pickle.max_ops)]
    max_opcodes: u64,

    /// Most memo entries per pickle stream.
    #[arg(long, value_name = "N", default_value_t = Limits::default().pickle.max_memo)]
    max_memo: usize,

    /// Deepest pickle stack.
    #[arg(long, value_name = "N", default_value_t = Limits::default().pickle.max_stack)]
    max_stack: usize,

    /// Deepest nesting of containers (zip in tar in gzip ...).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_depth)]
    max_depth: u32,

    /// Most decompressed bytes read from one archive member.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().archive.max_member_bytes)]
    max_member_bytes: u64,

    /// Most entries in one archive.
    #[arg(long, value_name = "N", default_value_t = Limits::default().archive.max_entries)]
    max_entries: usize,

    /// Time budget per file, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().timeout.as_secs())]
    timeout: u64,
}

pub(crate) fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut policy = Policy::new(match args.policy {
        PolicyName::WeightsOnly => Base::WeightsOnly,
        PolicyName::Default => Base::Default,
    });
    for entry in &args.allow {
        policy.allow(entry)?;
    }
    for file in &args.policy_file {
        let text = fs_err::read_to_string(file)?;
        policy
            .load_entries(&text)
            .with_context(|| format!("in policy file {}", file.display()))?;
    }
    let mut limits = Limits::default();
    limits.pickle.max_ops = args.max_opcodes;
    limits.pickle.max_memo = args.max_memo;
    limits.pickle.max_stack = args.max_stack;
    limits.max_depth = args.max_depth;
    limits.archive.max_member_bytes = args.max_member_bytes;
    limits.archive.max_entries = args.max_entries;
    limits.timeout = Duration::from_secs(args.timeout);
    let scanner = Scanner::new(policy, limits);

    let exclude = globs(&args.exclude)?;
    let include = if args.include.is_empty() {
        None
    } else {
        Some(globs(&args.include)?)
    };
    let (files, mut errors) = collect_files(&args.paths, &exclude, include.as_ref());

    let show_progress = !args.no_progress && files.len() > 8 && std::io::stderr().is_terminal();
    let bar = show_progress.then(|| {
        let b = indicatif::ProgressBar::new(files.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} scanning {pos}/{len} files [{elapsed}] {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let threads = match args.threads {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let reports = scan_all(&scanner, &files, threads, bar.as_ref());
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let records: Vec<crate::record::Record> = reports
        .iter()
        .map(|r| crate::record::Record {
            path: PathBuf::from(&r.path),
            digests: Vec::new(),
            verdict: r.verdict.to_string(),
        })
        .collect();
    crate::record::record_many(ctx, "scan", &records)?;
    errors.sort();
    for e in &errors {
        output::error(e);
    }

    // One write for the whole report: stdout is line-buffered, and a line per write is a
    // syscall per file.
    let text = match args.format {
        Format::Json => reports
            .iter()
            .map(tg_report::jsonl::line)
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Sarif => {
            let log = tg_report::sarif::render(&reports, env!("CARGO_PKG_VERSION"));
            serde_json::to_string_pretty(&log)?
        }
        Format::Human => {
            let mut lines: Vec<String> = reports
                .iter()
                .filter(|r| !(args.quiet && r.verdict == Verdict::Clean))
                .map(render_human)
                .collect();
            lines.push(summary(&reports, errors.len(), started.elapsed()));
            lines.join("\n")
        }
    };
    if !text.is_empty() {
        output::data(&text)?;
    }
    let mut worst = reports
        .iter()
        .map(|r| r.verdict)
        .max()
        .unwrap_or(Verdict::Clean);
    if !errors.is_empty() {
        worst = worst.max(Verdict::Inconclusive);
    }
    if files.is_empty() && errors.is_empty() {
        output::hint("no files to scan: check the paths and the --include/--exclude globs");
    }
    Ok(ExitCode::from(worst.exit_code()))
}

/// Scan `files` on up to `threads` threads, this one among them, and return the reports in
/// the order of `files`. Each thread takes the next file from a shared counter, so one slow file
/// holds up nothing else. (A rayon pool would start every worker and leave this thread waiting;
/// for a directory that scans in milliseconds, a thread's start-up, its stack and its malloc
/// arena, costs more than it brings.) A thread that cannot be started is done without.
fn scan_all(
    scanner: &Scanner,
    files: &[PathBuf],
    threads: usize,
    bar: Option<&indicatif::ProgressBar>,
) -> Vec<FileReport> {
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(path) = files.get(i) else {
                return done;
            };
            done.push((i, scanner.scan_path(path)));
            if let Some(b) = bar {
                b.inc(1);
            }
        }
    };
    let mut done = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(files.len()))
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("scan-{i}"))
                    .spawn_scoped(s, work)
                    .ok()
            })
            .collect();
        let mut all = work();
        for h in helpers {
            match h.join() {
                Ok(more) => all.extend(more),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    // Every index was taken exactly once: back into the walk's (stable) order.
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn globs(patterns: &[String]) -> anyhow::Result<globset::GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(globset::Glob::new(p).with_context(|| format!("invalid glob '{p}'"))?);
    }
    Ok(b.build()?)
}

fn matches(set: &globset::GlobSet, path: &Path) -> bool {
    if set.is_empty() {
        return false;
    }
    set.is_match(path) || path.file_name().is_some_and(|n| set.is_match(n))
}

/// The sort key that puts paths in the order of a depth-first walk that visits each directory's
/// entries by name: the path's bytes with every separator made the lowest byte, so that `a/x`
/// (inside `a`) comes before `ab` as the walk has it, where plain byte order would not.
fn walk_order(path: &Path) -> Vec<u8> {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .map(|&b| {
            if std::path::is_separator(char::from(b)) {
                0
            } else {
                b
            }
        })
        .collect()
}

/// Every file under `paths`, in a stable order. Directory symlinks are not followed (no loops);
/// a symlink to a file is scanned as that file.
fn collect_files(
    paths: &[PathBuf],
    exclude: &globset::GlobSet,
    include: Option<&globset::GlobSet>,
) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for root in paths {
        let meta = match fs_err::metadata(root) {
            Ok(m) => m,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        if meta.is_file() {
            // An explicitly named file is scanned even if an --include glob does not match.
            let is_link = root.is_symlink();
            files.push((root.clone(), is_link));
            continue;
        }
        // Unsorted: walkdir's sort_by_file_name parses both paths at every comparison; this
        // root's files are sorted once below, into the same order.
        let first = files.len();
        let walker = walkdir::WalkDir::new(root).follow_links(false).into_iter();
        for entry in walker.filter_entry(|e| e.depth() == 0 || !matches(exclude, e.path())) {
            match entry {
                Ok(e) => {
                    let is_link = e.path_is_symlink();
                    let is_file = e.file_type().is_file() || (is_link && e.path().is_file());
                    if !is_file {
                        continue;
                    }
                    if include.is_some_and(|inc| !matches(inc, e.path())) {
                        continue;
                    }
                    files.push((e.into_path(), is_link));
                }
                Err(e) => errors.push(format!("cannot walk {}: {e}", root.display())),
            }
        }
        files[first..].sort_by_cached_key(|(p, _)| walk_order(p));
    }
    (dedupe_links(files, paths.len() > 1), errors)
}

/// A Hugging Face hub cache names every file twice: `snapshots/<rev>/<name>` is a symlink to
/// `blobs/<sha>`. Scan each real file (device and inode) once, under the snapshot name users
/// recognise. Without symlinks and with one root, the walk cannot reach a file twice, and the
/// per-file `stat` is skipped.
fn dedupe_links(files: Vec<(PathBuf, bool)>, several_roots: bool) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    if !several_roots && files.iter().all(|(_, is_link)| !is_link) {
        return files.into_iter().map(|(p, _)| p).collect();
    }
    let mut seen: std::collections::HashMap<(u64, u64), usize> = std::collections::HashMap::new();
    let mut out: Vec<(PathBuf, bool)> = Vec::with_capacity(files.len());
    for (path, is_link) in files {
        let Ok(meta) = fs_err::metadata(&path) else {
            out.push((path, is_link));
            continue;
        };
        match seen.entry((meta.dev(), meta.ino())) {
            std::collections::hash_map::Entry::Occupied(kept) => {
                let kept = &mut out[*kept.get()];
                if is_link && !kept.1 {
                    *kept = (path, is_link);
                }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.push((path, is_link));
            }
        }
    }
    out.into_iter().map(|(p, _)| p).collect()
}

fn render_human(r: &FileReport) -> String {
    let mut s = format!("{}: {} ({})", r.path, r.verdict, r.format);
    for f in &r.findings {
        let loc = f.location.to_string();
        s.push_str(&format!(
            "\n  {} {:<12} {}{}",
            f.rule,
            f.verdict.as_str(),
            if loc.is_empty() {
                String::new()
            } else {
                format!("[{loc}] ")
            },
            f.message
        ));
        if let Some(e) = &f.evidence {
            s.push_str(&format!("\n      evidence: {e}"));
        }
    }
    if r.verdict == Verdict::Clean || r.findings.is_empty() {
        for n in &r.notes {
            s.push_str(&format!("\n  note: {n}"));
        }
    }
    s
}

fn summary(reports: &[FileReport], errors: usize, took: Duration) -> String {
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    let mut s = String::new();
    if reports.len() > 1 {
        s.push_str(&format_table(reports));
    }
    s.push_str(&format!(
        "\n{} files: {} clean, {} suspicious, {} malicious, {} inconclusive",
        reports.len(),
        count(Verdict::Clean),
        count(Verdict::Suspicious),
        count(Verdict::Malicious),
        count(Verdict::Inconclusive)
    ));
    if errors > 0 {
        s.push_str(&format!(", {errors} errors"));
    }
    s.push_str(&format!(" in {:.2} s", took.as_secs_f64()));
    s
}

/// Files by format and verdict, for directory scans.
fn format_table(reports: &[FileReport]) -> String {
    let mut rows: std::collections::BTreeMap<&str, [usize; 4]> = std::collections::BTreeMap::new();
    for r in reports {
        let row = rows.entry(r.format.as_str()).or_default();
        row[r.verdict as usize] += 1;
    }
    let mut s = format!(
        "\n{:<16} {:>6} {:>6} {:>12} {:>11} {:>10} {:>13}",
        "format", "files", "clean", "inconclusive", "suspicious", "malicious", ""
    );
    s.truncate(s.trim_end().len());
    for (format, c) in rows {
        s.push_str(&format!(
            "\n{:<16} {:>6} {:>6} {:>12} {:>11} {:>10}",
            format,
            c.iter().sum::<usize>(),
            c[0],
            c[1],
            c[2],
            c[3]
        ));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_visits_a_directory_before_longer_sibling_names() {
        let mut paths: Vec<PathBuf> = ["r/ab", "r/a.txt", "r/a/x", "r/a/b/c", "r/-"]
            .iter()
            .map(PathBuf::from)
            .collect();
        paths.sort_by_cached_key(|p| walk_order(p));
        assert_eq!(
            paths,
            ["r/-", "r/a/b/c", "r/a/x", "r/a.txt", "r/ab"].map(PathBuf::from)
        );
    }
}
