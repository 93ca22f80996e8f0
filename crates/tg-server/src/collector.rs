//! The collector's state: the store, one [`RunWatch`] per run, metrics, the webhook queue.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tg_watch::{Checked, Detector, Event, EventError, Incident, RankView, RunWatch, Thresholds};
use tokio::sync::mpsc;

use crate::commit::{Committer, Rows};
use crate::error::Error;
use crate::metrics::{Global, RunMetrics};
use crate::store::{RunInfo, Store};
use crate::webhook::Target;

/// Most events accepted in one batch by default.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 50_000;
/// Most incidents returned by `GET /v1/runs/{run}/incidents`.
pub const MAX_INCIDENTS_LISTED: usize = 10_000;
/// Incidents waiting for the webhook before new ones are dropped (and counted as failed).
const WEBHOOK_QUEUE: usize = 4096;

/// How to run the collector.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The SQLite database (created if missing).
    pub db: PathBuf,
    /// Detector thresholds.
    pub thresholds: Thresholds,
    /// Pre-configured `(run, token)` pairs; they replace stored tokens of the same runs.
    pub tokens: Vec<(String, String)>,
    /// Whether `POST /v1/runs` may register new runs.
    pub allow_registration: bool,
    /// `http://HOST:PORT/PATH` to POST every incident to.
    pub webhook: Option<String>,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// When set, every read (runs, incidents, ranks, metrics, dashboard) needs this token, so a
    /// job's own credentials cannot read what the detectors found.
    pub read_token: Option<String>,
}

impl Config {
    /// Defaults: open registration, no webhook, default thresholds.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Config {
            db: db.into(),
            thresholds: Thresholds::default(),
            tokens: Vec::new(),
            allow_registration: true,
            webhook: None,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            read_token: None,
        }
    }
}

/// A run as `GET /v1/runs` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunSummary {
    /// Stored counts.
    #[serde(flatten)]
    pub info: RunInfo,
    /// World size last reported.
    pub world_size: u32,
    /// Ranks seen.
    pub ranks: usize,
}

pub(crate) struct RunEntry {
    pub(crate) token_sha256: String,
    pub(crate) watch: RunWatch,
    pub(crate) metrics: RunMetrics,
}

pub(crate) struct State {
    pub(crate) runs: BTreeMap<String, RunEntry>,
    pub(crate) global: Global,
}

struct Shared {
    /// Detector state and counters. Held briefly: never across a commit.
    state: Mutex<State>,
    /// The store, behind the group commit.
    committer: Committer,
    thresholds: Checked,
    allow_registration: bool,
    max_batch_events: usize,
    read_token_sha256: Option<String>,
    webhook: Option<(Target, mpsc::Sender<Incident>)>,
    webhook_rx: Mutex<Option<mpsc::Receiver<Incident>>>,
}

/// The collector; cheap to clone (shared state).
#[derive(Clone)]
pub struct Collector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch on the collector's clock.
pub fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// SHA-256 of a token, in hex: only hashes are stored.
fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness for a token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Collector {
    /// Open the store, apply configured tokens and replay stored events into the detectors (their
    /// incidents are already stored, so the replay raises none).
    pub fn open(config: Config) -> Result<Self, Error> {
        let thresholds = config.thresholds.check()?;
        let store = Store::open(&config.db)?;
        let created = now_unix_s();
        for (run, token) in &config.tokens {
            if !tg_watch::valid_run_id(run) {
                return Err(Error::BadRunId(run.clone()));
            }
            store.put_run(run, &token_hash(token), created)?;
        }
        let mut runs = BTreeMap::new();
        for (run, hash) in store.tokens()? {
            runs.insert(
                run.clone(),
                RunEntry {
                    token_sha256: hash,
                    watch: RunWatch::new(run, &thresholds),
                    metrics: RunMetrics::default(),
                },
            );
        }
        store.replay(|run, event, at| {
            if let Some(entry) = runs.get_mut(run) {
                entry.metrics.event(&event);
                let _ = entry.watch.observe(&event, at);
            }
        })?;
        // Silences that began before this start: report those not reported yet (the collector
        // may have been down), not again those it already reported.
        let now = now_unix_s();
        let mut pending = Vec::new();
        for (run, entry) in &mut runs {
            let candidates = entry.watch.tick(now);
            if candidates.is_empty() {
                continue;
            }
            let reported = store.incidents(run, MAX_INCIDENTS_LISTED)?;
            let seen: BTreeMap<u32, f64> = entry
                .watch
                .ranks()
                .iter()
                .map(|r| (r.rank, r.last_seen_unix_s))
                .collect();
            pending.extend(candidates.into_iter().filter(|c| {
                let since = c.rank.and_then(|r| seen.get(&r)).copied().unwrap_or(0.0);
                !reported
                    .iter()
                    .any(|i| i.detector == c.detector && i.rank == c.rank && i.time_unix_s >= since)
            }));
        }
        let mut store = store;
        if !pending.is_empty() {
            store.append_incidents(&pending)?;
        }
        for (run, detector, n) in store.incident_counts()? {
            let d = Detector::ALL.into_iter().find(|d| d.as_str() == detector);
            if let (Some(entry), Some(d)) = (runs.get_mut(&run), d) {
                entry.metrics.add_incidents(d, n);
            }
        }
        let (webhook, webhook_rx) = match &config.webhook {
            Some(url) => {
                let target = Target::parse(url)?;
                let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
                (Some((target, tx)), Some(rx))
            }
            None => (None, None),
        };
        let collector = Collector {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    runs,
                    global: Global::default(),
                }),
                committer: Committer::new(store),
                thresholds,
                allow_registration: config.allow_registration,
                max_batch_events: config.max_batch_events,
                read_token_sha256: config.read_token.as_deref().map(token_hash),
                webhook,
                webhook_rx: Mutex::new(webhook_rx),
            }),
        };
        collector.notify(pending);
        Ok(collector)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters possibly half-updated, never the
        // store (it is not behind this lock): keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Check a read: allowed when no read token is configured, else only with it.
    pub fn authorize_read(&self, token: Option<&str>) -> Result<(), Error> {
        match (&self.shared.read_token_sha256, token) {
            (None, _) => Ok(()),
            (Some(expected), Some(token)) if *expected == token_hash(token) => Ok(()),
            (Some(_), _) => {
                let mut state = self.lock();
                Err(self.reject(&mut state, "read_unauthorized", Error::ReadUnauthorized))
            }
        }
    }

    fn reject(&self, state: &mut State, reason: &'static str, err: Error) -> Error {
        *state.global.rejected.entry(reason).or_default() += 1;
        err
    }

    /// Register a run (a fresh id when `run` is `None`); returns the run id and its token, which
    /// is shown once and stored only as a hash.
    pub fn register(&self, run: Option<String>) -> Result<(String, String), Error> {
        let mut state = self.lock();
        let run = match run {
            Some(run) => run,
            None => format!("run-{}", &new_token()?[..12]),
        };
        if !self.shared.allow_registration {
            return Err(self.reject(
                &mut state,
                "registration_closed",
                Error::RegistrationClosed(run),
            ));
        }
        if !tg_watch::valid_run_id(&run) {
            return Err(self.reject(&mut state, "bad_request", Error::BadRunId(run)));
        }
        if state.runs.contains_key(&run) {
            return Err(self.reject(&mut state, "run_exists", Error::RunExists(run)));
        }
        let token = new_token()?;
        let hash = token_hash(&token);
        self.shared
            .committer
            .store()
            .put_run(&run, &hash, now_unix_s())?;
        let watch = RunWatch::new(run.clone(), &self.shared.thresholds);
        state.runs.insert(
            run.clone(),
            RunEntry {
                token_sha256: hash,
                watch,
                metrics: RunMetrics::default(),
            },
        );
        Ok((run, token))
    }

    /// Authenticate, validate, detect, then store durably. Returns the number of events stored,
    /// once they are committed. Blocking (SQLite fsync): call from a blocking thread.
    pub fn ingest(&self, run: &str, token: Option<&str>, body: &[u8]) -> Result<usize, Error> {
        // Only the detectors need the state lock for long; parsing, validation and the commit
        // run outside it, so concurrent batches overlap and share commits (crate::commit).
        let hash = token.map(token_hash);
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            let Some(hash) = hash else {
                return Err(self.reject(state, "unauthorized", Error::Unauthorized));
            };
            let Some(entry) = state.runs.get(run) else {
                return Err(self.reject(state, "unknown_run", Error::UnknownRun(run.to_string())));
            };
            if entry.token_sha256 != hash {
                return Err(self.reject(state, "forbidden", Error::Forbidden(run.to_string())));
            }
        }
        let (events, mut rows) = self.parse(run, body).map_err(|(reason, err)| {
            let mut state = self.lock();
            self.reject(&mut state, reason, err)
        })?;
        let (ticket, incidents) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let Some(entry) = state.runs.get_mut(run) else {
                return Err(Error::UnknownRun(run.to_string()));
            };
            rows.now = now_unix_s();
            for e in &events {
                rows.incidents.extend(entry.watch.observe(e, rows.now));
            }
            // Incidents are rare: a copy for the metrics and the webhook is cheap.
            let incidents = rows.incidents.clone();
            // Queued under the lock: stored in the order the detectors saw the batches, which
            // is the order a restart replays them in.
            (self.shared.committer.submit(rows), incidents)
        };
        // Acknowledged only after the commit (and its fsync) that holds these rows.
        self.shared.committer.wait(ticket)?;
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(entry) = state.runs.get_mut(run) {
            for e in &events {
                entry.metrics.event(e);
            }
            for i in &incidents {
                entry.metrics.incident(i.detector);
            }
        }
        state.global.batches += 1;
        state.global.events += events.len() as u64;
        drop(guard);
        self.notify(incidents);
        Ok(events.len())
    }

    /// Parse and validate a batch for `run`: the events, and the rows to store (each event's
    /// JSON exactly as received, so nothing is serialised again); on failure, the metrics
    /// reason and the error.
    fn parse(&self, run: &str, body: &[u8]) -> Result<(Vec<Event>, Rows), (&'static str, Error)> {
        /// The body with each event left as its JSON text: the same shape as [`tg_watch::Batch`].
        #[derive(serde::Deserialize)]
        struct RawBatch<'a> {
            #[serde(borrow)]
            events: Vec<&'a RawValue>,
        }
        let batch: RawBatch<'_> = serde_json::from_slice(body)
            .map_err(|e| ("bad_request", Error::BadJson(e.to_string())))?;
        if batch.events.len() > self.shared.max_batch_events {
            return Err((
                "too_large",
                Error::BatchTooLarge(batch.events.len(), self.shared.max_batch_events),
            ));
        }
        let mut events = Vec::with_capacity(batch.events.len());
        let mut rows = Rows {
            run: run.to_string(),
            text: String::with_capacity(body.len()),
            events: Vec::with_capacity(batch.events.len()),
            ..Rows::default()
        };
        for (index, raw) in batch.events.iter().enumerate() {
            let e = crate::decode::event(raw.get())
                .map_err(|e| ("bad_request", Error::BadJson(format!("event {index}: {e}"))))?;
            let checked = e.validate().and_then(|()| {
                if e.run == run {
                    Ok(())
                } else {
                    Err(EventError::WrongRun {
                        event: e.run.clone(),
                        url: run.to_string(),
                    })
                }
            });
            if let Err(source) = checked {
                return Err(("bad_event", Error::BadEvent { index, source }));
            }
            // Stored as received: it parses back to this same event on replay. Fields the
            // wire format does not know are kept too; they count against the body limit like
            // everything else.
            let start = rows.text.len();
            rows.text.push_str(raw.get());
            rows.events.push((e.rank, start..rows.text.len()));
            events.push(e);
        }
        Ok((events, rows))
    }

    fn notify(&self, incidents: Vec<Incident>) {
        let Some((_, tx)) = &self.shared.webhook else {
            return;
        };
        let mut dropped = 0;
        for i in incidents {
            if tx.try_send(i).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.lock().global.webhook_failed += dropped;
        }
    }

    /// Run the time-based detectors of every run at `now`, store and send what they find.
    /// Blocking (SQLite fsync).
    pub fn tick(&self, now: f64) -> Result<Vec<Incident>, Error> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut found = Vec::new();
        for entry in state.runs.values_mut() {
            let incidents = entry.watch.tick(now);
            for i in &incidents {
                entry.metrics.incident(i.detector);
            }
            found.extend(incidents);
        }
        if found.is_empty() {
            return Ok(found);
        }
        let ticket = self.shared.committer.submit(Rows {
            incidents: found.clone(),
            ..Rows::default()
        });
        drop(guard);
        self.shared.committer.wait(ticket)?;
        self.notify(found.clone());
        Ok(found)
    }

    /// Stored incidents of a run, oldest first (the last [`MAX_INCIDENTS_LISTED`]).
    pub fn incidents(&self, run: &str) -> Result<Vec<Incident>, Error> {
        if !self.lock().runs.contains_key(run) {
            return Err(Error::UnknownRun(run.to_string()));
        }
        self.shared
            .committer
            .store()
            .incidents(run, MAX_INCIDENTS_LISTED)
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunSummary>, Error> {
        let stored = self.shared.committer.store().runs()?;
        let state = self.lock();
        Ok(stored
            .into_iter()
            .map(|info| {
                let (world_size, ranks) = state
                    .runs
                    .get(&info.run)
                    .map_or((0, 0), |e| (e.watch.world_size(), e.watch.ranks().len()));
                RunSummary {
                    info,
                    world_size,
                    ranks,
                }
            })
            .collect())
    }

    /// The ranks of a run.
    pub fn ranks(&self, run: &str) -> Result<Vec<RankView>, Error> {
        let state = self.lock();
        state
            .runs
            .get(run)
            .map(|e| e.watch.ranks())
            .ok_or_else(|| Error::UnknownRun(run.to_string()))
    }

    /// The Prometheus exposition.
    pub fn metrics(&self, now: f64) -> String {
        let mut state = self.lock();
        state.global.commits = self.shared.committer.commits();
        crate::metrics::render(
            state
                .runs
                .iter()
                .map(|(run, e)| (run.as_str(), &e.watch, &e.metrics)),
            &state.global,
            now,
        )
    }

    /// The dashboard page for `run` (the newest run when `None`).
    pub fn dashboard(&self, run: Option<&str>, now: f64) -> Result<String, Error> {
        let runs = self.runs()?;
        let selected = run
            .map(str::to_string)
            .or_else(|| runs.first().map(|r| r.info.run.clone()));
        let detail = match &selected {
            Some(run) => {
                let incidents = self.incidents(run)?;
                let state = self.lock();
                let entry = state
                    .runs
                    .get(run)
                    .ok_or_else(|| Error::UnknownRun(run.clone()))?;
                let ranks = entry.watch.ranks();
                let series: Vec<(u32, Vec<f64>)> = ranks
                    .iter()
                    .map(|r| (r.rank, entry.watch.recent_step_times(r.rank, 200)))
                    .collect();
                Some(crate::dashboard::Detail {
                    run: run.clone(),
                    incidents,
                    ranks,
                    series,
                })
            }
            None => None,
        };
        Ok(crate::dashboard::render(&runs, detail.as_ref(), now))
    }

    /// Start the background tasks on the current tokio runtime: the heartbeat ticker (every
    /// second) and the webhook sender. Call once.
    pub fn spawn_background(&self) {
        let ticker = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let c = ticker.clone();
                let _ = tokio::task::spawn_blocking(move || c.tick(now_unix_s())).await;
            }
        });
        let rx = self
            .shared
            .webhook_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let (Some((target, _)), Some(rx)) = (&self.shared.webhook, rx) {
            let target = target.clone();
            let collector = self.clone();
            tokio::spawn(crate::webhook::run(target, rx, move |ok| {
                let mut state = collector.lock();
                if ok {
                    state.global.webhook_delivered += 1;
                } else {
                    state.global.webhook_failed += 1;
                }
            }));
        }
    }
}
