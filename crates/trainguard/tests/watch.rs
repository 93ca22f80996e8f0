//! `trainguard watch serve`, `watch register`, `watch incidents` and `trainguard run`, end to end
//! on loopback, run as a user would: exit codes, stdout, stderr.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainguard"))
}

/// A collector on 127.0.0.1 with a free port, stopped when dropped.
struct Collector {
    child: Child,
    url: String,
}

impl Collector {
    fn start(db: &Path, extra: &[&str]) -> Self {
        let mut child = bin()
            .args(["watch", "serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("trainguard watch: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Collector { child, url }
    }

    fn register(&self, run: &str) -> String {
        let out = bin()
            .args(["watch", "register", "--collector", &self.url, "--run", run])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn incidents(&self, run: &str) -> (Option<i32>, Vec<Value>) {
        let out = bin()
            .args(["watch", "incidents", "--collector", &self.url, "--run", run])
            .args(["--format", "json"])
            .output()
            .unwrap();
        let lines = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out.status.code(), lines)
    }

    fn events(&self, run: &str) -> u64 {
        let runs = tg_server::Client::new(&self.url).unwrap().runs().unwrap();
        runs.iter()
            .find(|r| r.info.run == run)
            .map_or(0, |r| r.info.events)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_cmd(c: &Collector, run: &str, token: &str) -> Command {
    let mut cmd = bin();
    cmd.args(["run", "--collector", &c.url, "--run", run, "--token", token]);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_sigkilled_child_is_reported_with_its_signal() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("w.db"), &[]);
    let token = c.register("e2e");
    let out = run_cmd(&c, "e2e", &token)
        .args(["--", "sh", "-c", "kill -9 $$"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was killed by SIGKILL (9)"),
        "{}",
        stderr(&out)
    );

    let (code, incidents) = c.incidents("e2e");
    assert_eq!(code, Some(1), "incidents found exit 1");
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let i = &incidents[0];
    assert_eq!(i["detector"], "killed");
    assert_eq!(i["rank"], 0);
    assert_eq!(i["evidence"]["signal"], 9);
    assert_eq!(i["evidence"]["signal_name"], "SIGKILL");
    assert!(i["summary"].as_str().unwrap().contains("sender unknown"));

    // A clean exit raises nothing; human output names the count on stderr.
    let token = c.register("clean");
    let out = run_cmd(&c, "clean", &token)
        .args(["--", "sh", "-c", "exit 0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = bin()
        .args([
            "watch",
            "incidents",
            "--collector",
            &c.url,
            "--run",
            "clean",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stderr(&out),
        "trainguard watch: 0 incident(s) in run clean\n"
    );
}

#[test]
fn a_sigterm_to_the_launcher_is_forwarded_and_its_sender_named() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("w.db"), &[]);
    let token = c.register("term");
    let launcher = run_cmd(&c, "term", &token)
        .args(["--heartbeat", "0.2", "--", "sleep", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Handlers are installed before the child starts, and process_start is sent after it.
    wait_for("process_start", || c.events("term") >= 1);
    let pid = Pid::from_raw(i32::try_from(launcher.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    let out = launcher.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 15), "{}", stderr(&out));

    let me = std::process::id();
    let uid = rustix::process::getuid().as_raw();
    let (_, incidents) = c.incidents("term");
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let summary = incidents[0]["summary"].as_str().unwrap();
    assert!(summary.contains("killed by SIGTERM (15)"), "{summary}");
    assert!(
        summary.contains(&format!("by pid {me} (uid {uid})")),
        "{summary}"
    );
    assert_eq!(incidents[0]["evidence"]["forwarded"]["sender"]["pid"], me);
}

#[test]
fn a_killed_launcher_is_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("w.db"), &["--heartbeat-timeout", "1"]);
    let token = c.register("lost");
    let mut launcher = run_cmd(&c, "lost", &token)
        .args(["--heartbeat", "0.2", "--", "sleep", "30"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("heartbeats", || c.events("lost") >= 3);
    launcher.kill().unwrap(); // SIGKILL: no exit record, heartbeats stop
    launcher.wait().unwrap();
    let mut found = Vec::new();
    wait_for("heartbeat_missing", || {
        found = c.incidents("lost").1;
        !found.is_empty()
    });
    assert_eq!(found[0]["detector"], "heartbeat_missing");
    // The orphaned training process keeps running; stop it by the pid the collector recorded.
    let orphan = found[0]["evidence"]["pid"].as_i64().unwrap();
    let orphan = Pid::from_raw(i32::try_from(orphan).unwrap()).unwrap();
    let _ = rustix::process::kill_process(orphan, Signal::KILL);
}

#[test]
fn env_verify_failure_refuses_to_start_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let out = bin()
        .args([
            "run",
            "--env-verify",
            "--env-python",
            "/nonexistent/python3",
            "--",
            "touch",
        ])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to start the command"),
        "{}",
        stderr(&out)
    );
    assert!(!marker.exists());
}

#[test]
fn serve_refuses_a_bad_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    fs_err::write(&tokens, "../evil tok\n").unwrap();
    let out = bin()
        .args(["watch", "serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("w.db"))
        .arg("--tokens-file")
        .arg(&tokens)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("line 1: invalid run id"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exits_are_recorded_in_the_ledger_without_a_collector() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    let out = bin()
        .arg("--ledger")
        .arg(&ledger)
        .args(["run", "--", "sh", "-c", "kill -9 $$"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let show = bin()
        .arg("--ledger")
        .arg(&ledger)
        .args(["ledger", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{}", stderr(&show));
    assert!(text.contains("killed by SIGKILL"), "{text}");
    let verify = bin()
        .arg("--ledger")
        .arg(&ledger)
        .args(["ledger", "verify"])
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
}

#[test]
fn serve_refuses_out_of_range_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let thresholds = dir.path().join("t.json");
    fs_err::write(&thresholds, r#"{"update_min_cosine": 3}"#).unwrap();
    let out = bin()
        .args(["watch", "serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("w.db"))
        .arg("--thresholds")
        .arg(&thresholds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid threshold update_min_cosine: 3"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn incidents_with_a_read_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("read-token");
    fs_err::write(&token_file, "r3ader\n").unwrap();
    let c = Collector::start(
        &dir.path().join("w.db"),
        &["--read-token-file", token_file.to_str().unwrap()],
    );
    c.register("guarded");
    let base = [
        "watch",
        "incidents",
        "--collector",
        &c.url,
        "--run",
        "guarded",
    ];
    let out = bin().args(base).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("collector answered 401"),
        "{}",
        stderr(&out)
    );
    let out = bin()
        .args(base)
        .args(["--read-token", "r3ader"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Headless Chromium, as `scripts/setup-chromium` installs it (Debian's `chromium`).
fn chromium() -> String {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return candidate.to_string();
        }
    }
    panic!(
        "headless Chromium is required for the dashboard test: run scripts/test (scripts/setup-chromium installs it)"
    );
}

fn step_event(run: &str, rank: u32, step: u64, wall_s: f64) -> tg_watch::Event {
    serde_json::from_value(serde_json::json!({
        "type": "step", "run": run, "rank": rank, "world_size": 2, "host": "node-a",
        "pid": 1000 + rank, "time_unix_s": 1.7e9 + step as f64, "step": step, "wall_s": wall_s,
    }))
    .unwrap()
}

/// The dashboard as a person sees it: a real browser (headless Chromium) loads the page and the
/// DOM it builds holds the run, its incident and one step-time line per rank.
#[test]
fn dashboard_renders_in_headless_chromium() {
    let browser = chromium();
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(&dir.path().join("w.db"), &[]);
    let token = c.register("dash");
    let client = tg_server::Client::new(&c.url)
        .unwrap()
        .with_token(token.clone());
    let mut events = Vec::new();
    for step in 1..=30 {
        events.push(step_event("dash", 0, step, 0.100));
        events.push(step_event("dash", 1, step, 0.102));
    }
    client.send("dash", events).unwrap();
    let out = run_cmd(&c, "dash", &token)
        .args([
            "--rank",
            "1",
            "--world-size",
            "2",
            "--",
            "sh",
            "-c",
            "kill -9 $$",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));

    let profile = dir.path().join("chromium-profile");
    let page = bin_output(
        Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("{}/?run=dash", c.url)),
    );
    assert!(
        page.contains("<svg id=\"chart\""),
        "no chart in the page:\n{page}"
    );
    for rank in ["data-rank=\"0\"", "data-rank=\"1\""] {
        assert!(page.contains(rank), "no step-time line for {rank}:\n{page}");
    }
    assert!(page.contains(">dash<"), "the run is not listed:\n{page}");
    assert!(
        page.contains("killed"),
        "the incident is not shown:\n{page}"
    );
}

fn bin_output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
