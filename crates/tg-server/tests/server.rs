//! The collector driven through its router (no socket), plus a loopback throughput measurement.

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tg_server::{Client, Collector, Config, router};
use tower::ServiceExt;

fn collector(dir: &tempfile::TempDir) -> Collector {
    Collector::open(Config::new(dir.path().join("watch.db"))).unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

async fn register(app: &Router, run: &str) -> String {
    let req = Request::post("/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "run": run }).to_string()))
        .unwrap();
    let (status, body) = call(app, req).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["run"], run);
    v["token"].as_str().unwrap().to_string()
}

fn post_events(run: &str, token: Option<&str>, events: &Value) -> Request<Body> {
    let mut req = Request::post(format!("/v1/runs/{run}/events"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    req.body(Body::from(json!({ "events": events }).to_string()))
        .unwrap()
}

fn ev(run: &str, rank: u32, world: u32, body: Value) -> Value {
    let mut e = json!({
        "run": run, "rank": rank, "world_size": world, "host": format!("gpu-{rank}"),
        "pid": 100 + rank, "user": "alice", "time_unix_s": 1.0e9,
    });
    for (k, v) in body.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

fn step(run: &str, rank: u32, world: u32, n: u64, cosine: f64, fp: &str) -> Value {
    ev(
        run,
        rank,
        world,
        json!({
            "type": "step", "step": n, "wall_s": 0.25 + 0.001 * f64::from(rank), "device_s": 0.2,
            "loss": 1.5, "update": {"dot": cosine, "cosine": cosine},
            "param_fingerprint": fp,
        }),
    )
}

async fn incidents(app: &Router, run: &str) -> Vec<Value> {
    let (status, body) = call(
        app,
        Request::get(format!("/v1/runs/{run}/incidents"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn ingestion_runs_the_detectors_and_lists_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(collector(&dir));
    let token = register(&app, "job-1").await;
    let mut events = Vec::new();
    for n in 1..=5 {
        for rank in 0..2 {
            let cosine = if rank == 1 && n == 4 { -0.999 } else { 0.998 };
            let fp = if rank == 1 && n == 5 { "bad0" } else { "a1b2" };
            events.push(step("job-1", rank, 3, n, cosine, fp));
        }
        events.push(step("job-1", 2, 3, n, 0.998, "a1b2"));
    }
    events.push(ev(
        "job-1",
        2,
        3,
        json!({"type": "process_exit", "signal": 9}),
    ));
    let (status, body) = call(&app, post_events("job-1", Some(&token), &json!(events))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["accepted"], 16);

    let found = incidents(&app, "job-1").await;
    let kinds: Vec<(&str, Option<u64>, Option<u64>)> = found
        .iter()
        .map(|i| {
            (
                i["detector"].as_str().unwrap(),
                i["rank"].as_u64(),
                i["step"].as_u64(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("update_flipped", Some(1), Some(4))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("replica_divergence", Some(1), Some(5))),
        "{kinds:?}"
    );
    assert!(kinds.contains(&("killed", Some(2), Some(5))), "{kinds:?}");
    assert_eq!(found.len(), 3, "{found:#?}");
    let killed = found.iter().find(|i| i["detector"] == "killed").unwrap();
    assert_eq!(killed["host"], "gpu-2");
    assert!(killed["summary"].as_str().unwrap().contains("SIGKILL"));

    let (status, body) = call(&app, Request::get("/v1/runs").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let runs: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(runs[0]["run"], "job-1");
    assert_eq!(runs[0]["events"], 16);
    assert_eq!(runs[0]["incidents"], 3);
    assert_eq!(runs[0]["world_size"], 3);
}

#[tokio::test]
async fn a_token_writes_only_its_own_run() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(collector(&dir));
    let token_a = register(&app, "run-a").await;
    let _token_b = register(&app, "run-b").await;
    let batch_b = json!([ev("run-b", 0, 1, json!({"type": "heartbeat"}))]);

    let (status, _) = call(&app, post_events("run-b", None, &batch_b)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(&app, post_events("run-b", Some(&token_a), &batch_b)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("token not valid for run"));
    let (status, _) = call(&app, post_events("run-b", Some("guess"), &batch_b)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Run A's token cannot smuggle run B's events through run A's URL either.
    let (status, body) = call(&app, post_events("run-a", Some(&token_a), &batch_b)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("sent to run"));
    let (status, _) = call(&app, post_events("run-c", Some(&token_a), &batch_b)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Registering an existing run does not hand out its token again.
    let req = Request::post("/v1/runs")
        .body(Body::from(r#"{"run": "run-b"}"#))
        .unwrap();
    assert_eq!(call(&app, req).await.0, StatusCode::CONFLICT);
    // Nothing was stored for run B.
    let (_, body) = call(&app, Request::get("/v1/runs").body(Body::empty()).unwrap()).await;
    let runs: Value = serde_json::from_slice(&body).unwrap();
    let b = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run"] == "run-b")
        .unwrap();
    assert_eq!(b["events"], 0);
    let (_, metrics) = call(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("trainguard_ingest_rejected_total{reason=\"forbidden\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn hostile_batches_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(collector(&dir));
    let token = register(&app, "r").await;
    let bad_hex = json!([
        ev("r", 0, 1, json!({"type": "heartbeat"})),
        ev(
            "r",
            0,
            1,
            json!({"type": "step", "step": 1, "wall_s": 0.1, "param_fingerprint": "zz"})
        ),
    ]);
    let (status, body) = call(&app, post_events("r", Some(&token), &bad_hex)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("event 1 refused"));
    let not_json = Request::post("/v1/runs/r/events")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from("{\"events\": ["))
        .unwrap();
    assert_eq!(call(&app, not_json).await.0, StatusCode::BAD_REQUEST);
    let rank_out = json!([ev("r", 5, 2, json!({"type": "heartbeat"}))]);
    assert_eq!(
        call(&app, post_events("r", Some(&token), &rank_out))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (_, body) = call(&app, Request::get("/v1/runs").body(Body::empty()).unwrap()).await;
    let runs: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(runs[0]["events"], 0);
}

#[tokio::test]
async fn metrics_follow_prometheus_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(collector(&dir));
    let token = register(&app, "m").await;
    let events: Vec<Value> = (1..=3)
        .map(|n| step("m", 0, 1, n, if n == 3 { -1.0 } else { 1.0 }, "ab12cd"))
        .chain([ev("m", 0, 1, json!({"type": "process_exit", "signal": 15}))])
        .collect();
    assert_eq!(
        call(&app, post_events("m", Some(&token), &json!(events)))
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = call(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    for expected in [
        "# TYPE trainguard_step_duration_seconds histogram",
        "trainguard_step_duration_seconds_bucket{run=\"m\",rank=\"0\",le=\"0.25\"} 3",
        "trainguard_step_duration_seconds_bucket{run=\"m\",rank=\"0\",le=\"+Inf\"} 3",
        "trainguard_step_duration_seconds_count{run=\"m\",rank=\"0\"} 3",
        "trainguard_events_total{run=\"m\",rank=\"0\",type=\"step\"} 3",
        "trainguard_incidents_total{run=\"m\",detector=\"update_flipped\"} 1",
        "trainguard_incidents_total{run=\"m\",detector=\"killed\"} 1",
        "trainguard_update_cosine{run=\"m\",rank=\"0\"} -1",
        "trainguard_process_signal_exits_total{run=\"m\",rank=\"0\",signal=\"SIGTERM\"} 1",
        "trainguard_rank_up{run=\"m\",rank=\"0\"} 0",
        "trainguard_rank_step{run=\"m\",rank=\"0\"} 3",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // Every sample line is `name{labels} value`; counters end in _total; no step or hash labels.
    let mut types = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
            "{line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("trainguard_"), "{line}");
        assert!(
            !series.contains("step=") && !series.contains("ab12cd"),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {line}");
    }
}

#[tokio::test]
async fn dashboard_shows_the_run_its_incidents_and_step_times() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(collector(&dir));
    let token = register(&app, "dash-run").await;
    let mut events: Vec<Value> = (1..=20)
        .flat_map(|n| (0..2).map(move |r| step("dash-run", r, 2, n, 0.99, "ff")))
        .collect();
    events.push(ev(
        "dash-run",
        1,
        2,
        json!({"type": "process_exit", "exit_code": 3}),
    ));
    assert_eq!(
        call(&app, post_events("dash-run", Some(&token), &json!(events)))
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = call(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<a href=\"/?run=dash-run\">dash-run</a>"));
    assert!(page.contains("failed_exit"));
    assert!(page.contains("data-rank=\"0\"") && page.contains("data-rank=\"1\""));
    assert!(page.contains("<svg"));
    let (status, _) = call(
        &app,
        Request::get("/?run=nope").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn state_survives_a_restart_and_silence_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let token = {
        let c = collector(&dir);
        let app = router(c.clone());
        let token = register(&app, "durable").await;
        let start = json!([ev(
            "durable",
            0,
            2,
            json!({"type": "process_start", "seed": 42})
        )]);
        assert_eq!(
            call(&app, post_events("durable", Some(&token), &start))
                .await
                .0,
            StatusCode::OK
        );
        // Rank 0 went silent: the ticker reports it.
        let found = c.tick(tg_server::now_unix_s() + 60.0).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, tg_watch::Detector::HeartbeatMissing);
        token
    };
    // A fresh collector on the same database: token, incidents and detector state are back.
    let app = router(collector(&dir));
    assert_eq!(incidents(&app, "durable").await.len(), 1);
    let restart = json!([ev(
        "durable",
        1,
        2,
        json!({"type": "process_start", "seed": 43})
    )]);
    assert_eq!(
        call(&app, post_events("durable", Some(&token), &restart))
            .await
            .0,
        StatusCode::OK
    );
    let found = incidents(&app, "durable").await;
    assert_eq!(found.len(), 2);
    assert_eq!(found[1]["detector"], "seed_changed");
    assert_eq!(found[1]["evidence"]["expected_seed"], 42);
}

#[tokio::test]
async fn configured_tokens_and_closed_registration() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("w.db"));
    config.tokens = vec![("fixed".into(), "s3cret".into())];
    config.allow_registration = false;
    let app = router(Collector::open(config).unwrap());
    let hb = json!([ev("fixed", 0, 1, json!({"type": "heartbeat"}))]);
    assert_eq!(
        call(&app, post_events("fixed", Some("s3cret"), &hb))
            .await
            .0,
        StatusCode::OK
    );
    let req = Request::post("/v1/runs")
        .body(Body::from(r#"{"run": "x"}"#))
        .unwrap();
    assert_eq!(call(&app, req).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn incidents_are_posted_to_the_webhook_with_retry() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hook.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(8);
    tokio::spawn(async move {
        for attempt in 0.. {
            let (mut s, _) = hook.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head and the whole body (Content-Length).
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len || n == 0 {
                        break;
                    }
                }
            }
            // The first attempt fails: the collector must retry.
            let status = if attempt == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = s
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
            if attempt > 0 {
                let text = String::from_utf8_lossy(&buf).to_string();
                tx.send(text.split_once("\r\n\r\n").unwrap().1.to_string())
                    .await
                    .unwrap();
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("w.db"));
    config.webhook = Some(format!("http://{addr}/hook"));
    let c = Collector::open(config).unwrap();
    c.spawn_background();
    let app = router(c.clone());
    let token = register(&app, "hooked").await;
    let kill = json!([ev(
        "hooked",
        0,
        1,
        json!({"type": "process_exit", "signal": 9})
    )]);
    assert_eq!(
        call(&app, post_events("hooked", Some(&token), &kill))
            .await
            .0,
        StatusCode::OK
    );
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let incident: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(incident["detector"], "killed");
    assert_eq!(incident["run"], "hooked");
    // The outcome is counted once the collector has read the 200.
    let delivered = "trainguard_webhook_deliveries_total{outcome=\"delivered\"} 1";
    for _ in 0..100 {
        if c.metrics(0.0).contains(delivered) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(c.metrics(0.0).contains(delivered));
}

/// The collector served on a free loopback port by a runtime of its own (keep it alive), and
/// its URL.
fn serve_loopback(c: &Collector) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(axum::serve(listener, router(c.clone())).into_future());
    (rt, url)
}

/// Events per second through a real loopback socket: two clients, batches of 1000 step events,
/// each batch committed (fsync) before it is acknowledged.
#[test]
fn loopback_ingestion_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector(&dir);
    let (_rt, url) = serve_loopback(&c);
    let token = Client::new(&url).unwrap().register("bench").unwrap();
    // TRAINGUARD_BENCH_BATCHES=N measures a longer run (N batches per client).
    let batches: u64 = std::env::var("TRAINGUARD_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    const PER_BATCH: u64 = 1000;
    let started = Instant::now();
    std::thread::scope(|s| {
        for rank in 0..2u32 {
            let (url, token) = (url.clone(), token.clone());
            s.spawn(move || {
                let client = Client::new(&url).unwrap().with_token(token);
                for b in 0..batches {
                    let events: Vec<tg_watch::Event> = (0..PER_BATCH)
                        .map(|i| {
                            let v = step("bench", rank, 2, b * PER_BATCH + i + 1, 0.99, "abcd");
                            serde_json::from_value(v).unwrap()
                        })
                        .collect();
                    assert_eq!(client.send("bench", events).unwrap(), PER_BATCH);
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let total = 2 * batches * PER_BATCH;
    let rate = total as f64 / elapsed;
    #[expect(
        clippy::print_stderr,
        reason = "the measurement is the point of this test"
    )]
    {
        eprintln!("ingested {total} events in {elapsed:.2} s: {rate:.0} events/s");
    }
    assert!(rate > 1000.0, "{rate:.0} events/s");
    let runs = c.runs().unwrap();
    assert_eq!(runs[0].info.events, total);
}

/// Many ranks posting at once share commits (group commit): every acknowledged event must be
/// stored exactly once, each rank's events in the order it sent them, and a restart must
/// replay all of them.
#[test]
fn concurrent_posters_lose_nothing() {
    const RUNS: u32 = 2;
    const RANKS: u32 = 6;
    const BATCHES: u64 = 15;
    const PER_BATCH: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("watch.db");
    let c = Collector::open(Config::new(&db)).unwrap();
    let (rt, url) = serve_loopback(&c);
    let runs: Vec<(String, String)> = (0..RUNS)
        .map(|r| {
            let run = format!("crowd-{r}");
            let token = Client::new(&url).unwrap().register(&run).unwrap();
            (run, token)
        })
        .collect();
    std::thread::scope(|s| {
        for (run, token) in &runs {
            for rank in 0..RANKS {
                let client = Client::new(&url).unwrap().with_token(token.clone());
                s.spawn(move || {
                    for b in 0..BATCHES {
                        let events: Vec<tg_watch::Event> = (0..PER_BATCH)
                            .map(|i| {
                                let n = b * PER_BATCH + i + 1;
                                let v = step(run, rank, RANKS, n, 0.99, "abcd");
                                serde_json::from_value(v).unwrap()
                            })
                            .collect();
                        assert_eq!(client.send(run, events).unwrap(), PER_BATCH);
                    }
                });
            }
        }
    });
    let per_run = u64::from(RANKS) * BATCHES * PER_BATCH;
    let metrics = c.metrics(0.0);
    let counter = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let batches = u64::from(RUNS * RANKS) * BATCHES;
    assert_eq!(counter("trainguard_ingest_batches_total"), batches);
    assert_eq!(
        counter("trainguard_ingest_events_total"),
        u64::from(RUNS) * per_run
    );
    let commits = counter("trainguard_store_commits_total");
    assert!((1..=batches).contains(&commits), "{commits} commits");

    // Exactly once, and in each rank's own order (the order replay feeds the detectors).
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(String, u32, u64)> = conn
        .prepare("SELECT run, rank, json_extract(body, '$.step') FROM events ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);
    assert_eq!(rows.len() as u64, u64::from(RUNS) * per_run);
    let mut last: std::collections::BTreeMap<(String, u32), u64> = Default::default();
    for (run, rank, n) in rows {
        let previous = last.insert((run.clone(), rank), n).unwrap_or(0);
        assert_eq!(
            n,
            previous + 1,
            "{run} rank {rank}: step {n} after {previous}"
        );
    }
    assert_eq!(last.len(), (RUNS * RANKS) as usize);
    assert!(last.values().all(|&n| n == BATCHES * PER_BATCH));

    // A restart replays every event into the detectors.
    drop(rt);
    drop(c);
    let c = Collector::open(Config::new(&db)).unwrap();
    for (run, _) in &runs {
        let summary = c.runs().unwrap().into_iter().find(|r| r.info.run == *run);
        assert_eq!(summary.unwrap().info.events, per_run);
        let ranks = c.ranks(run).unwrap();
        assert_eq!(ranks.len(), RANKS as usize);
        assert!(
            ranks
                .iter()
                .all(|r| r.last_step == Some(BATCHES * PER_BATCH))
        );
    }
}

#[tokio::test]
async fn silences_are_reported_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let mut config = Config::new(dir.path().join("w.db"));
        config.thresholds.heartbeat_timeout_s = 0.2;
        Collector::open(config).unwrap()
    };
    let hb = |run: &str| json!([ev(run, 0, 1, json!({"type": "heartbeat"}))]);
    let (token_a, token_b) = {
        let c = open();
        let app = router(c.clone());
        let (a, b) = (register(&app, "seen").await, register(&app, "unseen").await);
        assert_eq!(
            call(&app, post_events("seen", Some(&a), &hb("seen")))
                .await
                .0,
            StatusCode::OK
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // The silence of run "seen" is reported while this collector runs ...
        assert_eq!(c.tick(tg_server::now_unix_s()).unwrap().len(), 1);
        // ... while run "unseen" falls silent only when the collector is down.
        assert_eq!(
            call(&app, post_events("unseen", Some(&b), &hb("unseen")))
                .await
                .0,
            StatusCode::OK
        );
        (a, b)
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let c = open();
    let app = router(c.clone());
    assert_eq!(incidents(&app, "seen").await.len(), 1, "not reported twice");
    let unseen = incidents(&app, "unseen").await;
    assert_eq!(unseen.len(), 1, "reported at start");
    assert_eq!(unseen[0]["detector"], "heartbeat_missing");
    // Tokens survive too.
    for (run, token) in [("seen", &token_a), ("unseen", &token_b)] {
        assert_eq!(
            call(&app, post_events(run, Some(token), &hb(run))).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn reads_need_the_read_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("w.db"));
    config.read_token = Some("reader".into());
    let app = router(Collector::open(config).unwrap());
    let run_token = register(&app, "private").await;
    let get = |path: &str, auth: Option<String>| {
        let mut req = Request::get(path);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        req.body(Body::empty()).unwrap()
    };
    for path in [
        "/",
        "/metrics",
        "/v1/runs",
        "/v1/runs/private/incidents",
        "/v1/runs/private/ranks",
    ] {
        let resp = app.clone().oneshot(get(path, None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with("Basic"), "{challenge}");
        // The job's own write token does not read.
        let auth = Some(format!("Bearer {run_token}"));
        assert_eq!(
            call(&app, get(path, auth)).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let auth = Some("Bearer reader".to_string());
        assert_eq!(
            call(&app, get(path, auth)).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    // A browser answers the Basic challenge with any user name and the token as the password.
    let basic = Some("Basic YW55b25lOnJlYWRlcg==".to_string()); // anyone:reader
    assert_eq!(call(&app, get("/", basic)).await.0, StatusCode::OK);
    assert_eq!(call(&app, get("/healthz", None)).await.0, StatusCode::OK);
}
