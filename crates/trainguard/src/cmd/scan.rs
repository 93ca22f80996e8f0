//! `trainguard scan PATH...`: static analysis of model files, in parallel, never executing them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
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

    /// Threads, the one that walks the directories among them (default: one per core, and one
    /// more once a scan has run 4 ms with files waiting, for files that come from the disk).
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

pub(crate) fn run(args: Args, ctx: &Context, early: Option<Helper>) -> anyhow::Result<ExitCode> {
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
    let scanner = Arc::new(Scanner::new(policy, limits));

    let exclude = globs(&args.exclude)?;
    let include = if args.include.is_empty() {
        None
    } else {
        Some(globs(&args.include)?)
    };
    // None: the default (`default_threads`).
    let threads = args.threads.filter(|&n| n > 0);
    let bar = (!args.no_progress && std::io::stderr().is_terminal()).then(|| {
        // Hidden until the walk has found more than a handful of files.
        let b = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::hidden(),
        );
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} scanning {pos}/{len} files [{elapsed}] {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let walk = Walk {
        roots: &args.paths,
        by_size: threads != Some(1),
        exclude: &exclude,
        include: include.as_ref(),
    };
    let json_lines = args.format == Format::Json;
    let (scanned, mut errors) = scan_all(&scanner, &walk, threads, early, bar.as_ref(), json_lines);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let (reports, lines): (Vec<FileReport>, Vec<Option<String>>) = scanned.into_iter().unzip();
    if ctx.ledger.is_some() {
        let records: Vec<crate::record::Record> = reports
            .iter()
            .map(|r| crate::record::Record {
                path: PathBuf::from(&r.path),
                digests: Vec::new(),
                verdict: r.verdict.to_string(),
            })
            .collect();
        crate::record::record_many(ctx, "scan", &records)?;
    }
    errors.sort();
    for e in &errors {
        output::error(e);
    }

    // One write for the whole report: stdout is line-buffered, and a line per write is a
    // syscall per file.
    let text = match args.format {
        Format::Json => lines
            .into_iter()
            .zip(&reports)
            .map(|(line, r)| line.unwrap_or_else(|| tg_report::jsonl::line(r)))
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
    if reports.is_empty() && errors.is_empty() {
        output::hint("no files to scan: check the paths and the --include/--exclude globs");
    }
    Ok(ExitCode::from(worst.exit_code()))
}

/// What to walk: the roots and the globs that filter them.
struct Walk<'a> {
    roots: &'a [PathBuf],
    /// Hand each directory's files over largest first (worth a `statx` each only when
    /// several threads share them).
    by_size: bool,
    exclude: &'a globset::GlobSet,
    include: Option<&'a globset::GlobSet>,
}

/// One file the walk found: its path, whether it was reached through a symlink, and its job
/// number once it has been handed to the scanning threads.
struct Found {
    path: PathBuf,
    is_link: bool,
    job: Option<usize>,
}

/// A report, with its JSON line when the workers render them.
type Scanned = (FileReport, Option<String>);

/// One scanning thread per core, the walking one among them. The cores are what the process
/// may use, CPU quotas included: finding out reads cgroup files, 30-70 µs here, so the early
/// [`Helper`] works it out while the command line is parsed, and the walk, which needs it for
/// a second helper, finds it done.
fn default_threads() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// When the default number of threads grows by one. A thread beyond one per core pays off only
/// while files come from the disk, where a thread waits and leaves its core idle; on files in
/// the page cache it only competes for the cores. On the 2-core benchmark machine (bench/
/// README.md, stop 14) one thread per core scanned a warm folder 5% and the warm corpus 9%
/// faster than one more, and a cold folder 10% slower. So the extra thread starts only once a
/// scan has gone on this long with files still waiting.
const LATE: Duration = Duration::from_millis(4);

/// Walk `walk` and scan every file found on up to `threads` threads (by default
/// [`default_threads`]), this one among them, and return the reports in the walk's order.
/// Files are scanned while the walk goes on: each thread takes the next file as soon as the
/// walk has found it, so one slow file holds up nothing else, and the walk costs no time of
/// its own. This thread walks, then scans. (A rayon pool would start every worker and leave
/// this thread waiting; for a directory that scans in milliseconds, a thread's start-up, its
/// stack and its malloc arena cost more than they bring, so a helper is only started once there
/// is a file for it.) A thread that cannot be started is done without.
///
/// This thread waits for the reports, not for the helpers: on a virtual machine a new thread
/// can take milliseconds to get a core (seen here: 5 ms after every file was scanned), and
/// joining it would hold the whole scan for that. A helper that starts after the last file
/// was taken finds nothing and ends on its own, or with the process.
fn scan_all(
    scanner: &Arc<Scanner>,
    walk: &Walk<'_>,
    threads: Option<usize>,
    early: Option<Helper>,
    bar: Option<&indicatif::ProgressBar>,
    json_lines: bool,
) -> (Vec<Scanned>, Vec<String>) {
    let pool = Arc::new(Pool::default());
    let mut crew = Crew {
        work: Work {
            scanner: Arc::clone(scanner),
            pool: Arc::clone(&pool),
            bar: bar.cloned(),
            json_lines,
        },
        threads,
        limit: None,
        helpers: 0,
        cannot_start: false,
        started: Instant::now(),
        late: false,
    };
    // The helper started before the command line was parsed is the first one (with `-j1` it is
    // dropped unused, and ends).
    if let Some(early) = early.filter(|_| threads != Some(1))
        && early.0.send(crew.work.clone()).is_ok()
    {
        crew.helpers = 1;
    }
    let mut hand_over = |path: &Path| {
        let i = pool.jobs.push(path.to_path_buf());
        if let Some(b) = bar {
            b.inc_length(1);
            if i == 8 {
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
        }
        crew.found(i);
        i
    };
    let (found, errors) = collect_files(walk, &mut hand_over);
    // Files reached only through a symlink were held back until every name was known.
    let found = dedupe_links(found, walk.roots.len() > 1);
    let found: Vec<Found> = found
        .into_iter()
        .map(|mut f| {
            if f.job.is_none() {
                f.job = Some(hand_over(&f.path));
            }
            f
        })
        .collect();
    pool.jobs.close();
    let work = crew.work.clone();
    let mine = work.scan(|| crew.late());
    let done = pool.wait_for_rest(mine);
    let mut by_job: Vec<Option<Scanned>> =
        std::iter::repeat_with(|| None).take(done.len()).collect();
    for (i, scanned) in done {
        by_job[i] = Some(scanned);
    }
    // Taken, not cloned: a helper that starts from now on finds the queue empty and closed.
    let scanned_as = std::mem::take(&mut pool.jobs.lock().paths);
    let scanned = found
        .into_iter()
        .filter_map(|f| {
            let job = f.job?;
            let (mut report, mut line) = by_job.get_mut(job)?.take()?;
            if scanned_as.get(job).is_some_and(|p| *p != f.path) {
                // The same file was scanned under another of its names: report it under this one.
                report.path = f.path.display().to_string();
                line = line.map(|_| tg_report::jsonl::line(&report));
            }
            Some((report, line))
        })
        .collect();
    (scanned, errors)
}

/// A scanning thread started before the command line is parsed, when it starts with `scan`:
/// on a virtual machine a new thread can take a few hundred µs to first run, and that wait
/// then overlaps the parsing and the set-up instead of the scan. It waits for its [`Work`]; a
/// scan that never gets that far (a usage error, `--help`) drops the sender, and it ends.
///
/// Before it waits, it works out the number of cores ([`default_threads`]), 30-70 µs that
/// would otherwise fall on the walking thread, and, when there is more than one core,
/// warms the scanner up ([`Scanner::warm_up`]): it scans a built-in checkpoint with the
/// default policy and renders its report, so the first touches of the scanner's code and of
/// its own malloc arena happen while the command line is parsed and the folder walked, not on
/// the way to the first reports (3-5% of a scan of the formats benchmark folder). One core:
/// nothing would overlap.
pub(crate) struct Helper(std::sync::mpsc::Sender<Work>);

impl Helper {
    /// Starts the thread (`None` if it cannot be started: the scan starts its helpers itself).
    pub(crate) fn start() -> Option<Helper> {
        let (send, receive) = std::sync::mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("scan-1".to_owned())
            .spawn(move || {
                if default_threads() > 1 {
                    // Rendered too, for the renderer's code; the line itself is dropped.
                    tg_report::jsonl::line(&Scanner::default().warm_up());
                }
                if let Ok(work) = receive.recv() {
                    work.help();
                }
            })
            .ok()?;
        Some(Helper(send))
    }
}

/// What a helper thread needs to scan from the queue.
#[derive(Clone)]
struct Work {
    scanner: Arc<Scanner>,
    pool: Arc<Pool>,
    bar: Option<indicatif::ProgressBar>,
    json_lines: bool,
}

impl Work {
    /// Scan from the queue until it is empty and closed, then hand the reports (or a panic)
    /// back to the walking thread.
    fn help(self) {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.scan(|| {})));
        self.pool.deliver(done);
    }

    /// Scan files from the queue until none is left, calling `after_each` after each one.
    fn scan(&self, mut after_each: impl FnMut()) -> Vec<(usize, Scanned)> {
        let mut done = Vec::new();
        while let Some((i, path)) = self.pool.jobs.take() {
            let report = self.scanner.scan_path(&path);
            let line = self.json_lines.then(|| tg_report::jsonl::line(&report));
            done.push((i, (report, line)));
            if let Some(b) = &self.bar {
                b.inc(1);
            }
            after_each();
        }
        done
    }
}

/// The walking thread's account of the helper threads it starts.
struct Crew {
    /// What each helper gets.
    work: Work,
    /// `-j N`, if given.
    threads: Option<usize>,
    /// The most threads, this one included (worked out once a second helper could start).
    limit: Option<usize>,
    helpers: usize,
    /// A thread could not be started: the scan goes on with those it has.
    cannot_start: bool,
    started: Instant,
    /// The thread past one per core has been started (see [`LATE`]).
    late: bool,
}

impl Crew {
    fn start(&mut self) {
        if self.cannot_start {
            return;
        }
        let work = self.work.clone();
        let started = std::thread::Builder::new()
            .name(format!("scan-{}", self.helpers + 1))
            .spawn(move || work.help());
        match started {
            Ok(_) => self.helpers += 1,
            Err(_) => self.cannot_start = true,
        }
    }

    /// The walk found job `i`: a helper for the second file, and one more per file after it,
    /// up to the limit.
    fn found(&mut self, i: usize) {
        let room = if self.helpers == 0 {
            self.threads != Some(1)
        } else {
            let threads = self.threads;
            self.helpers + 1
                < *self
                    .limit
                    .get_or_insert_with(|| threads.unwrap_or_else(default_threads))
        };
        if room && self.helpers < i {
            self.start();
        } else {
            self.late();
        }
    }

    /// With the default number of threads, one more once the scan is [`LATE`] with at least
    /// two files waiting.
    fn late(&mut self) {
        if !self.late
            && self.threads.is_none()
            && self.limit.is_some_and(|limit| self.helpers + 1 >= limit)
            && self.started.elapsed() >= LATE
            && self.work.pool.jobs.queued() >= 2
        {
            self.late = true;
            self.start();
        }
    }
}

/// The jobs, and the reports the helpers hand back when they run out of jobs.
#[derive(Default)]
struct Pool {
    jobs: Jobs,
    handed_back: std::sync::Mutex<HandedBack>,
    delivered: std::sync::Condvar,
}

#[derive(Default)]
struct HandedBack {
    done: Vec<(usize, Scanned)>,
    /// A helper's panic, raised again on the walking thread.
    panic: Option<Box<dyn std::any::Any + Send>>,
}

impl Pool {
    fn handed_back(&self) -> std::sync::MutexGuard<'_, HandedBack> {
        self.handed_back
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn deliver(&self, done: std::thread::Result<Vec<(usize, Scanned)>>) {
        let mut back = self.handed_back();
        match done {
            Ok(done) => back.done.extend(done),
            Err(panic) => back.panic = Some(panic),
        }
        drop(back);
        self.delivered.notify_all();
    }

    /// Every report, once the helpers have handed back the files they took (the queue is
    /// closed and empty when this is called, so no file is left untaken).
    fn wait_for_rest(&self, mut all: Vec<(usize, Scanned)>) -> Vec<(usize, Scanned)> {
        let total = self.jobs.lock().paths.len();
        let mut back = self.handed_back();
        loop {
            if let Some(panic) = back.panic.take() {
                drop(back);
                std::panic::resume_unwind(panic);
            }
            if all.len() + back.done.len() >= total {
                all.append(&mut back.done);
                return all;
            }
            back = self
                .delivered
                .wait(back)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// The files found so far, shared between the walk and the scanning threads.
#[derive(Default)]
struct Jobs {
    queue: std::sync::Mutex<Queue>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct Queue {
    paths: Vec<PathBuf>,
    /// The first file no thread has taken yet.
    next: usize,
    /// Threads waiting for a file (notifying nobody would still cost a system call).
    waiting: usize,
    /// The walk is over: no more files will come.
    closed: bool,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a file; returns its job number.
    fn push(&self, path: PathBuf) -> usize {
        let mut q = self.lock();
        q.paths.push(path);
        let (job, waiting) = (q.paths.len() - 1, q.waiting > 0);
        drop(q);
        if waiting {
            self.ready.notify_one();
        }
        job
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// How many files no thread has taken yet.
    fn queued(&self) -> usize {
        let q = self.lock();
        q.paths.len() - q.next
    }

    /// The next file to scan, waiting for the walk to find one; `None` once all are taken.
    fn take(&self) -> Option<(usize, PathBuf)> {
        let mut q = self.lock();
        loop {
            if let Some(path) = q.paths.get(q.next).cloned() {
                q.next += 1;
                return Some((q.next - 1, path));
            }
            if q.closed {
                return None;
            }
            q.waiting += 1;
            q = self
                .ready
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.waiting -= 1;
        }
    }
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

/// Every file under the roots, in a stable order: each root's files in the order of a sorted
/// depth-first walk. Directory symlinks are not followed (no loops); a symlink to a file is
/// scanned as that file. Files reached without a symlink go to `hand_over` once their
/// directory has been listed, largest first (see [`Batch`]); the others wait for
/// [`dedupe_links`].
fn collect_files(
    walk: &Walk<'_>,
    hand_over: &mut dyn FnMut(&Path) -> usize,
) -> (Vec<Found>, Vec<String>) {
    let mut files: Vec<Found> = Vec::new();
    let mut errors = Vec::new();
    for root in walk.roots {
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
            files.push(Found {
                path: root.clone(),
                is_link,
                job: (!is_link).then(|| hand_over(root)),
            });
            continue;
        }
        // Unsorted: walkdir's sort_by_file_name parses both paths at every comparison; this
        // root's files are sorted once below, into the same order.
        let first = files.len();
        let mut batch = Batch::default();
        let walker = walkdir::WalkDir::new(root).follow_links(false).into_iter();
        for entry in walker.filter_entry(|e| e.depth() == 0 || !matches(walk.exclude, e.path())) {
            match entry {
                Ok(e) => {
                    let is_link = e.path_is_symlink();
                    let is_file = e.file_type().is_file() || (is_link && e.path().is_file());
                    if !is_file {
                        continue;
                    }
                    if walk.include.is_some_and(|inc| !matches(inc, e.path())) {
                        continue;
                    }
                    if batch.parent.as_deref() != e.path().parent() || batch.files.len() >= BATCH {
                        batch.hand_over(&mut files, hand_over);
                        batch.parent = e.path().parent().map(Path::to_path_buf);
                    }
                    if !is_link {
                        // A file whose size cannot be read goes last; its scan reports why.
                        let size = if walk.by_size && !tg_scan::reads_header_only(e.path()) {
                            e.metadata().map_or(0, |m| m.len())
                        } else {
                            0
                        };
                        batch.files.push((size, files.len()));
                    }
                    files.push(Found {
                        path: e.into_path(),
                        is_link,
                        job: None,
                    });
                }
                Err(e) => errors.push(format!("cannot walk {}: {e}", root.display())),
            }
        }
        batch.hand_over(&mut files, hand_over);
        files[first..].sort_by_cached_key(|f| walk_order(&f.path));
    }
    (files, errors)
}

/// The most files of one directory held back before they are handed over together.
const BATCH: usize = 256;

/// The files of one directory found so far, handed over largest first: a scan takes as long
/// as its slowest thread, and a large checkpoint taken last leaves the other threads idle
/// while it is scanned. Sizes cost a `statx` per file, about 1.4-2 µs here. On the benchmark
/// folder with a 10 GiB checkpoint (bench/README.md, 2026-12-03) the whole scan took 5-7% less
/// time warm and 8-17% less cold; on the same folder without the checkpoint, 5% more. Files
/// whose scan reads only their header are not sized ([`tg_scan::reads_header_only`]): they
/// go after the others, and on that folder (35 of its 81 files) the scan took another 3% less.
#[derive(Default)]
struct Batch {
    parent: Option<PathBuf>,
    /// Size and place in the walk's list of each file.
    files: Vec<(u64, usize)>,
}

impl Batch {
    fn hand_over(&mut self, found: &mut [Found], hand_over: &mut dyn FnMut(&Path) -> usize) {
        // Stable: files of equal size keep the walk's order.
        self.files.sort_by_key(|&(size, _)| std::cmp::Reverse(size));
        for (_, i) in self.files.drain(..) {
            found[i].job = Some(hand_over(&found[i].path));
        }
    }
}

/// A Hugging Face hub cache names every file twice: `snapshots/<rev>/<name>` is a symlink to
/// `blobs/<sha>`. Report each real file (device and inode) once, at its first place in the
/// walk, under the snapshot name users recognise, with the scan of whichever name was scanned.
/// Without symlinks and with one root, the walk cannot reach a file twice, and the per-file
/// `stat` is skipped.
fn dedupe_links(files: Vec<Found>, several_roots: bool) -> Vec<Found> {
    use std::os::unix::fs::MetadataExt as _;
    if !several_roots && files.iter().all(|f| !f.is_link) {
        return files;
    }
    let mut seen: std::collections::HashMap<(u64, u64), usize> = std::collections::HashMap::new();
    let mut out: Vec<Found> = Vec::with_capacity(files.len());
    for f in files {
        let Ok(meta) = fs_err::metadata(&f.path) else {
            out.push(f);
            continue;
        };
        match seen.entry((meta.dev(), meta.ino())) {
            std::collections::hash_map::Entry::Occupied(kept) => {
                let kept = &mut out[*kept.get()];
                if f.is_link && !kept.is_link {
                    kept.path = f.path;
                    kept.is_link = true;
                }
                // Keep whichever scan there is (a link is not scanned yet).
                kept.job = kept.job.or(f.job);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.push(f);
            }
        }
    }
    out
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
    fn a_directory_is_handed_over_largest_first_and_ties_in_walk_order() {
        let mut found: Vec<Found> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| Found {
                path: PathBuf::from(n),
                is_link: false,
                job: None,
            })
            .collect();
        let mut batch = Batch {
            parent: None,
            files: vec![(10, 0), (500, 1), (10, 2), (7000, 3)],
        };
        let mut order = Vec::new();
        batch.hand_over(&mut found, &mut |p| {
            order.push(p.to_path_buf());
            order.len() - 1
        });
        assert_eq!(order, ["d", "b", "a", "c"].map(PathBuf::from));
        let jobs: Vec<Option<usize>> = found.iter().map(|f| f.job).collect();
        assert_eq!(jobs, [Some(2), Some(1), Some(3), Some(0)]);
        assert!(batch.files.is_empty());
    }

    #[test]
    fn header_only_files_are_not_sized_and_go_after_the_others() {
        let dir = tempfile::tempdir().unwrap();
        // Sparse: sizes without the bytes.
        for (name, size) in [
            ("big.safetensors", 1 << 30),
            ("big.GGUF", 1 << 29),
            ("small.pt", 10),
            ("mid.pkl", 1000),
        ] {
            fs_err::File::create(dir.path().join(name))
                .unwrap()
                .set_len(size)
                .unwrap();
        }
        let none = globs(&[]).unwrap();
        let roots = [dir.path().to_path_buf()];
        let walk = Walk {
            roots: &roots,
            by_size: true,
            exclude: &none,
            include: None,
        };
        let mut order = Vec::new();
        collect_files(&walk, &mut |p| {
            order.push(p.file_name().unwrap().to_string_lossy().into_owned());
            order.len() - 1
        });
        assert_eq!(order[..2], ["mid.pkl", "small.pt"]);
        let mut rest = order[2..].to_vec();
        rest.sort();
        assert_eq!(rest, ["big.GGUF", "big.safetensors"]);
    }

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
